"""A listener that calls accept() late (lab agent --accept-delay): the initiator's sample is that
much older at the punch, and both sides plan with that age (planner/horizon.py measured_ages: the
sample ages both peers publish and the server's hold on the connect), not with the capped guess.
How the odds hold up over wan50 is measured in bench/ (bench/results/sample-age.md), not here."""

from __future__ import annotations

import pytest

from nattrav.lab.matrix import run_pair
from nattrav.lab.pytest_support import require_lab

DELAY = 1.5


@pytest.mark.lab
def test_a_late_listener_widens_the_initiators_horizon_on_both_sides():
    require_lab()
    rows = run_pair("symmetric-seq", "symmetric-seq", 2, trial_timeout=12.0, accept_delay=DELAY)
    assert len(rows) == 2
    for r in rows:
        assert r.ok, r.reason
        plans = [((r.extra.get(f"diag_{side}") or {}).get("params") or {}).get("horizons") for side in "ab"]
        assert plans[0] is not None and plans[0] == plans[1], plans
        first, second = plans[0]
        assert first > DELAY > second, plans  # the listener samples at the offer (its beacon), the initiator before
