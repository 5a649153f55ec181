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

import math
import statistics
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
# Longest a connect waits by default for the entries of our own earlier bursts to expire before it
# samples: a side that reconnects within FLOW_LINGER otherwise publishes a budget its last bursts
# spent, and a plan sized to that leftover states odds of a few percent, then fails (back to back
# behind a CGN: 13 misses in 1,040 over wan50, all such plans). Entries go FLOW_LINGER after their
# burst, so the budget usually runs out while the oldest of them are young: the wait that helps is
# one of tens of seconds, not one; two thirds of FLOW_LINGER, inside a connect's default 30 s
# (api/session.py keeps CONNECT_RESERVE of its timeout). A need that only a longer wait would meet
# gets what the cap frees (the entries that go within it); the plan states its odds at that.
PACE_CAP = 20.0
# ... and how it paces a run of quick connects: a bucket of half the budget, refilled at that much
# per FLOW_LINGER, from which every burst takes its flows (one bigger than the bucket empties it).
# Without it a run spends the budget in its first seconds (15 predicted connects in 5 s behind a
# CGN, at zero delay), and the next connect would wait for the oldest entries, 25 s away, past the
# cap: it goes at the leftover with odds of a few percent. With it the run goes at what the budget
# sustains, each connect at the odds of the first. (A window "at most half the budget in any 15 s"
# did the same only while its wait stayed under the cap: a connect with a 15 s timeout may wait 5 s,
# and a lab run at 4 connects a second had spent the half in 6 s, faced a 9 s wait, did not wait,
# and went on until its budget was 1 flow, at ~76 % a connect.)


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
    budget: int | None = None  # the side's budget when it fired (pace's, before the next endpoint knows its own)


@dataclass
class FlowLedger:
    """Our own recent bursts per network (a key the caller picks: the local address they left
    from), so that back-to-back sessions publish only the budget their NATs still have free."""

    bursts: dict[str, list[Burst]] = field(default_factory=dict)

    def record(self, key: str, flows: int, until: float, budget: int | None = None) -> Burst:
        """A burst that may still hold its NAT entries until `until`; settle() may move that."""
        burst = Burst(max(0, int(flows)), until, budget)
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

    def wait(self, key: str, now: float, budget: int | None = None, cap: float = PACE_CAP) -> float:
        """pace() over this ledger's bursts on `key` (it skips the expired ones); `budget` None: the
        one the last burst fired under."""
        bursts = self.bursts.get(key, [])
        if budget is None:
            budget = next((b.budget for b in reversed(bursts) if b.budget), None)
        return 0.0 if budget is None else pace(budget, [(b.until, b.flows) for b in bursts], now, cap)


