"""Choosing and sizing a punching strategy for a PAIR of NATs, sans-IO.

Feasibility is a property of the pair, not of one NAT (Roverso et al., "NATCracker"): a symmetric
NAT meets a full cone with one packet, a port-restricted cone with a predicted window, another
sequential NAT with two interleaved scans, a random one only by luck. `plan()` takes both behaviour
reports and returns the cheapest strategy that can work, its parameters for both sides, a sentence
saying why (RFC 4787 words) and the odds. Both peers compute the same plan from the same two reports
(the rendezvous role only breaks ties), so neither has to tell the other what it will do.

Vocabulary used below: the side that "opens" sends first with a low TTL, so its packets create
mappings and open its own filter but die before the peer's NAT; the other side then sends with a
normal TTL and its packets are let in. "Consumes" means the NAT gives every new destination a new
port (address-and-port-dependent mapping with sequential allocation), so each probe moves the port.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ...errors import PlanError
from .. import predict as _predict
from ..report import PORT_RANGE, NatReport
from ..predict import Kind
from ..vocab import Filtering, Mapping, Role, Strategy
from .budget import DEFAULT_FLOW_BUDGET, FLOW_LINGER, FLOW_TABLE_CAP
from .odds import (
    birthday_miss,
    fewest,
    noise_pmf,
    opener_targets,
    probes_for,
    random_sequential_odds,
    size_predicted,
    stride,
)
from . import pool as _pool
from .lan import LAN_HEAD_START, LAN_INTERVAL, LAN_ROUNDS, lan_targets
from .side import DEFAULT_HORIZON, DEFAULT_TARGET, Side, at_block_top, side_from_report
from .schedule import RAMP_MAX_PACKETS, gap_after, ramp
from .strategies import STRATEGIES, explain

# New flows one side's burst may create on its own NATs: each side publishes its own (NatReport.flows,
# default DEFAULT_FLOW_BUDGET, smaller behind a carrier-grade NAT, less its recent bursts: budget.py),
# and each side's part is sized by that side's number.
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's connection attempt delay between raced strategies
# The most a window on one fitted grid is sized to cover when it makes up for doubt about the step
# (_above_doubt): two noise pmfs that each end at predict.TAIL reach about this much together.
GRID_REACH = 0.99999
# A predicted window aims at a tenth of the misses the plan's target allows. Its ports are cheap (a
# Δ = 1 window grows from ~12 to ~17 ports going from 99.9 % to 99.99 %), and at 99.9 % a run of
# 4,000 connects expects 4 misses: calibrated, but never shown to connect in >= 99.9 % of trials (a
# Wilson bound that high takes ~3,800 in a row; session 11's lab: 3,997/4,000 at stated ~99.9 %).
# Where a flow budget caps a window, its odds say what it reaches, as before.
WINDOW_MARGIN = 10.0


# --- what one side does -------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One side's half of an attempt.

    sockets: how many sockets send (1 = the STUN socket only; more = extra burst sockets, each
    sending to every target). targets: the peer's ports, best first. random_probes: how many distinct
    random ports of peer_range to probe in addition (the "guessing" side of a birthday burst).
    opens: send first with `ttl` = the low TTL, never with a normal TTL to unverified ports.
    delay: seconds after the agreed start. rounds/interval: resend the same packets (same flows).
    ramp: the gaps after the first rounds, before `interval` takes over (schedule.py: a talker
    resends quickly at first instead of waiting behind the opener).
    """

    peer_ip: str
    targets: tuple[int, ...] = ()
    random_probes: int = 0
    peer_range: tuple[int, int] = PORT_RANGE
    sockets: int = 1
    opens: bool = False
    delay: float = 0.0
    interval: float = 0.2
    rate: float = 0.0  # packets per second for the big bursts, 0 = as fast as possible
    spread: bool = False  # every socket sends its own random_probes (else only the STUN socket)
    ramp: tuple[float, ...] = ()
    # more addresses of the peer that get the same targets: the other addresses of its pool the
    # server saw (pool.py; a NAT that draws each new mapping's address from its pool)
    also: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address this part's targets go to: the peer's, then `also`."""
        return (self.peer_ip, *self.also)

    def gap(self, round_no: int) -> float:
        """Seconds to wait after round `round_no` (0 = the first)."""
        return gap_after(round_no, self.ramp, self.interval)

    @property
    def packets(self) -> int:
        return (self.sockets * len(self.targets) * len(self.addresses)
                + self.random_probes * (self.sockets if self.spread else 1))

    @property
    def flows(self) -> int:
        """New flows this part creates on its own NAT (every distinct 5-tuple is one)."""
        return self.packets


@dataclass(frozen=True)
class Attempt:
    strategy: Strategy
    local: Part
    remote: Part
    odds: float
    delay: float = 0.0  # happy-eyeballs start offset relative to the first attempt
    timeout: float = 3.0


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    feasible: bool
    reason: str
    odds: float
    role: str
    local: Side
    remote: Side
    attempts: tuple[Attempt, ...]
    timeout: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> Attempt:
        return self.attempts[0]

    @property
    def odds_floor(self) -> bool:
        """Whether `odds` is only a floor: the LAN attempts race the plan, and nothing measured the
        path between the two hosts, so their chance is not counted (the matrix compares a floor with
        the upper end of the measured interval only)."""
        return any(a.strategy is Strategy.LAN for a in self.attempts)

    def summary(self) -> dict[str, Any]:
        """A JSON/msgpack-safe view for --json output, logs and the demo."""

        def part(p: Part) -> dict[str, Any]:
            return {"peer_ip": p.peer_ip, "also": list(p.also), "opens_low_ttl": p.opens, "sockets": p.sockets,
                    "targets": len(p.targets), "first_targets": list(p.targets[:8]),
                    "random_probes": p.random_probes, "packets": p.packets, "delay": p.delay,
                    "ramp": list(p.ramp)}

        def side(x: Side) -> dict[str, Any]:
            pr = x.prediction
            return {"behaviour": x.describe(), "public": [x.ip, x.port], "kind": pr.kind.value,
                    "delta": pr.model.delta, "rate": round(pr.model.rate, 3),
                    "window": len(pr.ports), "covered": round(pr.covered, 6),
                    "next_port": pr.next_port, "flow_budget": x.budget}

        return {"strategy": self.strategy.value, "feasible": self.feasible, "odds": self.odds,
                "odds_floor": self.odds_floor, "reason": self.reason, "role": self.role, "timeout": self.timeout,
                "local": side(self.local), "remote": side(self.remote),
                "attempts": [{"strategy": a.strategy.value, "delay": a.delay, "odds": a.odds,
                              "local": part(a.local), "remote": part(a.remote)} for a in self.attempts]}

    def failure_message(self) -> str:
        lan = self.params.get("lan_targets")
        aimed = self.params.get("address_pool_aimed", {})
        return (f"no path: local NAT is {self.local.describe()}; remote NAT is {self.remote.describe()}; "
                f"{self.strategy.value} had {self.odds:.2%} odds"
                + (f" {_budgets(self.local, self.remote)}" if STRATEGIES[self.strategy].burst else "")
                + (f"; the peer's LAN address(es) {', '.join(f'{h}:{p}' for h, p in lan)} did not answer"
                   if lan else "")
                + "".join(f"; the {who} punch socket's flows left from {n} public addresses (an address "
                          "pool, RFC 4787 §4.1): " + (f"the plan aimed at the {aimed[who]} the server saw"
                                                      if who in aimed else "a new mapping's address cannot be aimed at")
                          for who, n in self.params.get("address_pool_sizes", {}).items())
                + ("" if self.feasible else "; a relay (TURN) is needed for this pair"))


def plan(local_report: NatReport, remote_report: NatReport, role: str, *, target: float = DEFAULT_TARGET,
         horizon: float = DEFAULT_HORIZON, flow_budget: int | None = None, max_sockets: int = 1024,
         birthday_sockets: int = 256, max_window: int = 4096, best_effort_flows: int = 4096,
         peer_ip: str | None = None, own_ip: str | None = None, peer_udp: Sequence[str] = (),
         own_udp: Sequence[str] = (), horizons: tuple[float, float] | None = None) -> Plan:
    """The cheapest strategy that works for this pair, sized for `target` odds, from `role`'s view.

    role: "first" or "second" (the rendezvous' roles; they only break ties, both peers get the same
    plan mirrored). horizon: seconds from the last STUN sample to the agreed start time; horizons:
    (the first's, the second's) instead, when both are known (proto/planner/horizon.py).
    Each side's part opens at most the flows its own report publishes (`flows`), so both peers
    derive the same sizes from the two reports. flow_budget: one number for BOTH sides instead of
    the reports' (tests and tools that plan for two peers they run themselves).
    peer_ip: where the rendezvous server saw the peer. A report is only the peer's word: aimed at the
    address it names, a made-up report could turn our bursts on a third party, so every packet goes
    to `peer_ip` instead (params["reported_peer_ip"] keeps a differing claim) -- or to an address
    where the server saw the peer's punch socket (`peer_udp`, its observation port: a NAT with an
    address pool may send UDP from another address than the TCP connection's), which is then
    preferred to `peer_ip` when the report names neither.
    own_udp: where the server saw our punch socket. With each side's report (NatReport.pool) they
    say whether a side's NAT took several pool addresses for one socket's flows (RFC 4787 §4.1,
    arbitrary pooling): then no address of its new mappings can be aimed at (see _scattered).
    own_ip: where the rendezvous server saw us. With `peer_ip` it says whether both peers share one
    network (proto/planner/lan.py); then LAN attempts to the peer's host candidates race the planned
    ones (appended after them: `primary` stays the planned strategy).
    """
    if role not in tuple(Role):
        raise PlanError(f"role must be one of {[r.value for r in Role]}, got {role!r}")
    role = Role(role)
    if not 0 < target < 1:
        raise PlanError(f"target must be in (0, 1), got {target!r}")
    if flow_budget is not None and not 1 <= flow_budget <= FLOW_TABLE_CAP:
        raise PlanError(f"flow_budget must be in 1..{FLOW_TABLE_CAP}, got {flow_budget!r}")
    ours = flow_budget or local_report.flows
    theirs = flow_budget or remote_report.flows
    # one side's predicted ports are probed by the OTHER side, which never probes past its own
    # budget: no prediction needs to look further than that
    h_first, h_second = horizons if horizons is not None else (horizon, horizon)
    h_local, h_remote = (h_first, h_second) if role == "first" else (h_second, h_first)
    def side(report: NatReport, h: float, cap: int, budget: int) -> Side:
        x = replace(side_from_report(report, horizon=h, target=target, max_window=min(max_window, cap)),
                    budget=budget)
        if x.sequential and min(max_window, budget) > min(max_window, cap):
            x = replace(x, wide=side_from_report(report, horizon=h, target=target,
                                                 max_window=min(max_window, budget)).prediction)
        return x

    local, remote = side(local_report, h_local, theirs, ours), side(remote_report, h_remote, ours, theirs)
    if local.sequential and remote.sequential:
        # Where both count, the windows pair flows by index and no twin past a block's top can be
        # aimed (a fixed side's window holds them: Prediction.mixture_window). A side whose counter
        # is at the top of its published block may wrap there or go on: the windows go on, as they
        # did before such a block was published (a plan that wrapped a CGN's counter at 24047
        # missed; it went on to 24095, bench/results/reliability.md session 16)
        if at_block_top(local_report):
            local = side(replace(local_report, port_range=PORT_RANGE), h_local, theirs, ours)
        if at_block_top(remote_report):
            remote = side(replace(remote_report, port_range=PORT_RANGE), h_remote, ours, theirs)
    reported = None
    aimable = () if peer_ip is None else (peer_ip, *peer_udp)
    if aimable and remote.ip not in aimable:
        # the punch socket's address (the newest seen) before the TCP connection's
        fallback = peer_udp[-1] if peer_udp else peer_ip
        reported, remote = remote.ip, replace(remote, ip=str(ipaddress.ip_address(fallback)))
    pools = {"local": _addresses(local_report, own_udp), "remote": _addresses(remote_report, peer_udp)}
    local = _pooled(local, local_report, pools["local"][1], own_udp)
    remote = _pooled(remote, remote_report, pools["remote"][1], peer_udp)
    first, second = (local, remote) if role == "first" else (remote, local)
    kw = dict(target=target, max_sockets=max_sockets, birthday_sockets=birthday_sockets,
              max_window=max_window, best_effort_flows=best_effort_flows)
    attempts = _attempts(first, second, **kw)
    guessed = [x for x, r in ((local, local_report), (remote, remote_report)) if _unmeasured(x, r)]
    if guessed:
        # Unknown is not worst: a NAT the tests could not read (one sample, no mapping word: a
        # single-address server, lost replies) is first taken to keep its port, the cheapest case;
        # the plan for the worst case follows once that had its time.
        hopeful = _attempts(_as_fixed(first, guessed), _as_fixed(second, guessed), **kw)
        later = max(a.delay + a.timeout for a in hopeful)
        attempts = hopeful + [replace(a, delay=later + a.delay) for a in attempts
                              if a.strategy not in {h.strategy for h in hopeful}]
    if role == "second":
        attempts = [replace(a, local=a.remote, remote=a.local) for a in attempts]
    best = attempts[0]
    assumed = ("; it assumes that the unmeasured NAT keeps one port per socket, then falls back to "
               + ", ".join(a.strategy.value for a in attempts[1:])) if guessed and len(attempts) > 1 else ""
    # Feasible means "expected to connect": the strategies that guess are so only on their odds at
    # this flow budget (guessing on both sides works only in tiny port ranges, a CGNAT's port block;
    # random-sequential needs far more flows than a home router holds).
    feasible = best.odds >= target if best.strategy is Strategy.BEST_EFFORT else best.odds >= 0.5
    reason = explain(best.strategy, local, remote, best) + assumed
    scattered = {who: seen for who, seen in pools.items() if seen[1] > 1}
    if scattered:
        attempts, best, feasible, why = _scattered(attempts, best, scattered, local, remote, target)
        reason += why
    if best.odds < target and STRATEGIES[best.strategy].burst:
        reason += "; " + _budgets(local, remote)
    lan = _lan_attempts(own_ip, local_report.host, peer_ip, remote_report.host)
    if lan:
        # host candidates first, as ICE's priorities order them: the planned attempts start a little
        # later on both sides alike, so where the LAN works it wins on both, and a NAT that consumes a
        # port per flow sees none of the planned flows
        attempts = [replace(a, delay=a.delay + LAN_HEAD_START) for a in attempts] + lan
    timeout = max(a.delay + a.timeout for a in attempts)
    params = {
        "strategy": best.strategy.value,
        "flow_budget": local.budget,
        "remote_flow_budget": remote.budget,
        "local_packets": best.local.packets,
        "remote_packets": best.remote.packets,
        "local_sockets": best.local.sockets,
        "remote_sockets": best.remote.sockets,
        "local_opens": best.local.opens,
        "local_targets": len(best.local.targets),
        "local_random_probes": best.local.random_probes,
        "remote_random_probes": best.remote.random_probes,
        "local_flows": best.local.flows,
        "remote_flows": best.remote.flows,
        "odds": best.odds,
        "attempts": [a.strategy.value for a in attempts],
        # (the initiator's, the listener's) seconds from the last sample to the punch: the windows' ages
        "horizons": [round(h_first, 3), round(h_second, 3)],
    }
    if reported is not None:
        params["reported_peer_ip"] = reported
    if scattered:
        # per scattered side: the addresses seen by name, and how many its flows showed in all
        params["address_pools"] = {who: list(ips) for who, (ips, _) in scattered.items()}
        params["address_pool_sizes"] = {who: n for who, (_, n) in scattered.items()}
        # per scattered side the best attempt aims at every address of: how many
        aimed = {who: 1 + len(x.aim) for who, x in (("local", local), ("remote", remote))
                 if who in scattered and x.aim and _spreads(best, x)}
        if aimed:
            params["address_pool_aimed"] = aimed
    if lan:
        params["lan_targets"] = [[a.local.peer_ip, a.local.targets[0]] for a in lan if a.local.targets]
    return Plan(best.strategy, feasible, reason, best.odds, role, local, remote, tuple(attempts),
                timeout, params)


def _addresses(report: NatReport, observed: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """The public addresses one side's punch socket showed (its last mapping's and those the server
    observed it on), and how many its flows showed in all: at least as many as the side says its own
    samples showed (NatReport.pool: the peer's word, which can only make its own side harder)."""
    ips = tuple(dict.fromkeys([*([report.public[0]] if report.public else []), *observed]))
    return ips, max(len(ips), report.pool)


def _pooled(side: Side, report: NatReport, distinct: int, observed: Sequence[str]) -> Side:
    """`side` with its pool (pool.py) when its flows showed several addresses: aimed at from the
    newest address the server saw its punch socket on (or the one already chosen, when the server
    saw it there too), and at the other addresses the server saw; never at one the report merely
    names."""
    if distinct <= 1:
        return side
    seen = tuple(dict.fromkeys(str(ipaddress.ip_address(ip)) for ip in observed))
    primary = side.ip if not seen or side.ip in seen else seen[-1]
    return replace(side, ip=primary, aim=tuple(ip for ip in seen if ip != primary),
                   pool=(distinct, max(report.pool_draws or 0, distinct)))


def _spreads(attempt: Attempt, side: Side) -> bool:
    """Whether a part of `attempt` aims at `side` on more than its one address (Side.addresses)."""
    return any(p.also and p.peer_ip == side.ip for p in (attempt.local, attempt.remote))


# the strategies whose builders aim at every address of a scattered side's pool (Side.addresses)
_POOL_AWARE = {Strategy.PREDICTED, Strategy.ADDRESS_OPEN, Strategy.LAN}


def _scattered(attempts: list[Attempt], best: Attempt, scattered: dict[str, tuple[tuple[str, ...], int]],
               local: Side, remote: Side, target: float) -> tuple[list[Attempt], Attempt, bool, str]:
    """The plan for a pair where a side's NAT gave one socket's flows different public addresses: an
    address pool with "arbitrary" pooling (RFC 4787 §4.1) and a mapping per destination, so each new
    flow may leave from any address of the pool and nobody can name the address of the mapping that
    flow makes. What works whatever the address: the scattered side talks first to a peer that is
    reachable unasked (DIRECT), whose answers go back to wherever the packets came from. Next best:
    its ports are predictable and the peer aims at every address of the pool the server saw
    (PREDICTED, ADDRESS_OPEN: their builders spread, and count the chance that the new mapping
    leaves from one of those, pool.py). Everything else aims at the one address the server saw
    last: at best one chance in the pool's size."""
    sides = {"local": local, "remote": remote}
    seen = "; ".join(f"the {who} punch socket's flows left from {n} addresses (seen: {', '.join(ips)})"
                     for who, (ips, n) in scattered.items())
    talkers_ok = all(sides["remote" if who == "local" else "local"].reachable and
                     ("remote" if who == "local" else "local") not in scattered for who in scattered)
    direct = [a for a in attempts if a.strategy is Strategy.DIRECT]
    if talkers_ok and direct:
        return (direct, direct[0], True,
                f"; {seen} (an address pool, RFC 4787 §4.1): only the direct attempt is kept, where "
                "that side talks first and the answers go back to the address its packets came from")

    def lone(a: Attempt) -> Attempt:
        if a.strategy in _POOL_AWARE:
            return a
        return replace(a, odds=a.odds * math.prod(x.reach(1) for x in sides.values()))

    attempts = [lone(a) for a in attempts]
    best = attempts[0]
    feasible = best.odds >= target if best.strategy is Strategy.BEST_EFFORT else best.odds >= 0.5
    spread = [(who, x) for who, x in sides.items() if x.scattered and _spreads(best, x)]
    if spread:
        said = "; ".join(
            f"the {who} side's next mapping leaves from one of the {1 + len(x.aim)} addresses the server "
            f"saw with probability {x.reach(1 + len(x.aim)):.2%} ({_pool.size_words(*x.pool)})"
            for who, x in spread)
        return (attempts, best, feasible,
                f"; {seen}: an address pool with arbitrary pooling and a mapping per destination "
                f"(RFC 4787 §4.1), so a new mapping may leave from any address of it: the ports stay "
                f"predictable and every address the server saw is aimed at; {said} (in the odds, "
                f"{best.odds:.2%})" + ("" if feasible else "; infeasible without a relay"))
    n = max(count for _, count in scattered.values())
    return (attempts, best, feasible,
            f"; but {seen}: an address pool with arbitrary pooling and a mapping per destination "
            f"(RFC 4787 §4.1), so the address of a new mapping cannot be known: the plan assumes it "
            f"leaves from the address the server saw, at most 1 chance in {n} "
            f"(odds {best.odds:.2%})" + ("" if feasible else "; infeasible without a relay"))


def _budgets(local: Side, remote: Side) -> str:
    return (f"at the flow budgets the sides published: local {local.budget}, remote {remote.budget} new flows "
            f"(--max-flows; a side's bursts of the last {FLOW_LINGER:g} s count against its own)")


def _attempts(first: Side, second: Side, **kw: Any) -> list[Attempt]:
    """Every strategy that can work for the pair, cheapest first, as (first's part, second's part).

    The happy-eyeballs race only adds attempts that cost no extra flow on a sequential NAT (they
    would shift its predicted ports under the main attempt).
    """
    out: list[Attempt] = []
    a_fixed, b_fixed = first.fixed, second.fixed

    # DIRECT: one side is reachable unasked; the other just sends to it.
    if first.reachable or second.reachable:
        out.append(_direct(first, second))
    # SIMULTANEOUS: both mappings known; the low-TTL packet goes first so that neither NAT sees an
    # unsolicited packet (which could clash with the mapping it is about to create).
    if a_fixed and b_fixed:
        out.append(_simultaneous(first, second))
    # ADDRESS_OPEN: an EIM side with an address-dependent filter opens it to the peer's whole IP.
    for opener, other, swap in ((first, second, False), (second, first, True)):
        if opener.fixed and opener.filtering is Filtering.ADF and not other.fixed:
            out.append(_maybe_swap(_address_open(opener, other), swap))
            break
    if not out or not (a_fixed and b_fixed):
        # each side's part stays within that side's own budget (Side.budget, from its report)
        if not first.random and not second.random:
            out.append(_predicted(first, second, kw["target"], kw["max_window"], kw["max_sockets"]))
        elif first.random and second.random:
            out.append(_best_effort(first, second, kw["best_effort_flows"]))
        else:
            rnd, other, swap = (first, second, False) if first.random else (second, first, True)
            if other.fixed:
                # a birthday aims past the target as a window does (WINDOW_MARGIN): a third more
                # probes for a tenth of the misses, where both budgets hold them; where they do not,
                # both budgets whole. A budget is already the share of its NAT's table a side may
                # spend (a quarter of a CGN subscriber's common 2048); behind a CGN the last tenth
                # of it (1024 x 512 against 939 x 470) cuts the misses from 0.10 % to 0.03 %.
                aimed = _birthday(rnd, other, 1.0 - (1.0 - kw["target"]) / WINDOW_MARGIN,
                                  kw["birthday_sockets"], kw["max_sockets"])
                out.append(_maybe_swap(aimed, swap))
            else:
                out.append(_maybe_swap(_random_sequential(rnd, other, kw["target"], kw["max_sockets"]), swap))
    out.sort(key=lambda a: (STRATEGIES[a.strategy].cost, a.local.packets + a.remote.packets))
    # Later attempts race only when they are cheap and cost no extra flow on a NAT that consumes a
    # port per flow (it would shift the ports the main attempt predicted).
    consuming = first.consumes or second.consumes
    raced: list[Attempt] = []
    for a in out:
        if raced and (consuming or STRATEGIES[a.strategy].burst
                      or any(r.strategy is a.strategy for r in raced)):
            continue
        raced.append(replace(a, delay=HAPPY_EYEBALLS_DELAY * len(raced)))
    return raced


def _unmeasured(side: Side, report: NatReport) -> bool:
    """Nothing tells how this NAT maps: no mapping word and too few samples to see a step."""
    return report.mapping is None and side.kind is Kind.UNKNOWN


def _as_fixed(side: Side, guessed: list[Side]) -> Side:
    if not any(side is g for g in guessed):
        return side
    return replace(side, mapping=Mapping.EIM, prediction=replace(side.prediction, kind=Kind.FIXED))


def _lan_attempts(own_ip: str | None, own_hosts: tuple, peer_ip: str | None,
                  peer_hosts: tuple) -> list[Attempt]:
    """One attempt per host candidate, from this side's view, paired by index with the peer's own
    list so that the peer's plan holds the mirror image (a side with fewer targets idles in the
    extra attempts). Normal TTL from the first moment: these packets stay inside the network, so
    they open no NAT mapping and shift no predicted port."""
    ours = lan_targets(own_ip, own_hosts, peer_ip, peer_hosts)
    theirs = lan_targets(peer_ip, peer_hosts, own_ip, own_hosts)

    def part(targets: tuple, k: int) -> Part:
        if k >= len(targets):
            return Part(targets[0][0], ())  # nothing to send
        return Part(targets[k][0], (targets[k][1],), interval=LAN_INTERVAL)

    if not ours:
        return []
    # the odds are not counted: nothing measured the path between the two candidates
    return [Attempt(Strategy.LAN, part(ours, k), part(theirs, k), odds=0.0,
                    timeout=LAN_ROUNDS * LAN_INTERVAL)
            for k in range(max(len(ours), len(theirs)))]


def _maybe_swap(a: Attempt, swap: bool) -> Attempt:
    return replace(a, local=a.remote, remote=a.local) if swap else a


def _direct(first: Side, second: Side) -> Attempt:
    # The reachable side only answers (its first packets go out low-TTL so that a filtering peer NAT
    # never sees them unasked); the other side's normal packet gets in and creates the return path.
    reach_first = first.reachable
    quiet = Part(second.ip, (second.port,), opens=True, interval=0.1)
    talker = _talker(first.ip, (first.port,), interval=0.1)
    if reach_first:
        return Attempt(Strategy.DIRECT, quiet, talker, odds=1.0, timeout=2.0)
    return Attempt(Strategy.DIRECT,
                   _talker(second.ip, (second.port,), interval=0.1),
                   Part(first.ip, (first.port,), opens=True, interval=0.1),
                   odds=1.0, timeout=2.0)


def _talker(peer_ip: str, targets: tuple[int, ...], *, interval: float, big_delay: float = 0.02) -> Part:
    """The side that sends at the normal TTL, after the opener's low-TTL packet (schedule.py): it
    starts at the agreed moment and resends quickly at first. A part of many packets a round keeps
    the old head start `big_delay` and one round per interval instead (its round alone takes a
    while to leave; resending it quickly would multiply the burst)."""
    if len(targets) > RAMP_MAX_PACKETS:
        return Part(peer_ip, targets, opens=False, delay=big_delay, interval=interval)
    return Part(peer_ip, targets, opens=False, interval=interval, ramp=ramp(interval))


def _simultaneous(first: Side, second: Side) -> Attempt:
    return Attempt(Strategy.SIMULTANEOUS,
                   Part(second.ip, (second.port,), opens=True, interval=0.1),
                   _talker(first.ip, (first.port,), interval=0.1),
                   odds=1.0, timeout=2.0)


def _address_open(opener: Side, other: Side) -> Attempt:
    # One low-TTL packet to any port of the peer's IP opens an ADF filter for every port of it; the
    # peer then sends from its STUN socket, whatever port its NAT picks (and whatever address of
    # its pool: one packet to each the server saw).
    ips = other.addresses(opener)
    return Attempt(Strategy.ADDRESS_OPEN,
                   Part(other.ip, (other.next_port(0),), opens=True, interval=0.1, also=ips[1:]),
                   _talker(opener.ip, (opener.port,), interval=0.1),
                   odds=other.reach(len(ips)), timeout=2.0)


def _predicted(first: Side, second: Side, target: float, max_window: int, max_sockets: int = 1024) -> Attempt:
    asked = target
    # the windows aim at a tenth of the misses the plan's target allows (WINDOW_MARGIN)
    target = 1.0 - (1.0 - target) / WINDOW_MARGIN
    choices = []
    # a single-flow window is the same whichever side opens (the fixed side's budget over the
    # sequential side's addresses, the same reach): ranked once, for both orientations
    windows: dict[tuple[int, float], tuple[tuple[int, ...], float]] = {}
    for opener, other, swap in ((first, second, False), (second, first, True)):
        # each probe of a window is a flow on the prober's own NAT, once per address it aims at (a
        # scattered peer's pool: Side.addresses), so a window is at most the budget over those
        at_other, at_opener = other.addresses(opener), opener.addresses(other)
        cap_open = max(1, min(max_window, opener.budget // len(at_other)))
        cap_other = max(1, min(max_window, other.budget // len(at_opener)))
        # they meet only where a scattered side's new mapping leaves from an address aimed at
        reach = other.reach(len(at_other)) * opener.reach(len(at_opener))
        seq = _single_flow(opener, other)
        if seq is not None:
            # One side keeps its port; the other's one flow towards it takes one port, which the
            # fixed side's window must hold: its likeliest places over every step the NAT may
            # have (Prediction.mixture_window), not only the fitted Δ's grid.
            cap = cap_other if seq is opener else cap_open
            if (cap, reach) not in windows:
                windows[cap, reach] = seq.prediction.mixture_window(_above_doubt(target, reach), cap)
            window, odds = windows[cap, reach]
            odds *= reach
            open_targets = window if seq is other else (other.port,)
            other_targets = window if seq is opener else (opener.port,)
        else:
            # the windows are sized as if each Δ were right; they are on the wrong grid when it is
            # not (a lower bound: a misread grid may still meet now and then), so they aim that much
            # higher where a grid can reach it, as for an address of a pool not aimed at
            sure = opener.delta_confidence * other.delta_confidence * reach
            n_open, n_other, odds = size_predicted(opener, other, _above_doubt(target, sure), cap_open, cap_other)
            odds *= sure
            m = stride(opener, other)
            open_targets = tuple(_predict.ranked_ports(opener_targets(opener, other, n_open)))
            other_targets = ((opener.port,) if opener.fixed
                             else tuple(_predict.ranked_ports(opener.next_port(m * j) for j in range(n_other))))
        a = Attempt(Strategy.PREDICTED,
                    Part(other.ip, open_targets, opens=True, interval=0.25, also=at_other[1:]),
                    replace(_talker(opener.ip, other_targets, interval=0.25, big_delay=0.05), also=at_opener[1:]),
                    odds=odds, timeout=3.0)
        if seq is opener and odds < asked:
            # the window the fixed side's budget allows falls short of the plan's target
            spread = _spread(opener, other, target, reach, cap_other, max_sockets)
            if spread is not None and spread.odds > odds:
                a = spread
        # Cheaper first; then the plan that sends fewer packets to unopened ports (the opener's
        # window should be the big one); then the rendezvous' "first" opens.
        unsolicited = len(a.remote.targets) * len(a.remote.addresses) - 1
        choices.append(((-round(a.odds, 6), a.local.packets + a.remote.packets, unsolicited, swap),
                        _maybe_swap(a, swap)))
    choices.sort(key=lambda c: c[0])
    return choices[0][1]


def _spread(seq: Side, fixed: Side, target: float, reach: float, cap: int, max_sockets: int) -> Attempt | None:
    """The sequential side's next flows from n sockets at once, to the fixed side's one port, and
    the fixed side's talk to at most `cap` ports among them (Prediction.spread_steps): the window's width
    moves from the fixed side's flows to the sequential side's. Why: a fixed side whose budget its
    last bursts spent (a listener answering peer after peer, each window aimed at every address of
    an arbitrary pool: 4 flows a port) can afford a window of one or a few ports, stated at 3-55 %
    and lost (bench/results/reliability.md, session 20), while the sequential side's budget is
    mostly free: n sockets of its own and m <= `cap` ports of the fixed side's catch the first of its
    flows after up to m·n - 1 of the others'. None when the sequential side's budget or the
    socket cap allows no spread (one socket is the window plan)."""
    pred = seq.wide or seq.prediction
    most = min(seq.budget, max_sockets)
    if pred.kind is not Kind.SEQUENTIAL or most < 2:
        return None
    goal = _above_doubt(target, reach)

    def targets(n: int) -> int:
        # steps past the noise pmf's end (its 1e-6 tail) catch nothing more
        return max(1, min(cap, -(-len(pred.noise) // n)))

    def odds(n: int) -> float:
        return pred.spread_odds(n, pred.spread_steps(n, targets(n)))

    n = fewest(2, most, lambda k: odds(k) >= goal) if odds(most) >= goal else most
    ports = tuple(dict.fromkeys(seq.next_port(k - 1) for k in pred.spread_steps(n, targets(n))))
    at_fixed, at_seq = fixed.addresses(seq), seq.addresses(fixed)
    return Attempt(Strategy.PREDICTED,
                   Part(fixed.ip, (fixed.port,), sockets=n, opens=True, interval=0.25, also=at_fixed[1:]),
                   replace(_talker(seq.ip, ports, interval=0.25, big_delay=0.05), also=at_seq[1:]),
                   odds=odds(n) * reach, timeout=3.0)


def _above_doubt(target: float, sure: float) -> float:
    """The target a window must reach for `target` overall when what it assumes (the fitted grid,
    the pool's addresses aimed at) holds with probability `sure`; the plain target when that is past
    what a window can cover (the noise pmfs end at a 1e-6 tail): the plan then states what it
    reaches."""
    goal = target / sure if sure > 0 else 1.0
    return goal if goal <= GRID_REACH else target


def _single_flow(opener: Side, other: Side) -> Side | None:
    """The sequential side of a pair whose other side keeps its port, when that side's part is one
    flow (to the fixed port) and the fixed side's is a window on its ports; None otherwise (both
    sequential, or a fixed opener whose address filter one packet to the peer's IP opens)."""
    if opener.fixed and other.sequential and not opener.filtering.by_address:
        return other
    if other.fixed and opener.sequential:
        return opener
    return None


def _birthday(rnd: Side, eim: Side, target: float, sockets: int, max_sockets: int) -> Attempt:
    # The random side opens s mappings towards the EIM side's one endpoint with low-TTL packets; the
    # EIM side then probes p distinct random ports of the random side's IP. The chance that none of
    # the p probes hits one of the s open ports among N is C(N-s, p) / C(N, p). s are flows on the
    # random side's NATs, p on the EIM side's, each within that side's own budget.
    span = rnd.span
    # a small port block (CGNAT) holds fewer mappings; every socket is a descriptor
    cap = max(1, min(rnd.budget, span // 2, max_sockets))

    def probes_at(s: int, share: int | None = None) -> int:
        most = max(1, min(eim.budget, span - s, share if share is not None else eim.budget))
        return probes_for(span, s, target, most)

    def hits(s: int, p: int) -> bool:
        return 1 - birthday_miss(span, s, p) >= target

    # `sockets` first (few sockets are cheap: one process sends them), with the probes they need
    sockets = max(1, min(sockets, cap))
    if not hits(sockets, probes_at(sockets)):
        # The prober's budget cannot take those: s·p ≈ N·ln(1/miss) is split so that both sides
        # spend the same share of their own budgets, and the side whose NATs can hold more (a home
        # router against a carrier-grade NAT's subscriber) takes more. The fewest sockets whose
        # share of probes reaches the target, else everything both budgets allow.
        def share(s: int) -> int:
            return -(-s * eim.budget // min(rnd.budget, cap))

        def enough(s: int) -> bool:
            return hits(s, probes_at(s, share(s)))

        sockets = fewest(sockets, cap, enough) if enough(cap) else cap
    probes = probes_at(sockets)
    odds = 1 - birthday_miss(span, sockets, probes)
    return Attempt(Strategy.BIRTHDAY,
                   Part(eim.ip, (eim.port,), sockets=sockets, opens=True, interval=0.5),
                   # resending the same probes costs no new flow and catches mappings opened late
                   Part(rnd.ip, (), random_probes=probes, peer_range=rnd.port_range, opens=False,
                        delay=0.1, interval=0.25, rate=20000.0),
                   odds=odds, timeout=4.0)


def _random_sequential(rnd: Side, seq: Side, target: float, max_sockets: int) -> Attempt:
    # Every (socket, window slot) pair is a new flow on the random side's NAT, so sockets × window
    # must stay under that side's budget; the sequential side's guesses are flows on its own NAT,
    # within its own.
    budget, guesses = rnd.budget, seq.budget
    need_window = max(1, len(noise_pmf(seq)))
    goal = _above_doubt(target, seq.delta_confidence)  # the window is on the fitted grid
    candidates = sorted({max(1, min(c, rnd.span // 2, budget)) for c in (64, 128, 256, 512, 1024, 2048, 4096)
                         if c <= max_sockets} or {1})
    options: list[tuple[float, int, int, int]] = []  # (odds, sockets, window, probes)
    for s in candidates:
        window = budget // s
        if window < 1:
            continue
        if seq.consumes:
            # the shortest window (= guesses) that reaches the target, else the longest allowed
            window = fewest(1, window, lambda w: random_sequential_odds(rnd, seq, s, w, min(w, guesses)) >= goal)
            probes = min(window, guesses)
        else:
            window = min(window, need_window)
            probes = probes_for(rnd.span, s, goal, max(1, min(guesses, rnd.span - s)))
        options.append((random_sequential_odds(rnd, seq, s, window, probes) * seq.delta_confidence,
                        s, window, probes))
    assert options
    # Odds within 0.2 point of the best count as equal (at the flow cap every split gives about
    # 1 - e^(-budget/N)); then the most sockets win: the shortest window, so the matching slot comes
    # early in the burst and the plan leans least on the predicted Δ and on the NAT's port range.
    top = max(min(o[0], target) for o in options)
    odds, s, window, probes = max((o for o in options if min(o[0], target) >= top - 0.002),
                                  key=lambda o: (o[1], -(o[1] * o[2] + o[3])))
    targets = tuple(seq.next_port(k) for k in range(window))
    return Attempt(Strategy.RANDOM_SEQUENTIAL,
                   Part(seq.ip, targets, sockets=s, opens=True, interval=1.0),
                   # the guesses repeat (same flows) while the random side's burst is still opening
                   # the later window slots
                   Part(rnd.ip, (), random_probes=probes, peer_range=rnd.port_range, opens=False,
                        delay=0.1, interval=0.1, rate=50000.0),
                   # the burst is paced by how fast the random side's NAT creates 235k flows, which a
                   # loaded 2-core machine can stretch past 5 s (seen in the matrix)
                   odds=odds, timeout=10.0)


def _best_effort(first: Side, second: Side, flows: int) -> Attempt:
    # Both sides guess: a hit needs first's flow i to aim at second's random port j AND second's
    # flow j to aim at first's random port i, a 1/(N1·N2) chance per pair of flows, so about
    # F1·F2/(N1·N2) hits are expected. Reaching 99.9% would need F ≈ 2.6·N flows per side, beyond
    # the 262144-entry flow table and antisocial anyway: we try a little (each side within its own
    # budget), then report.
    def guesses(side: Side, peer: Side) -> tuple[int, int]:
        own = max(1, min(flows, side.budget))
        sockets = min(64, own)
        return sockets, max(1, min(own // sockets, peer.span))

    s1, per1 = guesses(first, second)
    s2, per2 = guesses(second, first)
    expected = (s1 * per1) * (s2 * per2) / (first.span * second.span)
    odds = 1 - math.exp(-expected)
    return Attempt(Strategy.BEST_EFFORT,
                   Part(second.ip, (), random_probes=per1, peer_range=second.port_range, sockets=s1,
                        opens=True, interval=1.0, spread=True),
                   Part(first.ip, (), random_probes=per2, peer_range=first.port_range, sockets=s2,
                        opens=False, delay=0.1, interval=1.0, spread=True),
                   odds=odds, timeout=2.0)
