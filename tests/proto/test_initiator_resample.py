"""A connect the server held long asks its initiator for fresh samples (rendezvous/held.py): the
threshold, an older client on the old path, the timeout, hostile frames, both sessions alike."""

from __future__ import annotations

import pytest

from nattrav.api.endpoint import node_info
from nattrav.proto.planner.horizon import AGE, HELD, measured_ages
from nattrav.proto.rendezvous.beacon import make_beacon, offer_beacon
from nattrav.proto.rendezvous.held import RESAMPLE_AFTER, RESAMPLE_RTTS, TAKES_RESAMPLE, HoldBook, fresh_wanted
from tests.proto.test_rendezvous_state import Harness
from tests.reports import udp

FIRST = {"rtt": 0.1, AGE: 0.3, "takes_beacon": True, TAKES_RESAMPLE: True}
SECOND = {"rtt": 0.12, AGE: 0.05}


def test_fresh_wanted_past_the_floor_and_five_of_both_round_trips():
    # wan50's round trips (0.1 + 0.12 s): 1.1 s, what a quick accept's 0.6-0.75 s hold stays below
    assert not fresh_wanted(0.75, FIRST, SECOND)  # a quick accept pays nothing
    assert not fresh_wanted(RESAMPLE_RTTS * 0.22, FIRST, SECOND)
    assert fresh_wanted(RESAMPLE_RTTS * 0.22 + 0.01, FIRST, SECOND)
    slow = {**FIRST, "rtt": 0.4}  # 5 x (0.4 + 0.12) = 2.6 s: the fresh sample would cost more than it saves
    assert not fresh_wanted(2.5, slow, SECOND) and fresh_wanted(2.7, slow, SECOND)
    # short round trips: the sample costs milliseconds, and a hold past the floor is all age (a
    # listener pacing its budget held back-to-back connects ~0.9 s at zero delay)
    near, near_too = {**FIRST, "rtt": 0.002}, {**SECOND, "rtt": 0.003}
    assert not fresh_wanted(RESAMPLE_AFTER, near, near_too)
    assert fresh_wanted(RESAMPLE_AFTER + 0.01, near, near_too) and fresh_wanted(0.9, near, near_too)


@pytest.mark.parametrize("first, second, held", [
    ({k: v for k, v in FIRST.items() if k != TAKES_RESAMPLE}, SECOND, 3.0),  # an older initiator
    ({**FIRST, TAKES_RESAMPLE: 1}, SECOND, 3.0),  # only True says it
    ({k: v for k, v in FIRST.items() if k != AGE}, SECOND, 3.0),  # no AGE: no HELD to shrink
    (FIRST, {"rtt": 0.12}, 3.0),
    (FIRST, SECOND, None), ("junk", SECOND, 3.0), (FIRST, [], 3.0),
    ({**FIRST, "rtt": float("nan")}, SECOND, 0.4),  # a bad round trip counts 0: the floor still holds
])
def test_fresh_wanted_not_for_older_or_hostile_infos(first, second, held):
    assert not fresh_wanted(held, first, second)


def test_hold_book_peek_and_restart():
    book = HoldBook()
    book.offered("o", 10.0, 20.0)
    assert book.peek("o", 13.0) == pytest.approx(3.0) and book.peek("x", 13.0) is None
    book.restart("o", 13.0)
    book.restart("x", 13.0)  # not noted: nothing
    assert len(book) == 1 and book.take("o", 13.25) == pytest.approx(0.25)


def test_node_info_says_it_takes_a_resample_only_with_a_udp_report():
    assert node_info(udp("APDM", "APDF", [20000, 20001]), 0.1)[TAKES_RESAMPLE] is True


