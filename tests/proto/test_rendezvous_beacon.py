"""The sample beacon (proto/rendezvous/beacon.py) without sockets: the datagram, the book's checks,
the report fold both peers make, and the server front's held session (beacon, else samples)."""

from __future__ import annotations

import random

import msgpack
import pytest

from nattrav.proto.rendezvous.beacon import (
    MAGIC,
    MAX_BEACON,
    BadBeacon,
    BeaconBook,
    add_to_packed_map,
    fold_sample,
    make_beacon,
    offer_beacon,
    parse_beacon,
    session_beacon,
)
from nattrav.proto.rendezvous.observe import make_ticket
from nattrav.proto.report import NatReport, Sample
from nattrav.proto.vocab import Mapping

from tests.proto.test_rendezvous_state import Harness

SECRET = bytes(range(16))
LISTENER = ("203.0.113.20", 42000)  # the listener's TCP connection as the server sees it


# --- the datagram --------------------------------------------------------------------------------

def test_a_beacon_round_trips_and_stays_small():
    data = make_beacon(SECRET, "offer-1")
    assert data.startswith(MAGIC) and len(data) <= MAX_BEACON
    offer_id, tag = parse_beacon(data)
    assert offer_id == "offer-1" and len(tag) == 16


def test_a_beacon_is_never_a_stun_message():
    # the first two bits of a STUN message are 0: the two kinds cannot be confused
    assert make_beacon(SECRET, "x")[0] & 0xC0 != 0


@pytest.mark.parametrize("data", [b"", b"NTB1", MAGIC + b"\x05abc" + bytes(16), MAGIC + b"\x03\xff\xfe\xfd" + bytes(16),
                                  b"XXXX\x01a" + bytes(16), MAGIC + bytes(200), "text", None])
def test_malformed_beacons_raise_bad_beacon_only(data):
    with pytest.raises(BadBeacon):
        parse_beacon(data)


def test_random_bytes_raise_bad_beacon_only():
    rng = random.Random(7)
    book = BeaconBook()
    book.expect("o1", 1, "bob", SECRET, 100.0, 0.0)
    good = make_beacon(SECRET, "o1")
    for _ in range(3000):
        n = rng.randrange(0, 120)
        data = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5:  # mutations of a real beacon reach the deeper checks
            buf = bytearray(good)
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            data = bytes(buf)
        try:
            book.take(data, (LISTENER[0], 5000), 1.0, lambda e: {LISTENER[0]})
        except BadBeacon:
            continue
        assert data == good  # only the true beacon passes (once)
    assert book.stats["beacons"] <= 1


# --- the book's checks ---------------------------------------------------------------------------

def _book() -> BeaconBook:
    book = BeaconBook()
    book.expect("o1", 1, "bob", SECRET, 100.0, 0.0)
    return book


def _ips(entry):
    return {LISTENER[0]}


def test_a_valid_beacon_records_its_source_as_the_sample():
    book = _book()
    entry = book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 5001), 1.0, _ips)
    assert entry.sample == (LISTENER[0], 5001) and entry.offer_id == "o1"


def test_a_beacon_under_another_secret_is_refused():
    book = _book()
    with pytest.raises(BadBeacon, match="tag"):
        book.take(make_beacon(bytes(16), "o1"), (LISTENER[0], 5001), 1.0, _ips)
    assert book.get("o1").sample is None and book.stats["beacon_forged"] == 1


def test_a_beacon_for_a_foreign_offer_is_refused():
    book = _book()
    book.expect("o2", 2, "carol", bytes(16), 100.0, 0.0)
    # o1's secret over o2's ID, and a valid beacon of an offer this front never delivered
    with pytest.raises(BadBeacon):
        book.take(make_beacon(SECRET, "o2"), (LISTENER[0], 5001), 1.0, _ips)
    with pytest.raises(BadBeacon, match="no such offer"):
        book.take(make_beacon(SECRET, "o9"), (LISTENER[0], 5001), 1.0, _ips)


def test_a_beacon_from_an_ip_never_observed_is_refused():
    book = _book()
    with pytest.raises(BadBeacon, match="never saw"):
        book.take(make_beacon(SECRET, "o1"), ("192.0.2.66", 5001), 1.0, _ips)
    assert book.get("o1").sample is None  # the true beacon still counts after a spoofed one
    assert book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 5002), 1.0, _ips).sample == (LISTENER[0], 5002)


def test_a_replayed_beacon_moves_nothing():
    book = _book()
    book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 5001), 1.0, _ips)
    with pytest.raises(BadBeacon, match="taken"):
        book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 6000), 1.1, _ips)
    assert book.get("o1").sample == (LISTENER[0], 5001) and book.stats["beacon_replayed"] == 1


def test_an_expired_or_closed_offer_takes_no_beacon():
    book = _book()
    with pytest.raises(BadBeacon):
        book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 5001), 100.0, _ips)
    book = _book()
    book.get("o1").closed = True
    with pytest.raises(BadBeacon):
        book.take(make_beacon(SECRET, "o1"), (LISTENER[0], 5001), 1.0, _ips)


