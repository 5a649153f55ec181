"""A connect written right behind the enroll, in the same read (issue 13: the initiator does not wait
for the enroll reply): the server handles one connection's frames in order, so an accepted timed
enroll makes the observe/info/connect behind it those of an enrolled peer; a doubted one (answered
with a challenge) has them refused one by one as "before enroll", with no offer made, and the same
frames sent again after the challenge's enroll get exactly one session."""

from __future__ import annotations

from nattrav.identity import Identity
from nattrav.proto.rendezvous import encode, make
from nattrav.proto.rendezvous.names import enroll_proof
from tests.proto.test_rendezvous_timed_proof import WALL, TimedHarness, proof


def _flight(h: TimedHarness, conn: int, enroll: dict, target: str, first_id: int = 2) -> None:
    """enroll + info + connect in one receive_data call, as one TCP segment brings them."""
    frames = [make("enroll", id=1, **enroll),
              make("info", id=first_id, info={"rtt": 0.1, "report": {"x": 1}}),
              make("connect", id=first_id + 1, target=target, timeout=5.0)]
    h.raw(conn, b"".join(encode(f) for f in frames))


def test_a_connect_in_the_enrolls_read_reaches_the_target():
    h = TimedHarness()
    bob = h.open(("203.0.113.20", 40000))
    h.enroll(bob, name="bob")
    alice = Identity.generate()
    conn = h.open()
    _flight(h, conn, proof(alice), "bob")
    assert [m["t"] for m in h.pop(conn)] == ["enrolled", "ok"]  # the session comes with bob's accept
    offer = h.one(bob, "offer")
    assert offer["from"] == alice.peer_id.text and offer["info"]["rtt"] == 0.1  # the info behind the enroll
    h.send(bob, "accept", id=7, offer=offer["offer"])
    assert h.one(bob, "session")["peer"] == alice.peer_id.text
    session = h.one(conn, "session")
    assert session["id"] == 3 and session["peer"] == "bob"
    assert h.server.stats["sessions"] == 1


def test_an_unknown_target_behind_the_enroll_is_the_connects_own_error():
    h = TimedHarness()
    conn = h.open()
    _flight(h, conn, proof(Identity.generate()), "nobody")
    msgs = h.pop(conn)
    assert [m["t"] for m in msgs] == ["enrolled", "ok", "error"]
    assert msgs[2]["id"] == 3 and msgs[2]["code"] == "unknown-peer"


def test_a_doubted_enroll_refuses_the_frames_behind_it_and_makes_no_offer():
    h = TimedHarness()
    bob = h.open(("203.0.113.20", 40000))
    h.enroll(bob, name="bob")
    alice = Identity.generate()
    conn = h.open()
    _flight(h, conn, proof(alice, wall=WALL + 3600), "bob")  # a clock an hour ahead: a challenge
    msgs = h.pop(conn)
    assert [m["t"] for m in msgs] == ["challenge", "error", "error"]
    assert [(m["id"], m["code"]) for m in msgs[1:]] == [(2, "bad-request"), (3, "bad-request")]
    assert h.pop(bob) == [] and not h.server.offers and conn not in h.closed
    # the client answers the challenge, then sends the same frames again: one offer, one session
    name = alice.peer_id.text
    h.send(conn, "enroll", id=1, name=name, key=alice.peer_id.key_bytes,
           sig=alice.sign(enroll_proof(msgs[0]["nonce"], name)))
    assert h.one(conn, "enrolled")["peer"] == name
    h.send(conn, "info", id=4, info={"rtt": 0.1})
    h.send(conn, "connect", id=5, target="bob", timeout=5.0)
    offer = h.one(bob, "offer")
    h.send(bob, "accept", id=7, offer=offer["offer"])
    h.pop(bob)
    assert [m["t"] for m in h.pop(conn)] == ["ok", "session"]
    assert h.server.stats["sessions"] == 1
