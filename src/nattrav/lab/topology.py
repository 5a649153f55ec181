"""The lab's wiring as data: which namespaces, links, addresses and routes two NATs and a Shape need.

Pure (no syscalls) so the topology is unit-tested without root. Links are point-to-point with /32
addresses and on-link gateways, so each namespace on the path is a real IP hop (a switched LAN is the
one exception: a bridge and a /24, so its hosts reach each other directly).

    a (10.0.1.2) ─ nat_a (10.0.1.1 | 203.0.113.10) ─[w_a]─ r_a1 … r_aN ─┐
    a2 (10.0.1.3) ┘                                                     router (192.0.2.254) ─ server (198.51.100.1, .2)
    b (10.0.2.2) ─ nat_b (10.0.2.1 | 203.0.113.20) ─[w_b]─ r_b1 … r_bM ─┘                    └ server2 (198.51.100.3)

* Layers (NatSpec.outer): nat_a — cgn_a — cgn2_a, inside first, joined by 100.64.0.0/10 links
  (100.64.1.0/24 between layers 1 and 2 of side a, 100.65.1.0/24 between 2 and 3). The outermost NAT
  holds the public address(es): 203.0.113.10.. (side a) / .20.. (side b), one per public_ips.
* A public host (preset "none") has no NAT: it takes 203.0.113.10 (a), .11 (a2), … itself.
* Routers r_a1..r_aN (192.0.2.1..) and r_b1..r_bM (192.0.2.101..) stand between the outermost NAT
  and the core router, per Shape.routers_a/b; each answers an expiring packet with time-exceeded.
* An impaired access link (Shape.link_a/b) runs through a wire namespace w_a / w_b, where the delay
  line (wire.py) forwards frames between its interfaces l and r: no IP hop, no address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LabError
from .shape import LinkSpec, Shape
from .spec import NatSpec

ROUTER_IP = "192.0.2.254"
S1, S2, S3 = "198.51.100.1", "198.51.100.2", "198.51.100.3"
# background hosts send into this range; the router blackholes it, so noise costs nothing downstream
SINK_NET = "198.51.100.128/25"
MAX_HOSTS_PER_NAT = 50
MAX_PUBLIC_HOSTS = 10  # 203.0.113.10..19 for side a, .20..29 for side b
LAYER_NAMES = ("nat", "cgn", "cgn2")
LAN_BRIDGE = "lanbr"  # a switched LAN's bridge: matches the ruleset's "lan*"


@dataclass
class Node:
    name: str
    kind: str  # host | nat | router | server | wire
    side: str | None = None  # "a" / "b" for everything behind or being a NAT of that side
    ip: str | None = None  # the node's own (primary) address
    wan_ip: str | None = None  # hosts: the public address the outermost NAT uses; NATs: their WAN
    spec: NatSpec | None = None  # NATs only
    lan_net: str | None = None  # NATs only: the inside prefix they translate
    ips: list[str] = field(default_factory=list)  # every address (the server has two, a pool several)
    forwarding: bool = False
    wan_ips: list[str] = field(default_factory=list)  # NATs: the whole public pool (wan_ip first)
    link: LinkSpec | None = None  # wire nodes: what the delay line does


@dataclass(frozen=True)
class Link:
    a: str
    a_if: str
    b: str
    b_if: str
    wire: str | None = None  # a wire node that sits in the middle (an impaired link)


@dataclass(frozen=True)
class Addr:
    node: str
    ifname: str
    address: str
    prefixlen: int = 32


@dataclass(frozen=True)
class Route:
    node: str
    dst: str  # "default" or a prefix
    ifname: str | None = None
    gateway: str | None = None
    blackhole: bool = False


@dataclass(frozen=True)
class Bridge:
    node: str
    name: str
    ports: tuple[str, ...]


@dataclass
class Topology:
    nodes: dict[str, Node]
    links: list[Link]
    addrs: list[Addr]
    routes: list[Route]
    bridges: list[Bridge] = field(default_factory=list)
    chains: dict[str, list[str]] = field(default_factory=dict)  # side -> NAT names, inside first
    routers: dict[str, list[str]] = field(default_factory=dict)  # side -> routers, NAT side first

    def nats(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "nat"]

    def hosts(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "host"]

    def wires(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "wire"]


def host_names(side: str, count: int) -> list[str]:
    return [side] + [f"{side}{k}" for k in range(2, count + 1)]


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.addrs: list[Addr] = []
        self.routes: list[Route] = []
        self.bridges: list[Bridge] = []

    def onlink_default(self, node: str, ifname: str, gw: str) -> None:
        self.routes.append(Route(node, f"{gw}/32", ifname=ifname))
        self.routes.append(Route(node, "default", ifname=ifname, gateway=gw))

    def uplink(self, down: str, down_if: str, down_ips: list[str], up: str, up_ip: str,
               reach: list[str], impair: LinkSpec | None = None, wire: str | None = None) -> None:
        """Join `down` (addresses down_ips on down_if) to router-like `up` (address up_ip); `up`
        routes every address in `reach` towards `down`, and `down` defaults to `up`."""
        up_if = f"to_{down}"
        if impair is not None:
            self.nodes[wire] = Node(wire, "wire", side=self.nodes[down].side, link=impair)
        self.links.append(Link(down, down_if, up, up_if, wire=wire if impair is not None else None))
        for ip in down_ips:
            self.addrs.append(Addr(down, down_if, ip))
        self.addrs.append(Addr(up, up_if, up_ip))
        for ip in reach:
            self.routes.append(Route(up, f"{ip}/32", ifname=up_if))
        self.onlink_default(down, down_if, up_ip)


def build_topology(
    left: NatSpec | None,
    right: NatSpec | None,
    *,
    hosts_per_nat: int = 1,
    background: dict[str, float] | None = None,
    second_server: bool = False,
    shape: Shape | None = None,
) -> Topology:
    if isinstance(hosts_per_nat, bool) or not isinstance(hosts_per_nat, int) \
            or not 1 <= hosts_per_nat <= MAX_HOSTS_PER_NAT:
        raise LabError(f"hosts_per_nat={hosts_per_nat!r}: choose an int in 1..{MAX_HOSTS_PER_NAT}")
    shape = (shape or Shape(name="flat")).validate()
    background = background or {}
    b = _Builder()
    b.nodes["router"] = Node("router", "router", ip=ROUTER_IP, ips=[ROUTER_IP], forwarding=True)
    chains: dict[str, list[str]] = {}
    routers: dict[str, list[str]] = {}

    for idx, (side, spec) in enumerate((("a", left), ("b", right)), start=1):
        public_base = 10 * idx  # 203.0.113.10 for a, .20 for b
        names = host_names(side, hosts_per_nat)
        # the routers between this side and the core, from the NAT outwards
        routers[side] = [f"r_{side}{k}" for k in range(1, shape.routers(side) + 1)]
        for k, r in enumerate(routers[side], start=1):
            ip = f"192.0.2.{k + 100 * (idx - 1)}"
            b.nodes[r] = Node(r, "router", side=side, ip=ip, ips=[ip], forwarding=True)
        first_hop = routers[side][0] if routers[side] else "router"
        if spec is None:
            if background.get(side):
                raise LabError(
                    f"background traffic on side {side!r} needs a NAT there (preset 'none' has none); "
                    "drop it or choose a NAT preset"
                )
            if len(names) > MAX_PUBLIC_HOSTS:
                raise LabError(f"hosts_per_nat={hosts_per_nat} with a public host on side {side!r}: at most "
                               f"{MAX_PUBLIC_HOSTS} public hosts a side")
            public = [f"203.0.113.{public_base + k}" for k in range(len(names))]
            for name, ip in zip(names, public):
                b.nodes[name] = Node(name, "host", side=side, ip=ip, wan_ip=ip, ips=[ip])
            # each public host is its own access link; only the first carries the side's impairment
            for k, (name, ip) in enumerate(zip(names, public)):
                b.uplink(name, "eth0", [ip], first_hop, _hop_ip(b, first_hop), [ip],
                         impair=shape.link(side) if k == 0 else None, wire=f"w_{side}")
            chains[side] = []
            _chain_routers(b, routers[side], public)
            continue
        layers = spec.chain
        chain = [f"{LAYER_NAMES[k]}_{side}" for k in range(len(layers))]
        chains[side] = chain
        public = [f"203.0.113.{public_base + k}" for k in range(layers[-1].public_ips)]
        # layer k's WAN addresses: the public pool for the outermost, 100.(63+k+1).idx.2.. inside
        wans = [
            public if k == len(layers) - 1 else [f"100.{64 + k}.{idx}.{2 + j}" for j in range(layers[k].public_ips)]
            for k in range(len(layers))
        ]
        lan_nets = [f"10.0.{idx}.0/24"] + [f"100.{64 + k - 1}.{idx}.0/24" for k in range(1, len(layers))]
        lan_gws = [f"10.0.{idx}.1"] + [f"100.{64 + k - 1}.{idx}.1" for k in range(1, len(layers))]
        for k, (name, layer) in enumerate(zip(chain, layers)):
            b.nodes[name] = Node(
                name, "nat", side=side, ip=wans[k][0], wan_ip=wans[k][0], spec=layer, lan_net=lan_nets[k],
                ips=[lan_gws[k], *wans[k]], forwarding=True, wan_ips=list(wans[k]),
            )
        for k in range(len(layers) - 1):
            # inner layer k's WAN is the LAN of layer k+1
            b.links.append(Link(chain[k], "wan", chain[k + 1], "lan0"))
            for ip in wans[k]:
                b.addrs.append(Addr(chain[k], "wan", ip))
                b.routes.append(Route(chain[k + 1], f"{ip}/32", ifname="lan0"))
            b.addrs.append(Addr(chain[k + 1], "lan0", lan_gws[k + 1]))
            b.onlink_default(chain[k], "wan", lan_gws[k + 1])
        b.uplink(chain[-1], "wan", public, first_hop, _hop_ip(b, first_hop), public,
                 impair=shape.link(side), wire=f"w_{side}")
        _chain_routers(b, routers[side], public)
        lan_hosts = [(name, f"10.0.{idx}.{2 + k}") for k, name in enumerate(names)]
        if background.get(side):
            lan_hosts.append((f"bg_{side}", f"10.0.{idx}.100"))
        for name, ip in lan_hosts:
            b.nodes[name] = Node(name, "host", side=side, ip=ip, wan_ip=public[0], ips=[ip])
        _lan(b, chain[0], lan_hosts, lan_gws[0], shape.lan)

    servers = [("server", [S1, S2])]
    if second_server:
        servers.append(("server2", [S3]))
    for name, ips in servers:
        b.nodes[name] = Node(name, "server", ip=ips[0], wan_ip=ips[0], ips=list(ips))
        b.uplink(name, "eth0", ips, "router", ROUTER_IP, ips)
    b.routes.append(Route("router", SINK_NET, blackhole=True))

    for link in b.links:
        for n, ifname in ((link.a, link.a_if), (link.b, link.b_if)):
            if len(ifname) > 15:
                raise LabError(f"interface name {ifname!r} on {n} is longer than Linux allows (15)")
    return Topology(b.nodes, b.links, b.addrs, b.routes, b.bridges, chains, routers)


def _hop_ip(b: _Builder, router: str) -> str:
    return b.nodes[router].ip


def _chain_routers(b: _Builder, routers: list[str], public: list[str]) -> None:
    """Link the side's routers to each other and the last to the core; every one routes the side's
    public addresses towards the NAT."""
    for k, r in enumerate(routers):
        up = routers[k + 1] if k + 1 < len(routers) else "router"
        b.links.append(Link(r, "up", up, f"to_{r}"))
        b.addrs.append(Addr(r, "up", b.nodes[r].ip))
        b.addrs.append(Addr(up, f"to_{r}", b.nodes[up].ip))
        # the next router does not own the side's addresses: route them through its address
        b.routes.append(Route(up, f"{b.nodes[r].ip}/32", ifname=f"to_{r}"))
        for ip in public:
            b.routes.append(Route(up, f"{ip}/32", ifname=f"to_{r}", gateway=b.nodes[r].ip))
        b.onlink_default(r, "up", b.nodes[up].ip)


def _lan(b: _Builder, nat: str, hosts: list[tuple[str, str]], gw: str, kind: str) -> None:
    if kind == "routed":
        for k, (name, ip) in enumerate(hosts):
            lif = f"lan{k}"
            b.links.append(Link(name, "eth0", nat, lif))
            b.addrs.append(Addr(name, "eth0", ip))
            b.addrs.append(Addr(nat, lif, gw))
            b.routes.append(Route(nat, f"{ip}/32", ifname=lif))
            b.onlink_default(name, "eth0", gw)
        return
    # switched: one bridge in the NAT, one /24; the hosts find each other (and the NAT) by ARP
    ports = tuple(f"port{k}" for k in range(len(hosts)))
    for (name, ip), port in zip(hosts, ports):
        b.links.append(Link(name, "eth0", nat, port))
        b.addrs.append(Addr(name, "eth0", ip, 24))
        b.routes.append(Route(name, "default", ifname="eth0", gateway=gw))
    b.bridges.append(Bridge(nat, LAN_BRIDGE, ports))
    b.addrs.append(Addr(nat, LAN_BRIDGE, gw, 24))


def nat_chain(topo: Topology, host: str) -> list[str]:
    """NAT namespaces a host's packets cross, inside first."""
    node = topo.nodes[host]
    if node.kind != "host" or node.side is None:
        return []
    return list(topo.chains.get(node.side, []))


def path_routers(topo: Topology, src_side: str, dst_side: str | None = None) -> list[str]:
    """Routers a packet from side src_side crosses towards the core (and on to dst_side's NAT)."""
    out = list(topo.routers.get(src_side, [])) + ["router"]
    if dst_side is not None:
        out += list(reversed(topo.routers.get(dst_side, [])))
    return out


def expected_trace(topo: Topology, host: str, dst_side: str) -> list[str]:
    """Who should answer an expiring packet from `host` towards dst_side's public address, TTL 1
    upwards: each own NAT layer (from its inside address), then every router on the way. The peer's
    outermost NAT drops an unsolicited packet silently, so the list ends there."""
    nats = [topo.nodes[n].ips[0] for n in nat_chain(topo, host)]
    routers = [topo.nodes[r].ip for r in path_routers(topo, topo.nodes[host].side, dst_side)]
    return nats + routers