def test_the_book_is_bounded():
    book = BeaconBook(max_expected=8)
    for k in range(100):
        book.expect(f"o{k}", k, "p", SECRET, 1000.0, 0.0)
    assert len(book) == 8 and book.get("o99") is not None and book.get("o0") is None
    book.expect("late", 1, "p", SECRET, 2000.0, 1500.0)  # the expired ones go as new ones come
    assert len(book) == 1


# --- node info -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 14, 15, 16, 100, 65535])
def test_a_key_is_added_to_a_packed_map_of_any_size(n):
    base = {f"k{i}": i for i in range(n)}
    packed = add_to_packed_map(msgpack.packb(base, use_bin_type=True), "beacon", ["1.2.3.4", 5])
    assert msgpack.unpackb(packed, raw=False) == {**base, "beacon": ["1.2.3.4", 5]}


def test_offer_beacon_needs_an_initiator_that_folds_it():
    info = {"beacon_key": SECRET, "beacon_port": 7001}
    assert offer_beacon(info) is None  # an older initiator: it would plan on our stale samples
    assert offer_beacon({**info, "takes_beacon": True}) == (SECRET, 7001)
    assert offer_beacon({**info, "takes_beacon": True, "beacon_key": b"short"}) is None
    assert offer_beacon({**info, "takes_beacon": True, "beacon_port": 0}) is None
    assert offer_beacon("junk") is None


def test_session_beacon_reads_the_server_sample_and_the_peer_time():
    assert session_beacon({"beacon": ["203.0.113.20", 5001], "beacon_at": 2.5}) == (("203.0.113.20", 5001), 2.5)
    assert session_beacon({"beacon": ["203.0.113.20", 5001], "beacon_at": float("nan")}) == (
        ("203.0.113.20", 5001), None)
    for bad in ({"beacon": ["x", 1]}, {"beacon": ["1.2.3.4", 0]}, {"beacon": "1.2.3.4"}, {}, None):
        assert session_beacon(bad) is None


def _report(public=("203.0.113.20", 40010), samples=(Sample(40006, 0.0), Sample(40010, 0.002))) -> NatReport:
    return NatReport(mapping=Mapping.APDM, delta=4, public=public, samples=samples)


def test_fold_adds_the_beacon_as_the_newest_sample_on_the_same_ip():
    folded = fold_sample(_report(), ("203.0.113.20", 40030), 9.0)
    assert folded.samples[-1] == Sample(40030, 9.0) and folded.public == ("203.0.113.20", 40030)
    assert fold_sample(_report(), ("203.0.113.99", 40030), 9.0) == _report()  # a pool's other IP: nothing
    # a time out of order is the last sample's: the listener's word cannot run the clock backwards
    assert fold_sample(_report(), ("203.0.113.20", 40030), 0.001).samples[-1].t == 0.002


def test_fold_keeps_the_report_valid_on_the_wire():
    folded = fold_sample(_report(), ("203.0.113.20", 40030), 9.0)
    assert NatReport.from_wire(folded.to_wire()) == folded


# --- the server front ----------------------------------------------------------------------------

def _pair(h: Harness, listener_info: dict | None = None) -> tuple[int, int, str, dict]:
    """a (initiator) connects to b (listener, at LISTENER); b's offer."""
    a = h.open(("198.51.100.10", 41000))
    b = h.open(LISTENER)
    h.enroll(a, info={"report": "ra", "takes_beacon": True})
    h.enroll(b, name="bob", info=listener_info or {"report": "rb"})
    h.send(a, "connect", id=7, target="bob")
    return a, b, "bob", h.one(b, "offer")


def test_without_a_beacon_port_offers_carry_no_secret_and_accepts_start_at_once():
    h = Harness()
    a, b, _, offer = _pair(h)
    assert "beacon_key" not in offer["info"] and offer_beacon(offer["info"]) is None
    h.send(b, "accept", id=8, offer=offer["offer"])
    assert "sample" not in h.one(b, "session") and "beacon" not in h.one(a, "session")["info"]


def test_a_beacon_starts_the_held_session_with_its_sample():
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h)
    secret, port = offer_beacon(offer["info"])
    assert port == 7001
    h.send(b, "info", id=1, info={"report": "rb", "beacon_at": 3.0})
    h.one(b, "ok")
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    assert h.pop(a) == [] and h.pop(b) == []  # held
    h.advance(0.02)
    assert h.server.beacon_received(make_beacon(secret, offer["offer"]), (LISTENER[0], 50123), h.now)
    h._collect()
    mine = h.one(b, "session")
    theirs = h.one(a, "session")
    assert mine["id"] == 8 and mine["sample"] == [LISTENER[0], 50123]
    assert theirs["info"]["beacon"] == [LISTENER[0], 50123] and theirs["info"]["beacon_at"] == 3.0
    assert session_beacon(theirs["info"]) == ((LISTENER[0], 50123), 3.0)
    # the copies that follow are replays: they move nothing
    assert not h.server.beacon_received(make_beacon(secret, offer["offer"]), (LISTENER[0], 50999), h.now)
    h.advance(10)
    assert h.pop(a) == [] and h.pop(b) == []


