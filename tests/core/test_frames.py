"""csrc/frames.c against the Python it replaces on the hot path: HMAC-SHA256 against hmac (with and
without the SHA extensions), and a recvmmsg batch's verdicts against Handshake.receive on the same
datagrams, forged, replayed, malformed and foreign ones included."""

import hashlib
import hmac
import os
import random
import socket
import struct

import pytest

from nattrav.core.frames import DEFER, HEADER, OVERHEAD, FrameBatch, MacKey, seal, sha_ni
from nattrav.errors import BadPacket
from nattrav.proto.handshake import MAX_DATA, Event, Handshake, ReplayWindow

KEY = bytes(range(32))


@pytest.fixture(params=[False, True], ids=["best", "portable"])
def sha(request):
    sha_ni(portable=request.param)
    yield request.param
    sha_ni(portable=False)


def test_hmac_matches_the_standard_library(sha):
    rng = random.Random(7)
    for key_len in (1, 16, 32, 63, 64, 65, 130):
        key = rng.randbytes(key_len)
        k = MacKey(key)
        for n in [*range(0, 130), 183, 1212, 1228, 4096]:
            msg = rng.randbytes(n)
            assert k.digest(msg) == hmac.new(key, msg, hashlib.sha256).digest(), (key_len, n)


def test_bad_key_is_refused():
    with pytest.raises(ValueError):
        MacKey(b"")


def pair():
    a = Handshake(KEY, "first", os.urandom(8))
    b = Handshake(KEY, "second", os.urandom(8))
    return a, b


def sockets():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    return rx, tx, other


def drain(fb, rx, window, reference):
    """Everything the batch calls accept, handing handshake frames to `reference` as a path does."""
    out, events = [], []
    while True:
        try:
            fb.recv(rx)
        except BlockingIOError:
            return out, events
        start = 0
        while start < fb.count:
            stop, payloads, _ = fb.open(start, window)
            out += payloads
            if stop < fb.count:
                try:
                    events.append(reference.receive(fb.frame(stop), 0).event)
                except BadPacket:
                    events.append("rejected")
            start = stop + 1


def test_batch_accepts_what_the_handshake_accepts_and_drops_the_rest(sha):
    a, b = pair()
    rx, tx, other = sockets()
    dst = rx.getsockname()
    good = [a.data(f"payload {i}".encode() * (i % 40)) for i in range(40)]
    forged = bytearray(a.data(b"forged"))
    forged[-1] ^= 1
    wrong_key = Handshake(os.urandom(32), "first", os.urandom(8)).data(b"other session")
    sent = [good[0], good[1], good[1], bytes(forged), b"nT", b"garbage" * 10, wrong_key, a.keepalive(), *good[2:20],
            good[5], a.close(), *good[20:], good[3]]
    for d in sent:
        tx.sendto(d, dst)
    other.sendto(a.data(b"from a stranger"), dst)  # authentic frame, wrong source: dropped uncounted
    b_ref = Handshake(KEY, "second", b.nonce)  # the same datagrams through Python, for the verdicts
    ref_payloads, ref_rejected = [], 0
    for d in sent:
        try:
            got = b_ref.receive(d, 0)
        except BadPacket:
            ref_rejected += 1
            continue
        if got.event is Event.DATA:
            ref_payloads.append(got.payload)

    fb = FrameBatch([tx.getsockname()], key=b.receive_key, n=16)  # several batches, a DEFER in one
    window = b.replay_window
    b.rejected = 0
    payloads, events = drain(fb, rx, window, b)
    assert payloads == ref_payloads
    assert events == [Event.CLOSE]
    assert b.closed
    # the window after: the same counters seen as the Python one's
    assert (window.top, window.bits) == (b_ref.replay_window.top, b_ref.replay_window.bits)
    rx.close(), tx.close(), other.close()


