"""Control-link frames of the two-host STUN layout and the RESPONSE-PORT cookies: pure, clock passed
in (issue 14, item 7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadPacket, ControlKeyError
from nattrav.proto.stun_control import MAX_SKEW, ControlReceiver, ControlSender, Forward
from nattrav.proto.stun_cookie import EPOCH, check_cookie, make_cookie

KEY = b"0123456789abcdef0123"
A, B = "198.51.100.1", "198.51.100.3"
T0 = 1_700_000_000.0


def frame(sender: ControlSender, now: float = T0, port: int = 3479) -> bytes:
    return sender.forward(port, (A, 3478), ("203.0.113.9", 4000), b"request bytes", now)


def test_a_frame_is_accepted_once():
    tx, rx = ControlSender(KEY, B, start=T0), ControlReceiver(KEY, B)
    f = frame(tx)
    assert rx.accept(f, T0 + 0.5) == Forward(3479, (A, 3478), ("203.0.113.9", 4000), b"request bytes")
    with pytest.raises(BadPacket, match="replayed"):
        rx.accept(f, T0 + 0.6)


def test_frames_may_arrive_out_of_order_but_never_twice():
    tx, rx = ControlSender(KEY, B, start=T0), ControlReceiver(KEY, B)
    f1, f2, f3 = frame(tx), frame(tx), frame(tx)
    rx.accept(f3, T0)
    rx.accept(f1, T0)
    rx.accept(f2, T0)
    for f in (f1, f2, f3):
        with pytest.raises(BadPacket):
            rx.accept(f, T0)


def test_stale_or_future_frames_are_refused():
    tx, rx = ControlSender(KEY, B, start=T0), ControlReceiver(KEY, B)
    with pytest.raises(BadPacket, match="stale"):
        rx.accept(frame(tx, now=T0), T0 + MAX_SKEW + 1)
    with pytest.raises(BadPacket, match="stale"):
        rx.accept(frame(tx, now=T0 + MAX_SKEW + 1), T0)
    rx.accept(frame(tx, now=T0), T0 + MAX_SKEW - 1)


def test_a_restarted_sender_counts_above_its_previous_life():
    rx = ControlReceiver(KEY, B)
    old = ControlSender(KEY, B, start=T0)
    for _ in range(5000):
        f = frame(old)
    rx.accept(f, T0 + 1)
    new = ControlSender(KEY, B, start=T0 + 1)  # restarted one second later
    rx.accept(frame(new, now=T0 + 1), T0 + 1)


def test_wrong_key_other_host_or_reflection_are_refused():
    tx = ControlSender(KEY, B, start=T0)
    f = frame(tx)
    with pytest.raises(BadPacket, match="MAC"):
        ControlReceiver(b"another key of 16+ bytes", B).accept(f, T0)
    # the frame for B, sent back to its sender A (a spoofer reflecting it), is not for A
    with pytest.raises(BadPacket, match="another host"):
        ControlReceiver(KEY, A).accept(f, T0)


def test_the_link_has_no_unauthenticated_mode():
    for secret in (None, b"", b"short"):
        with pytest.raises(ControlKeyError):
            ControlSender(secret, B, start=T0)
        with pytest.raises(ControlKeyError):
            ControlReceiver(secret, B)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 200), st.integers(0, 255))
def test_garbage_and_mutated_frames_give_bad_packet_only(data, pos, value):
    rx = ControlReceiver(KEY, B)
    with pytest.raises(BadPacket):
        rx.accept(data, T0)
    f = bytearray(frame(ControlSender(KEY, B, start=T0)))
    f[pos % len(f)] ^= value or 1
    with pytest.raises(BadPacket):
        rx.accept(bytes(f), T0)


# ---- RESPONSE-PORT cookies


def test_a_cookie_works_for_its_ip_for_a_few_minutes_only():
    c = make_cookie(KEY, "203.0.113.9", T0)
    assert check_cookie(KEY, "203.0.113.9", c, T0)
    assert check_cookie(KEY, "203.0.113.9", c, T0 + 2 * EPOCH)
    assert not check_cookie(KEY, "203.0.113.9", c, T0 + 4 * EPOCH)
    assert not check_cookie(KEY, "203.0.113.9", c, T0 - 2 * EPOCH)  # not from the future either
    assert not check_cookie(KEY, "203.0.113.10", c, T0)  # another IP
    assert not check_cookie(b"another key of 16+ bytes", "203.0.113.9", c, T0)
    v6 = make_cookie(KEY, "2001:db8::1", T0)
    assert check_cookie(KEY, "2001:db8::1", v6, T0) and not check_cookie(KEY, "2001:db8::2", v6, T0)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=20), st.none(), st.integers()))
def test_any_nonce_is_a_cookie_or_not_never_an_error(value):
    assert check_cookie(KEY, "203.0.113.9", value, T0) is False
    c = make_cookie(KEY, "203.0.113.9", T0)
    if isinstance(value, str):
        assert check_cookie(KEY, "203.0.113.9", c[:-len(value) or None] + value, T0) in (True, False)
