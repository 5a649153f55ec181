"""The punch handshake, sans-IO: authentication, replay protection, RTT, parser robustness."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadPacket, LocalProtocolError
from nattrav.proto import handshake as p
from nattrav.proto.handshake import Event, Handshake

KEY = bytes(range(32))


def pair(key=KEY):
    return Handshake(key, "first", b"AAAAAAAA"), Handshake(key, "second", b"BBBBBBBB")


def test_three_packet_handshake_measures_rtt_on_both_sides():
    a, b = pair()
    hello = b.hello(1_000)
    got = a.receive(hello, 1_050)
    assert got.event is Event.HELLO and len(got.replies) == 1 and not a.established
    got = b.receive(got.replies[0], 1_100)
    assert got.event is Event.ESTABLISHED and got.rtt == 100 and b.established
    got = a.receive(got.replies[0], 1_170)
    assert got.event is Event.ESTABLISHED and got.rtt == 120 and a.established


def test_crossing_hellos_establish_both():
    a, b = pair()
    ha, hb = a.hello(0), b.hello(0)
    ack_to_b = a.receive(hb, 10).replies[0]
    ack_to_a = b.receive(ha, 10).replies[0]
    assert a.receive(ack_to_a, 20).event is Event.ESTABLISHED
    assert b.receive(ack_to_b, 20).event is Event.ESTABLISHED


def test_wrong_key_stray_and_reflection_are_rejected():
    a, b = pair()
    mallory = Handshake(b"x" * 32, "second", b"MMMMMMMM")
    for bad in (mallory.hello(0), b"garbage", b"", a.hello(0)):  # last: our own packet reflected
        with pytest.raises(BadPacket):
            a.receive(bad, 0)
    assert a.rejected == 4 and not a.established


def test_replay_is_rejected_but_reordering_inside_the_window_is_not():
    a, b = pair()
    frames = [b.keepalive() for _ in range(5)]
    a.receive(frames[3], 0)
    a.receive(frames[1], 0)  # late but new: fine
    with pytest.raises(BadPacket, match="replayed"):
        a.receive(frames[3], 0)
    with pytest.raises(BadPacket, match="replayed"):
        a.receive(frames[1], 0)
    a.receive(frames[4], 0)


def test_counter_far_behind_the_window_is_rejected():
    w = p.ReplayWindow(size=8)
    w.accept(100)
    assert not w.check(92) and w.check(93) and w.check(101)
    w.accept(93)
    assert not w.check(93)


def test_ack_for_someone_elses_nonce_does_not_establish():
    a, b = pair()
    c = Handshake(KEY, "first", b"CCCCCCCC")  # same key, other nonce (an old attempt)
    ack_for_c = b.receive(c.hello(0), 1).replies[0]
    with pytest.raises(BadPacket, match="nonce"):
        a.receive(ack_for_c, 2)
    assert not a.established


def test_resent_ack_is_fresh_and_accepted():
    a, b = pair()
    a.receive(b.hello(0), 1)
    first_ack = a.ack(2)
    again = a.ack(3)
    assert first_ack != again
    assert b.receive(again, 5).event is Event.ESTABLISHED
    assert b.receive(first_ack, 6).event is Event.ACK  # late duplicate answer, still authentic


def test_data_keepalive_close():
    a, b = pair()
    assert b.receive(a.data(b"hello"), 0).payload == b"hello"
    assert b.receive(a.keepalive(), 0).event is Event.KEEPALIVE
    assert b.receive(a.close(), 0).event is Event.CLOSE and b.closed
    with pytest.raises(LocalProtocolError):
        a.data(b"x" * (p.MAX_DATA + 1))


def test_tampered_payload_fails_mac():
    a, b = pair()
    frame = bytearray(a.data(b"pay me 10"))
    frame[p.HEADER.size + 7] ^= 1
    with pytest.raises(BadPacket, match="MAC"):
        b.receive(bytes(frame), 0)


@pytest.mark.parametrize("key,role,nonce", [(b"short", "first", b"A" * 8), (KEY, "third", b"A" * 8),
                                             (KEY, "first", b"A")])
def test_local_misuse(key, role, nonce):
    with pytest.raises(LocalProtocolError):
        Handshake(key, role, nonce)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_only_raises_bad_packet(data):
    try:
        f = p.decode(data)
    except BadPacket:
        return
    assert f.type in p.FrameType and len(f.tag) == p.TAG_LEN


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(list(p.FrameType)), st.integers(0, 2**64 - 1), st.binary(max_size=1300),
       st.integers(0, 60))
def test_well_framed_but_forged_frames_are_rejected(ftype, counter, body, flip):
    a, _ = pair()
    signed = p.HEADER.pack(p.MAGIC, p.VERSION, ftype, counter) + body
    frame = signed + b"\0" * p.TAG_LEN
    with pytest.raises(BadPacket):
        a.receive(frame, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=p.MAX_DATA), st.integers(0, 200))
def test_any_flipped_byte_of_a_real_frame_is_rejected(payload, pos):
    a, b = pair()
    frame = bytearray(a.data(payload))
    frame[pos % len(frame)] ^= 0x40
    with pytest.raises(BadPacket):
        b.receive(bytes(frame), 0)


def test_reserved_counters_are_never_reused_and_batches_are_accounted():
    """The C frame path seals with counters it reserves and checks against the shared window."""
    a = Handshake(b"k" * 32, "first", b"n" * 8)
    b = Handshake(b"k" * 32, "second", b"m" * 8)
    assert a.reserve(3) == 1
    assert a.reserve(0) == 4
    frame = a.data(b"x")  # counter 4: after the reserved ones
    assert b.receive(frame, 0).payload == b"x" and b.last_counter == 4
    with pytest.raises(LocalProtocolError):
        a.reserve(-1)
    b.batch_checked(2, None)
    assert b.rejected == 2 and b.last_counter == 4
    b.batch_checked(0, 9)
    assert b.last_counter == 9
    # a batch checker that accepted counter 4 through the shared window makes receive() refuse it
    assert not b.replay_window.check(4)
    assert a.send_key == b.receive_key and a.receive_key == b.send_key
