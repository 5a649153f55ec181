"""TCP traversal planning, sans-IO: what a side's TCP mappings say about its NAT, and who does what.

Input is each side's TCP report (TCP Bindings from ONE local port to several server endpoints, in
order, plus the filtering the UDP discovery measured). Output is a TcpPlan: which peer ports to
connect() to, whether to open our own NAT first with a low-TTL SYN, or a reason why it cannot work.

Why TCP is stricter than UDP here: a SYN that reaches a NAT before that NAT has a mapping for it is
dropped or answered with a RST, and a RST (or a retried SYN after one) makes conntrack forget the
flow, so the next attempt gets a NEW port. There is no cheap "burst of many sockets" either. So:
- a side that accepts unsolicited SYNs ("open": no NAT, or an EIM/EIF full cone) is simply connected
  to; its peer may be anything, even random;
- otherwise both mappings must be predictable (EIM, or sequential with a measured step Δ): the
  "first" side sends SYNs with a TTL that dies between the NATs towards the peer's predicted port(s),
  which opens its own NAT for exactly that flow, then both connect() (simultaneous open);
- a random-allocation side facing a cone (EIM with a filter) is met by a TCP birthday attack: the
  random side connect()s from many fresh local ports to the cone's one public port with low-TTL SYNs
  (each opens one random mapping on its NAT and dies short of the cone's NAT), then the cone side
  connect()s from its one shared port to many distinct random ports of the random side's address.
  A guess that names one of the open mappings arrives from exactly the endpoint that flow expects,
  meets a socket in SYN_SENT, and the two finish a simultaneous open. Sized like the UDP birthday
  (planner/odds.birthday_miss), to a higher target: a TCP miss costs a whole new session.
- a random side facing a sequential NAT stays infeasible for TCP: the sequential side's every guess
  leaves from a new port, so it can only meet the random side's connections aimed at that one port;
  K connections give about K/N odds for N possible ports. UDP pays for this with ~235k flows sent from
  a few hundred sockets; TCP needs a socket per flow, and that many do not fit the flow table (nor
  the descriptor limit). Random on both sides is a 1/(N·N) guess per pair of flows. Both say so.

The window (other hosts behind a sequential NAT take ports between our last probe and the punch, so
its next port is last + Δ·(k + s) for an unknown shift s >= 0). Let W be the window:
- facing a cone peer, the one flow to its fixed port is enough on our side; the peer covers our shift
  by aiming at W of our candidate ports (its cone NAT gives all of them one public port);
- a cone first side opens its NAT with low-TTL SYNs towards W candidates of a sequential peer, whose
  single connect() lands on one of them;
- both sequential: the first side's k-th low-TTL SYN goes to the peer's candidate k (k = 1..2W-1) and
  gets our port index k + s_first; the second side's j-th connect() leaves from its index j + s_second,
  i.e. towards our flow k = j + s_second, whose port has index j + s_second + s_first. Not knowing the
  sum, the j-th connect() bets on sum = j-1 and aims at our index 2j-1: W connects cover sums 0..W-1.
  The second side must fire its connects in this order (its NAT numbers them in order).
W is sized like the UDP planner's window (proto/predict.py, Klinec & Matyáš): each sequential side's
shift has a negative-binomial pmf fitted on its own TCP samples (foreign flows seen between them, over
the seconds they span, under a Gamma prior on the rate), for the horizon from its last sample to the
punch. Both schemes above cover the TOTAL shift 0..W-1 (a cone side's shift is 0), so W is the
WINDOW_TARGET quantile of the convolution of the two pmfs, and the plan's odds are P(total <= W-1),
times how sure each sequential side's Δ is (tcp_mapping.classify: discovery's doubt, when a side's
whole NatReport is planned on; a window on a wrong grid is counted as a miss).
The sizing reads only the two reports, in (first, second) order, so both sides derive the same W.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ...errors import PlanError
from ..report import MAX_WINDOW, PORT_RANGE, NatReport, TcpReport
from ..vocab import Mapping, TcpStrategy
from .horizon import published_rtt
from .lan import lan_targets
from .odds import FLOW_TABLE_CAP, birthday_miss, probes_for
from .tcp_mapping import TcpMapping, as_cone, classify

# MAX_WINDOW (proto/report.py, part of the schema): the first side opens 2W-1 flows, one socket
# each, so 511 descriptors stay under the common 1024 limit.
DEFAULT_WINDOW = 8
# The coverage the window is sized for: a TCP miss costs a whole new session and SYNs are cheap, so
# the same 1e-5 as the birthday (a quiet pair of sequential NATs takes W ~ 190 for a 1 s horizon).
WINDOW_TARGET = 0.99999
# The TCP birthday: the random side's low-TTL connects (one fresh local port and one descriptor
# each), sized so that the cone side's guesses stay about as many; the odds it aims for (a miss costs
# a new session, SYNs are cheap: 1e-5 takes ~750 guesses against 1024 open mappings of 64512).
# A ladder's first rung, when it leans on the UDP filtering word (see ladder()): direct and
# address-open finish in a round trip or two, or a SYN retransmission (1 s) when one is lost.
FIRST_RUNG = 3.0  # at most, and when a round trip is unknown (first_rung_slot)
SYN_RTO = 1.0  # Linux's (RFC 6298's) first SYN retransmission timeout: a lost SYN costs this
RUNG_SLACK = 0.2
RUNG_GAP = 0.3  # the first rung's sockets are gone on both sides before the next one starts


def first_rung_slot(first_rtt: Any, second_rtt: Any) -> float:
    """The first rung's slot from the round trips both peers published (the same on both sides):
    one SYN retransmission and twice their sum (a bound on the peers' own round trip), within
    FIRST_RUNG. A rung that works finishes in one of those round trips, or after the retransmission
    of a lost SYN; at zero delay a UDP-only cone's TCP filter cost 3.4 s before the strict rung."""
    r1, r2 = published_rtt(first_rtt), published_rtt(second_rtt)
    if r1 is None or r2 is None:
        return FIRST_RUNG
    return min(FIRST_RUNG, SYN_RTO + 2.0 * (r1 + r2) + RUNG_SLACK)
BIRTHDAY_SOCKETS = 1024
BIRTHDAY_TARGET = 0.99999
MAX_BIRTHDAY_PROBES = 8192


@dataclass(frozen=True)
class TcpPlan:
    strategy: TcpStrategy
    feasible: bool
    reason: str
    role: str
    targets: tuple[tuple[str, int], ...] = ()  # peer endpoints to connect() to, in this order
    low_ttl: bool = False  # send the low-TTL opening SYNs to `targets` first
    mine: TcpMapping | None = None
    peer: TcpMapping | None = None
    params: dict[str, Any] = field(default_factory=dict)
    odds: float = 0.0  # the chance the plan connects, as far as the reports let us judge
    sockets: int = 0  # birthday, random side: low-TTL connects, each from a fresh local port
    random_probes: int = 0  # birthday, cone side: distinct random ports of peer_range to connect() to
    peer_range: tuple[int, int] = PORT_RANGE
    # the peer's LAN listeners to connect() to, racing the strategy (proto/planner/lan.py); when set,
    # this side accepts on its own LAN listener too
    lan: tuple[tuple[str, int], ...] = ()
    floor: bool = False  # `odds` is a lower bound (a ladder's: see stated())

    @property
    def accept(self) -> bool:
        """Whether this side waits for the peer's connect() on a listening socket."""
        if self.strategy is TcpStrategy.ADDRESS_OPEN:
            return self.low_ttl  # the opener: its filter now admits any port of the peer's address
        return self.strategy is TcpStrategy.DIRECT and not self.targets

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy.value, "feasible": self.feasible, "reason": self.reason,
                "role": self.role, "targets": [list(t) for t in self.targets], "low_ttl": self.low_ttl,
                "accept": self.accept, "odds": self.odds, "odds_floor": self.floor or bool(self.lan),
                "sockets": self.sockets,
                "random_probes": self.random_probes, "lan": [list(t) for t in self.lan],
                "mine": self.mine.describe() if self.mine else None,
                "peer": self.peer.describe() if self.peer else None}


