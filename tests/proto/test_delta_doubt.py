"""How sure the planner may be of a sequential NAT's step Δ (predict.delta_posterior): on a busy NAT
the gcd of a few port gaps is now and then a multiple of the true step, and the predicted windows,
on the wrong grid, then miss. The stated odds carry that doubt."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadReport
from nattrav.proto.nat_behavior import BindingSample, classify, delta_evidence
from nattrav.proto.planner.udp import plan
from nattrav.proto.predict import Observation, delta_posterior, delta_posterior_of_gaps, fit, predict
from nattrav.proto.report import History, NatReport, Sample
from tests.reports import udp, wire

CONE = udp("EIM", "APDF", [40000, 40000], ip="203.0.113.20")


def _obs(gaps, taus, owns=None) -> Observation:
    port, t = 20000, 0.0
    owns = owns or [0] * len(gaps)
    samples = [Sample(port, t)]
    for g, tau, own in zip(gaps, taus, owns):
        port, t = port + g, t + tau
        samples.append(Sample(port, t, own))
    return Observation(tuple(samples))


def test_a_step_of_one_leaves_no_doubt():
    assert delta_posterior(_obs([1, 3, 2], [0.001] * 3), 1) == {1: 1.0}


def test_a_quiet_nats_gaps_of_exactly_seven_read_as_seven():
    # under Δ = 1 six background flows would have to land in each millisecond, exactly six each time
    post = delta_posterior(_obs([7, 7, 7], [0.001] * 3), 7)
    assert set(post) == {1, 7}
    assert post[7] > 0.99


def test_a_busy_nats_gaps_all_multiples_of_five_leave_real_doubt():
    # 800 flows/s over 10 ms gaps: ~8 background flows each; gaps of 5, 10, 5 are Δ=1 with 4, 9, 4
    # flows nearly as plausibly as Δ=5 with 0, 1, 0
    post = delta_posterior(_obs([5, 10, 5], [0.01] * 3), 5)
    assert set(post) == {1, 5}
    assert 0.05 < post[5] < 0.95
    assert math.isclose(sum(post.values()), 1.0)


def test_more_gaps_make_the_step_surer():
    few = delta_posterior(_obs([4, 2], [0.002] * 2), 2)[2]
    many = delta_posterior(_obs([4, 2, 2, 4, 2, 6], [0.002] * 6), 2)[2]
    assert many > few


def test_own_mappings_inside_a_gap_are_not_background():
    # a gap of 14 with one own mapping in it is Δ = 7 with no background flow
    without = delta_posterior(_obs([14, 14], [0.001] * 2), 14)
    with_own = delta_posterior(_obs([14, 14], [0.001] * 2, owns=[1, 1]), 14)
    assert with_own[7] > without[7]
    assert 14 not in with_own  # a step of 14 leaves no room for our own mapping in a gap of 14


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(1, 12),
       st.lists(st.floats(0.0, 0.05), min_size=8, max_size=8), st.booleans())
def test_the_posterior_is_a_distribution_over_the_divisors(mults, delta, taus, timed):
    gaps = [m * delta for m in mults]
    post = delta_posterior_of_gaps(gaps, taus[:len(gaps)] if timed else None, [0] * len(gaps), delta)
    assert math.isclose(sum(post.values()), 1.0, rel_tol=1e-9)
    assert all(0.0 <= p <= 1.0 for p in post.values())
    assert all(delta % d == 0 for d in post)


def _simulated_reads(true_delta: int, rate: float, gaps: int, trials: int, seed: int):
    rng = random.Random(seed)
    for _ in range(trials):
        port, t, samples = 20000, 0.0, [Sample(20000, 0.0)]
        for _ in range(gaps):
            tau = rng.uniform(0.0005, 0.003)
            t += tau
            # Poisson(rate·tau) by counting exponential arrivals
            n, clock = 0, rng.expovariate(rate)
            while clock < tau:
                n, clock = n + 1, clock + rng.expovariate(rate)
            port += true_delta * (1 + n)
            samples.append(Sample(port, t))
        obs = Observation(tuple(samples))
        model = fit(obs)
        if model.kind.value == "sequential":
            yield model.delta == true_delta, delta_posterior(obs, model.delta).get(model.delta, 0.0)


@pytest.mark.parametrize("true_delta", [1, 2])
def test_the_confidence_scores_busy_nats_better_than_certainty(true_delta):
    # the old odds treated every fitted Δ as certain; on a busy NAT (800 flows/s, three gaps) the
    # fit is wrong ~1 time in 8, and the confidence must predict right and wrong better than that
    reads = list(_simulated_reads(true_delta, 800.0, 3, 400, seed=true_delta))
    wrong = sum(not ok for ok, _ in reads)
    assert wrong > 10  # the situation exists: gcds that are multiples of the true step
    brier_certain = sum((1.0 - ok) ** 2 for ok, _ in reads) / len(reads)
    brier = sum((c - ok) ** 2 for ok, c in reads) / len(reads)
    assert brier < brier_certain
    # and a misread is doubted more than a right read, on average
    right_c = [c for ok, c in reads if ok]
    wrong_c = [c for ok, c in reads if not ok]
    assert sum(wrong_c) / len(wrong_c) < sum(right_c) / len(right_c)


def test_the_prediction_carries_the_confidence():
    busy = predict(udp("APDM", "APDF", [20000, 20005, 20015, 20020], times=[0, 0.01, 0.02, 0.03]))
    assert busy.model.delta == 5
    assert busy.delta_confidence < 0.95
    quiet = predict(udp("APDM", "APDF", [20000, 20007, 20014, 20021], times=[0, 0.001, 0.002, 0.003]))
    assert quiet.delta_confidence > 0.99


def test_the_reports_doubt_stands_for_the_evidence_the_planner_never_saw():
    # one gap of 2 says little; discovery's many gaps said more, and the report carries it
    alone = predict(udp("APDM", "APDF", [20000, 20002], times=[0, 0.01], delta=2))
    told = predict(udp("APDM", "APDF", [20000, 20002], times=[0, 0.01], delta=2, delta_doubt=0.01))
    assert alone.delta_confidence < 0.9
    assert told.delta_confidence == pytest.approx(0.99)


def _seq(ports, times, **kw):
    return udp("APDM", "APDF", ports, times=times, allocation="sequential", ip="203.0.113.10", **kw)


def _window(p) -> tuple[int, ...]:
    """The predicted attempt's window: the fixed side's targets on the sequential side's ports."""
    a = p.primary
    return max(a.local.targets, a.remote.targets, key=len)