def pace(budget: int, bursts: Iterable[tuple[float, int]], now: float, cap: float = PACE_CAP) -> float:
    """Seconds to wait before the next endpoint samples, so that a burst as large as the largest of
    our `bursts` (until, flows) still held at `now` fits in `budget` again: the next session most
    likely meets a peer like the last one's. Two rules: the table (our entries held at once stay
    within the budget) and the rate (a bucket of half the budget, refilled at half of it per
    FLOW_LINGER, holds the burst). When either holds the largest only after `cap`: the same for
    the median one. Past `cap` for both: the whole `cap` if the table holds the largest (or the
    median) within it, else until the last of the bursts that go within `cap` has gone (0 if none
    does; the plan then states its odds at what is left)."""
    live = [(float(u), int(f)) for u, f in bursts if u > now and f > 0]
    if not live:
        return 0.0
    largest = min(budget, max(f for _, f in live))
    # when the table or the bucket holds the largest only past the cap (a birthday's, a new process's
    # first wide window, or one a long-held peer asked for, that took all that was left), pace by
    # the median one instead. Going at once, a run of quick connects filled the table within seconds
    # and planned at its leftover, connect after connect, until the big one's entries went:
    # streaks of ~20 plans at 5-78 % behind an address pool and a CGN (bench/results/reliability.md,
    # session 13)
    typical = min(largest, statistics.median_low(f for _, f in live))
    fallback = 0.0
    for need in dict.fromkeys((largest, typical)):
        table = _first_fit(live, budget, need, now) - now
        if table > cap:
            continue
        wait = max(table, _bucket_wait(live, max(budget // 2, need), need, now))
        if wait <= cap:
            return wait
        # the table has room but the run outpaces what the budget sustains: waiting only for that
        # room let connect after connect go, each a little later, until the room too came past the
        # cap and the plans went at a spent budget (a listener at 1,024 flows: 1,024, 852, ..., 196,
        # then 1 flow, bench/results/reliability.md session 15). Waiting the whole cap refills the
        # bucket and slows the run down (simulated, 20 × 300 connects of 44-250 flows 1 s apart at a
        # 10 s cap: 33 -> 4 left with under a quarter of their flows, mean wait 3.76 -> 3.80 s)
        fallback = cap
    if fallback:
        return fallback
    # Room for neither comes within the cap: wait for the last of our entries that go within it, the
    # most room the cap can buy. Going at once, a listener whose peers' windows took 44-448 flows,
    # ~3 s apart, planned at 1 flow where 10 s would have freed hundreds (the arbitrary pool over
    # wan50, bench/results/reliability.md session 16); simulated (tests/proto/test_flow_budget.py),
    # 76 -> 13 of 1,500 such connects with under a quarter of their flows, runs ~5 % longer
    going = [u for u, _ in live if u <= now + cap]
    return max(going) - now if going else 0.0


def _bucket_wait(live: list[tuple[float, int]], size: int, need: int, now: float) -> float:
    """Seconds until a bucket of `size` flows, refilled at `size` per FLOW_LINGER, holds `need` again
    after each burst of `live` (until, flows) still held then took its flows from it when it left
    (FLOW_LINGER before its until). Full before the first of them, and a burst's flows count only
    while the NATs hold them: a debt does not outlive its entries. With `size` half the budget, what
    the bucket lets out within any FLOW_LINGER (its content, and as much again refilled) stays within
    the budget: the table never fills faster than its entries expire."""
    refill = size / FLOW_LINGER
    t = now
    for gone in sorted({u for u, _ in live if u > now}) + [math.inf]:
        held = sorted((u - FLOW_LINGER, f) for u, f in live if u > t)
        if not held:
            return t - now
        tokens, at = float(size), held[0][0]
        for left, flows in held:
            tokens = min(size, tokens + max(0.0, left - at) * refill) - flows
            at = left
        tokens = min(size, tokens + max(0.0, t - at) * refill)
        ready = t + max(0.0, (need - tokens) / refill)
        if ready <= gone:
            return ready - now
        t = gone
    raise AssertionError("unreachable")  # the last segment has no end


def _first_fit(leaving: list[tuple[float, int]], limit: int, need: int, now: float) -> float:
    """The earliest time from `now` at which `need` more flows fit in `limit` beside those of
    `leaving` (time each goes, flows) not yet gone."""
    inside = sorted((t, f) for t, f in leaving if t > now)
    held = sum(f for _, f in inside)
    at = now
    for t, f in inside:
        if held + need <= limit:
            break
        held, at = held - f, t
    return at


def budget_left(budget: int, held: int) -> int:
    """What a side may publish: its budget less what its NATs still hold of ours, at least one flow
    (a strategy of one packet always fits; the odds of the bigger ones then say what is left)."""
    return max(1, min(FLOW_TABLE_CAP, budget - max(0, held)))


__all__ = ["CGN_FLOW_BUDGET", "DEFAULT_FLOW_BUDGET", "FLOW_LINGER", "FLOW_TABLE_CAP", "PACE_CAP", "Burst",
           "FlowLedger", "behind_cgn", "budget_left", "default_flow_budget", "pace"]
