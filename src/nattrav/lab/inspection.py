"""Reading a running lab's NAT state: conntrack mappings, named counters, a sequential NAT's next port.

Ground truth for tests and for the predictor's hit rate; never handed to the product under test. A
mixin of Lab: it needs `topology`, `_node(name)` and `run()`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from .errors import LabError
from .nftables import TABLE, seq_ports
from .tools import tool


class Mapping(NamedTuple):
    """One NAT translation seen in conntrack (RFC 4787 words: inside endpoint -> public endpoint).
    A tuple, so `for proto, inside, outside, remote in lab.mappings("nat_a")` works too."""

    proto: str
    inside: tuple[str, int]
    outside: tuple[str, int]
    remote: tuple[str, int]


class Inspect:
    def _nat_nodes(self, nat: str | None):
        if nat is None:
            return self.topology.nats()
        node = self._node(nat)
        if node.kind != "nat":
            raise LabError(f"{nat!r} is not a NAT; NATs here: {', '.join(self.nats()) or 'none'}")
        return [node]

    def flush_conntrack(self, nat: str | None = None) -> None:
        """Forget every mapping on all NATs (or one): conntrack and the lab's dynamic maps."""
        for node in self._nat_nodes(nat):
            self.run(node.name, [tool("conntrack"), "-F"], check=False)
            existing = self.run(node.name, [tool("nft"), "list", "table", "ip", TABLE]).stdout
            # not every NAT has every map; flush what exists, one line at a time
            names = re.findall(r"^\s*(map|set) (\w+) \{", existing, re.M)
            lines = [f"flush {kind} ip {TABLE} {name}" for kind, name in names if name in DYNAMIC]
            if lines:
                self.run(node.name, [tool("nft"), "-f", "-"], input="\n".join(lines) + "\n", check=True)

    def mappings(self, nat: str, proto: str | None = None) -> list[Mapping]:
        """The NAT's current translations read from its conntrack table."""
        node = self._nat_nodes(nat)[0]
        argv = [tool("conntrack"), "-L"]
        if proto:
            argv += ["-p", proto]
        cp = self.run(node.name, argv)
        return parse_conntrack(cp.stdout, lan_net=node.lan_net)

    def counter(self, nat: str, name: str) -> int:
        """Packets counted by one of the ruleset's named counters (wan_in, wan_in_udp, wan_out,
        wan_out_udp, seq_alloc, ...; nftables.COUNTERS)."""
        node = self._nat_nodes(nat)[0]
        cp = self.run(node.name, [tool("nft"), "list", "counter", "ip", TABLE, name])
        m = re.search(r"packets (\d+)", cp.stdout)
        if cp.returncode != 0 or not m:
            raise LabError(f"no counter {name!r} on {nat}: {cp.stderr.strip()}")
        return int(m.group(1))

    def nat_state(self, nat: str) -> dict:
        """For a sequential NAT: how many ports it has handed out and the next one it will hand out."""
        node = self._nat_nodes(nat)[0]
        spec = node.spec
        state = {"nat": nat, "allocation": spec.allocation, "mapping": spec.mapping, "wan_ip": node.wan_ip}
        if spec.allocation == "sequential":
            ports = seq_ports(spec.delta)
            n = self.counter(nat, "seq_alloc")
            state.update(delta=spec.delta, allocations=n, next_port=ports[n % len(ports)], base=ports[0])
        return state


# the ruleset's dynamic maps and sets: what flush_conntrack() empties besides conntrack
DYNAMIC = ("emap", "emap_tcp", "pub", "adf", "subs")

_CT_FIELDS = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack(text: str, *, lan_net: str) -> list[Mapping]:
    """`conntrack -L` lines -> Mappings (both outbound and dnat'ed inbound flows), others skipped."""
    net = ipaddress.ip_network(lan_net)

    def inside(addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in net
        except ValueError:
            return False

    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("udp", "tcp"):
            continue
        vals = [v for _, v in _CT_FIELDS.findall(line)]
        if len(vals) < 8:
            continue
        try:
            osrc, odst, osport, odport, rsrc, rdst, rsport, rdport = vals[:8]
            osport, odport, rsport, rdport = int(osport), int(odport), int(rsport), int(rdport)
        except ValueError:
            continue
        if inside(osrc):
            out.append(Mapping(parts[0], (osrc, osport), (rdst, rdport), (odst, odport)))
        elif inside(rsrc):
            out.append(Mapping(parts[0], (rsrc, rsport), (odst, odport), (osrc, osport)))
    return out