def test_summary_counts_rejections_and_counters():
    a, b = pair()
    rx, tx, _ = sockets()
    frames = [a.data(b"x" * 100) for _ in range(5)]
    bad = bytearray(frames[2])
    bad[HEADER] ^= 0xFF  # payload changed, tag kept
    for d in [frames[0], frames[1], bytes(bad), frames[3], frames[1], frames[4]]:
        tx.sendto(d, rx.getsockname())
    fb = FrameBatch([tx.getsockname()], key=b.receive_key)
    assert fb.recv(rx) == 6
    stop, payloads, s = fb.open(0, b.replay_window)
    assert stop == 6 and len(payloads) == 4
    assert (s.data, s.rejected, s.data_bytes) == (4, 2, 400)
    assert (s.first_counter, s.high_counter, s.last_counter) == (1, 5, 5)
    rx.close(), tx.close()


def test_window_far_jump_and_old_counters():
    """Counters more than the window behind the highest are refused, as ReplayWindow does."""
    a, b = pair()
    rx, tx, _ = sockets()
    early = a.data(b"early")
    a.reserve(5000)
    late = a.data(b"late")
    for d in (late, early):
        tx.sendto(d, rx.getsockname())
    fb = FrameBatch([tx.getsockname()], key=b.receive_key)
    fb.recv(rx)
    w = ReplayWindow()
    _, payloads, s = fb.open(0, w)
    assert payloads == [b"late"] and s.rejected == 1 and w.top == 5002
    rx.close(), tx.close()


def test_keyless_batch_filters_by_source_only():
    rx, tx, other = sockets()
    for d in (b"one", b"", b"two"):
        tx.sendto(d, rx.getsockname())
    other.sendto(b"stranger", rx.getsockname())
    fb = FrameBatch([tx.getsockname()])
    fb.recv(rx)
    _, payloads, s = fb.open(0)
    assert payloads == [b"one", b"", b"two"] and s.foreign == 1
    rx.close(), tx.close(), other.close()


def test_sealed_frames_are_what_the_handshake_would_send(sha):
    a, b = pair()
    a.data(b"first")  # counter 1 spent by Python
    n, size = 7, 333
    flen = size + OVERHEAD
    buf = bytearray(n * flen)
    for i in range(n):
        buf[i * flen + HEADER : i * flen + HEADER + size] = bytes([i]) * size
    assert a.reserve(n) == 2
    seal(MacKey(a.send_key), 2, buf, flen, n)
    for i in range(n):
        frame = bytes(buf[i * flen : (i + 1) * flen])
        got = b.receive(frame, 0)
        assert got.event is Event.DATA and got.payload == bytes([i]) * size
        assert b.last_counter == 2 + i
    # the same bytes Python would build for counter 2
    a2 = Handshake(KEY, "first", a.nonce)
    a2.reserve(1)
    assert a2.data(bytes([0]) * size) == bytes(buf[:flen])


def test_seal_checks_its_buffer():
    with pytest.raises(ValueError):
        seal(MacKey(KEY), 1, bytearray(10), 100, 1)
    with pytest.raises(OSError):
        seal(MacKey(KEY), 1, bytearray(5000), OVERHEAD + MAX_DATA + 1, 1)


def test_defer_stops_at_handshake_frames_only():
    a, b = pair()
    rx, tx, _ = sockets()
    hello = a.hello(123)
    for d in (a.data(b"1"), hello, a.data(b"2")):
        tx.sendto(d, rx.getsockname())
    fb = FrameBatch([tx.getsockname()], key=b.receive_key)
    fb.recv(rx)
    stop, payloads, _ = fb.open(0, b.replay_window)
    assert stop == 1 and payloads == [b"1"] and fb._kinds[1] == DEFER
    assert fb.frame(1) == hello
    assert struct.unpack_from(">Q", hello, 4)[0] == 1  # older than the DATA before it: still fresh
    stop, payloads, _ = fb.open(2, b.replay_window)
    assert stop == 3 and payloads == [b"2"]
    rx.close(), tx.close()
