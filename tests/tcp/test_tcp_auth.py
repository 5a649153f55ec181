"""proto/tcp_auth: the session-key handshake over a byte stream, fed in arbitrary pieces."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.proto.punch import BadPacket
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
