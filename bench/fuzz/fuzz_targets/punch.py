"""UDP punch frames (proto/handshake.Handshake.receive, the authenticated punch handshake): raw
datagrams from anyone, and frames that carry a valid MAC (a peer that holds the session key is
still not trusted to be well-behaved).

Input: a script of records (fuzz_harness.records). Byte 0 of the input picks our role. Record op:
bit 0 set: the payload is [type][counter, 8 bytes][body] and the driver frames and MACs it with the
peer's key; clear: the payload is the datagram as is. Bit 1: the body's first 8 bytes are replaced
by our nonce (so an ACK or CONFIRM can echo it). Bits 2-7: how far the clock moves first.

Contract: receive() raises BadPacket and only that, and the session goes on after it (UDP: drop and
carry on). Every reply it returns is a frame the peer authenticates; the replay window stays within
its size.
"""

from __future__ import annotations

import hashlib
import hmac

from nattrav.errors import BadPacket
from nattrav.proto import handshake as hs
from nattrav.proto.handshake import Handshake

from fuzz_harness import Target, Violation, record, records, timed

KEY = bytes(range(32))
NONCE = b"ourNONCE"
PEER_NONCE = b"peerNONC"


def forge(payload: bytes, sender: str, nonce: bytes | None) -> bytes:
    """A frame as a key holder in role `sender` would send it: header + body, then the tag."""
    ftype = payload[0] if payload else 0
    counter = int.from_bytes(payload[1:9].ljust(8, b"\0"), "big")
    body = payload[9:]
    if nonce is not None:
        body = nonce + body[len(nonce):]
    signed = hs.HEADER.pack(hs.MAGIC, hs.VERSION, ftype, counter) + body
    return signed + hmac.new(hs.derive_key(KEY, sender), signed, hashlib.sha256).digest()[:hs.TAG_LEN]


def roles(data: bytes) -> tuple[str, str]:
    return ("second", "first") if data and data[0] & 1 else ("first", "second")


def run(data: bytes) -> None:
    if not data:
        return
    mine, theirs = roles(data)
    session = Handshake(KEY, mine, NONCE)
    peer = Handshake(KEY, theirs, PEER_NONCE)
    now = 1_000_000
    for op, payload in records(data[1:]):
        now += (op >> 2) ** 3 * 1000
        datagram = forge(payload, theirs, NONCE if op & 2 else None) if op & 1 else payload
        try:
            with timed():
                got = session.receive(datagram, now)
        except BadPacket:
            continue
        for reply in got.replies:
            try:
                peer.authenticate(reply)
            except BadPacket as exc:
                raise Violation(f"the peer rejects our {got.event.value} reply: {exc}") from None
        w = session._replay
        if not 0 <= w.bits < (1 << w.size):
            raise Violation("the replay window grew past its size")


def frame_payload(ftype: int, counter: int, body: bytes = b"") -> bytes:
    return bytes([ftype]) + counter.to_bytes(8, "big") + body


def seeds() -> dict[str, bytes]:
    stamp = hs.STAMP.pack(PEER_NONCE, 999_000)
    echo = hs.STAMP.pack(b"\0" * 8, 999_500)  # the nonce is filled in by op bit 1
    out = {}
    for first in (0, 1):
        hello = record(1 | 4, frame_payload(hs.FrameType.HELLO, 1, stamp))
        ack = record(3 | 8, frame_payload(hs.FrameType.ACK, 2, echo + stamp))
        confirm = record(3, frame_payload(hs.FrameType.CONFIRM, 3, echo))
        rest = (record(1, frame_payload(hs.FrameType.KEEPALIVE, 4))
                + record(1, frame_payload(hs.FrameType.DATA, 5, b"hello"))
                + record(1, frame_payload(hs.FrameType.DATA, 5, b"replay"))
                + record(1, frame_payload(hs.FrameType.CLOSE, 2000)))
        out[f"handshake-{first}"] = bytes([first]) + hello + ack + rest
        out[f"confirm-{first}"] = bytes([first]) + hello + confirm + record(0, b"nT\x01\x01" + b"\0" * 40)
    real = Handshake(KEY, "second", PEER_NONCE)
    out["real-frames"] = bytes([0]) + b"".join(record(0, f) for f in (
        real.hello(5), real.keepalive(), real.data(b"x" * 1200), real.close()))
    return out


TARGET = Target("punch", run, (BadPacket,), seeds, max_len=8192,
                what="Handshake.receive: raw datagrams and frames MACed with the peer's key")