def agreed_window(mine_report: TcpReport, peer_report: TcpReport) -> int:
    """The window both sides use: the larger of the two published ones (clamped), so the two plans
    still mirror each other when the users chose different windows."""
    def one(r: TcpReport) -> int:
        return DEFAULT_WINDOW if r.window is None else min(max(r.window, 1), MAX_WINDOW)
    return max(one(mine_report), one(peer_report))


def _targets(mine: TcpMapping, peer: TcpMapping, role: str, window: int) -> list[int]:
    """The peer ports this side aims at, in firing order (see the module docstring)."""
    if not peer.sequential:
        return [peer.last_port]
    if role == "first":
        # the second side's j-th connect leaves from its index j + s (per flow, APDM) only when it
        # fires W of them (we are sequential too); an ADM second side uses one index, 1 + s
        per_flow = mine.sequential and not peer.per_address
        return _aimed(peer, range(1, (2 * window - 1 if per_flow else window) + 1), twins=not mine.sequential)
    # our flows to the first side: its matching flow has index (our index) + its shift when it is
    # APDM, so the sum is bet on (stride 2); an ADM first side has ONE port, 1 + its shift (stride 1)
    both = mine.sequential and not mine.per_address and not peer.per_address
    return _aimed(peer, [2 * j - 1 if both else j for j in range(1, window + 1)], twins=not mine.sequential)


