"""planner/udp._spread: where the fixed side's flow budget holds no window wide enough, the
sequential side opens its next mappings from many sockets at once and the fixed side answers a few
of their ports (Prediction.spread_steps / spread_odds)."""

from __future__ import annotations

import pytest

from nattrav.proto.planner.udp import plan
from nattrav.proto.predict import predict
from nattrav.proto.report import NatReport, Sample
from nattrav.proto.vocab import Allocation, Filtering, Mapping, Strategy

# a sequential NAT with some background (2 foreign flows in 250 ms) and its whole budget free
SEQ = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                public=("203.0.113.11", 20408), flows=1019,
                samples=(Sample(20373, 0.0), Sample(20374, 0.1), Sample(20375, 0.2), Sample(20408, 0.25, own=30)))


def cone(flows: int) -> NatReport:
    return NatReport(mapping=Mapping.EIM, filtering=Filtering.APDF, public=("198.51.100.20", 34608), flows=flows,
                     samples=(Sample(34608, 0.0), Sample(34608, 0.001)))


def plans(flows: int):
    a = plan(SEQ, cone(flows), "first", horizons=(1.1, 1.3), peer_ip="198.51.100.20")
    b = plan(cone(flows), SEQ, "second", horizons=(1.1, 1.3), peer_ip="203.0.113.11")
    return a, b


@pytest.mark.parametrize("flows", [1, 2, 4, 20])
def test_a_spent_fixed_budget_gets_a_spread_from_the_counting_side(flows):
    a, b = plans(flows)
    best = a.attempts[0]
    assert best.strategy is Strategy.PREDICTED and best.odds >= 0.999
    assert best.local.opens and best.local.sockets > 1 and best.local.targets == (34608,)
    assert len(best.remote.targets) <= flows and best.remote.sockets == 1 and not best.remote.opens
    assert best.local.sockets <= SEQ.flows
    # both peers derive it, mirrored
    assert b.attempts[0].local == best.remote and b.attempts[0].remote == best.local
    assert "sockets" in a.reason
    # the window the same budget holds states what it covers, far less
    window = predict(SEQ, elapsed=1.1).mixture_window(0.9999, flows)[1]
    assert window < 0.999


def test_a_budget_that_holds_the_window_keeps_the_window():
    a, _ = plans(1000)
    best = a.attempts[0]
    assert best.local.sockets == 1 and best.remote.sockets == 1 and best.odds >= 0.999


def test_a_spreads_steps_cover_the_others_flows_before_ours_up_to_targets_times_sockets():
    pred = predict(SEQ, elapsed=1.1, max_window=4096)
    for n, m in ((1, 1), (5, 1), (5, 3), (26, 2)):
        steps = pred.spread_steps(n, m)
        assert steps == tuple(n * i for i in range(1, m + 1))
        # the flows take last + 1 + N .. last + N + n: step k is ours when k - n <= N <= k - 1
        assert pred.spread_odds(n, steps) == pytest.approx(sum(pred.noise[:n * m]))
    assert pred.spread_odds(10, (10,)) > pred.spread_odds(5, (10,)) > pred.spread_odds(1, (10,))


def test_a_huge_spread_costs_no_more_than_the_noise_pmf_it_reads():
    # a hostile report may publish any budget: the odds are prefix sums over the pmf, never a set
    # of every covered step (4,096 targets x 1,024 sockets was a 73 MB input for the fuzzer)
    pred = predict(SEQ, elapsed=1.1, max_window=4096)
    assert pred.spread_odds(1024, pred.spread_steps(1024, 4096)) == pytest.approx(sum(pred.noise))
    a = plan(SEQ, cone(1), "first", horizons=(1.1, 1.3), peer_ip="198.51.100.20", max_sockets=65536)
    assert len(a.attempts[0].remote.targets) <= 1