def _accepted(h: Harness, info_a: dict, info_b: dict, delay: float) -> tuple[int, int, str]:
    """a connects to bob, who accepts `delay` s later with a beacon (that arrives at once)."""
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    h.enroll(a, info=info_a)
    h.enroll(b, name="bob", info=info_b)
    h.send(a, "connect", id=7, target="bob")
    offer = h.one(b, "offer")
    secret, _ = offer_beacon(offer["info"])
    h.advance(delay)
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.server.beacon_received(make_beacon(secret, offer["offer"]), ("203.0.113.20", 50123), h.now)
    h._collect()
    return a, b, offer["offer"]


def test_a_quick_accept_starts_on_the_beacon_as_before():
    h = Harness(beacon_port=7001)
    a, b, _ = _accepted(h, FIRST, SECOND, 0.2)
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["info"][HELD] == sb["info"][HELD] == pytest.approx(0.2)
    assert h.server.stats["initiator_resamples"] == 0


def test_a_late_accept_asks_the_initiator_then_the_listener_and_held_counts_from_the_fresh_info():
    h = Harness(beacon_port=7001)
    a, b, offer = _accepted(h, FIRST, SECOND, 3.0)
    asked = h.one(a, "resample")  # the answer to its connect (id 7)
    assert asked["id"] == 7 and asked["session"] == offer
    assert h.pop(b) == []  # the listener's beacon is not used: it would be old by now
    h.advance(0.15)
    h.send(a, "sampled", id=9, offer=offer, info={**FIRST, AGE: 0.04, "rtt": 0.1})
    assert h.pop(a) == [] and h.one(b, "resample")["session"] == offer
    h.advance(0.2)  # the listener's STUN round trip
    h.send(b, "sampled", id=10, offer=offer, info={**SECOND, AGE: 0.03})
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["id"] == 9 and sb["id"] == 10  # each answers its own "sampled"
    assert sa["info"][HELD] == sb["info"][HELD] == pytest.approx(0.2)
    assert sb["info"][AGE] == 0.04 and sb["info"]["observed"] == ["203.0.113.10", 1]  # the server's word
    margin = 0.1
    first, second = measured_ages(sb["info"], sa["info"], sa["info"][HELD], margin)
    assert first == pytest.approx(0.04 + 0.05 + 0.2 + margin + 0.1) and first < 1.0
    assert second == pytest.approx(0.03 + 0.06 + margin + 0.1)
    assert h.server.stats["initiator_resamples"] == 1 and h.server.stats["beacon_fallbacks"] == 0


def test_no_answer_in_time_starts_with_the_old_info_and_the_whole_hold():
    h = Harness(beacon_port=7001, initiator_wait=1.0)
    a, b, offer = _accepted(h, FIRST, SECOND, 3.0)
    assert [m["t"] for m in h.pop(a)] == ["resample"]
    h.advance(1.0)
    assert h.one(b, "resample")["session"] == offer and h.server.stats["initiator_timeouts"] == 1
    h.send(a, "sampled", id=7, offer=offer, info=FIRST)  # too late, under its connect's id: no reply,
    assert h.pop(a) == []  # the session answers that id (a client waits for it there)
    h.send(a, "sampled", id=9, offer=offer, info=FIRST)  # any other: refused, moves nothing
    assert h.one(a, "error")["code"] == "unknown-offer"
    h.send(b, "sampled", id=10, offer=offer, info=SECOND)
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["id"] == 7 and sa["info"][HELD] == sb["info"][HELD] == pytest.approx(4.0)
    assert sb["info"][AGE] == FIRST[AGE]


@pytest.mark.parametrize("first", [
    {k: v for k, v in FIRST.items() if k != TAKES_RESAMPLE},  # an older initiator: never a new frame
    {k: v for k, v in FIRST.items() if k != AGE},
])
def test_an_older_initiator_gets_nothing_new(first):
    h = Harness(beacon_port=7001)
    a, b, _ = _accepted(h, first, SECOND, 3.0)
    assert [m["t"] for m in h.pop(a)] == ["session"] and h.server.stats["initiator_resamples"] == 0


