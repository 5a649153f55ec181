"""Port prediction for one socket behind a NAT, sans-IO.

Model (Klinec & Matyáš 2014): a sequential NAT hands out ports with step Δ, while other hosts behind
it consume ports at a rate λ (allocations per second). Between two of our own new mappings that are
t seconds apart the port moves by Δ·(1 + N) with N ~ Poisson(λ·t). The k-th mapping the socket will
create next therefore lands on last + (k + N)·Δ, wrapped inside the NAT's port range.

Input is a peer's NatReport (proto/report.py: the punch socket's samples, Δ, the allocation); output is
a ranked window of candidate ports with the probability it covers. No sockets, no clock: the caller
says how much time will pass before the mapping is created (`elapsed`).
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .port_block import under_bottom
from .report import MAX_SAMPLES, PORT_RANGE, NatReport, Sample
from .vocab import Allocation

MAX_WINDOW = 65536
# A step larger than this many Δ between two of our own back-to-back samples is not "sequential".
MAX_STEPS_PER_SAMPLE = 256
# A fitted step larger than this (and not stated by the report) is a coincidence of random ports.
MAX_DELTA = 512


@dataclass(frozen=True)
class Observation:
    """What one socket's STUN exchanges showed: mapped ports in order, the allocation word, Δ."""

    samples: tuple[Sample, ...]
    allocation: Allocation | None = None
    delta: int | None = None
    port_range: tuple[int, int] = PORT_RANGE
    delta_doubt: float | None = None  # the report's (NatReport.delta_doubt)
    background: tuple[int, float] | None = None  # the report's (NatReport.background): extra, seconds
    background_gaps: int | None = None  # and the gaps it was counted in (None: not said)

    @classmethod
    def from_report(cls, report: NatReport) -> Observation:
        """The punch socket's samples, the allocation word and Δ of a report (its schema checked
        everything else: proto/report.py)."""
        samples = report.samples[-MAX_SAMPLES:]
        lo, hi = report.port_range
        for s in samples:
            if not lo <= s.port <= hi:
                # The NAT's range is a guess; widen it rather than wrap a real port away.
                lo, hi = min(lo, s.port), max(hi, s.port)
        bg = report.background
        return cls(tuple(samples), report.allocation, report.delta, (lo, hi), report.delta_doubt,
                   None if bg is None else (bg.extra, bg.exposure), None if bg is None else bg.gaps)


class Kind(enum.StrEnum):
    """The kind of a PREDICTION: what the predictor can say about the next mapping's port. Not a NAT
    behaviour word (those are proto/vocab.py's): EIM and a sequential NAT with Δ = 0 both predict
    FIXED, and UNKNOWN is about our evidence, not about the NAT."""

    FIXED = "fixed"  # Δ = 0: the next mapping is the last one (EIM, or port preservation)
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"  # not enough samples to say


@dataclass(frozen=True)
class Model:
    """The fitted allocation model of one NAT as seen from one socket."""

    kind: Kind
    last: int | None  # the last mapped port observed
    delta: int  # allocation step (0 for FIXED / RANDOM / UNKNOWN)
    rate: float  # λ MLE: extra allocations per second (per sample interval if samples carry no times)
    per_second: bool  # whether `rate` / `exposure` count seconds or sample intervals
    port_range: tuple[int, int]
    extra: int = 0  # allocations by others seen between our samples
    exposure: float = 0.0  # the time (or intervals) over which `extra` was counted

    def advance(self, port: int, steps: int) -> int:
        """`port` moved by steps·Δ inside the NAT's range (sequential NATs wrap to the bottom)."""
        lo, hi = self.port_range
        span = hi - lo + 1
        return lo + (port - lo + steps * self.delta) % span

    def expected_extra(self, elapsed: float, intervals: float = 1.0) -> float:
        """Mean number of ports other hosts take before our next mapping (μ = λ·t, MLE)."""
        return self.rate * (elapsed if self.per_second else intervals)


def _forward_gap(a: int, b: int, port_range: tuple[int, int]) -> int:
    lo, hi = port_range
    return (b - a) % (hi - lo + 1)


