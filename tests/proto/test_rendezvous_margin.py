"""The session's start margin, sans-IO: the larger of the two peers' reported round trips to the
server (node info "rtt"), times a factor (0.5 by default: the one-way delay), plus the client's slack,
within bounds; the old fixed margin for peers that report nothing or nonsense."""

from __future__ import annotations

import math

import pytest

from nattrav.proto.rendezvous import reported_rtt, start_margin
from nattrav.proto.rendezvous.clock import START_SLACK

from tests.proto.test_rendezvous_state import Harness

BOUNDS = dict(default=0.5, floor=0.02, factor=1.0, ceiling=2.0, slack=0.0)


def session_margin(h: Harness, info_a: dict | None, info_b: dict | None, *, via_info_update: bool = False) -> float:
    """start_at - accept time for a session between a peer enrolled with info_a and one with info_b."""
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    if via_info_update:
        h.enroll(a)
        h.enroll(b, name="bob")
        for conn, info in ((a, info_a), (b, info_b)):
            if info is not None:
                h.send(conn, "info", id=2, info=info)
                h.one(conn, "ok")
    else:
        h.enroll(a, **({"info": info_a} if info_a is not None else {}))
        h.enroll(b, name="bob", **({"info": info_b} if info_b is not None else {}))
    h.send(a, "connect", id=7, target="bob")
    offer = h.one(b, "offer")
    h.advance(0.25)
    h.send(b, "accept", id=3, offer=offer["offer"])
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["start_at"] == sb["start_at"]
    return sa["start_at"] - h.now


def test_margin_follows_the_larger_round_trip():
    # both frames take about half their round trip to arrive: the later one's plus the slack
    h = Harness()
    assert session_margin(h, {"rtt": 0.08}, {"rtt": 0.12}) == pytest.approx(0.06 + START_SLACK)


def test_margin_on_a_fast_path_is_the_slack():
    h = Harness()
    assert session_margin(h, {"rtt": 0.0004}, {"rtt": 0.004}) == pytest.approx(0.002 + START_SLACK)
    assert session_margin(Harness(), {"rtt": 0.0}, {"rtt": 0.001}) == pytest.approx(0.005)  # the floor


def test_default_margin_is_well_under_the_old_rule():
    # the old default (1 x the larger round trip, 20 ms floor) waited a whole extra one-way delay
    for rtt in (0.001, 0.02, 0.11, 0.3):
        new = session_margin(Harness(), {"rtt": rtt}, {"rtt": rtt})
        assert rtt / 2 < new < max(0.02, rtt)


def test_margin_has_a_ceiling_whatever_a_peer_claims():
    h = Harness()
    assert session_margin(h, {"rtt": 0.01}, {"rtt": 59.0}) == pytest.approx(2.0)


def test_the_info_update_before_connect_carries_the_round_trip():
    h = Harness()
    assert session_margin(h, {"rtt": 0.2}, {"rtt": 0.1}, via_info_update=True) == pytest.approx(0.1 + START_SLACK)


@pytest.mark.parametrize("info_a, info_b", [
    (None, None),  # old clients on both sides
    ({"rtt": 0.01}, None),  # one old client: its round trip is unknown
    ({"nat": "x"}, {"rtt": 0.01}),
])
def test_peers_that_say_nothing_get_the_old_margin(info_a, info_b):
    h = Harness(start_margin=0.5)
    assert session_margin(h, info_a, info_b) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [-0.1, 61.0, "0.1", True, None, [0.1], {"x": 1}])
def test_nonsense_round_trips_count_as_unsaid(bad):
    h = Harness(start_margin=0.5)
    assert session_margin(h, {"rtt": bad}, {"rtt": 0.01}) == pytest.approx(0.5)


def test_server_options_set_the_rule():
    h = Harness(start_margin=0.7, min_start_margin=0.2, start_margin_factor=2.0, max_start_margin=1.0)
    assert session_margin(h, {"rtt": 0.15}, {"rtt": 0.3}) == pytest.approx(0.6 + START_SLACK)
    h2 = Harness(start_margin=0.7, min_start_margin=0.2, start_margin_factor=2.0, max_start_margin=1.0)
    assert session_margin(h2, {"rtt": 0.01}, {"rtt": 0.02}) == pytest.approx(0.2)


def test_start_margin_is_pure():
    assert start_margin([0.1, 0.3], **BOUNDS) == pytest.approx(0.3)
    assert start_margin([0.3, None], **BOUNDS) == 0.5
    assert start_margin([], **BOUNDS) == 0.5
    assert start_margin([0.0, 0.0], **BOUNDS) == 0.02
    assert start_margin([10.0, 0.1], **BOUNDS) == 2.0
    assert start_margin([0.1, 0.3], **{**BOUNDS, "factor": 0.5, "slack": 0.004}) == pytest.approx(0.154)
    assert start_margin([0.1, 0.3], default=0.5, floor=0.0, factor=0.5, ceiling=2.0) == pytest.approx(0.15 + START_SLACK)


@pytest.mark.parametrize("info, expected", [
    ({"rtt": 0.05}, 0.05), ({"rtt": 0}, 0.0), ({"rtt": 60}, 60.0),
    ({"rtt": math.nan}, None), ({"rtt": math.inf}, None), ({"rtt": -1e-9}, None), ({"rtt": 60.5}, None),
    ({"rtt": False}, None), ({}, None), (None, None), ("rtt", None), ([("rtt", 0.1)], None),
])
def test_reported_rtt_reads_only_a_sane_number(info, expected):
    assert reported_rtt(info) == expected