def _aimed(m: TcpMapping, ks: Iterable[int], twins: bool = True) -> list[int]:
    """m's ports for its k-th new flows, each k of `ks` in order; then, where a window wraps at the
    top of m's block, the wrapped ports' twins past that top (the top its side saw may be below the
    NAT's: proto/port_block.py) and the ports under its bottom (which may be lower than its side
    saw: TcpMapping.under). They come last, so the window's own connects keep their indices,
    and the odds stay the block's. Only from a side whose own port is fixed (`twins`): where both
    count, a connect meets the peer's only at the index the window pairs it with, and a twin,
    fired after the window, is at another index."""
    ks = list(ks)
    ports = [m.predict(k) for k in ks]
    aimed = set(ports)
    extra = [*(m.twin(k) for k in ks), *m.under(ks)] if twins else ()
    return ports + list(dict.fromkeys(t for t in extra if t is not None and t not in aimed))


def shift_cdf(first: TcpMapping, second: TcpMapping) -> list[float]:
    """P(total shift <= w) for w = 0..MAX_WINDOW-1: the convolution of the two sides' shift pmfs,
    summed in (first, second) order so that both sides get the same floats."""
    a, b = first.shift_pmf(), second.shift_pmf()
    out, total = [], 0.0
    for w in range(min(MAX_WINDOW, len(a) + len(b) - 1)):
        total += sum(a[i] * b[w - i] for i in range(max(0, w - len(b) + 1), min(w, len(a) - 1) + 1))
        out.append(min(total, 1.0))
    return out


def size_window(first: TcpMapping, second: TcpMapping, floor: int = DEFAULT_WINDOW,
                target: float | None = WINDOW_TARGET) -> tuple[int, float]:
    """(W, odds): the smallest W >= floor whose window covers the total shift with `target`
    probability (capped at MAX_WINDOW), and that probability. target=None keeps W = floor."""
    cdf = shift_cdf(first, second)
    window = floor
    if target is not None and cdf[min(floor, len(cdf)) - 1] < target:
        window = next((w + 1 for w, c in enumerate(cdf) if c >= target), MAX_WINDOW)
    window = min(window, MAX_WINDOW)
    return window, cdf[min(window, len(cdf)) - 1]