def test_a_doubted_step_widens_the_window_onto_the_divisors_grid_and_still_reaches_the_target():
    # gaps of 5 two ms apart: Δ = 5, or Δ = 1 on a NAT busy enough for 4 foreign flows in each
    sure = plan(_seq([20000, 20005, 20010], [0, 0.002, 0.004], delta=5, delta_doubt=0.0), CONE, "first")
    doubted = plan(_seq([20000, 20005, 20010], [0, 0.002, 0.004], delta=5, delta_doubt=0.4), CONE, "first")
    assert sure.strategy.value == doubted.strategy.value == "predicted"
    assert sure.odds >= 0.999 and doubted.odds >= 0.999
    assert all((p - 20010) % 5 == 0 for p in _window(sure))
    off_grid = [p for p in _window(doubted) if (p - 20010) % 5]
    assert off_grid and len(_window(doubted)) > len(_window(sure))
    assert "60% sure of Δ" in doubted.reason
    assert "sure of Δ" not in sure.reason
    # both peers plan alike
    mirror = plan(CONE, _seq([20000, 20005, 20010], [0, 0.002, 0.004], delta=5, delta_doubt=0.4), "second")
    assert mirror.odds == doubted.odds and set(_window(mirror)) == set(_window(doubted))


def test_the_windows_odds_are_its_mass_under_every_step_the_nat_may_have():
    report = replace(_seq([20000, 20003, 20006], [0, 0.002, 0.004], delta=3, delta_doubt=0.002),
                     background=History(0, 0.05, 6))
    pred = predict(report)
    assert [g.delta for g in pred.grids] == [1]
    hypotheses = [(3, pred.delta_confidence, pred.noise)] + [(g.delta, g.weight, g.noise) for g in pred.grids]
    assert math.isclose(sum(w for _, w, _ in hypotheses), 1.0)
    ports, covered = pred.mixture_window(0.999, 4096)
    assert len(set(ports)) == len(ports)

    def mass(window):
        return sum(w * p for d, w, noise in hypotheses for n, p in enumerate(noise) if 20006 + d * (n + 1) in window)

    assert covered == pytest.approx(mass(set(ports)), rel=1e-12) and covered >= 0.999
    # the fewest: without its least likely port the window falls short; and Δ's grid alone would
    # not reach the target (Δ's part is at most its confidence, 99.8 %)
    assert mass(set(ports[:-1])) < 0.999
    grid_only = {p for p in ports if (p - 20006) % 3 == 0}
    assert len(grid_only) < len(ports) and mass(grid_only) < 0.999
    # under Δ = 1 the background discovery saw (0 foreign in 6 gaps of 3) is 2 each: a busy NAT,
    # whose next port lies tens of ports on
    assert pred.grids[0].noise.index(max(pred.grids[0].noise)) > 50
    # a cap keeps the likeliest ports and states what they cover
    few, part = pred.mixture_window(0.999, 5)
    assert few == ports[:5] and part == pytest.approx(mass(set(few)))