def test_without_a_beacon_or_when_disabled_as_before():
    h = Harness(beacon_port=7001, resample_after=None)
    a, b, _ = _accepted(h, FIRST, SECOND, 3.0)
    assert [m["t"] for m in h.pop(a)] == ["session"]
    h = Harness(beacon_port=7001)
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    h.enroll(a, info=FIRST)
    h.enroll(b, name="bob", info=SECOND)
    h.send(a, "connect", id=7, target="bob")
    offer = h.one(b, "offer")
    h.advance(3.0)
    h.send(b, "accept", id=8, offer=offer["offer"])  # a listener that takes no resample
    assert [m["t"] for m in h.pop(a)] == ["session"]


def test_only_the_initiator_on_its_own_connection_may_answer():
    h = Harness(beacon_port=7001)
    a, b, offer = _accepted(h, FIRST, SECOND, 3.0)
    h.pop(a)
    h.send(b, "sampled", id=11, offer=offer, info=SECOND)  # the listener, out of turn
    assert h.one(b, "error")["code"] == "unknown-offer"
    m = h.open(("198.51.100.66", 3))
    h.enroll(m, name="mallory", info=FIRST)
    h.send(m, "sampled", id=12, offer=offer, info=FIRST)
    assert h.one(m, "error")["code"] == "unknown-offer"
    h.send(a, "sampled", id=13, offer="nonesuch", info=FIRST)
    assert h.one(a, "error")["code"] == "unknown-offer"
    h.send(a, "sampled", id=9, offer=offer, info={**FIRST, HELD: 9.0, AGE: 0.04})  # its own HELD: stripped
    h.send(a, "sampled", id=14, offer=offer, info=FIRST)  # a second answer: refused
    assert h.one(a, "error")["code"] == "unknown-offer"
    assert h.one(b, "resample")["session"] == offer
    h.send(b, "sampled", id=10, offer=offer, info=SECOND)
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["info"][HELD] == sb["info"][HELD] == 0.0 and sb["info"][AGE] == 0.04


def test_the_listener_leaving_meanwhile_tells_the_initiator():
    h = Harness(beacon_port=7001)
    a, b, offer = _accepted(h, FIRST, SECOND, 3.0)
    h.pop(a)
    h.lose(b)
    assert h.one(a, "error")["code"] == "offline"
    h.send(a, "sampled", id=9, offer=offer, info=FIRST)
    assert h.one(a, "error")["code"] == "unknown-offer"


def test_a_beaconless_listener_that_takes_a_resample_samples_after_the_initiator():
    h = Harness(beacon_port=7001)
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    h.enroll(a, info=FIRST)
    h.enroll(b, name="bob", info=SECOND)
    h.send(a, "connect", id=7, target="bob")
    offer = h.one(b, "offer")["offer"]
    h.advance(3.0)
    h.send(b, "info", id=4, info={**SECOND, TAKES_RESAMPLE: True})  # (a client publishes it with the accept)
    h.one(b, "ok")
    h.send(b, "accept", id=8, offer=offer)
    assert h.one(a, "resample")["session"] == offer and h.pop(b) == []
    h.advance(0.1)
    h.send(a, "sampled", id=9, offer=offer, info={**FIRST, AGE: 0.04})
    assert h.one(b, "resample")["session"] == offer
    h.advance(0.1)
    h.send(b, "sampled", id=10, offer=offer, info={**SECOND, AGE: 0.02})
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["info"][HELD] == sb["info"][HELD] == pytest.approx(0.1) and "sample" not in sb


def test_the_initiator_leaving_meanwhile_tells_the_listener():
    h = Harness(beacon_port=7001)
    a, b, offer = _accepted(h, FIRST, SECOND, 3.0)
    h.pop(a)
    h.lose(a)
    answer = h.one(b, "error")  # its accept's answer
    assert answer["id"] == 8 and answer["code"] == "offline"
    assert h.server._held == {}
    h.advance(2.0)  # no timer left to fire
    assert h.pop(b) == []