def plan(mine_report: TcpReport | NatReport, peer_report: TcpReport | NatReport, role: str, *,
         window: int = DEFAULT_WINDOW, target: float | None = WINDOW_TARGET, peer_ip: str | None = None,
         own_ip: str | None = None, peer_udp: Sequence[str] = ()) -> TcpPlan:
    """The TCP plan for this side. The peer computes the mirror image from the same two reports, so
    both agree on who connects and on the ports without talking again. `window` is the smallest W
    (the users' choice, see agreed_window); the shift model may widen it to reach `target`.
    `peer_ip`: where the rendezvous server saw the peer; every connect() goes there, never to an
    address the peer's report names (see planner/udp.py's plan()), unless the server saw the peer's
    punch socket (UDP, `peer_udp`) on that address too. `own_ip`: where the server saw
    us; inside the same network (proto/planner/lan.py) the plan's `lan` names the peer's LAN
    listeners, whatever the strategy (even an infeasible one). A side's whole NatReport (its `tcp`
    part planned on) also weighs the doubt discovery left about its Δ (classify()); a bare TcpReport
    leaves it unweighed, and the plan's reason says so."""
    if role not in ("first", "second"):
        raise PlanError(f"role must be 'first' or 'second', got {role!r}")
    if not 1 <= window <= MAX_WINDOW:
        raise PlanError(f"window must be 1..{MAX_WINDOW}")
    if target is not None and not 0 < target < 1:
        raise PlanError(f"target must be in (0, 1), got {target!r}")
    (mine_tcp, mine), (peer_tcp, peer) = _classified(mine_report), _classified(peer_report)
    lan = lan_targets(own_ip, mine_tcp.host, peer_ip, peer_tcp.host)
    return replace(_planned(mine, peer, role, window, target, _aimable(peer_ip, peer_udp)), lan=lan)


def _classified(report: TcpReport | NatReport) -> tuple[TcpReport, TcpMapping]:
    """A side's TCP report and what it says, with discovery's Δ evidence when the whole report came."""
    if isinstance(report, TcpReport):
        return report, classify(report)
    if report.tcp is None:
        raise PlanError("the report has no TCP part")
    return report.tcp, classify(report.tcp, report)


def _aimable(peer_ip: str | None, peer_udp: Sequence[str]) -> tuple[str, ...]:
    """The peer's addresses the server observed: its TCP connection's (the fallback) first."""
    return () if peer_ip is None else (peer_ip, *(ip for ip in peer_udp if ip != peer_ip))


def _planned(mine: TcpMapping, peer: TcpMapping, role: str, window: int, target: float | None,
             peer_ips: tuple[str, ...]) -> TcpPlan:
    if not peer_ips or peer.public_ip in peer_ips:
        return _plan_pair(mine, peer, role, window, target)
    reported, peer = peer.public_ip, replace(peer, public_ip=str(ipaddress.ip_address(peer_ips[0])))
    p = _plan_pair(mine, peer, role, window, target)
    return replace(p, params={**p.params, "reported_peer_ip": reported})


@dataclass(frozen=True)
class Rung:
    """One plan of a ladder, and its time slot counted from the agreed start."""

    plan: TcpPlan
    start: float
    budget: float


