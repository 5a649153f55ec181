"""The measured sample ages (planner/horizon.py measured_ages) and the server's hold on a connect
(rendezvous/held.py): hostile values bounded, an older peer or server on the old guess, both peers
reading the same horizons from what each receives."""

from __future__ import annotations

import math

import pytest

from nattrav.api.endpoint import node_info, published_age
from nattrav.api.udp import session_horizons
from nattrav.io.session import Session
from nattrav.proto.planner.horizon import (AGE, HELD, MAX_AGE, MAX_HELD, MAX_MEASURED, SLACK, measured_ages,
                                           sample_ages)
from nattrav.proto.planner.side import DEFAULT_HORIZON
from nattrav.proto.planner.udp import plan
from nattrav.proto.rendezvous.beacon import make_beacon, offer_beacon
from nattrav.proto.rendezvous.held import HoldBook
from nattrav.proto.report import Sample
from nattrav.proto.vocab import Role
from tests.proto.test_rendezvous_state import Harness
from tests.reports import udp

FIRST = {"rtt": 0.1, AGE: 0.3}
SECOND = {"rtt": 0.12, AGE: 0.05}

# a sequential symmetric NAT that saw no foreign flow in 0.1 s of samples, and a port-restricted one
SEQ = udp("APDM", "APDF", [20000, 20001, 20003, 20004], times=[0.0, 0.001, 0.1, 0.101], allocation="sequential",
          delta=1)
PRC = udp("EIM", "APDF", [40000, 40000], ip="198.51.100.20", times=[0.0, 0.001], allocation="preserve", delta=0)


def test_the_initiator_age_counts_the_server_hold_the_listener_age_does_not():
    first, second = measured_ages(FIRST, SECOND, 2.5, 0.06)
    assert first == pytest.approx(0.3 + 0.05 + 2.5 + 0.06 + SLACK)
    assert second == pytest.approx(0.05 + 0.06 + 0.06 + SLACK)


def test_a_late_listener_is_no_longer_capped_at_a_second():
    """3.4 s held (a late accept, as seen over wan50): the guess stays at the 1 s cap, the measured
    age is the real one."""
    guess = sample_ages(0.1, 0.12, 0.06, DEFAULT_HORIZON)
    measured = measured_ages(FIRST, SECOND, 3.4, 0.06)
    assert guess[0] <= DEFAULT_HORIZON < 3.4 < measured[0]


@pytest.mark.parametrize("bad", [None, "0.1", math.nan, math.inf, -0.01, True, [0.1], {"x": 1}])
def test_any_hostile_or_missing_value_means_the_old_guess(bad):
    assert measured_ages({**FIRST, AGE: bad}, SECOND, 1.0, 0.06) is None
    assert measured_ages(FIRST, {**SECOND, AGE: bad}, 1.0, 0.06) is None
    assert measured_ages({**FIRST, "rtt": bad}, SECOND, 1.0, 0.06) is None
    assert measured_ages(FIRST, SECOND, bad, 0.06) is None
    assert measured_ages(FIRST, SECOND, 1.0, bad) is None
    assert measured_ages(None, SECOND, 1.0, 0.06) is None and measured_ages(FIRST, "x", 1.0, 0.06) is None


def test_each_value_is_bounded_and_so_is_the_sum():
    assert measured_ages({**FIRST, AGE: MAX_AGE + 0.01}, SECOND, 1.0, 0.06) is None
    assert measured_ages(FIRST, SECOND, MAX_HELD + 0.01, 0.06) is None
    most = {"rtt": 10.0, AGE: MAX_AGE}
    assert measured_ages(most, most, MAX_HELD, 10.0) == (MAX_MEASURED, pytest.approx(MAX_AGE + 5 + 10 + SLACK))
    assert measured_ages({"rtt": 0, AGE: 0}, {"rtt": 0, AGE: 0}, 0, 0) == (SLACK, SLACK)


def _sessions(first_info: dict, second_info: dict, held: float | None, margin: float = 0.06) -> tuple[Session, Session]:
    """Both peers' sessions as the server hands them out: each gets the other's info, with HELD in
    it when the server stated one."""
    def stamped(info: dict) -> dict:
        return {**info, HELD: held} if held is not None else dict(info)
    a = Session(b"k" * 32, Role.FIRST, own_info=first_info, peer_info=stamped(second_info), margin=margin)
    b = Session(b"k" * 32, Role.SECOND, own_info=second_info, peer_info=stamped(first_info), margin=margin)
    return a, b


def test_both_peers_derive_the_same_horizons():
    a, b = _sessions(FIRST, SECOND, 1.7)
    assert session_horizons(a, DEFAULT_HORIZON) == session_horizons(b, DEFAULT_HORIZON) \
        == measured_ages(FIRST, SECOND, 1.7, 0.06)


@pytest.mark.parametrize("first, second, held", [
    ({"rtt": 0.1}, SECOND, 1.7),  # an older initiator: no age
    (FIRST, {"rtt": 0.12}, 1.7),  # an older listener
    (FIRST, SECOND, None),  # an older server: no hold stated
])
def test_an_older_peer_or_server_keeps_the_guess_on_both_sides(first, second, held):
    a, b = _sessions(first, second, held)
    old = sample_ages(0.1, 0.12, 0.06, DEFAULT_HORIZON)
    assert session_horizons(a, DEFAULT_HORIZON) == session_horizons(b, DEFAULT_HORIZON) == old