def test_an_older_peers_background_keeps_the_plan_on_its_grid_alone():
    # a report from before the gaps were kept: the background cannot be read on Δ = 1's grid, so no
    # port is added for it and the odds count Δ's grid only, times the confidence (a lower bound)
    old = replace(_seq([20000, 20003, 20006], [0, 0.002, 0.004], delta=3, delta_doubt=0.002),
                  background=History(0, 0.05))
    pred = predict(old)
    assert pred.grids == ()
    p = plan(old, CONE, "first")
    assert all((q - 20006) % 3 == 0 for q in _window(p))
    assert p.odds == pytest.approx(pred.mixture_window(0.999, 4096)[1]) and p.odds < 0.999


def test_discovery_measures_the_doubt_from_every_gap_it_saw():
    local, s1, pub = ("10.0.1.2", 40000), ("198.51.100.1", 3478), "203.0.113.10"
    dests = [s1, ("198.51.100.2", 3478), ("198.51.100.2", 3479), ("198.51.100.1", 3479)]

    def series(ports, fresh, step_t):
        out = [BindingSample(0, local, d, (pub, p), i * step_t) for i, (d, p) in enumerate(zip(dests, ports))]
        out += [BindingSample(1 + i, ("10.0.1.2", 41000 + i), s1, (pub, p), (4 + i) * step_t)
                for i, p in enumerate(fresh)]
        return out

    def run(samples):
        return classify(local=local, server=s1, other_address=dests[2], samples=samples,
                        test1=samples[0].mapped, test2=samples[1].mapped, test3=samples[2].mapped,
                        filter_change_both=False, filter_change_port=False)

    quiet = run(series([20000, 20003, 20006, 20009], [20015, 20018, 20021], 0.001))
    assert quiet.delta == 3 and quiet.delta_doubt is not None and quiet.delta_doubt < 0.01
    busy = run(series([20000, 20004, 20012, 20016], [20024, 20028, 20036], 0.002))
    assert busy.delta == 4 and busy.delta_doubt > quiet.delta_doubt
    # it survives the behaviour cache's JSON and the report's wire
    from nattrav.api.endpoint import nat_report
    again = type(busy).from_dict(busy.to_dict())
    assert again.delta_doubt == busy.delta_doubt
    report = nat_report(again, public=(pub, 20016), samples=(Sample(20016, 0.0),))
    back = NatReport.from_wire(wire(report))
    assert back.delta_doubt == busy.delta_doubt
    # the background on Δ's grid: one socket's gaps 4, 8, 4 and the fresh ones' 4, 8 are 0+1+0+0+1
    # other hosts' flows, over 3 + 2 intervals of 2 ms
    assert back.background == History(2, pytest.approx(0.01), 5)
    assert delta_evidence(4, [], []) == (None, None)


