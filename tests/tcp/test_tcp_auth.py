"""proto/tcp_auth: the session-key handshake over a byte stream, fed in arbitrary pieces."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadPacket
from nattrav.proto.tcp_auth import State, StreamAuth

KEY = os.urandom(32)


def pair(key_a=KEY, key_b=KEY):
    return StreamAuth(key_a, "first", os.urandom(8)), StreamAuth(key_b, "second", os.urandom(8))


def run(a, b, chunk=None):
    """Drive both sides to the end, each side's bytes delivered in `chunk`-sized pieces."""
    wire = {"a": a.opening(100), "b": b.opening(200)}  # bytes in flight TO the other side

    def deliver(src, dst):
        data, wire[src] = wire[src], b""
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        other = "b" if src == "a" else "a"
        for piece in pieces:
            wire[other] += dst.feed(piece, 300)

    for _ in range(10):
        if a.done and b.done:
            break
        deliver("b", a)
        if a.state is State.AUTHENTICATED:
            wire["a"] += a.select()
        deliver("a", b)
    return a, b


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_both_sides_authenticate_and_second_sees_select(chunk):
    a, b = run(*pair(), chunk=chunk)
    assert a.state is State.SELECTED and b.state is State.SELECTED
    assert a.done and b.done
    assert a.rtt == 200 and b.rtt == 100  # now(300) - own stamp echoed by the peer


def test_wrong_key_is_rejected():
    a, b = pair(KEY, os.urandom(32))
    with pytest.raises(BadPacket):
        b.feed(a.opening(1), 2)


def test_bytes_after_the_handshake_are_left_for_the_user():
    a, b = pair()
    b_ack = b.feed(a.opening(1), 2)
    a_ack = a.feed(b.opening(3) + b_ack, 4)
    assert a.state is State.AUTHENTICATED
    b.feed(a_ack, 5)
    assert b.state is State.AUTHENTICATED and not b.done
    b.feed(a.select() + b"user bytes", 6)
    assert b.done and b.leftover == b"user bytes"


def test_own_frames_reflected_do_not_authenticate():
    a, _ = pair()
    with pytest.raises(BadPacket):
        a.feed(a.opening(1), 2)


def test_second_side_cannot_select_and_first_cannot_select_early():
    a, b = pair()
    with pytest.raises(ValueError):
        b.select()
    with pytest.raises(ValueError):
        a.select()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_raises_only_badpacket_and_never_buffers_unbounded(data):
    _, b = pair()
    try:
        b.feed(data, 1)
    except BadPacket:
        return
    assert len(b._buf) <= 2 + 1300


def _record(a, b):
    """Run a handshake and return every byte the first side sent, in order (an on-path capture)."""
    sent = a.opening(100)
    wire_b = b.opening(200)
    sent_log = [sent]
    wire_a = a.feed(wire_b + b.feed(sent, 250), 300)
    sent_log.append(wire_a)
    b.feed(wire_a, 350)
    sel = a.select()
    sent_log.append(sel)
    b.feed(sel, 400)
    assert b.state is State.SELECTED
    return b"".join(sent_log)


def test_a_captured_handshake_does_not_complete_on_another_connection():
    # The attacker captured everything the first side sent on one connection of a race and plays it
    # to the second side on another connection of the same race.
    capture = _record(StreamAuth(KEY, "first"), StreamAuth(KEY, "second"))
    victim = StreamAuth(KEY, "second")  # a new connection: a nonce of its own
    victim.opening(500)
    with pytest.raises(BadPacket, match="nonce"):
        victim.feed(capture, 600)
    assert victim.state is not State.SELECTED


def test_why_the_nonce_is_per_connection():
    # With one nonce for the whole race (as before), the same capture completed on the other
    # connection and the second side would take the attacker's connection as the session stream.
    nonce = os.urandom(8)
    capture = _record(StreamAuth(KEY, "first", os.urandom(8)), StreamAuth(KEY, "second", nonce))
    victim = StreamAuth(KEY, "second", nonce)
    victim.opening(500)
    victim.feed(capture, 600)
    assert victim.state is State.SELECTED


def test_every_connection_draws_its_own_nonce():
    assert len({StreamAuth(KEY, "first").session.nonce for _ in range(64)}) == 64
