"""Enrollment by identity key: a peer ID is its key's alone, a name is the first key's for good
(across restarts, through io/name_store.py), and sessions carry the key each side proved."""

from __future__ import annotations

import json
import os

import pytest

from nattrav.errors import UsageError
from nattrav.identity import Identity
from nattrav.io.name_store import FILE_NAME, load_bindings
from nattrav.proto.rendezvous.names import NameBindings, enroll_proof
from tests.proto.test_rendezvous_state import Harness


def key_enroll(h: Harness, conn: int, ident: Identity, name: str | None = None, *, sign_as: Identity | None = None,
               challenge: bytes | None = None) -> dict:
    """Ask for a challenge, sign it (as `sign_as`, default `ident`) and enroll; the server's reply."""
    h.send(conn, "challenge", id=1)
    nonce = h.one(conn, "challenge")["nonce"] if challenge is None else challenge
    name = name or ident.peer_id.text
    sig = (sign_as or ident).sign(enroll_proof(nonce, name))
    h.send(conn, "enroll", id=2, name=name, key=ident.peer_id.key_bytes, sig=sig)
    msgs = h.pop(conn)
    assert len(msgs) == 1, msgs
    return msgs[0]


def test_a_peer_id_is_enrolled_only_with_its_key():
    h = Harness()
    alice, mallory = Identity.generate(), Identity.generate()
    assert key_enroll(h, h.open(), alice)["peer"] == alice.peer_id.text
    # without the key (a secret-only client), under another key, or with a signature by another key
    h2 = Harness()
    h2.send(c := h2.open(), "enroll", id=1, name=alice.peer_id.text)
    assert h2.one(c, "error")["code"] == "name-taken"
    reply = key_enroll(h2, h2.open(), mallory, alice.peer_id.text)
    assert reply["t"] == "error" and "another key's peer ID" in reply["message"]
    reply = key_enroll(h2, h2.open(), alice, sign_as=mallory)
    assert reply["t"] == "error" and reply["code"] == "bad-request" and "signature" in reply["message"]


def test_a_challenge_is_good_for_one_enroll_on_its_own_connection():
    h = Harness()
    alice = Identity.generate()
    first = h.open()
    h.send(first, "challenge", id=1)
    nonce = h.one(first, "challenge")["nonce"]
    assert len(nonce) == 32
    # a signature over another connection's challenge (a replay) is refused
    other = h.open()
    h.send(other, "challenge", id=1)
    h.pop(other)
    sig = alice.sign(enroll_proof(nonce, alice.peer_id.text))
    h.send(other, "enroll", id=2, name=alice.peer_id.text, key=alice.peer_id.key_bytes, sig=sig)
    assert h.one(other, "error")["code"] == "bad-request"
    # no challenge at all
    third = h.open()
    h.send(third, "enroll", id=2, name=alice.peer_id.text, key=alice.peer_id.key_bytes, sig=sig)
    assert "challenge first" in h.one(third, "error")["message"]


def test_a_name_stays_with_its_first_key_even_after_the_peer_is_forgotten():
    h = Harness(retain=5.0)
    alice, mallory = Identity.generate(), Identity.generate()
    a = h.open()
    assert key_enroll(h, a, alice, "alice")["peer"] == "alice"
    h.lose(a)
    h.advance(10.0)  # retention over: the registry forgot alice; the binding did not
    assert "alice" not in h.server.peers
    reply = key_enroll(h, h.open(), mallory, "alice")
    assert reply["t"] == "error" and reply["code"] == "name-taken"
    h.send(c := h.open(), "enroll", id=1, name="alice", secret="s" * 20)  # nor a secret-only client
    assert h.one(c, "error")["code"] == "name-taken"
    assert key_enroll(h, h.open(), alice, "alice")["peer"] == "alice"  # the owner comes back


def test_sessions_carry_the_key_each_side_proved():
    h = Harness()
    alice, bob = Identity.generate(), Identity.generate()
    a, b = h.open(), h.open(("203.0.113.11", 40000))
    key_enroll(h, a, alice)
    key_enroll(h, b, bob, "bob")
    h.send(a, "connect", id=5, target="bob")
    offer = h.one(b, "offer")
    assert offer["from"] == alice.peer_id.text and offer["from_key"] == alice.peer_id.key_bytes
    h.send(b, "accept", id=6, offer=offer["offer"])
    to_a, to_b = h.one(a, "session"), h.one(b, "session")
    assert to_a["peer_key"] == bob.peer_id.key_bytes and to_b["peer_key"] == alice.peer_id.key_bytes


def test_bindings_persist_across_a_restart_and_a_damaged_file_is_refused(tmp_path):
    alice, mallory = Identity.generate(), Identity.generate()
    h = Harness(names=load_bindings(tmp_path / "state"))
    assert key_enroll(h, h.open(), alice, "alice")["peer"] == "alice"
    path = tmp_path / "state" / FILE_NAME
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["names"] == {"alice": alice.peer_id.key_bytes.hex()}
    restarted = Harness(names=load_bindings(tmp_path / "state"))  # a new server process
    assert key_enroll(restarted, restarted.open(), mallory, "alice")["code"] == "name-taken"
    assert key_enroll(restarted, restarted.open(), alice, "alice")["peer"] == "alice"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="damaged"):
        load_bindings(tmp_path / "state")


def test_writers_sharing_a_state_dir_keep_each_others_bindings(tmp_path):
    # the worker processes of one instance (--processes) load the same file, then each binds its own
    alice, bob = Identity.generate(), Identity.generate()
    w0 = Harness(names=load_bindings(tmp_path / "state"))
    w1 = Harness(names=load_bindings(tmp_path / "state"))
    assert key_enroll(w0, w0.open(), alice, "alice")["peer"] == "alice"
    assert key_enroll(w1, w1.open(), bob, "bob")["peer"] == "bob"
    assert json.loads((tmp_path / "state" / FILE_NAME).read_text())["names"] == {
        "alice": alice.peer_id.key_bytes.hex(), "bob": bob.peer_id.key_bytes.hex()}
    restarted = Harness(names=load_bindings(tmp_path / "state"))
    assert key_enroll(restarted, restarted.open(), bob, "alice")["code"] == "name-taken"


def test_a_binding_that_cannot_be_stored_is_not_made():
    def fail(_):
        raise OSError(28, "No space left on device")

    h = Harness(names=NameBindings(persist=fail))
    reply = key_enroll(h, h.open(), Identity.generate(), "alice")
    assert reply["code"] == "busy" and "No space left" in reply["message"]
    assert len(h.server.names) == 0


def test_the_same_key_enrolls_again_and_replaces_its_old_connection():
    h = Harness()
    alice = Identity.generate()
    first = h.open()
    key_enroll(h, first, alice)
    again = key_enroll(h, h.open(), alice)
    assert again["t"] == "enrolled" and again["peer"] == alice.peer_id.text and len(again["secret"]) >= 30
    assert first in h.closed