def test_discoverys_background_widens_a_window_the_punch_sockets_two_samples_would_size_small():
    # two samples 1 ms apart with one foreign flow between them, as at 800 flows/s: alone they say
    # little about the rate, and the prior's quiet NAT sizes the window; discovery saw 40 flows in 50 ms
    alone = predict(udp("APDM", "APDF", [20000, 20002], times=[0, 0.001], delta=1))
    told = NatReport(**{**vars(udp("APDM", "APDF", [20000, 20002], times=[0, 0.001], delta=1)),
                        "background": History(40, 0.05)})
    wide = predict(told)
    assert wide.mean_extra > 4 * alone.mean_extra
    assert len(wide.ports) > len(alone.ports)
    # another grid's background is not this one's: a stated Δ of 3 that the gap of 2 refutes
    other = predict(NatReport(**{**vars(told), "delta": 3}))
    assert other.model.delta == 2 and other.model.exposure == alone.model.exposure


@pytest.mark.parametrize("key,bad", [("delta_doubt", -0.1), ("delta_doubt", 1.5), ("delta_doubt", "0.3"),
                                     ("delta_doubt", float("nan")), ("delta_doubt", True),
                                     ("background", [1]), ("background", [-1, 0.1]), ("background", [1, -0.1]),
                                     ("background", "1,2"), ("background", [1.5, 0.1])])
def test_a_malformed_doubt_or_background_is_a_bad_report(key, bad):
    w = wire(udp("APDM", "APDF", [20000, 20002], delta=2))
    w[key] = bad
    with pytest.raises(BadReport):
        NatReport.from_wire(w)


def test_two_sequential_sides_aim_their_grids_above_a_small_doubt():
    # both sides consume a port per probe: no single flow to hold in a mixture window, so the grids'
    # windows aim at target / confidence, which a small doubt leaves within reach
    other = _seq([30000, 30001, 30002], [0, 0.001, 0.002], delta=1)
    small = plan(_seq([20000, 20003, 20006], [0, 0.001, 0.002], delta=3, delta_doubt=2e-5), other, "first")
    plain = plan(_seq([20000, 20003, 20006], [0, 0.001, 0.002], delta=3, delta_doubt=0.0), other, "first")
    assert small.strategy.value == plain.strategy.value == "predicted"
    assert plain.odds >= 0.999 and small.odds >= 0.999
    sizes = [len(a.targets) for a in (small.primary.local, small.primary.remote)]
    assert sum(sizes) > sum(len(a.targets) for a in (plain.primary.local, plain.primary.remote))
    # a doubt past what a grid can make up for: the plain target, and the odds say what it reaches
    big = plan(_seq([20000, 20003, 20006], [0, 0.001, 0.002], delta=3, delta_doubt=0.01), other, "first")
    assert big.odds == pytest.approx(plain.odds * 0.99, rel=1e-9)


def test_a_step_with_many_divisors_weighs_only_the_likeliest_few():
    # a hostile or odd report: Δ = 55440 (119 proper divisors) with every gap on its grid and a big
    # doubt: the prediction ranks a few grids, quickly, and leaves the rest out of its odds
    from nattrav.proto.predict import MAX_GRIDS

    report = _seq([2000, 57440], [0, 0.001], delta=55440, delta_doubt=0.5)
    pred = predict(report)
    assert 0 < len(pred.grids) <= MAX_GRIDS
    assert sum(g.weight for g in pred.grids) <= 0.5 + 1e-12
    ports, covered = pred.mixture_window(0.999, 512)
    assert len(ports) <= 512 and 0 <= covered <= 1
