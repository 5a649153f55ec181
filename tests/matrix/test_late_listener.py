"""A listener that calls accept() late (lab agent --accept-delay): the server asks the initiator for
fresh samples before the session (rendezvous/held.py), so the initiator's horizon (planner/horizon.py
measured_ages: its fresh sample's age, the server's hold since those samples, the margin) is back
under a second on both sides instead of growing with the delay. How the odds hold up over wan50 is
measured in bench/ (bench/results/initiator-resample.md), not here."""

from __future__ import annotations

import pytest

from nattrav.lab.matrix import run_pair
from nattrav.lab.pytest_support import require_lab

DELAY = 3.0


@pytest.mark.lab
def test_a_late_listeners_initiator_samples_again_and_both_sides_plan_its_fresh_age():
    require_lab()
    rows = run_pair("symmetric-seq", "symmetric-seq", 2, trial_timeout=14.0, accept_delay=DELAY)
    assert len(rows) == 2
    for r in rows:
        assert r.ok, r.reason
        plans = [((r.extra.get(f"diag_{side}") or {}).get("params") or {}).get("horizons") for side in "ab"]
        assert plans[0] is not None and plans[0] == plans[1], plans
        first, second = plans[0]
        assert first < 1.0 and second < 1.0, plans  # without the fresh samples: DELAY + ~1.2 s
