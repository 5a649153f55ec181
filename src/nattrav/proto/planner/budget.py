"""How many new flows one side may open on its own NATs, sans-IO: the default a side publishes in
its report (NatReport.flows), smaller behind a carrier-grade NAT, less what its own recent bursts
still hold there.

Every new 5-tuple a burst sends is an entry in each NAT it crosses, and a full table drops every new
flow (the next STUN request, the rendezvous connection, the household's web pages) until old entries
expire. Each side publishes the flows IT can spare; the planner sizes each side's part by that
side's own number, so both peers still derive one plan and the load of a birthday lands on the side
whose NAT can hold it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..hops import HopReading, shared

FLOW_TABLE_CAP = 262144  # nf_conntrack_max on the lab's machine kind: the most any side may publish
# A home router holds 4k-16k flows in all and a carrier-grade NAT gives a subscriber 1024-2048
# ports: the default stays inside the smallest of those. --max-flows raises it where the NATs cope.
DEFAULT_FLOW_BUDGET = 1024
# Behind a carrier-grade NAT the cap is per subscriber (the whole household) and small: RFC 6888
# leaves it to the operator, deployments give 1024-2048 ports (the lab's `cgn` 2048). 512 is at most
# half of the smallest and a quarter of the common 2048, so our own bursts, held for FLOW_LINGER
# seconds, leave the household's other traffic most of its share; and it still buys a birthday at
# 99.9% against a 1024-flow home router (N·P/R: 1024 sockets there × ~450 probes from here on 64k).
CGN_FLOW_BUDGET = 512
# Seconds a NAT keeps the entries of a burst after its last packet. Linux (home routers on OpenWrt,
# the Linux CGNs, the lab) drops an unanswered UDP entry after nf_conntrack_udp_timeout = 30 s;
# almost every burst flow is unanswered (the low-TTL packets die on the way, the probes miss), and
# the one that connects is the path itself. RFC 4787's two-minute floor is for mappings in use; a
# NAT that also keeps unanswered ones that long is not covered (--max-flows lower, then).
FLOW_LINGER = 30.0


def behind_cgn(hops: HopReading, own_ips: Iterable[str] = ()) -> bool:
    """Whether a carrier-grade NAT is on our side: a traced hop, or one of our own addresses, in the
    RFC 6598 shared address space (a home router's WAN side, a phone's carrier address)."""
    return hops.cgn or any(shared(ip) for ip in own_ips)


def default_flow_budget(hops: HopReading, own_ips: Iterable[str] = ()) -> int:
    """The budget of a side that was given none: CGN_FLOW_BUDGET behind a carrier-grade NAT."""
    return CGN_FLOW_BUDGET if behind_cgn(hops, own_ips) else DEFAULT_FLOW_BUDGET


@dataclass
class Burst:
    """Flows one of our bursts opened, held by the NATs until `until` (a clock the caller picks)."""

    flows: int
    until: float


@dataclass
class FlowLedger:
    """Our own recent bursts per network (a key the caller picks: the local address they left
    from), so that back-to-back sessions publish only the budget their NATs still have free."""

    bursts: dict[str, list[Burst]] = field(default_factory=dict)

    def record(self, key: str, flows: int, until: float) -> Burst:
        """A burst that may still hold its NAT entries until `until`; settle() may move that."""
        burst = Burst(max(0, int(flows)), until)
        self.bursts.setdefault(key, []).append(burst)
        return burst

    @staticmethod
    def settle(burst: Burst, until: float) -> None:
        """The burst's last packet is known now: its entries go FLOW_LINGER after it."""
        burst.until = until

    def held(self, key: str, now: float) -> int:
        """Flows of our bursts on `key`'s network that its NATs may still hold at `now`."""
        live = [b for b in self.bursts.get(key, ()) if b.until > now]
        if live:
            self.bursts[key] = live
        else:
            self.bursts.pop(key, None)
        return sum(b.flows for b in live)


def budget_left(budget: int, held: int) -> int:
    """What a side may publish: its budget less what its NATs still hold of ours, at least one flow
    (a strategy of one packet always fits; the odds of the bigger ones then say what is left)."""
    return max(1, min(FLOW_TABLE_CAP, budget - max(0, held)))


__all__ = ["CGN_FLOW_BUDGET", "DEFAULT_FLOW_BUDGET", "FLOW_LINGER", "FLOW_TABLE_CAP", "Burst",
           "FlowLedger", "behind_cgn", "budget_left", "default_flow_budget"]
