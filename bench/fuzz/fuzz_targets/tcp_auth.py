"""The TCP handshake (proto/tcp_auth.StreamAuth.feed) over stream bytes from the other end, which
may be anyone (raw bytes) or a key holder (length-prefixed frames MACed with the peer's key).

Input: byte 0 picks our role; then a script of records (fuzz_harness.records). Record op: bit 0
set: the payload is [type][counter][body] and the driver frames, MACs and length-prefixes it
(the punch target's forge); clear: the payload goes on the stream as is. Bit 1: our nonce into
the body (an ACK that echoes it). Bit 2: after this record, the first side selects the connection
if it may. Bits 3-7: how far the clock moves first.

Contract: feed() raises BadPacket and only that (the caller drops the connection). Between calls
it holds at most one length prefix plus one maximal frame; once done it keeps nothing (the rest is
`leftover`, handed to the user). Everything it asks us to send is length-prefixed frames the peer
authenticates.
"""

from __future__ import annotations

from nattrav.errors import BadPacket
from nattrav.proto import handshake as hs, tcp_auth
from nattrav.proto.handshake import MAX_FRAME, Handshake
from nattrav.proto.tcp_auth import LENGTH, StreamAuth

from fuzz_harness import Target, Violation, record, records, timed
from fuzz_targets.punch import KEY, NONCE, PEER_NONCE, forge, frame_payload, roles


def _check_out(out: bytes, peer: Handshake) -> None:
    i = 0
    while i < len(out):
        (n,) = LENGTH.unpack_from(out, i)
        frame = out[i + LENGTH.size:i + LENGTH.size + n]
        if len(frame) != n:
            raise Violation("we would send a cut frame")
        try:
            peer.authenticate(frame)
        except BadPacket as exc:
            raise Violation(f"the peer rejects what we send: {exc}") from None
        i += LENGTH.size + n


def run(data: bytes) -> None:
    if not data:
        return
    mine, theirs = roles(data)
    auth = StreamAuth(KEY, mine, nonce=NONCE)
    peer = Handshake(KEY, theirs, PEER_NONCE)
    now = 1_000_000
    _check_out(auth.opening(now), peer)
    for op, payload in records(data[1:]):
        now += (op >> 3) ** 3 * 1000
        if op & 1:
            frame = forge(payload, theirs, NONCE if op & 2 else None)
            chunk = LENGTH.pack(len(frame) & 0xFFFF) + frame
        else:
            chunk = payload
        with timed():
            out = auth.feed(chunk, now)
        _check_out(out, peer)
        if auth.done:
            if auth._buf:
                raise Violation("a finished handshake still buffers bytes")
        elif len(auth._buf) > LENGTH.size + MAX_FRAME:
            raise Violation(f"the handshake buffers {len(auth._buf)} bytes")
        if op & 4 and auth.role == "first" and auth.state is tcp_auth.State.AUTHENTICATED:
            _check_out(auth.select(), peer)


def seeds() -> dict[str, bytes]:
    stamp = hs.STAMP.pack(PEER_NONCE, 999_000)
    echo = hs.STAMP.pack(b"\0" * 8, 999_500)
    out = {}
    for first in (0, 1):
        hello = record(1 | 8, frame_payload(hs.FrameType.HELLO, 1, stamp))
        ack = record(3 | 4 | 16, frame_payload(hs.FrameType.ACK, 2, echo + stamp))
        select = record(1, frame_payload(hs.FrameType.DATA, 3, tcp_auth.SELECT))
        out[f"handshake-{first}"] = bytes([first]) + hello + ack + select + record(0, b"user bytes")
        out[f"ack-first-{first}"] = bytes([first]) + ack + hello
    # a real peer's bytes, one byte at a time
    real = StreamAuth(KEY, "second", nonce=PEER_NONCE)
    stream = real.opening(5)
    out["real-hello-bytewise"] = bytes([0]) + b"".join(record(0, bytes([c])) for c in stream)
    out["bad-length"] = bytes([1]) + record(0, b"\xff\xff" + b"\0" * 10)
    return out


TARGET = Target("tcp_auth", run, (BadPacket,), seeds, max_len=8192,
                what="StreamAuth.feed: raw stream bytes and length-prefixed frames MACed with the peer's key")