def test_the_measured_age_widens_the_window_and_both_plans_agree():
    """A 3 s hold: the windows aimed at the initiator's sequential NAT are sized for ~3.5 s, wider
    than the capped guess's; both halves of the plan are the same."""
    a, b = _sessions(FIRST, SECOND, 3.0)
    guessed = plan(SEQ, PRC, "first", horizons=sample_ages(0.1, 0.12, 0.06, DEFAULT_HORIZON))
    mine = plan(SEQ, PRC, "first", horizons=session_horizons(a, DEFAULT_HORIZON))
    theirs = plan(PRC, SEQ, "second", horizons=session_horizons(b, DEFAULT_HORIZON))
    width = [len(p.primary.remote.targets) for p in (guessed, mine)] + [len(theirs.primary.local.targets)]
    assert width[0] < width[1] == width[2], width
    assert mine.odds == pytest.approx(theirs.odds)


# --- what a peer publishes ----------------------------------------------------------------------------

class _Ep:
    def __init__(self, t0: float, times: list[float | None]) -> None:
        self.t0 = t0
        self.report = udp("APDM", "APDF", [20000 + i for i in range(len(times))], allocation="sequential",
                          delta=1, times=times) if None not in times else \
            udp("APDM", "APDF", [20000 + i for i in range(len(times))], allocation="sequential", delta=1)


def test_published_age_is_from_the_newest_sample_or_the_beacon(autojump_clock):
    import trio

    async def main():
        ep = _Ep(trio.current_time(), [0.0, 0.2])
        await trio.sleep(1.0)
        assert published_age(ep) == pytest.approx(0.8)
        assert published_age(ep, beacon_at=0.9) == pytest.approx(0.1)  # the beacon left later
        assert published_age(_Ep(0.0, [None, None])) is None  # untimed samples: no age
        ep.t0 = trio.current_time() + 5  # a clock that ran backwards never gives a negative age
        assert published_age(ep) == 0.0
    trio.run(main, clock=autojump_clock)


def test_node_info_carries_the_age_only_when_known():
    assert AGE not in node_info(SEQ, 0.1)
    assert node_info(SEQ, 0.1, 0.25)[AGE] == 0.25


# --- the server's hold ----------------------------------------------------------------------------

def test_the_hold_book_is_bounded_and_forgets():
    book = HoldBook(max_entries=3)
    for i in range(5):
        book.offered(f"o{i}", 10.0 + i, 100.0)
    assert len(book) == 3 and book.take("o0", 20.0) is None and book.take("o4", 20.5) == pytest.approx(6.5)
    assert book.take("o4", 21.0) is None  # taken once
    book.forget("o2")
    assert len(book) == 1
    book = HoldBook()
    book.offered("early", 30.0, 31.0)
    book.offered("next", 40.0, 200.0)  # the expired ones at the front go
    assert book.take("early", 40.0) is None and len(book) == 1


def _connect(h: Harness, info_a: dict, info_b: dict) -> tuple[int, int, dict]:
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    h.enroll(a, info=info_a)
    h.enroll(b, name="bob", info=info_b)
    h.send(a, "connect", id=7, target="bob")
    return a, b, h.one(b, "offer")


def test_the_server_states_its_hold_in_both_sessions():
    h = Harness()
    a, b, offer = _connect(h, FIRST, SECOND)
    h.advance(2.25)  # a listener slow to accept
    h.send(b, "accept", id=3, offer=offer["offer"])
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["info"][HELD] == sb["info"][HELD] == pytest.approx(2.25)
    assert sa["info"][AGE] == SECOND[AGE] and sb["info"][AGE] == FIRST[AGE]


def test_the_hold_counts_a_beacon_wait():
    h = Harness(beacon_port=7001)
    a, b, offer = _connect(h, {**FIRST, "takes_beacon": True}, SECOND)
    secret, _ = offer_beacon(offer["info"])
    h.advance(0.5)
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.advance(0.02)
    assert h.server.beacon_received(make_beacon(secret, offer["offer"]), ("203.0.113.20", 50123), h.now)
    h._collect()
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["info"][HELD] == sb["info"][HELD] == pytest.approx(0.52)


@pytest.mark.parametrize("info_a, info_b", [({"rtt": 0.1}, SECOND), (FIRST, {"rtt": 0.1})])
def test_no_hold_for_an_older_client_and_a_peer_cannot_state_one(info_a, info_b):
    h = Harness()
    a, b, offer = _connect(h, {**info_a, HELD: 0.0}, {**info_b, HELD: 9.0})  # their own words: stripped
    assert HELD not in offer["info"]
    h.advance(1.0)
    h.send(b, "accept", id=3, offer=offer["offer"])
    assert HELD not in h.one(a, "session")["info"] and HELD not in h.one(b, "session")["info"]


def test_a_refused_offer_leaves_no_hold_behind():
    h = Harness()
    a, b, offer = _connect(h, FIRST, SECOND)
    assert len(h.server.holds) == 1
    h.send(b, "refuse", id=3, offer=offer["offer"])
    assert len(h.server.holds) == 0
