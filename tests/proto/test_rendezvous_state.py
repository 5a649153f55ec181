"""The rendezvous server state machine, driven with bytes and a fake clock (no I/O)."""

from __future__ import annotations

import itertools

import pytest

from nattrav.errors import LocalProtocolError
from nattrav.proto.rendezvous import (
    SERVER_MESSAGES,
    Close,
    FrameDecoder,
    RendezvousServer,
    Send,
    encode,
    make,
)


class Harness:
    """A server plus per-connection decoders of what it sent, to read replies like a client would."""

    def __init__(self, **options):
        self.server = RendezvousServer(**options)
        self.now = 1000.0
        self.inbox: dict[int, list[dict]] = {}
        self.closed: dict[int, str] = {}
        self._ids = itertools.count(1)

    def open(self, addr=("203.0.113.10", 40000)) -> int:
        conn = next(self._ids)
        self.inbox[conn] = []
        self.server.connection_made(conn, addr, self.now)
        self._collect()
        return conn

    def send(self, conn: int, kind: str, **fields) -> None:
        self.server.receive_data(conn, encode(make(kind, **fields)), self.now)
        self._collect()

    def raw(self, conn: int, data: bytes) -> None:
        self.server.receive_data(conn, data, self.now)
        self._collect()

    def lose(self, conn: int) -> None:
        self.server.connection_lost(conn, self.now)
        self._collect()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.server.tick(self.now)
        self._collect()

    def _collect(self) -> None:
        for act in self.server.actions():
            if isinstance(act, Send):
                # Every frame the server emits must parse under the server schema (round trip).
                dec = FrameDecoder(SERVER_MESSAGES)
                dec.feed(encode(act.msg))
                self.inbox[act.conn].append(dec.next_message())
            elif isinstance(act, Close):
                self.closed[act.conn] = act.reason

    def pop(self, conn: int) -> list[dict]:
        out, self.inbox[conn] = self.inbox[conn], []
        return out

    def one(self, conn: int, kind: str) -> dict:
        msgs = self.pop(conn)
        assert [m["t"] for m in msgs] == [kind], msgs
        return msgs[0]

    def enroll(self, conn: int, **fields) -> dict:
        self.send(conn, "enroll", id=1, **fields)
        return self.one(conn, "enrolled")


def test_enroll_gives_unique_unguessable_ids_and_secrets():
    h = Harness()
    ids, secrets_ = set(), set()
    for _ in range(50):
        reply = h.enroll(h.open())
        assert len(reply["peer"]) >= 20  # 16 random bytes, urlsafe base64
        assert len(reply["secret"]) >= 30
        ids.add(reply["peer"])
        secrets_.add(reply["secret"])
        assert reply["id"] == 1 and reply["now"] == h.now
    assert len(ids) == 50 and len(secrets_) == 50


def test_minted_ids_never_start_with_a_dash():
    # an ID is typed after `nattrav-fast -d`; "-e9sE..." would be read as an option
    tokens = iter(["-e9sEQKk5KFc5AYC", "_x9sEQKk5KFc5AYC", "AG7ktVjYWESymWBI", "secret" * 4])
    h = Harness(token=lambda n: next(tokens))
    assert h.enroll(h.open())["peer"] == "AG7ktVjYWESymWBI"


def test_observed_address_is_put_into_node_info_and_wins_over_the_peer():
    h = Harness()
    a = h.open(("203.0.113.10", 41000))
    b = h.open(("203.0.113.20", 42000))
    ra = h.enroll(a, info={"local": ["10.0.1.2"], "observed": "forged"})
    assert ra["observed"] == ["203.0.113.10", 41000]
    h.enroll(b, name="bob")
    h.send(a, "connect", id=7, target="bob")
    offer = h.one(b, "offer")
    assert offer["from"] == ra["peer"]
    assert offer["info"] == {"local": ["10.0.1.2"], "observed": ["203.0.113.10", 41000]}