def ladder(mine_report: TcpReport | NatReport, peer_report: TcpReport | NatReport, role: str, *,
           window: int = DEFAULT_WINDOW,
           target: float | None = WINDOW_TARGET, peer_ip: str | None = None,
           timeout: float = 10.0, own_ip: str | None = None, peer_udp: Sequence[str] = (),
           first_rung: float = FIRST_RUNG) -> list[Rung]:
    """The plans to try in turn within `timeout` seconds, each in a slot both sides derive alike.

    No STUN test measures TCP filtering: the reports carry what the UDP tests measured, and a
    router's "full cone" setting often covers UDP only, TCP staying address-and-port-dependent. So a
    plan that leans on that word (connect straight to an EIF side, or let an ADF side open its filter
    to an address) is only the first rung, with a short slot; the plan that assumes the strictest TCP
    filtering follows, on the sequential NATs' ports as the first rung leaves them (its connects took
    ports there) and with its later start in their horizons. Inside one network (`own_ip`, see
    plan()) the first rung also connects to the peer's LAN listeners. `first_rung`: the first
    rung's slot (first_rung_slot(): from the published round trips), at most a third of the time."""
    if not 0 < timeout <= 3600:
        raise PlanError(f"timeout must be in (0, 3600], got {timeout!r}")
    (mine_tcp, mine), (peer_tcp, peer) = _classified(mine_report), _classified(peer_report)
    aim = _aimable(peer_ip, peer_udp)
    first = replace(_planned(mine, peer, role, window, target, aim),
                    lan=lan_targets(own_ip, mine_tcp.host, peer_ip, peer_tcp.host))
    strict_mine, strict_peer = replace(mine, filtering=None), replace(peer, filtering=None)
    if not first.feasible or (strict_mine, strict_peer) == (mine, peer):
        return [Rung(first, 0.0, timeout)]
    strict = _planned(strict_mine, strict_peer, role, window, target, aim)
    if not strict.feasible or strict.strategy is first.strategy:
        return [Rung(first, 0.0, timeout)]
    slot = min(first_rung, timeout / 3)
    later = slot + RUNG_GAP
    other = "second" if role == "first" else "first"
    peer_flows = len(_planned(peer, mine, other, window, target, ()).targets)
    strict = _planned(_moved_on(strict_mine, strict_peer, len(first.targets), later),
                      _moved_on(strict_peer, strict_mine, peer_flows, later), role, window, target, aim)
    return [Rung(first, 0.0, slot), Rung(strict, later, timeout - later)]


def stated(rungs: Sequence[Rung]) -> TcpPlan:
    """The plan a ladder states: its first rung's, with the odds of the whole ladder. A second rung
    follows a first that leans on the UDP filtering word, which may or may not hold for TCP (the
    lab's UDP-only cones: it never does); so the ladder connects at least as often as its strict
    rung alone, and more where the word holds: the strict rung's odds, as a floor. Stating the first
    rung's (100% for an address to open) promised what a UDP-only cone never keeps."""
    first = rungs[0].plan
    if len(rungs) == 1:
        return first
    return replace(first, odds=rungs[-1].plan.odds, floor=True)


def _moved_on(m: TcpMapping, other: TcpMapping, flows: int, seconds: float) -> TcpMapping:
    """`m` after its side's `flows` connects of the first rung and `seconds` more. A per-flow
    sequential NAT gave each of them the next port, and the next rung's connects (to new predicted
    ports of the other side) come after them; but connects to an `other` side whose port is fixed
    go to the same endpoint as before, whose mapping the NAT still holds (an ADM NAT likewise keeps
    the one port it gave the other's address)."""
    if m.sequential and not m.per_address and flows and other.mapping not in (Mapping.NONE, Mapping.EIM):
        m = replace(m, last_port=m.predict(flows))
    return replace(m, horizon=m.horizon + seconds)


def _plan_pair(mine: TcpMapping, peer: TcpMapping, role: str, window: int, target: float | None) -> TcpPlan:
    pair = f"this side: {mine.describe()}; peer: {peer.describe()}"
    if peer.reachable and (not mine.reachable or role == "second"):
        return TcpPlan(TcpStrategy.DIRECT, True, f"the peer accepts unsolicited SYNs: connect to it ({pair})",
                       role, ((peer.public_ip, peer.last_port),), False, mine, peer, odds=1.0)
    if mine.reachable:
        return TcpPlan(TcpStrategy.DIRECT, True, f"this side accepts unsolicited SYNs: the peer connects ({pair})",
                       role, (), False, mine, peer, odds=1.0)
    first, second = (mine, peer) if role == "first" else (peer, mine)
    opener = _address_opener(first, second)
    if opener is not None:
        return _address_open_plan(mine, peer, role, opener is mine, window, target, pair)
    if mine.random or peer.random:
        return _random_plan(mine, peer, role, pair)
    if mine.sequential and peer.sequential:
        # both count: the windows go on past a block's top where a side's counter is at it, as
        # the UDP planner's do (planner/udp.py's plan)
        mine, peer = _on_past_top(mine), _on_past_top(peer)
        first, second = (mine, peer) if role == "first" else (peer, mine)
    window, covered = size_window(first, second, window, target)
    odds = covered * first.delta_confidence * second.delta_confidence  # a wrong grid counts as a miss
    targets = tuple((peer.public_ip, port) for port in _targets(mine, peer, role, window))
    other = "second" if role == "first" else "first"
    own = _targets(peer, mine, other, window)  # what the peer aims at: our candidate ports
    return TcpPlan(TcpStrategy.SIMULTANEOUS, True,
                   f"both TCP mappings are predictable: low-TTL SYN from the first side, then simultaneous "
                   f"open; {_window_words(first, second, window, covered, odds)} ({pair})", role, targets,
                   role == "first", mine, peer,
                   {"window": window, "own_predicted": own, "target": target,
                    "horizon": [first.horizon, second.horizon]}, odds=odds)


