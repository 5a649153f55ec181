"""The CI slice of the matrix over the lab's new axes: a WAN profile (50 ms ±10 ms one way and 1 % loss
on each access link, 12 routers between the NATs), a home NAT behind a carrier-grade NAT for every UDP
strategy, peers behind one NAT, a UDP-only full cone crossed over TCP, and address pools.

Each trial gets only what a user would type (the product traces its own NAT layers for the low TTL).
Where the product lacks what issue 13 adds, the case is xfail(strict=True) with that reason: it fails
today, and CI turns red the day it passes, so the mark comes off (none is left).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from nattrav.lab.matrix import SAME_NAT, expectation, tcp_expectation, wilson
from nattrav.lab.pytest_support import require_lab
from tests.conftest import run_matrix_pair
from tests.matrix.budget import unexplained_failures

TRIALS = int(os.environ.get("NATTRAV_REALISM_TRIALS", "2"))
TRIAL_TIMEOUT = 12.0
REPORT = pathlib.Path(os.environ.get("NATTRAV_REALISM_REPORT", "/tmp/nattrav-matrix-realism.jsonl"))
BEHAVIOUR_WORDS = ("random ports", "address-and-port-dependent mapping")



def case(left, right, shape="flat", tcp=False, xfail=None, strategy=None):
    """How long trials take is measured in bench/ (bench/matrix.py --realism, bench/results/matrix-
    realism.md), not asserted here: the CI machine is shared. `strategy`: the rung that must connect."""
    marks = [pytest.mark.lab]
    if xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=xfail))
    label = f"{'tcp' if tcp else 'udp'}:{left}->{right}@{shape}"
    return pytest.param(left, right, shape, tcp, strategy, marks=marks, id=label)


CASES = [
    # the profile: 50 ms ±10 ms one way and 1 % loss on each access link, 4 + 1 + 7 routers
    # (10/10 each in a 10-trial run without background traffic)
    case("port-restricted", "symmetric-seq", "wan50", strategy="predicted"),
    case("port-restricted+cgn", "none", "wan50", strategy="direct"),
    # a home NAT behind a carrier-grade NAT (100.64.0.0/10 between them), one pair per UDP strategy;
    # the failing ones fail every trial (0/6..0/16 in bench runs): the role decides who must open
    case("port-restricted+cgn", "none", strategy="direct"),
    case("port-restricted+cgn", "port-restricted", strategy="simultaneous"),
    case("restricted-cone", "symmetric-seq+cgn", strategy="address-open"),
    case("port-restricted+cgn", "symmetric-seq", strategy="predicted"),
    case("symmetric-random+cgn", "port-restricted", strategy="birthday"),
    case("symmetric-random+cgn", "symmetric-seq", strategy="random-sequential"),
    case("symmetric-random+cgn", "symmetric-random", strategy="best-effort"),
    # peers behind one NAT: with hairpinning, and without (they can only meet on their LAN: their host
    # candidates, raced beside the planned strategy; tests/matrix/test_same_nat.py has every preset)
    case("port-restricted", SAME_NAT),
    case("symmetric-seq", SAME_NAT, strategy="lan"),
    case("symmetric-seq", SAME_NAT, tcp=True, strategy="tcp-lan"),
    # routers whose "full cone" / "restricted cone" is for UDP only, crossed over TCP: the TCP
    # ladder tries what the UDP word allows, then the strict TCP plan
    case("udp-full-cone", "symmetric-random", tcp=True, strategy="tcp-birthday"),
    case("udp-restricted-cone", "symmetric-seq-2", tcp=True, strategy="tcp-simultaneous"),
    # the same over the profile: the strict rung starts 3.3 s in (its plan's slot), then a SYN round
    # trip and the handshake over 200 ms RTT (4.0 s median, 4.6 s p95 in 8 trials). Its TCP probes
    # must leave back to back: one after the other, the background's flows landed between them and
    # Δ=2 read as +4 (1-2/8)
    case("udp-restricted-cone", "symmetric-seq-2", "wan50", tcp=True, strategy="tcp-simultaneous"),
    # a NAT with a pool of four public addresses, paired (one per inside host)
    case("symmetric-seq,public_ips=4", "port-restricted", strategy="predicted"),
]


@pytest.mark.parametrize(("left", "right", "shape", "tcp", "strategy"), CASES)
def test_realism_case(left, right, shape, tcp, strategy):
    require_lab()
    expect = (tcp_expectation if tcp else expectation)(left, right)
    results, ok, summary, elapsed = run_matrix_pair(left, right, TRIALS, TRIAL_TIMEOUT, REPORT, tcp=tcp,
                                                    expect=expect, shape=shape)
    if expect == "infeasible":
        # the planner knows it: small stated odds, every miss names both NATs and the relay
        assert all(r.odds is not None and r.odds < 0.05 for r in results), summary
        for r in results:
            if not r.ok:
                assert "relay" in r.reason and all(w in r.reason for w in BEHAVIOUR_WORDS), r.reason
        assert elapsed < TRIALS * TRIAL_TIMEOUT + 30, summary
        return
    if expect == "probabilistic":
        # a guess by nature: every failure must be a clean, explained one, and the odds must say so;
        # and high stated odds with nothing connected would lie far outside even a 2-trial Wilson
        # interval (0/2: 0-66 %)
        for r in results:
            if not r.ok:
                assert r.reason, "a failed trial must say why"
            assert r.odds is not None and r.odds < 1.0, summary
        hi = wilson(len(ok), TRIALS)[1]
        assert min(r.odds for r in results) <= hi or ok, f"stated odds above the measured rate: {summary}"
        return
    # every trial, but one that its plan said the flow budgets left cannot connect (tests/matrix/budget.py)
    assert len(results) == TRIALS and not unexplained_failures(results), \
        f"{left}->{right} over {shape} is feasible but: {summary}"
    assert all(r.seconds is not None for r in ok), summary
    if strategy:
        assert {r.strategy for r in ok} == {strategy}, summary
