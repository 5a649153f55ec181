"""The odds of the UDP strategies in closed form, and the sizes that reach a target: the birthday
bound (random ports), the probe counts two predicted windows need (`needed`, checked against a
brute-force model of two NATs by `simulate`), the random-sequential odds."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from .budget import FLOW_TABLE_CAP  # noqa: F401  (every probe is a flow; re-exported)
from .side import Side


def birthday_miss(span: int, holes: int, probes: int) -> float:
    """P(none of `probes` distinct random ports out of `span` hits one of `holes` open ports).

    Sampling without replacement: C(span - holes, probes) / C(span, probes)
      = prod_{i < probes} (span - holes - i) / (span - i).
    With replacement this is the familiar (1 - holes/span)^probes, slightly larger.
    """
    if holes <= 0 or probes <= 0:
        return 1.0
    if probes > span - holes:
        return 0.0
    log = (math.lgamma(span - holes + 1) - math.lgamma(span - holes - probes + 1)
           - math.lgamma(span + 1) + math.lgamma(span - probes + 1))
    return math.exp(log)


def fewest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest n in [lo, hi] with ok(n), for an `ok` false up to some n and true from there;
    hi when none below hi is (ok(hi) itself is not asked)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def probes_for(span: int, holes: int, target: float, cap: int) -> int:
    """The fewest distinct probes that hit one of `holes` ports with probability >= target (<= cap)."""
    hi = max(1, min(cap, span - holes + 1))
    if 1 - birthday_miss(span, holes, hi) < target:
        return hi
    return fewest(1, hi, lambda probes: 1 - birthday_miss(span, holes, probes) >= target)


def noise_pmf(side: Side) -> list[float]:
    if not side.sequential:
        return [1.0]
    return list(side.prediction.noise)


def needed(opener: Side, other: Side, u: int, v: int) -> tuple[int, int]:
    """How many probes the opener and the other side need when their true noises are u and v.

    The opener walks the other side's predicted ports one step at a time (targets other.next(i));
    the other walks the opener's predicted ports with a stride of m steps (targets opener.next(m·j)),
    m = 2 when both consume a port per probe (Klinec & Matyáš' giant step), else 1. A hit needs the
    opener's i-th flow and the other's j-th flow to point at each other. Returns (i + 1, j + 1) for the
    first hit. `simulate()` checks these closed forms by brute force.
    """
    return needs(opener, other)(u, v)


def needs(opener: Side, other: Side):
    """`needed` for one pair of sides as a function of (u, v): the sides' properties are read once
    (the odds below call it for every pair of noises a window may meet)."""
    fixed_u, fixed_v = opener.fixed, other.fixed
    by_address = opener.filtering.by_address
    fc, oc = opener.consumes, other.consumes

    def need(u: int, v: int) -> tuple[int, int]:
        if fixed_u:
            u = 0
        if fixed_v:
            v = 0
        if by_address:
            # One low-TTL packet to the peer's IP opens an address filter for every port of it.
            return 1, u + 1
        if fc and oc:
            return u + 2 * v + 1, u + v + 1
        if fc:
            return v + 1, u + v + 1
        if oc:
            return u + v + 1, u + 1
        return v + 1, u + 1

    return need


def stride(opener: Side, other: Side) -> int:
    return 2 if opener.consumes and other.consumes else 1


def simulate(opener: Side, other: Side, n_open: int, n_other: int, u: int, v: int) -> bool:
    """Brute-force model of two NATs for the PREDICTED strategy (used by tests to check `needed`)."""
    m = stride(opener, other)
    ports_open = opener_targets(opener, other, n_open)
    ports_other = [opener.next_port(m * j) for j in range(n_other)] if not opener.fixed else [opener.port]

    def flows(side: Side, noise: int, dests: list[int]) -> list[tuple[int, int]]:
        out, seen = [], {}
        for d in dests:
            if d not in seen:
                if side.fixed:
                    seen[d] = side.port
                elif side.consumes:
                    seen[d] = side.next_port(noise + len(seen))
                else:
                    seen[d] = side.next_port(noise)
            out.append((seen[d], d))
        return out

    fo = flows(opener, 0 if opener.fixed else u, ports_open)
    ft = flows(other, 0 if other.fixed else v, ports_other)
    addr_filter = opener.filtering.by_address
    opener_srcs = {s for s, _ in fo}
    for src_t, dst_t in ft:
        if addr_filter:
            if dst_t in opener_srcs:
                return True
        elif (dst_t, src_t) in fo:
            return True
    return False


def opener_targets(opener: Side, other: Side, n: int) -> list[int]:
    if other.fixed:
        return [other.port]
    return [other.next_port(i) for i in range(n)]


def size_predicted(opener: Side, other: Side, target: float, cap: int,
                   cap_other: int | None = None) -> tuple[int, int, float]:
    """Probe counts (opener, other) reaching `target`, and the exact odds of those counts; the
    opener probes at most `cap`, the other at most `cap_other` (default: `cap`): each side's own
    flow budget.

    `needed` grows with u and v, so covering every (u, v) in the rectangle [0, uq] x [0, vq] takes
    needed(uq, vq) probes and succeeds with probability >= F_u(uq)·F_v(vq). The cheapest rectangle
    reaching the target is found by walking uq and bisecting vq: O(n log n) in the pmf lengths, so
    wide windows on busy NATs plan in milliseconds.
    """
    cap_other = cap if cap_other is None else cap_other
    pu, pv = noise_pmf(opener), noise_pmf(other)
    fu, fv = _cdf(pu), _cdf(pv)
    need = needs(opener, other)
    best: tuple[int, int, int] | None = None
    for uq in range(len(pu)):
        if fu[uq] < target:
            continue
        vq = bisect.bisect_left(fv, target / fu[uq])
        if vq >= len(fv):
            continue
        a, b = need(uq, vq)
        if a <= cap and b <= cap_other and (best is None or a + b < best[0]):
            best = (a + b, a, b)
    if best is None:  # the target is out of reach under the caps: do what they allow
        best = (cap + cap_other, cap, cap_other)
    _, n_open, n_other = best
    return n_open, n_other, _predicted_odds(opener, other, pu, fv, n_open, n_other)


def _cdf(pmf: list[float]) -> list[float]:
    out, total = [], 0.0
    for p in pmf:
        total += p
        out.append(min(total, 1.0))
    return out


def _predicted_odds(opener: Side, other: Side, pu: list[float], fv: list[float],
                    n_open: int, n_other: int) -> float:
    """Σ_u P(u) · P(v <= the largest v the counts still cover for this u).

    `needed` grows with u and with v, so the first v that does not fit can only move down as u
    grows: one walk down from the top serves every u (linear, where a search per u was n log n;
    a hostile report's busy NAT gives windows of thousands)."""
    need = needs(opener, other)
    odds = 0.0
    lo = len(fv)  # first v that does NOT fit, for the current u
    for u, p in enumerate(pu):
        while lo and not _fits(need(u, lo - 1), n_open, n_other):
            lo -= 1
        if not lo:
            break
        odds += p * fv[lo - 1]
    return min(1.0, odds)


def _fits(need: tuple[int, int], n_open: int, n_other: int) -> bool:
    return need[0] <= n_open and need[1] <= n_other


def random_sequential_odds(rnd: Side, seq: Side, sockets: int, window: int, probes: int) -> float:
    """The random side's `sockets` each send to seq.next(0..window-1); the sequential side sends
    `probes` guesses at random ports of the random side.

    Consuming sequential side: its j-th guess leaves from seq.next(v + j), so it can only meet the
    random side's flows aimed at window slot v + j: `sockets` random ports, a sockets/span chance.
    Otherwise every guess leaves from seq.next(v) and meets the `sockets` flows aimed at slot v.
    """
    span = rnd.span
    odds = 0.0
    for v, pv in enumerate(noise_pmf(seq)):
        if v >= window:
            break
        if seq.consumes:
            useful = max(0, min(probes, window - v))
            hit = 1 - (1 - min(sockets, span) / span) ** useful
        else:
            hit = 1 - birthday_miss(span, sockets, probes)
        odds += pv * hit
    return min(1.0, odds)