def _on_past_top(m: TcpMapping) -> TcpMapping:
    return replace(m, port_range=PORT_RANGE) if m.at_block_top else m


def _address_opener(first: TcpMapping, second: TcpMapping) -> TcpMapping | None:
    """The side whose address-dependent filter (ADF) can be opened to the peer's whole address,
    provided its own port for that address can be named (EIM, or sequential within a window):
    a fixed port first (no window), then the rendezvous' first."""
    able = [m for m in (first, second)
            if m.filtering is not None and m.filtering.by_address and (m.cone or m.sequential)]
    able.sort(key=lambda m: not m.cone)  # stable: ties keep the first side first
    return able[0] if able else None


def _address_open_plan(mine: TcpMapping, peer: TcpMapping, role: str, opening: bool, window: int,
                       target: float | None, pair: str) -> TcpPlan:
    """The opener sends ONE low-TTL SYN from the shared port to the peer's address (creating its
    mapping for that address and opening its filter to every port of it) and accepts on its listener;
    the peer connect()s to the opener's port, or to its W candidates when that port is sequential.
    The peer's own ports never matter, so it may even allocate at random: cheaper than any window
    or birthday, hence tried first."""
    opener, other = (mine, peer) if opening else (peer, mine)
    window, covered = size_window(opener, as_cone(other), window, target)
    odds = covered * opener.delta_confidence
    ports = [opener.last_port] if opener.cone else _aimed(opener, range(1, window + 1))
    words = ("its one port" if opener.cone else _window_words(opener, as_cone(other), window, covered, odds))
    who = "this side" if opening else "the peer"
    reason = (f"{who} filters by address only (ADF): one low-TTL SYN to the other's address opens it to "
              f"every port of that address, then the other side connect()s to {words} and is accepted "
              f"({pair})")
    params = {"window": window if opener.sequential else 1, "target": target}
    if opening:
        return TcpPlan(TcpStrategy.ADDRESS_OPEN, True, reason, role, ((peer.public_ip, peer.last_port),), True,
                       mine, peer, {**params, "own_predicted": ports}, odds=odds)
    return TcpPlan(TcpStrategy.ADDRESS_OPEN, True, reason, role, tuple((peer.public_ip, p) for p in ports),
                   False, mine, peer, params, odds=odds)


def _window_words(first: TcpMapping, second: TcpMapping, window: int, covered: float, odds: float) -> str:
    """`covered`: what the window holds of the shift; `odds`: that, weighed by how sure each Δ is."""
    seq = [m for m in (first, second) if m.sequential]
    if not seq:
        return "both ports are fixed, no window needed: odds 100%"
    whose = "the total shift of both sequential NATs" if len(seq) == 2 else "the sequential NAT's shift"
    seen = " and ".join(f"{m.extra} foreign flow(s) in {m.exposure:.3g} s, {m.horizon:.3g} s to the punch"
                        for m in seq)
    capped = f" (capped at {MAX_WINDOW})" if window == MAX_WINDOW and covered < WINDOW_TARGET else ""
    # a step of 1 has no smaller grid it could be on
    grid = "".join(f"; Δ {m.delta:+d} {m.delta_confidence:.5%} sure (discovery's gaps)" if m.delta_doubt is not None
                   else f"; Δ {m.delta:+d}'s doubt not weighed (no discovery evidence for it)"
                   for m in seq if abs(m.delta) > 1)
    return (f"window {window}{capped} covers {whose} of 0..{window - 1} foreign flows ({seen})"
            f"{grid}: odds {odds:.5%}")