def test_connect_accept_gives_both_the_same_key_session_and_start_time():
    h = Harness(start_margin=0.5)
    a, b = h.open(("203.0.113.10", 1)), h.open(("203.0.113.20", 2))
    ra = h.enroll(a, info={"nat": "symmetric-seq"})
    h.enroll(b, name="bob", info={"nat": "full-cone"})
    h.send(a, "connect", id=7, target="bob")
    assert h.pop(a) == []
    offer = h.one(b, "offer")
    h.advance(0.1)
    h.send(b, "accept", id=3, offer=offer["offer"])
    sa, sb = h.one(a, "session"), h.one(b, "session")
    assert sa["id"] == 7 and sb["id"] == 3
    assert sa["key"] == sb["key"] and len(sa["key"]) == 32
    assert sa["session"] == sb["session"] == offer["offer"]
    assert sa["start_at"] == sb["start_at"] == pytest.approx(h.now + 0.5)
    assert {sa["role"], sb["role"]} == {"first", "second"}
    assert sa["peer"] == "bob" and sa["info"]["nat"] == "full-cone"
    assert sb["peer"] == ra["peer"] and sb["info"]["nat"] == "symmetric-seq"


def test_each_session_gets_a_fresh_key():
    h = Harness()
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    keys = set()
    for i in range(5):
        h.send(a, "connect", id=i, target="bob")
        h.send(b, "accept", offer=h.one(b, "offer")["offer"])
        keys.add(h.one(a, "session")["key"])
        h.pop(b)
    assert len(keys) == 5


@pytest.mark.parametrize(
    "setup, target, code",
    [
        ("none", "nobody", "unknown-peer"),
        ("offline", "bob", "offline"),
        ("self", "alice", "bad-request"),
    ],
)
def test_connect_errors(setup, target, code):
    h = Harness()
    a = h.open()
    h.enroll(a, name="alice")
    if setup == "offline":
        b = h.open()
        h.enroll(b, name="bob")
        h.lose(b)
    h.send(a, "connect", id=9, target=target)
    err = h.one(a, "error")
    assert err["code"] == code and err["id"] == 9 and err["message"]


def test_refusal_reaches_the_initiator():
    h = Harness()
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.send(a, "connect", id=5, target="bob")
    h.send(b, "refuse", id=6, offer=h.one(b, "offer")["offer"])
    assert h.one(b, "ok")["id"] == 6
    err = h.one(a, "error")
    assert (err["code"], err["id"]) == ("refused", 5)


def test_unanswered_offer_times_out_on_both_sides():
    h = Harness(offer_timeout=10)
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.send(a, "connect", id=5, target="bob", timeout=3.0)
    offer = h.one(b, "offer")
    assert offer["expires"] == h.now + 3.0
    assert h.server.next_deadline() == h.now + 3.0
    h.advance(2.9)
    assert h.pop(a) == []
    h.advance(0.2)
    assert h.one(a, "error")["code"] == "timeout"
    assert h.one(b, "cancel")["offer"] == offer["offer"]
    # answering late is an error, not a session
    h.send(b, "accept", id=8, offer=offer["offer"])
    assert h.one(b, "error")["code"] == "unknown-offer"


def test_connect_timeout_is_capped_and_sanitised():
    h = Harness(max_offer_timeout=20, offer_timeout=10)
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.send(a, "connect", target="bob", timeout=1e9)
    offer = h.one(b, "offer")
    assert offer["expires"] == h.now + 20
    h.send(b, "refuse", offer=offer["offer"])  # one pending offer per initiator and target
    h.pop(b)
    h.send(a, "connect", target="bob", timeout=float("nan"))
    assert h.one(b, "offer")["expires"] == h.now + 10


def test_initiator_vanishing_cancels_the_offer_and_target_vanishing_tells_initiator():
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.enroll(c, name="carol")
    h.send(a, "connect", id=1, target="bob")
    offer = h.one(b, "offer")
    h.lose(a)
    assert h.one(b, "cancel")["code"] == "offline"
    h.send(b, "accept", id=2, offer=offer["offer"])
    assert h.one(b, "error")["code"] == "unknown-offer"
    h.send(c, "connect", id=3, target="bob")
    h.one(b, "offer")
    h.lose(b)
    err = h.one(c, "error")
    assert (err["code"], err["id"]) == ("offline", 3)


