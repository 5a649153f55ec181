"""Enrollment by key without the challenge round trip (proto/rendezvous/timed_proof.py): a proof the
client dates and addresses itself enrolls once, at the server it names, within the window; anything
doubtful is answered with a challenge, which still enrolls; the old challenge flow is untouched."""

from __future__ import annotations

import secrets

import pytest

from nattrav.errors import WrongPeer
from nattrav.identity import Identity
from nattrav.proto.rendezvous import MemoryRegistry, RendezvousServer
from nattrav.proto.rendezvous.names import enroll_proof
from nattrav.proto.rendezvous.timed_proof import (
    NONCE_BYTES, WINDOW, ReplayGuard, StaleProof, audience, check_timed, make_proof, replay_token,
)
from tests.proto.test_rendezvous_state import Harness

SERVER = ("198.51.100.1", 7000)  # where the test connections arrive
WALL = 1_790_000_000.0  # the servers' wall clock


class TimedHarness(Harness):
    """A Harness whose connections arrive at SERVER and whose wall clock is `wall`."""

    def __init__(self, **options):
        self.wall = WALL
        options.setdefault("wall_clock", lambda: self.wall)
        super().__init__(**options)

    def open(self, addr=("203.0.113.10", 40000), local=SERVER) -> int:
        conn = next(self._ids)
        self.inbox[conn] = []
        self.server.connection_made(conn, addr, self.now, local=local)
        self._collect()
        return conn


def proof(ident: Identity, name: str | None = None, *, wall: float = WALL, aud: str = audience(*SERVER),
          nonce: bytes | None = None) -> dict:
    name = name or ident.peer_id.text
    made = make_proof(ident.sign, ident.peer_id.key_bytes, nonce or secrets.token_bytes(NONCE_BYTES), wall, aud, name)
    return {"name": name, **made.fields()}


def timed_enroll(h: Harness, conn: int, fields: dict) -> dict:
    h.send(conn, "enroll", id=1, **fields)
    msgs = h.pop(conn)
    assert len(msgs) == 1, msgs
    return msgs[0]


# -- the proof alone --

def test_a_proof_checks_only_for_its_server_name_and_time():
    alice = Identity.generate()
    p = proof(alice, "alice")
    args = (p["key"], p["sig"], p["nonce"], p["at"])
    assert check_timed(*args, audience(*SERVER), "alice", WALL + 5).key_bytes == alice.peer_id.key_bytes
    with pytest.raises(WrongPeer, match="signature"):
        check_timed(*args, audience("198.51.100.2", 7000), "alice", WALL)  # another server
    with pytest.raises(WrongPeer, match="signature"):
        check_timed(*args, audience("198.51.100.1", 7001), "alice", WALL)  # another port of it
    with pytest.raises(WrongPeer, match="signature"):
        check_timed(*args, audience(*SERVER), "bob", WALL)  # another name
    for late in (WINDOW + 1, -WINDOW - 1):
        with pytest.raises(StaleProof, match="window"):
            check_timed(*args, audience(*SERVER), "alice", WALL + late)
    with pytest.raises(WrongPeer, match="nonce"):
        check_timed(p["key"], p["sig"], p["nonce"][:8], p["at"], audience(*SERVER), "alice", WALL)
    with pytest.raises(StaleProof, match="range"):
        check_timed(p["key"], p["sig"], p["nonce"], -1, audience(*SERVER), "alice", WALL)


def test_both_sides_write_one_address_the_same_way():
    assert audience("::ffff:198.51.100.1", 7000) == "198.51.100.1:7000"  # a dual-stack listener's view
    assert audience("2001:db8::0001", 7000) == "[2001:db8::1]:7000"
    assert audience("fe80::1%eth0", 7000) == "[fe80::1]:7000"
    with pytest.raises(ValueError):
        audience("rv.example.org", 7000)  # only what the socket says: a name is not an address


def test_the_replay_guard_remembers_for_the_ttl_and_never_forgets_early():
    g = ReplayGuard(capacity=2)
    assert g.first_use(b"a", 60.0, now=0.0) is True
    assert g.first_use(b"a", 60.0, now=59.0) is False  # a replay within its lifetime
    assert g.first_use(b"b", 10.0, now=1.0) is True
    assert g.first_use(b"c", 60.0, now=2.0) is None  # full: refused, nothing forgotten
    assert g.first_use(b"a", 60.0, now=3.0) is False
    assert g.first_use(b"a", 60.0, now=61.0) is True  # expired, so "a" and "b" made room
    assert g.first_use(b"c", 60.0, now=61.0) is True and len(g) == 2
    assert replay_token(b"k" * 32, b"n" * 16) != replay_token(b"K" * 32, b"n" * 16)  # per key


# -- the server --

def test_a_timed_proof_enrolls_without_a_challenge():
    h = TimedHarness()
    alice = Identity.generate()
    reply = timed_enroll(h, h.open(), proof(alice))
    assert reply["t"] == "enrolled" and reply["peer"] == alice.peer_id.text
    reply = timed_enroll(h, h.open(), proof(Identity.generate(), "bob", wall=WALL - WINDOW + 1))  # a slow clock
    assert reply["t"] == "enrolled" and reply["peer"] == "bob"
    assert h.server.stats["timed_enrolls"] == 2 and h.server.stats["timed_fallbacks"] == 0


