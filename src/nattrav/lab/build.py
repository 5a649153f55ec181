"""Bringing a Topology into being: namespaces, veth pairs, addresses, routes, sysctls and rulesets.

One throwaway thread does it all (netns.in_thread): it unshares/setns'es freely, so the caller's threads
never change namespace. Netlink goes through pyroute2 sockets opened inside each namespace, each NAT's
ruleset is one `nft -f -` transaction.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from . import netns
from .errors import LabError
from .nftables import render, sysctls
from .tools import tool
from .topology import Topology

WIRE_LEFT, WIRE_RIGHT = "l", "r"  # a wire namespace's two interfaces

BASE_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
    "net/ipv4/conf/all/accept_redirects": "0",
    "net/ipv4/conf/default/accept_redirects": "0",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}
FORWARDING_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/default/send_redirects": "0",
}


def build(topo: Topology, ns_of: Callable[[str], str]) -> None:
    """Create every namespace, link, address, route and ruleset of `topo`. Call from a throwaway
    thread (netns.in_thread); on error the caller removes what exists."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise LabError("the NAT lab needs pyroute2: pip install 'nattrav[lab]'") from None

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fds: dict[str, int] = {}
    iprs: dict[str, Any] = {}
    try:
        for name, node in topo.nodes.items():
            nsname = ns_of(name)
            netns.create_here(nsname)
            fds[name] = os.open(netns.path(nsname), os.O_RDONLY)
            write_sysctls({**BASE_SYSCTLS, **(FORWARDING_SYSCTLS if node.forwarding else {})})
            ipr = iprs[name] = IPRoute()
            ipr.link("set", index=1, state="up")
        # Distinct ifindexes on the two ends matter: the kernel treats a veth whose ifindex equals
        # its peer's as a non-urgent link event and activates its queue up to a second later. The
        # peer keeps an automatic (small) index, so an explicit one >= 100 here always differs.
        ends: list[tuple[str, str]] = []  # every (node, ifname) to bring up
        for k, link in enumerate(topo.links):
            if link.wire is None:
                _veth(iprs, fds, link.a, link.a_if, link.b, link.b_if, 100 + k)
                ends += [(link.a, link.a_if), (link.b, link.b_if)]
            else:
                # an impaired link: a -- (l) wire (r) -- b, the delay line forwards between l and r
                _veth(iprs, fds, link.a, link.a_if, link.wire, WIRE_LEFT, 100 + k)
                _veth(iprs, fds, link.wire, WIRE_RIGHT, link.b, link.b_if, 1000 + k)
                ends += [(link.a, link.a_if), (link.wire, WIRE_LEFT), (link.wire, WIRE_RIGHT), (link.b, link.b_if)]
        index: dict[tuple[str, str], int] = {}

        def idx(node: str, ifname: str) -> int:
            key = (node, ifname)
            if key not in index:
                index[key] = iprs[node].link_lookup(ifname=ifname)[0]
            return index[key]

        for br in topo.bridges:
            ipr = iprs[br.node]
            ipr.link("add", ifname=br.name, kind="bridge")
            for port in br.ports:
                ipr.link("set", index=idx(br.node, port), master=idx(br.node, br.name))
            ends.append((br.node, br.name))
        for a in topo.addrs:
            iprs[a.node].addr("add", index=idx(a.node, a.ifname), address=a.address, prefixlen=a.prefixlen)
        for node, ifname in ends:
            iprs[node].link("set", index=idx(node, ifname), state="up")
        wait_carrier(iprs, timeout=2.0)
        macs: dict[tuple[str, str], str] = {}  # one netlink question per interface, not per address it holds
        for node, ifname, address, (peer, peer_if) in static_neighbours(topo):
            if (peer, peer_if) not in macs:
                macs[peer, peer_if] = iprs[peer].get_links(idx(peer, peer_if))[0].get_attr("IFLA_ADDRESS")
            mac = macs[peer, peer_if]
            iprs[node].neigh("replace", dst=address, lladdr=mac, ifindex=idx(node, ifname), state=NUD_PERMANENT)
        for r in topo.routes:
            ipr = iprs[r.node]
            dst = "0.0.0.0/0" if r.dst == "default" else r.dst
            if r.blackhole:
                ipr.route("add", dst=dst, type="blackhole")
            elif r.gateway:
                ipr.route("add", dst=dst, gateway=r.gateway, oif=idx(r.node, r.ifname))
            else:
                ipr.route("add", dst=dst, oif=idx(r.node, r.ifname), scope=253)
        nft = tool("nft")
        for node in topo.nats():
            netns.enter(fds[node.name])
            ruleset = render(node.spec, wan_ip=node.wan_ip, lan_net=node.lan_net, wan_ips=node.wan_ips)
            subprocess.run([nft, "-f", "-"], input=ruleset, text=True, check=True, capture_output=True)
            write_sysctls(sysctls(node.spec))
    finally:
        for ipr in iprs.values():
            ipr.close()
        for fd in fds.values():
            os.close(fd)
        try:
            netns.enter(home)
        finally:
            os.close(home)