def test_only_the_target_may_answer_an_offer():
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.enroll(c, name="mallory")
    h.send(a, "connect", id=1, target="bob")
    offer = h.one(b, "offer")
    h.send(c, "accept", id=2, offer=offer["offer"])
    assert h.one(c, "error")["code"] == "unknown-offer"
    assert h.pop(a) == []


def test_name_first_come_keeps_it_and_secret_proves_ownership():
    h = Harness()
    a = h.open()
    secret = h.enroll(a, name="alice")["secret"]
    other = h.open()
    h.send(other, "enroll", id=1, name="alice")
    assert h.one(other, "error")["code"] == "name-taken"
    h.send(other, "enroll", id=2, name="alice", secret="x" * 32)
    assert h.one(other, "error")["code"] == "name-taken"
    # the owner comes back on a new connection: it takes over, the old connection is closed
    again = h.open(("203.0.113.99", 5))
    reply = h.enroll(again, name="alice", secret=secret)
    assert reply["peer"] == "alice" and reply["secret"] == secret
    assert a in h.closed
    assert h.server.peers["alice"].observed == ["203.0.113.99", 5]


def test_chosen_secret_and_name_validation():
    h = Harness()
    a = h.open()
    assert h.enroll(a, name="svc.eu-1", secret="s" * 20)["secret"] == "s" * 20
    for fields in ({"name": "bad name"}, {"name": "x" * 65}, {"secret": "short"}):
        c = h.open()
        h.send(c, "enroll", id=1, **fields)
        assert h.one(c, "error")["code"] == "bad-request"


def test_requests_before_enroll_are_refused():
    h = Harness()
    c = h.open()
    h.send(c, "connect", id=4, target="x")
    err = h.one(c, "error")
    assert (err["code"], err["id"]) == ("bad-request", 4)


def test_dead_peers_expire_after_keepalive_timeout_then_retention():
    h = Harness(keepalive_timeout=30, retain=60)
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    for _ in range(5):  # alice keeps alive, bob is silent
        h.advance(10)
        h.send(a, "ping", id=1)
        assert h.one(a, "pong")["now"] == h.now
    assert b in h.closed and "keepalive" in h.closed[b]
    assert a not in h.closed
    h.send(a, "connect", id=2, target="bob")
    assert h.one(a, "error")["code"] == "offline"
    for _ in range(4):
        h.advance(15.5)
        h.send(a, "ping")
        h.pop(a)
    h.send(a, "connect", id=3, target="bob")
    assert h.one(a, "error")["code"] == "unknown-peer"
    assert "bob" not in h.server.peers and h.server.stats["expired"] == 1


def test_name_is_free_again_after_expiry():
    h = Harness(retain=10)
    a = h.open()
    h.enroll(a, name="alice")
    h.lose(a)
    h.advance(11)
    assert h.enroll(h.open(), name="alice")["peer"] == "alice"


def test_silent_connection_must_enroll_in_time():
    h = Harness(enroll_timeout=5)
    c = h.open()
    h.advance(5)
    assert h.one(c, "error")["code"] == "timeout"
    assert c in h.closed


def test_info_update_is_seen_by_later_connects():
    h = Harness()
    a, b = h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.send(b, "info", id=1, info={"endpoints": [["203.0.113.20", 700]], "delta": 1})
    assert h.one(b, "ok")["id"] == 1
    h.send(a, "connect", id=2, target="bob")
    h.send(b, "accept", offer=h.one(b, "offer")["offer"])
    assert h.one(a, "session")["info"]["delta"] == 1


