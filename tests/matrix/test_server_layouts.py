"""The matrix with our servers deployed as a new user would (issue 16): on ONE address (a cloud VM:
its two ports tell port-dependent NATs apart) and on two hosts of one address each. A slice runs
here -- the easiest pair (two port-restricted cones, refused before one-address discovery measured
by port), a sequential pair (prediction needs the second port's Δ), a random side meeting a cone
(birthday) and a full cone (address-open from one IP's reading) -- the whole 8x8 matrix in
bench/matrix.py --server one-address two-host."""

from __future__ import annotations

import pathlib

import pytest

from nattrav.lab.matrix import expectation
from nattrav.lab.pytest_support import require_lab
from tests.conftest import run_matrix_pair
from tests.matrix.budget import unexplained_failures

TRIALS = 2
TRIAL_TIMEOUT = 15.0
REPORT = pathlib.Path("/tmp/nattrav-matrix-layouts.jsonl")
CASES = [
    ("one-address", "port-restricted", "port-restricted"),
    ("one-address", "symmetric-seq", "symmetric-seq"),
    ("one-address", "symmetric-random", "port-restricted"),
    ("one-address", "full-cone", "symmetric-random"),
    ("one-address", "cgnat", "symmetric-seq-7"),
    ("two-host", "port-restricted", "port-restricted"),
    ("two-host", "symmetric-seq", "symmetric-seq"),
]


@pytest.mark.lab
@pytest.mark.parametrize(("layout", "left", "right"), [pytest.param(*c, id=f"{c[0]}:{c[1]}->{c[2]}") for c in CASES])
def test_feasible_pairs_connect_whatever_the_server_layout(layout, left, right):
    require_lab()
    assert expectation(left, right) == "feasible"
    results, ok, summary, _ = run_matrix_pair(left, right, TRIALS, TRIAL_TIMEOUT, REPORT, expect="feasible",
                                              server_layout=layout)
    # every trial connects, but a later one whose plan said the flow budgets left cannot (the earlier
    # trial's burst still holds those flows: tests/matrix/budget.py)
    assert len(results) == TRIALS and not unexplained_failures(results), \
        f"{layout}: {left}->{right} is feasible but: {summary}"
    assert all(r.server == layout for r in results)