def static_neighbours(topo: Topology) -> list[tuple[str, str, str, tuple[str, str]]]:
    """(node, interface, address, (the peer node, interface holding it)) for every address another
    node's interface holds on the same link (a veth pair, through a wire, or a bridge's ports), for
    permanent neighbour entries.

    Why: the kernel's neighbour table is one for all namespaces, and its limit (gc_thresh3, 1,024
    by default, settable only from the root namespace) counts every namespace's learned entries.
    Some 30 labs at once (~600 namespaces) filled it ("neighbor table overflow"), and the labs that
    came up next could not reach their own server. Permanent entries are not counted (Linux >=
    4.19), and a link that needs no ARP is one timer fewer on the path; an address left out here is
    still resolved the usual way."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    def join(x: tuple[str, str], y: tuple[str, str]) -> None:
        parent[find(x)] = find(y)

    for link in topo.links:
        # a wire forwards frames between its two ends: one segment from a to b
        join((link.a, link.a_if), (link.b, link.b_if))
    for br in topo.bridges:
        for port in br.ports:
            join((br.node, port), (br.node, br.name))
    holders: dict[tuple[str, str], list[str]] = {}
    for a in topo.addrs:
        holders.setdefault((a.node, a.ifname), []).append(a.address)
    out = []
    for end in holders:
        for other, addresses in holders.items():
            if other[0] != end[0] and find(other) == find(end):
                out += [(end[0], end[1], address, other) for address in addresses]
    return out


NUD_PERMANENT = 0x80  # a neighbour entry the kernel neither ages nor counts against gc_thresh3


def _veth(iprs: dict, fds: dict, a: str, a_if: str, b: str, b_if: str, index: int) -> None:
    iprs[a].link("add", ifname=a_if, kind="veth", index=index, peer={"ifname": b_if, "net_ns_fd": fds[b]})


def wait_carrier(iprs: dict, timeout: float) -> None:
    """Until every veth reports operstate UP: before that its queue may still drop packets."""
    deadline = time.monotonic() + timeout
    while True:
        down = [
            f"{node}:{link.get_attr('IFLA_IFNAME')}"
            for node, ipr in iprs.items()
            for link in ipr.get_links()
            if link.get_attr("IFLA_IFNAME") != "lo" and link.get_attr("IFLA_OPERSTATE") != "UP"
        ]
        if not down:
            return
        if time.monotonic() > deadline:
            raise LabError(f"links did not come up within {timeout}s: {', '.join(down)}")
        time.sleep(0.005)


def write_sysctls(settings: dict[str, str]) -> None:
    # /proc/sys/net resolves against the calling thread's namespace, so this thread's setns applies
    for key, value in settings.items():
        try:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
        except FileNotFoundError:
            if key.startswith("net/ipv6/"):
                continue  # a kernel booted without IPv6: nothing to switch off
            raise LabError(f"/proc/sys/{key} is missing: this kernel lacks a feature the lab needs") from None