def _waits(obs: Observation, gaps: Sequence[int]) -> set[int]:
    """The gaps (by index) that span a wait, not a run of back-to-back samples: a listener's first
    samples and those it takes at the accept, seconds apart, with a busy NAT's background in
    between (at 800 flows/s a one-second wait is ~800 steps, past MAX_STEPS_PER_SAMPLE, and the
    NAT read as random). Only where discovery's own back-to-back gaps said sequential with Δ (a
    random allocator passes that ~1 time in 1e5), the samples are timed, the wait is a multiple
    of Δ and took longer than every other gap, and samples after the last wait show the step
    again (the NAT now, where prediction starts). Δ is read from the other gaps; a wait still
    counts as background (the reading is a lower bound: a counter that wrapped shows fewer)."""
    delta = obs.delta or 0
    times = [s.t for s in obs.samples]
    if obs.allocation is not Allocation.SEQUENTIAL or delta <= 0 or any(t is None for t in times):
        return set()
    taus = [float(b - a) for a, b in zip(times, times[1:])]  # type: ignore[operator]
    long = {i for i, g in enumerate(gaps) if g // delta > MAX_STEPS_PER_SAMPLE}
    if not long or any(gaps[i] % delta for i in long):
        return set()
    short = [i for i in range(len(gaps)) if i not in long]
    if not short or max(short) < max(long) or min(taus[i] for i in long) <= max(taus[i] for i in short):
        return set()
    return long


def without_stray(obs: Observation) -> Observation:
    """The samples less one that is off the counter: a NAT whose next port, for this destination,
    is still held by an older flow to it hands out another port instead (Linux picks a free one
    anywhere in its range), and its counter goes on as if that flow had not come (seen in the lab
    once the counter wrapped: 22415, 22416, 21517, 22417). Only where discovery said sequential with
    Δ, the samples do not fit Δ's grid as they are, and leaving out exactly one sample makes them
    fit it (three or more left, every gap a small multiple of Δ): a random allocator passes that
    about once in 10^4. And only a sample that steps back or off Δ's grid from its neighbour: one
    far ahead on the grid is a counter that ran on while we waited (a listener's re-sample, which
    fit() reads as a wait). Leaving the stray out reads nothing into it; a counter it did move shows
    as one more foreign flow, which only widens the window."""
    delta = obs.delta or 0
    samples = obs.samples
    if obs.allocation is not Allocation.SEQUENTIAL or delta <= 0 or len(samples) < 4 or _on_grid(obs, samples):
        return obs
    lo, hi = obs.port_range
    taus = [None if a.t is None or b.t is None else b.t - a.t for a, b in zip(samples, samples[1:])]

    def off(k: int) -> bool:
        """Whether gap k (samples k to k+1) is no counter's: off the grid, backwards, or far ahead
        in no more time than the others took (a wait is far ahead after a long time)."""
        gap = _forward_gap(samples[k].port, samples[k + 1].port, obs.port_range)
        if gap % delta or gap > (hi - lo + 1) // 2:
            return True
        tau = taus[k]
        others = [t for j, t in enumerate(taus) if j != k]
        waited = tau is not None and None not in others and all(tau > t for t in others)  # type: ignore[operator]
        return gap // delta > MAX_STEPS_PER_SAMPLE and not waited

    fits = [i for i in range(len(samples))
            if ((i > 0 and off(i - 1)) or (i + 1 < len(samples) and off(i)))
            and _on_grid(obs, samples[:i] + samples[i + 1:])]
    if len(fits) != 1:
        return obs
    i = fits[0]
    return replace(obs, samples=samples[:i] + samples[i + 1:])


# A step back by more than this many Δ is the counter starting its block again (since_wrap), not a
# stray: blocks of fewer ports wrap unseen (their samples read as random, as before).
WRAP_STEPS = 1024


def since_wrap(obs: Observation) -> Observation:
    """The samples from the counter's last wrap on: a sequential NAT that counts through a block of
    ports (a CGN's per-subscriber block, the lab's 4,096) starts again at its bottom, and samples
    taken across that read as a step back by thousands of ports (24094, 24095, 20000), which fit()
    takes for random ports (a birthday at a spent budget) and without_stray for a stray to leave out
    (the one sample that says where the counter is now). Only where discovery said sequential with Δ,
    the step goes below every sample before it by more than WRAP_STEPS steps (an old flow's mapping,
    a stray, lies hundreds of steps behind: 22415, 22416, 21517), and the samples after it are on
    Δ's grid: the prediction starts from there, Δ from the report (a lone sample says nothing of the
    background, so the window is the prior's, wide). Once a peer's report names its block
    (proto/port_block.py) the same samples are a counter on it, and nothing is cut. A stale sample (an old flow's mapping,
    io/fresh_port.py) that steps back that far and is the last one is cut to as well: the prediction
    then aims behind the counter, where reading it as random aimed nowhere."""
    delta = obs.delta or 0
    if obs.allocation is not Allocation.SEQUENTIAL or delta <= 0 or len(obs.samples) < 2:
        return obs
    ports = [s.port for s in obs.samples]
    far = WRAP_STEPS * delta
    cuts = [i for i in range(1, len(ports)) if min(ports[:i]) - ports[i] > far
            and _forward_gap(ports[i - 1], ports[i], obs.port_range) > far]  # not a step on a named block
    if not cuts or not _on_grid(obs, obs.samples[cuts[-1]:]):
        return obs
    return replace(obs, samples=obs.samples[cuts[-1]:])


def _on_grid(obs: Observation, samples: Sequence[Sample]) -> bool:
    delta = obs.delta or 1
    gaps = [_forward_gap(a.port, b.port, obs.port_range) for a, b in zip(samples, samples[1:])]
    return all(g > 0 and g % delta == 0 and g // delta <= MAX_STEPS_PER_SAMPLE for g in gaps)


def fit(obs: Observation) -> Model:
    """Estimate Δ and λ from the samples (λ is the Poisson MLE: extra steps / elapsed time)."""
    ports = [s.port for s in obs.samples]
    last = ports[-1] if ports else None
    if obs.allocation is Allocation.RANDOM:
        return Model(Kind.RANDOM, last, 0, 0.0, False, obs.port_range)
    if last is None:
        return Model(Kind.UNKNOWN, None, 0, 0.0, False, obs.port_range)
    if len(ports) < 2:
        if obs.delta == 0:
            return Model(Kind.FIXED, last, 0, 0.0, False, obs.port_range)
        if obs.delta and obs.delta > 0 and last is not None:
            return Model(Kind.SEQUENTIAL, last, obs.delta, 0.0, False, obs.port_range)
        return Model(Kind.UNKNOWN, last, 0, 0.0, False, obs.port_range)

    gaps = [_forward_gap(a, b, obs.port_range) for a, b in zip(ports, ports[1:])]
    if all(g == 0 for g in gaps):
        return Model(Kind.FIXED, last, 0, 0.0, False, obs.port_range)
    if any(g == 0 for g in gaps):
        # Some pairs kept the port, others moved: no single Δ explains that.
        return Model(Kind.RANDOM, last, 0, 0.0, False, obs.port_range)
    waits = _waits(obs, gaps)
    near = [g for i, g in enumerate(gaps) if i not in waits]  # the gaps Δ is read from
    delta = obs.delta if obs.delta and obs.delta > 0 else 0
    if not delta or any(g % delta for g in near):
        # Each gap is Δ·(1+N); the gcd strips the N's unless they all share a factor. Trusted only
        # if every gap is a small multiple of it.
        delta = math.gcd(*near)
        # A gap spans at least 1 + own steps (our other sockets' mappings sit in it): Δ is the
        # largest divisor of the gcd that fits in every gap that many times.
        bound = min(g // (1 + smp.own) for i, (g, smp) in enumerate(zip(gaps, obs.samples[1:])) if i not in waits)
        if delta > bound:
            delta = max((d for d in range(1, bound + 1) if delta % d == 0), default=1)
    steps = [g // delta for g in gaps]
    if max(g // delta for g in near) > MAX_STEPS_PER_SAMPLE or (delta > MAX_DELTA and delta != obs.delta):
        return Model(Kind.RANDOM, last, 0, 0.0, False, obs.port_range)

    # what the gaps show beyond our own mappings is the background
    extra = sum(max(0, k - 1 - smp.own) for k, smp in zip(steps, obs.samples[1:]))
    times = [s.t for s in obs.samples]
    if all(t is not None for t in times):
        # Timed samples stay timed even when they span no time (or a misdated one runs backwards):
        # the horizon is then in seconds and the prior alone says how busy the NAT may be. Read
        # per sample interval instead, a second of horizon counted as ONE interval of the prior,
        # and a 99.9 % window shrank from ~90 ports to 7 (two misses in ~120 wan50 trials).
        exposure = max(0.0, float(times[-1] - times[0]))  # type: ignore[operator]
        per_second = True
    else:
        exposure = float(len(gaps))
        per_second = False
    # no time spanned: no rate to read (noise_pmf weighs `extra` against the prior, not this)
    rate = extra / exposure if exposure > 0 else 0.0
    return Model(Kind.SEQUENTIAL, last, delta, rate, per_second, obs.port_range, extra, exposure)


# Prior on λ (allocations by other hosts per second): Gamma with shape 0.3 and rate 0.05 s, i.e.
# mean PRIOR_RATE = 6/s worth PRIOR_WEIGHT = 0.05 s of observation. Two samples a few ms apart say
# almost nothing about λ, and the small shape keeps the tail heavy then (a ~95-port window for a 1 s
# horizon at 99.9%); a few spaced samples outweigh it. Chosen by simulation: the window's real
# coverage stays at or above the claim for background rates 0-8/s with 8 samples, and a 200/s
# background seen for 0.2 s is estimated at ~80% of its rate (the lab's busy test passes with it).
PRIOR_RATE = 6.0
PRIOR_WEIGHT = 0.05
TAIL = 1e-6
# How likely a published block's top (or bottom) is not the NAT's, for a flow that would wrap there:
# even odds, since a few samples a cycle leave either edge as unmet as the other, and nothing in them
# tells the two cases apart (mixture_window).
EDGE_DOUBT = 0.5


@dataclass(frozen=True)
class Grid:
    """Another step the NAT may have: a proper divisor of the fitted Δ, with its probability and the
    pmf of the foreign allocations N before our next mapping under it (which then lands on
    last + delta·(1 + N))."""

    delta: int
    weight: float
    noise: tuple[float, ...]


@dataclass(frozen=True)
class Prediction:
    """A ranked candidate window: ports[i] is where our next mapping lands with probability probs[i]."""

    kind: Kind
    ports: tuple[int, ...]
    probs: tuple[float, ...]
    offsets: tuple[int, ...]  # k: ports[i] == last + k·Δ (wrapped)
    covered: float  # probability that the next mapping is in `ports`
    model: Model
    mean_extra: float = 0.0  # expected allocations by others before our next mapping
    noise: tuple[float, ...] = (1.0,)  # pmf of that number N, n = 0.. until the tail is < TAIL
    notes: tuple[str, ...] = field(default=())
    # P(the fitted Δ is the NAT's), given the samples' gaps (delta_posterior): every window above is
    # on the grid of that Δ, so its odds hold only with this probability
    delta_confidence: float = 1.0
    # the rest of that probability, on the divisors' grids (empty: not weighed, see _grids)
    grids: tuple[Grid, ...] = ()

    @property
    def next_port(self) -> int | None:
        return self.ports[0] if self.ports else None

    def mixture_window(self, target: float, cap: int) -> tuple[tuple[int, ...], float]:
        """The fewest ports (at most `cap`), most probable first, that the next mapping lands on with
        probability >= target, every step hypothesis weighed: Δ's grid with delta_confidence and
        each of `grids`. Returns (ports, the probability they cover). Where Δ's window alone would
        stop at delta_confidence·target, the divisors' most likely ports fill the rest (a busy
        NAT's next port under Δ = 1 lies tens of ports on, off Δ's grid)."""
        if self.kind is Kind.FIXED:
            return self.ports, self.covered
        model = self.model
        if self.kind is not Kind.SEQUENTIAL or model.last is None:
            return (), 0.0
        span = model.port_range[1] - model.port_range[0] + 1
        mass: dict[int, float] = {}
        for delta, weight, noise in ((model.delta, self.delta_confidence, self.noise),
                                     *((g.delta, g.weight, g.noise) for g in self.grids)):
            for n, p in enumerate(noise):
                step = delta * (n + 1) % span  # a counter that wrapped lands where it did before
                mass[step] = mass.get(step, 0.0) + weight * p
        ranked = ranked_window(list(mass.values()), target, max(1, cap)) if mass else []
        steps = list(mass)
        lo, hi = model.port_range
        ports = [lo + (model.last - lo + steps[i]) % span for i, _ in ranked]
        if (lo, hi) == PORT_RANGE:
            return tuple(ports), min(1.0, sum(p for _, p in ranked))
        # A block learned from our peer's samples (proto/port_block.py) may stop short of the NAT's
        # top: a wrapped port's twin past it is where that flow goes if the top is higher; and its
        # bottom may be lower than the samples met (a few a cycle): the ports just under it, one a
        # wrapped port (TcpMapping.under says the same for TCP). Each is weighed as its wrapped
        # port's probability times EDGE_DOUBT, and the cap keeps the heaviest of all: the edges of
        # the likeliest flows go before the window's tail (an arbitrary pool's peer, a window of 70
        # at most, lost 4 connects in 4,000 at a bottom 10-33 ports under the one published when
        # every twin went first and the ports under the bottom after them). The odds stay the
        # block's: the window ports kept.
        wrapped = [(port, p, model.last + steps[i]) for port, (i, p) in zip(ports, ranked)
                   if model.last + steps[i] > hi]
        under = under_bottom(lo, model.delta, len(wrapped))
        edges = [(twin, p * EDGE_DOUBT) for _, p, twin in wrapped if twin <= 65535]
        edges += [(u, p * EDGE_DOUBT) for u, (_, p, _) in zip(under, wrapped)]
        weighed = [(port, p, True) for port, (_, p) in zip(ports, ranked)] + [(e, w, False) for e, w in edges]
        chosen = [weighed[j] for j in sorted(range(len(weighed)), key=lambda j: (-weighed[j][1], j))[:max(1, cap)]]
        return tuple(c[0] for c in chosen), min(1.0, sum(c[1] for c in chosen if c[2]))

    def spread_steps(self, sockets: int, targets: int) -> tuple[int, ...]:
        """Where a peer aims `targets` ports when our next flows come from `sockets` fresh sockets at
        once (a spread): steps k (the port last + k·Δ) n, 2n, .., each the last of a run of n our
        flows take when none of the others' took a port before ours, so that together they catch
        the first of ours after up to targets·n - 1 of the others'."""
        n = max(1, sockets)
        return tuple(n * i for i in range(1, max(1, targets) + 1))

    def spread_odds(self, sockets: int, steps: Sequence[int]) -> float:
        """P(one of the ports at `steps` (last + k·Δ) goes to one of `sockets` flows we open at once
        next), every step hypothesis weighed as in mixture_window: the flows take the ports from
        last + d·(1 + N) on, N the others' before ours (the noise pmf of that grid), so a step k
        (k·Δ/d on a grid of d) is ours when N lies in [k·Δ/d - n, k·Δ/d - 1]."""
        model = self.model
        if self.kind is not Kind.SEQUENTIAL or model.last is None or not model.delta:
            return 0.0
        n = max(1, sockets)
        ordered = sorted(steps)  # the intervals merge as they come
        total = 0.0
        for delta, weight, noise in ((model.delta, self.delta_confidence, self.noise),
                                     *((g.delta, g.weight, g.noise) for g in self.grids)):
            ratio = model.delta // delta if delta else 0
            cum = list(itertools.accumulate(noise, initial=0.0))
            covered, reached = 0.0, 0
            for k in ordered:
                a, b = max(reached, k * ratio - n, 0), min(k * ratio, len(noise))
                if a < b:
                    covered += cum[b] - cum[a]
                    reached = b
            total += weight * covered
        return min(1.0, total)


def poisson_pmf(mu: float, n: int) -> float:
    if n < 0:
        return 0.0
    if mu <= 0:
        return 1.0 if n == 0 else 0.0
    return math.exp(n * math.log(mu) - mu - math.lgamma(n + 1))


def negbin_pmf(r: float, p: float, n: int) -> float:
    """P(N = n) for the Poisson-Gamma mixture: C(n + r - 1, n) p^r (1 - p)^n (r > 0, 0 < p <= 1)."""
    if n < 0:
        return 0.0
    if p >= 1.0:
        return 1.0 if n == 0 else 0.0
    return math.exp(math.lgamma(n + r) - math.lgamma(r) - math.lgamma(n + 1)
                    + r * math.log(p) + n * math.log1p(-p))


def noise_pmf(model: Model, horizon: float, *, prior_rate: float = PRIOR_RATE,
              prior_weight: float = PRIOR_WEIGHT, limit: int = MAX_WINDOW) -> list[float]:
    """Predictive pmf of N, the allocations by others before our next mapping, `horizon` from now.

    λ ~ Gamma(shape = prior_rate·prior_weight + extra, rate = prior_weight + exposure) after seeing
    `extra` allocations in `exposure`; N | λ ~ Poisson(λ·horizon); so N is negative binomial with
    r = shape and p = rate / (rate + horizon) (Klinec & Matyáš' Poisson model, with λ uncertain).
    """
    shape = prior_rate * prior_weight + model.extra
    rate = prior_weight + model.exposure
    if horizon <= 0 or shape <= 0:
        return [1.0]
    p = rate / (rate + horizon)
    out: list[float] = []
    total = 0.0
    n = 0
    while n < limit and total < 1 - TAIL:
        v = negbin_pmf(shape, p, n)
        out.append(v)
        total += v
        n += 1
    return out


def ranked_window(pmf: Sequence[float], target: float, max_size: int = MAX_WINDOW) -> list[tuple[int, float]]:
    """The fewest values n, most probable first, whose total probability reaches `target`."""
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    order = sorted(range(len(pmf)), key=lambda n: (-pmf[n], n))
    chosen: list[tuple[int, float]] = []
    total = 0.0
    for n in order[:max_size]:
        chosen.append((n, pmf[n]))
        total += pmf[n]
        if total >= target:
            break
    return chosen


def poisson_window(mu: float, target: float, max_size: int = MAX_WINDOW) -> list[tuple[int, float]]:
    """ranked_window for N ~ Poisson(μ) (known rate)."""
    pmf, total, n = [], 0.0, 0
    while n < max_size and (total < 1 - TAIL or n <= mu):
        v = poisson_pmf(mu, n)
        pmf.append(v)
        total += v
        n += 1
    return ranked_window(pmf, target, max_size)


# Priors for telling Δ's apart (delta_posterior). On the true Δ among the divisors of the fitted one:
# P(Δ = d) ∝ 1/d², small steps being the common case (most sequential NATs count by 1 or 2). On λ, a
# vague Gamma(0.5, 1 ms): noise_pmf's prior (6/s worth 50 ms) suits predicting a second of noise but
# here would favour the hypothesis with the fewest background allocations, the largest Δ, and call
# a busy NAT's misread certain. Chosen by simulation (Δ in 1, 2, 7; λ 5 and 800/s; 2-3 gaps of
# 0.5-3 ms): the lowest Brier score of the priors tried, and a quiet NAT's gaps of exactly 7 still
# read as Δ = 7 at >= 94 % from two gaps, >= 99 % from three.
DELTA_PRIOR_EXPONENT = 2
DELTA_RATE_SHAPE = 0.5
DELTA_RATE_WEIGHT = 0.001


def _delta_prior(d: int) -> float:
    return float(d) ** -DELTA_PRIOR_EXPONENT


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def delta_posterior(obs: Observation, delta: int) -> dict[int, float]:
    """P(the NAT's step is d | the samples' gaps), for every divisor d of the fitted `delta`.

    Why: a gap between two samples is Δ·(1 + own + N), N the background's allocations in between, and
    discovery reads Δ as the gaps' gcd. On a busy NAT the multipliers (1 + own + N) share a factor m
    now and then (three gaps: ~1 time in 6), and the fitted Δ is m times the true one: every window
    is then on the wrong grid. The true Δ divides every gap, so the candidates are the divisors of
    the fitted one. Each is weighed by the marginal likelihood of the gaps under it: N_i = g_i/d - 1
    - own_i ~ Poisson(λ·τ_i), λ ~ Gamma(DELTA_RATE_SHAPE, DELTA_RATE_WEIGHT) integrated out (the
    model of noise_pmf, with a vaguer prior), τ_i the time between the samples (or 1 interval when
    untimed). A fast,
    steady NAT (gaps of exactly 7, no time for 6 background flows) leaves little doubt; a busy one
    whose few gaps are all multiples of 5 leaves a lot. With no gap to weigh (one sample, Δ taken
    from the report), the report's Δ stands: {delta: 1.0}."""
    ports = [s.port for s in obs.samples]
    gaps = [_forward_gap(a, b, obs.port_range) for a, b in zip(ports, ports[1:])]
    times = [s.t for s in obs.samples]
    timed = all(t is not None for t in times) and len(times) > 1 and times[-1] > times[0]  # type: ignore[operator]
    taus = [max(0.0, float(b - a)) for a, b in zip(times, times[1:])] if timed else None  # type: ignore[operator]
    return delta_posterior_of_gaps(gaps, taus, [s.own for s in obs.samples[1:]], delta)


def delta_posterior_of_gaps(gaps: Sequence[int], taus: Sequence[float] | None, owns: Sequence[int],
                            delta: int) -> dict[int, float]:
    """delta_posterior for bare forward gaps: `taus` the seconds each spans (None: untimed, one
    interval each), `owns` our own mappings inside each (known, not background)."""
    if delta <= 1:
        return {max(delta, 0): 1.0}
    if not gaps or any(g % delta for g in gaps):
        return {delta: 1.0}
    timed = taus is not None
    taus = list(taus) if taus is not None else [1.0] * len(gaps)
    shape0, rate0 = DELTA_RATE_SHAPE, DELTA_RATE_WEIGHT if timed else 1.0
    logs: dict[int, float] = {}
    for d in _divisors(delta):
        counts = [g // d - 1 - own for g, own in zip(gaps, owns)]
        if any(n < 0 for n in counts) or any(n > 0 and tau <= 0 for n, tau in zip(counts, taus)):
            continue  # impossible under this Δ: too few steps for our own mappings, or none in no time
        total, exposure = sum(counts), sum(taus)
        log = (math.log(_delta_prior(d)) + shape0 * math.log(rate0) - math.lgamma(shape0)
               + math.lgamma(shape0 + total) - (shape0 + total) * math.log(rate0 + exposure))
        log += sum(n * math.log(tau) - math.lgamma(n + 1) for n, tau in zip(counts, taus) if n > 0)
        logs[d] = log
    if not logs:
        return {delta: 1.0}
    top = max(logs.values())
    weights = {d: math.exp(v - top) for d, v in logs.items()}
    norm = sum(weights.values())
    return {d: w / norm for d, w in sorted(weights.items())}


def predict(
    report: NatReport | Observation,
    *,
    elapsed: float = 1.0,
    intervals: float = 1.0,
    target: float = 0.999,
    max_window: int = 4096,
    prior_rate: float = PRIOR_RATE,
    prior_weight: float = PRIOR_WEIGHT,
) -> Prediction:
    """Rank the ports the socket's NEXT new mapping will get.

    elapsed: seconds between the last sample and the moment the mapping is created (used when the
    samples carry times); intervals: the same gap counted in sample intervals (used when they do not;
    the prior is then read per interval too).
    """
    obs = without_stray(since_wrap(report if isinstance(report, Observation) else Observation.from_report(report)))
    model = fit(obs)
    if model.kind is Kind.FIXED:
        assert model.last is not None
        return Prediction(Kind.FIXED, (model.last,), (1.0,), (0,), 1.0, model)
    if model.kind in (Kind.RANDOM, Kind.UNKNOWN) or model.last is None:
        lo, hi = model.port_range
        return Prediction(model.kind, (), (), (), 0.0, model,
                          notes=(f"no usable step: a port is a 1 in {hi - lo + 1} guess",))
    if model.per_second and obs.background is not None and model.delta == obs.delta and obs.background[1] > 0:
        # discovery's gaps on the same grid: tens of milliseconds of background where the punch
        # socket's two samples saw one (at 800 flows/s the prior alone read ~25/s, and a window
        # sized on that missed 2 trials in 8 at a stated 99.9 %)
        extra, exposure = model.extra + obs.background[0], model.exposure + obs.background[1]
        model = replace(model, extra=extra, exposure=exposure, rate=extra / exposure)
    horizon = elapsed if model.per_second else intervals
    # no window ever looks past max_window: the pmf's tail beyond it is probability not covered
    pmf = noise_pmf(model, horizon, prior_rate=prior_rate, prior_weight=prior_weight, limit=max_window)
    ranked = ranked_window(pmf, target, max_window)
    span = model.port_range[1] - model.port_range[0] + 1
    cycle = span // math.gcd(span, model.delta)  # distinct ports reachable with this Δ
    ranked = [(n, p) for n, p in ranked if n + 1 <= cycle]
    ports = tuple(model.advance(model.last, n + 1) for n, _ in ranked)
    posterior = None
    if obs.delta_doubt is not None and model.delta == obs.delta:
        # discovery weighed every gap it saw (more than the punch socket's few samples here)
        confidence = 1.0 - obs.delta_doubt
    else:
        posterior = delta_posterior(obs, model.delta)
        confidence = posterior.get(model.delta, 0.0)
    return Prediction(
        Kind.SEQUENTIAL,
        ports,
        tuple(p for _, p in ranked),
        tuple(n + 1 for n, _ in ranked),
        min(1.0, sum(p for _, p in ranked)),
        model,
        mean_extra=sum(n * v for n, v in enumerate(pmf)),
        noise=tuple(pmf),
        delta_confidence=confidence,
        grids=_grids(obs, model, confidence, posterior,
                     lambda m: noise_pmf(m, horizon, prior_rate=prior_rate, prior_weight=prior_weight, limit=max_window)),
    )


MAX_GRIDS = 8  # divisors of Δ a prediction weighs besides Δ


def _grids(obs: Observation, model: Model, confidence: float, posterior: dict[int, float] | None,
           noise: Callable[[Model], list[float]]) -> tuple[Grid, ...]:
    """The doubt about Δ (1 - confidence) shared among its proper divisors, each with its noise read
    on its own grid: every gap g of the punch socket's is g/d - 1 - own foreign flows under d, and
    discovery's background of `extra` over G gaps is (Δ/d)(extra + G) - G. The share follows the
    punch socket's posterior over the divisors (exact for a prime Δ, where Δ = 1 takes it all; for
    a composite Δ the split of discovery's doubt is the punch socket's, not discovery's, which did
    not publish it; `posterior`: predict()'s, or None when it took the report's confidence), the
    prior where those gaps cannot tell. Empty when there is no doubt, or when the background cannot
    be read on another grid (an older peer's report does not say over how many gaps it was
    counted): the planner then counts Δ's grid alone, a lower bound."""
    delta, doubt = model.delta, 1.0 - confidence
    if doubt <= 0 or delta <= 1:
        return ()
    background = model.per_second and obs.background is not None and delta == obs.delta and obs.background[1] > 0
    if background and obs.background_gaps is None:
        return ()
    ports = [s.port for s in obs.samples]
    gaps = [_forward_gap(a, b, obs.port_range) for a, b in zip(ports, ports[1:])]
    if any(g % delta for g in gaps):
        return ()
    divisors = [d for d in _divisors(delta) if d < delta]
    if posterior is None:  # predict() took the confidence from the report: weighed only when doubted
        posterior = delta_posterior(obs, delta)
    share = {d: posterior.get(d, 0.0) for d in divisors}
    if sum(share.values()) <= 0:
        share = {d: _delta_prior(d) for d in divisors}
    norm = sum(share.values())
    out = []
    # a report's Δ of 55440 has 119 divisors, each a pmf to rank: the likeliest few carry the doubt
    # that matters, and the others' share is left out of the odds (a lower bound)
    for d in sorted(sorted(divisors, key=lambda d: -share[d])[:MAX_GRIDS]):
        extra = sum(max(0, g // d - 1 - smp.own) for g, smp in zip(gaps, obs.samples[1:]))
        if background:
            assert obs.background is not None and obs.background_gaps is not None
            extra += (delta // d) * (obs.background[0] + obs.background_gaps) - obs.background_gaps
        on_d = replace(model, delta=d, extra=extra,
                       rate=extra / model.exposure if model.exposure > 0 else 0.0)
        out.append(Grid(d, doubt * share[d] / norm, tuple(noise(on_d))))
    return tuple(out)


def ranked_ports(values: Iterable[int]) -> list[int]:
    """Deduplicate while keeping the first (best-ranked) occurrence."""
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