def test_garbage_gets_bad_frame_and_desync_closes_only_that_connection():
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.enroll(c, name="carol")
    # a sane length with a bad body from an enrolled peer: error, but the connection stays usable
    h.raw(c, b"\x00\x00\x00\x03\xc1\xc1\xc1")
    assert h.one(c, "error")["code"] == "bad-frame"
    assert c not in h.closed
    h.raw(c, encode({"v": 1, "t": "nonsense"}))
    assert h.one(c, "error")["code"] == "bad-frame"
    # an absurd length cannot be resynchronised: error, then close
    h.raw(c, b"\xff\xff\xff\xff" + b"A" * 100)
    assert h.one(c, "error")["code"] == "bad-frame"
    assert c in h.closed
    # everyone else is unaffected
    h.send(a, "connect", id=1, target="bob")
    h.send(b, "accept", offer=h.one(b, "offer")["offer"])
    assert h.one(a, "session")["peer"] == "bob"
    assert h.server.stats["bad_frames"] == 3


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x03\xc1\xc1\xc1", encode({"v": 1, "t": "nonsense"}),
                                     b"\xff\xff\xff\xff"])
def test_a_connection_that_has_not_enrolled_is_closed_on_its_first_bad_frame(garbage):
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.raw(c, garbage + encode(make("enroll", id=1, name="carol")))
    # one error, then closed: the enroll behind the garbage is never handled
    assert h.one(c, "error")["code"] == "bad-frame"
    assert c in h.closed and c not in h.server.conns
    assert "carol" not in h.server.peers
    h.send(a, "connect", id=1, target="bob")
    h.send(b, "accept", offer=h.one(b, "offer")["offer"])
    assert h.one(a, "session")["peer"] == "bob"


def test_frames_are_handled_at_most_limit_per_call_and_the_rest_later():
    h = Harness()
    a = h.open()
    h.enroll(a, name="alice")
    pings = b"".join(encode(make("ping", id=i)) for i in range(10))
    assert h.server.receive_data(a, pings, h.now, limit=4) is True
    h._collect()
    assert [m["id"] for m in h.pop(a)] == [0, 1, 2, 3]
    assert h.server.process_more(a, h.now, limit=4) is True
    h._collect()
    assert [m["id"] for m in h.pop(a)] == [4, 5, 6, 7]
    assert h.server.process_more(a, h.now, limit=4) is False  # two left: under the limit
    h._collect()
    assert [m["id"] for m in h.pop(a)] == [8, 9]
    assert h.server.process_more(a, h.now, limit=4) is False
    h._collect()
    assert h.pop(a) == []
    # bad frames count against the limit too (an error reply is work), and a closed one has nothing more
    h.raw(a, b"\x00\x00\x00\x01\xc1" * 6)
    assert len(h.pop(a)) == 6
    assert h.server.receive_data(a, b"\x00\x00\x00\x01\xc1" * 6, h.now, limit=2) is True
    h._collect()
    assert [m["code"] for m in h.pop(a)] == ["bad-frame", "bad-frame"]
    h.lose(a)
    assert h.server.process_more(a, h.now, limit=2) is False


def test_frames_split_at_every_byte_boundary_are_reassembled():
    h = Harness()
    c = h.open()
    data = encode(make("enroll", id=1, name="alice")) + encode(make("ping", id=2))
    for i in range(len(data)):
        h.raw(c, data[i:i + 1])
    assert [m["t"] for m in h.pop(c)] == ["enrolled", "pong"]


def test_pending_offers_per_peer_are_bounded():
    h = Harness(max_offers_per_peer=3, max_offers_per_source=10)
    a = h.open()
    h.enroll(a, name="alice")
    targets = [h.open() for _ in range(4)]
    for i, t in enumerate(targets):
        h.enroll(t, name=f"t{i}")
        h.send(a, "connect", id=i, target=f"t{i}")  # as initiator
    assert [m["code"] for m in h.pop(a)] == ["busy"]
    assert [len(h.pop(t)) for t in targets] == [1, 1, 1, 0]
    initiators = [h.open() for _ in range(4)]
    for i, c in enumerate(initiators):
        h.enroll(c, name=f"i{i}")
        h.send(c, "connect", id=1, target="t3")  # as target
    assert [m["code"] for c in initiators for m in h.pop(c)] == ["busy"]
    assert len(h.pop(targets[3])) == 3