def birthday_size(span: int, sockets: int = BIRTHDAY_SOCKETS, target: float = BIRTHDAY_TARGET,
                  cap: int = MAX_BIRTHDAY_PROBES) -> tuple[int, int, float]:
    """(random side's connects, cone side's guesses, odds) for a random NAT drawing from `span` ports."""
    sockets = max(1, min(sockets, span // 2))  # a small port block holds fewer mappings
    probes = probes_for(span, sockets, target, max(1, min(cap, span - sockets)))
    return sockets, probes, 1 - birthday_miss(span, sockets, probes)


def _random_plan(mine: TcpMapping, peer: TcpMapping, role: str, pair: str) -> TcpPlan:
    """A random-allocation side: the birthday attack against a cone, else a reason with numbers."""
    rnd, other = (mine, peer) if mine.random else (peer, mine)
    who = "this side" if rnd is mine else "the peer"
    if other.cone:
        sockets, probes, odds = birthday_size(rnd.span)
        reason = (f"TCP birthday: {who} allocates TCP ports at random and the other side keeps one TCP port "
                  f"for every destination (EIM), so the random side connect()s from {sockets} fresh ports "
                  f"to that port with low-TTL SYNs and the cone side connect()s to {probes} random ports "
                  f"of its {rnd.span}; odds 1 - C(N-{sockets},{probes})/C(N,{probes}) = {odds:.5%} ({pair})")
        params = {"sockets": sockets, "probes": probes, "span": rnd.span}
        if rnd is mine:
            return TcpPlan(TcpStrategy.BIRTHDAY, True, reason, role, ((peer.public_ip, peer.last_port),), True,
                           mine, peer, params, odds=odds, sockets=sockets)
        return TcpPlan(TcpStrategy.BIRTHDAY, True, reason, role, (), False, mine, peer, params, odds=odds,
                       random_probes=probes, peer_range=peer.port_range)
    if other.random:
        why = ("both sides allocate TCP ports at random and neither accepts unsolicited SYNs: a SYN meets a "
               "mapping only when each side guesses the other's random port, a 1/(N·N) chance per pair of "
               "connections")
    elif other.per_address:
        # every guess leaves from ONE port, but which one depends on the other hosts' flows: the
        # random side would spread its connects over the window, each candidate getting a share
        window, covered = size_window(other, rnd, DEFAULT_WINDOW)
        share = max(1, BIRTHDAY_SOCKETS // window)
        odds = covered * (1 - birthday_miss(rnd.span, share, MAX_BIRTHDAY_PROBES))
        why = (f"{who} allocates TCP ports at random and the other side's address-dependent NAT gives all its "
               f"SYNs to our address one port, known only within {window} candidates (other hosts' flows "
               f"shift it): {BIRTHDAY_SOCKETS} connects spread over them against {MAX_BIRTHDAY_PROBES} guesses "
               f"would have {odds:.1%} odds, too low to attempt")
    else:
        # each guess of the sequential side meets only the random side's connections aimed at the
        # port that guess leaves from: about K/N for K connections in all, 1 - e^(-K/N) at best
        need = math.ceil(rnd.span * math.log(1 / (1 - 0.999)))
        why = (f"{who} allocates TCP ports at random and the other side's sequential NAT gives each of its "
               f"SYNs a new port, so every guess can meet only the random side's connections aimed at that "
               f"one port: 99.9% odds would take about {need} TCP connections (a socket each), beyond the "
               f"{FLOW_TABLE_CAP}-entry flow table; UDP reaches this pair with a random-sequential burst")
    return TcpPlan(TcpStrategy.NONE, False, f"TCP infeasible: {why}; a relay is needed for TCP ({pair})",
                   role, mine=mine, peer=peer)