def test_a_replayed_proof_gets_a_challenge_it_cannot_sign():
    h = TimedHarness()
    alice = Identity.generate()
    fields = proof(alice)
    assert timed_enroll(h, h.open(), fields)["t"] == "enrolled"
    again = h.open(("192.0.2.66", 5555))  # someone who saw the frame sends it again
    reply = timed_enroll(h, again, fields)
    assert reply["t"] == "challenge" and len(reply["nonce"]) == 32
    assert h.server.peers[alice.peer_id.text].conn == 1  # still alice's first connection
    # even much later, within the window (the entry lives as long as the proof's time is good)
    h.now += WINDOW - 1
    h.wall += WINDOW - 1
    assert timed_enroll(h, h.open(), fields)["t"] == "challenge"
    h.now += 5
    h.wall += 5  # now the proof is stale anyway
    assert timed_enroll(h, h.open(), fields)["t"] == "challenge"
    assert h.server.stats["timed_enrolls"] == 1 and h.server.stats["timed_fallbacks"] == 3


def test_a_replay_at_another_front_sharing_the_registry_is_refused():
    # two fronts (instances, or an instance's worker processes) on one registry: the replay check
    # is the registry's, so the second front refuses what the first took
    shared = MemoryRegistry()
    one, two = TimedHarness(registry=shared, instance="one"), TimedHarness(registry=shared, instance="two")
    fields = proof(Identity.generate())
    assert timed_enroll(one, one.open(), fields)["t"] == "enrolled"
    assert timed_enroll(two, two.open(), fields)["t"] == "challenge"


def test_a_proof_for_another_server_or_name_or_a_skewed_clock_falls_back_to_the_challenge():
    alice = Identity.generate()
    for fields, local in [
        (proof(alice, aud=audience("198.51.100.2", 7000)), SERVER),  # made for another server
        (proof(alice), ("10.0.0.5", 7000)),  # we sit behind a DNAT: the client dialed another address
        (proof(alice, wall=WALL + WINDOW + 5), SERVER),  # the client's clock runs ahead
        (proof(alice, wall=WALL - 3600), SERVER),  # an hour behind
        ({**proof(alice, "alice"), "name": "mallory"}, SERVER),  # signed for another name
        (proof(alice), None),  # the I/O layer did not say where the connection arrived
    ]:
        h = TimedHarness()
        conn = h.open(local=local)
        reply = timed_enroll(h, conn, fields)
        assert reply["t"] == "challenge", (fields, local, reply)
        # the client signs the challenge as an older one would: enrolled, one round trip later
        sig = alice.sign(enroll_proof(reply["nonce"], fields["name"]))
        h.send(conn, "enroll", id=2, name=fields["name"], key=alice.peer_id.key_bytes, sig=sig)
        assert h.one(conn, "enrolled")["peer"] == fields["name"]


def test_a_proof_by_another_key_is_no_way_in():
    h = TimedHarness()
    alice, mallory = Identity.generate(), Identity.generate()
    forged = {**proof(mallory, alice.peer_id.text), "key": alice.peer_id.key_bytes}
    conn = h.open()
    reply = timed_enroll(h, conn, forged)
    assert reply["t"] == "challenge"
    # mallory's own key under alice's peer ID: the name check refuses it, timed or not
    reply = timed_enroll(h, h.open(), proof(mallory, alice.peer_id.text))
    assert reply["t"] == "error" and reply["code"] == "name-taken"
    assert alice.peer_id.text not in h.server.peers


def test_a_full_guard_falls_back_to_the_challenge():
    h = TimedHarness(registry=MemoryRegistry())
    h.server.registry._proofs_seen.capacity = 1
    assert timed_enroll(h, h.open(), proof(Identity.generate()))["t"] == "enrolled"
    assert timed_enroll(h, h.open(), proof(Identity.generate()))["t"] == "challenge"


def test_no_wall_clock_means_challenges_and_the_old_flow_still_works():
    h = Harness()  # the sans-IO default: no clock given, so no timed proof is ever taken
    alice = Identity.generate()
    conn = h.open()
    assert timed_enroll(h, conn, proof(alice))["t"] == "challenge"
    h2 = TimedHarness()  # an older client on a server that takes timed proofs
    conn = h2.open()
    h2.send(conn, "challenge", id=1)
    nonce = h2.one(conn, "challenge")["nonce"]
    h2.send(conn, "enroll", id=2, name="alice", key=alice.peer_id.key_bytes, sig=alice.sign(enroll_proof(nonce, "alice")))
    assert h2.one(conn, "enrolled")["peer"] == "alice"


def test_timed_fields_are_checked_on_the_wire():
    h = TimedHarness()
    alice = Identity.generate()
    fields = proof(alice)
    for bad in ({k: v for k, v in fields.items() if k != "at"},  # a nonce without its time
                {k: v for k, v in fields.items() if k not in ("key", "sig")},  # a time without a key
                {**fields, "nonce": b"x" * 15}):
        conn = h.open()
        reply = timed_enroll(h, conn, bad)
        assert reply["t"] == "error" and reply["code"] == "bad-frame" and conn in h.closed