def test_a_beacon_before_its_accept_starts_the_session_at_the_accept():
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h)
    secret, _ = offer_beacon(offer["info"])
    assert h.server.beacon_received(make_beacon(secret, offer["offer"]), (LISTENER[0], 50123), h.now)
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    assert h.one(b, "session")["sample"] == [LISTENER[0], 50123]
    assert h.one(a, "session")["info"]["beacon"] == [LISTENER[0], 50123]


def test_a_beacon_from_another_ip_is_refused_and_the_listener_is_asked_for_samples():
    h = Harness(beacon_port=7001, beacon_hold=0.06)
    a, b, _, offer = _pair(h)
    secret, _ = offer_beacon(offer["info"])
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    assert not h.server.beacon_received(make_beacon(secret, offer["offer"]), ("192.0.2.66", 50123), h.now)
    h.advance(0.07)
    assert h.one(b, "resample") == {"v": 1, "t": "resample", "id": 8, "session": offer["offer"]}
    assert h.pop(a) == []


def test_a_lost_beacon_falls_back_to_the_listener_samples():
    h = Harness(beacon_port=7001, beacon_hold=0.06)
    a, b, _, offer = _pair(h)
    secret, _ = offer_beacon(offer["info"])
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.advance(0.05)
    assert h.pop(b) == []
    h.advance(0.02)
    h.one(b, "resample")
    # decided: a late beacon must not move a port the samples are about to show
    assert not h.server.beacon_received(make_beacon(secret, offer["offer"]), (LISTENER[0], 50123), h.now)
    h.advance(0.1)
    h.send(b, "sampled", id=9, offer=offer["offer"],
           info={"report": "fresh", "beacon": ["192.0.2.66", 1], "observed": "forged"})
    mine, theirs = h.one(b, "session"), h.one(a, "session")
    assert mine["id"] == 9 and "sample" not in mine
    assert theirs["info"]["report"] == "fresh" and "beacon" not in theirs["info"]
    assert theirs["info"]["observed"] == list(LISTENER)
    assert h.server.stats["beacon_fallbacks"] == 1


def test_samples_nobody_asked_for_are_refused():
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h)
    h.send(b, "sampled", id=9, offer=offer["offer"], info={"report": "x"})
    assert h.one(b, "error")["code"] == "unknown-offer"
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.send(a, "sampled", id=9, offer=offer["offer"], info={"report": "x"})  # not the listener
    assert h.one(a, "error")["code"] == "unknown-offer"
    h.send(b, "sampled", id=10, offer=offer["offer"], info={"report": "x"})  # not asked yet
    assert h.one(b, "error")["code"] == "unknown-offer"


def test_a_listener_that_never_sends_samples_ends_the_offer():
    h = Harness(beacon_port=7001, beacon_hold=0.06, samples_wait=5.0)
    a, b, _, offer = _pair(h)
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.advance(0.07)
    h.one(b, "resample")
    h.advance(5.0)
    assert h.one(a, "error")["code"] == "timeout"
    assert h.one(b, "cancel")["offer"] == offer["offer"]


def test_the_listener_leaving_while_held_ends_the_initiator_wait():
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h)
    h.send(b, "accept", id=8, offer=offer["offer"], beacon=True)
    h.lose(b)
    err = h.one(a, "error")
    assert err["code"] == "offline" and err["id"] == 7
    h.advance(10)
    assert h.pop(a) == []


def test_a_peer_cannot_write_the_server_beacon_keys():
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h, {"report": "rb", "beacon": ["192.0.2.66", 9], "beacon_key": SECRET,
                                "beacon_port": 9})
    h.send(a, "info", id=3, info={"report": "ra", "takes_beacon": True, "beacon_key": bytes(16)})
    h.one(a, "ok")
    h.send(b, "accept", id=8, offer=offer["offer"])
    theirs = h.one(a, "session")
    assert "beacon" not in theirs["info"] and "beacon_key" not in theirs["info"]
    # the offer's secret is the server's own, whatever the initiator published
    assert offer["info"]["beacon_key"] != bytes(16)


def test_a_beacon_from_the_punch_socket_ip_observed_over_udp_is_taken():
    # a NAT with an address pool: the punch socket's IP is not the TCP connection's
    h = Harness(beacon_port=7001)
    a, b, _, offer = _pair(h)
    ticket = make_ticket(h.server.observe_key, ("203.0.113.21", 31000), h.now)
    h.send(b, "observe", id=2, addr=["203.0.113.21", 31000], ticket=ticket)
    h.one(b, "observation")
    secret, _ = offer_beacon(offer["info"])
    assert h.server.beacon_received(make_beacon(secret, offer["offer"]), ("203.0.113.21", 31004), h.now)
