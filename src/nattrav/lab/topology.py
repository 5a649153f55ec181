"""The lab's wiring as data: which namespaces, veth links, addresses and routes a pair of NATs needs.

Pure (no syscalls) so the topology is unit-tested without root. Every link is point-to-point with /32
addresses and on-link gateways, so each namespace on the path is a real IP hop: a packet from a host
behind one NAT layer with TTL 2 leaves its NAT and dies in the router, never reaching the peer's NAT.

    a (10.0.1.2) -- nat_a (10.0.1.1 | 203.0.113.10) --+
    a2 (10.0.1.3) -/                                   router (192.0.2.254) -- server (198.51.100.1, .2)
    b (10.0.2.2) -- nat_b (10.0.2.1 | 203.0.113.20) --+                     \\- server2 (198.51.100.3)

A public host (preset "none") hangs straight off the router with 203.0.113.10 / .20 (no NAT
namespace). A two-layer NAT (NatSpec.outer, e.g. "cgnat") puts cgn_a (10.64.1.1 | 203.0.113.10)
between nat_a (WAN 10.64.1.2) and the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LabError
from .spec import NatSpec

ROUTER_IP = "192.0.2.254"
S1, S2, S3 = "198.51.100.1", "198.51.100.2", "198.51.100.3"
# background hosts send into this range; the router blackholes it, so noise costs nothing downstream
SINK_NET = "198.51.100.128/25"
MAX_HOSTS_PER_NAT = 50


@dataclass
class Node:
    name: str
    kind: str  # host | nat | router | server
    side: str | None = None  # "a" / "b" for everything behind or being a NAT of that side
    ip: str | None = None  # the node's own (primary) address
    wan_ip: str | None = None  # hosts: the public address the outermost NAT uses; NATs: their WAN
    spec: NatSpec | None = None  # NATs only
    lan_net: str | None = None  # NATs only: the inside prefix they translate
    ips: list[str] = field(default_factory=list)  # every address (the server has two)
    forwarding: bool = False


@dataclass(frozen=True)
class Link:
    a: str
    a_if: str
    b: str
    b_if: str


@dataclass(frozen=True)
class Addr:
    node: str
    ifname: str
    address: str  # always /32


@dataclass(frozen=True)
class Route:
    node: str
    dst: str  # "default" or a prefix
    ifname: str | None = None
    gateway: str | None = None
    blackhole: bool = False


@dataclass
class Topology:
    nodes: dict[str, Node]
    links: list[Link]
    addrs: list[Addr]
    routes: list[Route]

    def nats(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "nat"]

    def hosts(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "host"]


def host_names(side: str, count: int) -> list[str]:
    return [side] + [f"{side}{k}" for k in range(2, count + 1)]


def build_topology(
    left: NatSpec | None,
    right: NatSpec | None,
    *,
    hosts_per_nat: int = 1,
    background: dict[str, float] | None = None,
    second_server: bool = False,
) -> Topology:
    if not isinstance(hosts_per_nat, int) or not 1 <= hosts_per_nat <= MAX_HOSTS_PER_NAT:
        raise LabError(f"hosts_per_nat={hosts_per_nat!r}: choose an int in 1..{MAX_HOSTS_PER_NAT}")
    background = background or {}
    nodes: dict[str, Node] = {}
    links: list[Link] = []
    addrs: list[Addr] = []
    routes: list[Route] = []

    def onlink_default(node: str, ifname: str, gw: str) -> None:
        routes.append(Route(node, f"{gw}/32", ifname=ifname))
        routes.append(Route(node, "default", ifname=ifname, gateway=gw))

    router = Node("router", "router", ip=ROUTER_IP, ips=[ROUTER_IP], forwarding=True)
    nodes["router"] = router

    def to_router(node: str, public_ip: str) -> None:
        rif = f"to_{node}"
        links.append(Link(node, "wan" if nodes[node].kind == "nat" else "eth0", "router", rif))
        ifname = links[-1].a_if
        addrs.append(Addr(node, ifname, public_ip))
        addrs.append(Addr("router", rif, ROUTER_IP))
        routes.append(Route("router", f"{public_ip}/32", ifname=rif))
        onlink_default(node, ifname, ROUTER_IP)

    for idx, (side, spec) in enumerate((("a", left), ("b", right)), start=1):
        public_base = 10 * idx  # 203.0.113.10 for a, .20 for b
        names = host_names(side, hosts_per_nat)
        if spec is None:
            if background.get(side):
                raise LabError(
                    f"background traffic on side {side!r} needs a NAT there (preset 'none' has none); "
                    "drop it or choose a NAT preset"
                )
            for k, name in enumerate(names):
                ip = f"203.0.113.{public_base + k}"
                nodes[name] = Node(name, "host", side=side, ip=ip, wan_ip=ip, ips=[ip])
                to_router(name, ip)
            continue
        public_ip = f"203.0.113.{public_base}"
        inner = f"nat_{side}"
        lan_net = f"10.0.{idx}.0/24"
        lan_gw = f"10.0.{idx}.1"
        if spec.outer is None:
            nodes[inner] = Node(
                inner, "nat", side=side, ip=public_ip, wan_ip=public_ip, spec=spec, lan_net=lan_net,
                ips=[lan_gw, public_ip], forwarding=True,
            )
            to_router(inner, public_ip)
        else:
            outer = f"cgn_{side}"
            mid_gw, mid_ip = f"10.64.{idx}.1", f"10.64.{idx}.2"
            nodes[outer] = Node(
                outer, "nat", side=side, ip=public_ip, wan_ip=public_ip, spec=spec.outer,
                lan_net=f"10.64.{idx}.0/24", ips=[mid_gw, public_ip], forwarding=True,
            )
            to_router(outer, public_ip)
            nodes[inner] = Node(
                inner, "nat", side=side, ip=mid_ip, wan_ip=mid_ip, spec=spec, lan_net=lan_net,
                ips=[lan_gw, mid_ip], forwarding=True,
            )
            links.append(Link(inner, "wan", outer, "lan0"))
            addrs.append(Addr(inner, "wan", mid_ip))
            addrs.append(Addr(outer, "lan0", mid_gw))
            routes.append(Route(outer, f"{mid_ip}/32", ifname="lan0"))
            onlink_default(inner, "wan", mid_gw)
        lan_hosts = [(name, f"10.0.{idx}.{2 + k}") for k, name in enumerate(names)]
        if background.get(side):
            lan_hosts.append((f"bg_{side}", f"10.0.{idx}.100"))
        for k, (name, ip) in enumerate(lan_hosts):
            nodes[name] = Node(name, "host", side=side, ip=ip, wan_ip=public_ip, ips=[ip])
            lif = f"lan{k}"
            links.append(Link(name, "eth0", inner, lif))
            addrs.append(Addr(name, "eth0", ip))
            addrs.append(Addr(inner, lif, lan_gw))
            routes.append(Route(inner, f"{ip}/32", ifname=lif))
            onlink_default(name, "eth0", lan_gw)

    servers = [("server", [S1, S2])]
    if second_server:
        servers.append(("server2", [S3]))
    for name, ips in servers:
        nodes[name] = Node(name, "server", ip=ips[0], wan_ip=ips[0], ips=list(ips))
        rif = f"to_{name}"
        links.append(Link(name, "eth0", "router", rif))
        addrs.append(Addr("router", rif, ROUTER_IP))
        for ip in ips:
            addrs.append(Addr(name, "eth0", ip))
            routes.append(Route("router", f"{ip}/32", ifname=rif))
        onlink_default(name, "eth0", ROUTER_IP)
    routes.append(Route("router", SINK_NET, blackhole=True))

    for link in links:
        for n, ifname in ((link.a, link.a_if), (link.b, link.b_if)):
            if len(ifname) > 15:
                raise LabError(f"interface name {ifname!r} on {n} is longer than Linux allows (15)")
    return Topology(nodes, links, addrs, routes)


def nat_chain(topo: Topology, host: str) -> list[str]:
    """NAT namespaces a host's packets cross, inside first."""
    node = topo.nodes[host]
    if node.kind != "host" or node.side is None:
        return []
    side = node.side
    return [n for n in (f"nat_{side}", f"cgn_{side}") if n in topo.nodes]