def test_local_misuse_is_a_local_error():
    h = Harness()
    c = h.open()
    with pytest.raises(LocalProtocolError):
        h.server.connection_made(c, ("192.0.2.1", 1), h.now)
    with pytest.raises(LocalProtocolError):
        h.server.receive_data(999, b"x", h.now)
    with pytest.raises(LocalProtocolError):
        encode(make("info", info={"x": b"\0" * 70000}))


def test_clock_map_keeps_the_tightest_sample():
    from nattrav.proto.rendezvous import ClockMap

    clock = ClockMap()
    # server clock = ours + 5000; one-way delays 10 ms out, 10 ms back
    clock.sample(100.0, 100.020, 5100.010)
    assert clock.offset == pytest.approx(5000.0) and clock.rtt == pytest.approx(0.020)
    # a slower, asymmetric sample (90 ms out, 10 ms back) would skew the offset by 40 ms: ignored
    clock.sample(200.0, 200.100, 5200.090)
    assert clock.offset == pytest.approx(5000.0)
    # a tighter one wins
    clock.sample(300.0, 300.002, 5300.001)
    assert clock.rtt == pytest.approx(0.002) and clock.to_local(5301.0) == pytest.approx(301.0)
    # nonsense samples change nothing
    clock.sample(400.0, 399.0, 5400.0)
    clock.sample(400.0, 400.001, float("nan"))
    assert clock.rtt == pytest.approx(0.002) and clock.offset == pytest.approx(5000.0)


def test_clock_map_keeps_a_slow_samples_offset_within_a_quick_frames_bound():
    from nattrav.proto.rendezvous import ClockMap

    # server clock = ours + 5000, 55 ms each way; the enroll reply's segment was lost and resent
    # 0.32 s later: the midpoint puts the offset 160 ms off
    clock = ClockMap()
    clock.sample(0.0, 0.430, 5000.055)
    assert clock.offset == pytest.approx(4999.84)
    # the session frame, stamped at 5001.000, came in 55 ms: the offset is at least 4999.945
    clock.heard(5001.000, 1.055)
    assert clock.offset == pytest.approx(4999.945)
    assert abs(clock.to_local(5002.0) - 2.0) <= 0.055 + 1e-9
    # a frame that came slowly bounds nothing new
    clock.heard(5003.0, 3.5)
    assert clock.offset == pytest.approx(4999.945)


def test_clock_map_bounds_never_move_a_good_estimate_and_age():
    from nattrav.proto.rendezvous import ClockMap
    from nattrav.proto.rendezvous.clock import MAX_DRIFT

    clock = ClockMap()
    clock.sample(100.0, 100.020, 5100.010)
    clock.heard(5100.5, 100.515)  # 15 ms one way: its bound (4999.985) is below the estimate
    assert clock.offset == pytest.approx(5000.0)
    # an hour later the server's clock ran 0.3 s ahead of ours (83 ppm): the first sample's upper
    # bound (5000.01) has loosened by MAX_DRIFT x 3600 s since, so the new bound is no contradiction
    assert 5000.01 + MAX_DRIFT * 3600 > 5000.3
    clock.heard(8700.3, 3700.0)
    assert clock.offset == pytest.approx(5000.3)
    # contradicting bounds (a stepped clock): the newest stands alone
    clock.heard(20000.0, 4000.0)
    assert clock.offset == pytest.approx(16000.0)


def test_clock_map_heard_before_any_sample_changes_nothing():
    from nattrav.proto.rendezvous import ClockMap

    clock = ClockMap()
    clock.heard(5000.0, 1.0)
    assert clock.offset == 0.0
    clock.heard(float("nan"), 1.0)
    clock.sample(0.0, 0.02, 5000.01)
    clock.heard(float("inf"), 1.0)
    assert clock.offset == pytest.approx(5000.0)
