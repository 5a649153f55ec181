"""Each side's prediction horizon from the published round trips and the server's margin
(proto/planner/horizon.py), and what it does to a predicted plan's windows."""

from __future__ import annotations

import math

import pytest

from nattrav.proto.planner.horizon import SLACK, sample_ages
from nattrav.proto.planner.side import DEFAULT_HORIZON
from nattrav.proto.planner.udp import plan
from tests.reports import udp

CONE = udp("EIM", "APDF", [40000, 40000], ip="198.51.100.20", times=[0.0, 0.001], allocation="preserve", delta=0)
# a sequential symmetric listener that saw no foreign flow in its samples, spread over 0.1 s
SEQ = udp("APDM", "APDF", [20000, 20001, 20003, 20004], times=[0.0, 0.001, 0.1, 0.101], allocation="sequential",
          delta=1)


def test_the_listener_sampled_last_so_its_horizon_is_the_shorter():
    first, second = sample_ages(0.1, 0.1, 0.1, DEFAULT_HORIZON)
    assert second == pytest.approx(1.5 * 0.1 + 0.1 + SLACK)
    assert first == pytest.approx(2.5 * 0.1 + 2 * 0.1 + 0.1 + SLACK)
    assert second < first <= DEFAULT_HORIZON


def test_never_beyond_the_cap_and_unknown_is_none():
    assert sample_ages(3.0, 3.0, 1.0, DEFAULT_HORIZON) == (DEFAULT_HORIZON, DEFAULT_HORIZON)
    for bad in (None, "0.1", math.nan, math.inf, -0.1, 11.0, True):
        assert sample_ages(bad, 0.1, 0.02, 1.0) is None
        assert sample_ages(0.1, bad, 0.02, 1.0) is None
        assert sample_ages(0.1, 0.1, bad, 1.0) is None


@pytest.mark.parametrize("role", ["first", "second"])
def test_a_short_horizon_narrows_the_window_and_both_sides_agree(role):
    """At zero delay the listener's refresh is ~25 ms old at the start: the window it needs is a
    fraction of the one a whole second of the prior's rate takes, at the same target."""
    ages = sample_ages(0.001, 0.001, 0.02, DEFAULT_HORIZON)
    local, remote = (CONE, SEQ) if role == "first" else (SEQ, CONE)
    wide = plan(local, remote, role)
    narrow = plan(local, remote, role, horizons=ages)
    mirror = plan(remote, local, "second" if role == "first" else "first", horizons=ages)
    w = [max(len(p.primary.local.targets), len(p.primary.remote.targets)) for p in (wide, narrow, mirror)]
    assert w[1] < w[0] / 2, w
    assert w[1] == w[2] and narrow.odds == pytest.approx(mirror.odds)
    assert narrow.odds >= 0.999 and wide.odds >= 0.999
