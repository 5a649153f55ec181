"""The on-path handshake, sans-IO: authenticated punch packets, hello/ack, keepalives, data frames.

Every frame is MACed with a key derived from the session's punch key and the SENDER's role, so a
stray packet, an attacker without the key, or our own packet reflected back cannot win the race. The
API's peers agree that key themselves (handshake_kx.py: the rendezvous server never learns it);
bare rendezvous clients use the key the server minted.
Counters are per direction and checked against a sliding replay window (as IPsec/WireGuard do), so a
captured frame cannot be replayed within the session either. The payload is authenticated, not
encrypted.

Wire format (big endian):
    magic "nT" | version 1 | type 1 | counter 8 | body | tag 16 (HMAC-SHA256 over all before it)
A stamp is nonce 8 + sender time 8. Bodies: HELLO stamp; ACK echoed stamp + own stamp; CONFIRM echoed
stamp; KEEPALIVE and CLOSE empty; DATA the payload (at most MAX_DATA bytes).

A side sends HELLOs (the punch packets); whoever receives a valid HELLO answers with an ACK that echoes
it and carries its own stamp; the ACK's receiver answers with a CONFIRM echoing that. A valid ACK or
CONFIRM echoing OUR nonce proves the peer holds the key and sees our packets: the path is up both ways
and the echoed time gives the RTT. Three packets from the first hello that gets through.
No clock here: callers pass `now` (any monotonic unit; RTT comes out in the same unit).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from ..errors import BadPacket, LocalProtocolError
from .vocab import Role

MAGIC = b"nT"
VERSION = 1
TAG_LEN = 16
NONCE_LEN = 8
HEADER = struct.Struct(">2sBBQ")
STAMP = struct.Struct(">8sQ")
MAX_DATA = 1200  # keeps a frame under 1280 bytes: no fragmentation on any IPv6-capable path either
MAX_FRAME = HEADER.size + MAX_DATA + TAG_LEN
REPLAY_WINDOW = 1024
KEY_MIN = 16


class FrameType(enum.IntEnum):
    HELLO = 1
    ACK = 2
    KEEPALIVE = 3
    DATA = 4
    CLOSE = 5
    CONFIRM = 6


# Body size limits per type: (min, max).
_BODY = {
    FrameType.HELLO: (STAMP.size, STAMP.size),
    FrameType.ACK: (2 * STAMP.size, 2 * STAMP.size),
    FrameType.CONFIRM: (STAMP.size, STAMP.size),
    FrameType.KEEPALIVE: (0, 0),
    FrameType.DATA: (0, MAX_DATA),
    FrameType.CLOSE: (0, 0),
}


@dataclass(frozen=True)
class Frame:
    type: FrameType
    counter: int
    body: bytes
    signed: bytes  # header + body: what the tag covers
    tag: bytes

    @property
    def stamp(self) -> tuple[bytes, int]:
        """The first stamp of the body (HELLO: the sender's; ACK, CONFIRM: the echoed one)."""
        nonce, t = STAMP.unpack_from(self.body)
        return nonce, t

    @property
    def second_stamp(self) -> tuple[bytes, int]:
        nonce, t = STAMP.unpack_from(self.body, STAMP.size)
        return nonce, t


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Parse a frame's structure (not its tag). Raises BadPacket on anything malformed."""
    try:
        data = bytes(data)
    except (TypeError, ValueError):
        raise BadPacket("not bytes") from None
    if len(data) < HEADER.size + TAG_LEN:
        raise BadPacket(f"short frame ({len(data)} bytes)")
    if len(data) > MAX_FRAME:
        raise BadPacket(f"frame too long ({len(data)} bytes)")
    magic, version, ftype, counter = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadPacket("bad magic")
    if version != VERSION:
        raise BadPacket(f"unsupported version {version}")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise BadPacket(f"unknown frame type {ftype}") from None
    body = data[HEADER.size:-TAG_LEN]
    lo, hi = _BODY[ftype]
    if not lo <= len(body) <= hi:
        raise BadPacket(f"{ftype.name} body of {len(body)} bytes")
    return Frame(ftype, counter, body, data[:-TAG_LEN], data[-TAG_LEN:])


def derive_key(session_key: bytes, role: str) -> bytes:
    """The MAC key for frames SENT by `role`: one key per direction defeats reflection."""
    return hmac.new(session_key, b"nattrav punch v1 " + role.encode(), hashlib.sha256).digest()


def _tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()[:TAG_LEN]


class ReplayWindow:
    """Accept each counter at most once, and none older than the window behind the highest seen."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.top = -1
        self.bits = 0  # bit i set: counter top - i was seen

    def check(self, counter: int) -> bool:
        if counter > self.top:
            return True
        back = self.top - counter
        return back < self.size and not (self.bits >> back) & 1

    def accept(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


class Event(enum.Enum):
    HELLO = "hello"  # the peer's punch packet reached us (answer with `replies`)
    ESTABLISHED = "established"  # the peer acked our hello: the path works both ways
    ACK = "ack"  # an ack after we were already established (RTT sample)
    KEEPALIVE = "keepalive"
    DATA = "data"
    CLOSE = "close"


@dataclass(frozen=True)
class Received:
    event: Event
    replies: tuple[bytes, ...] = ()  # frames to send back to the sender's address, in order
    rtt: int | None = None
    payload: bytes = b""


class Handshake:
    """One side of the handshake. Feed it every datagram; send what it returns."""

    def __init__(self, key: bytes, role: str, nonce: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < KEY_MIN:
            raise LocalProtocolError(f"session key must be >= {KEY_MIN} bytes")
        if role not in tuple(Role):
            raise LocalProtocolError(f"role must be one of {[r.value for r in Role]}, got {role!r}")
        role = Role(role)
        if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_LEN:
            raise LocalProtocolError(f"nonce must be {NONCE_LEN} bytes")
        peer_role = role.other
        self.role = role
        self.nonce = bytes(nonce)
        self._send_key = derive_key(bytes(key), role)
        self._recv_key = derive_key(bytes(key), peer_role)
        self._counter = 0
        self._replay = ReplayWindow()
        self.established = False
        self.closed = False
        self.rtt: int | None = None
        self._peer_stamp: bytes | None = None
        self.rejected = 0  # frames that failed structure, MAC or replay checks
        self.last_counter = 0  # the counter of the last authentic frame received

    # -- sending --------------------------------------------------------------------------------

    def _frame(self, ftype: FrameType, body: bytes) -> bytes:
        self._counter += 1
        signed = HEADER.pack(MAGIC, VERSION, ftype, self._counter) + body
        return signed + _tag(self._send_key, signed)

    def hello(self, now: int) -> bytes:
        """A punch packet. Each call uses a fresh counter; one frame may be sent from many sockets
        (the first copy accepted wins, later copies are replays)."""
        return self._frame(FrameType.HELLO, STAMP.pack(self.nonce, now & (2**64 - 1)))

    def keepalive(self) -> bytes:
        return self._frame(FrameType.KEEPALIVE, b"")

    def data(self, payload: bytes) -> bytes:
        payload = bytes(payload)
        if len(payload) > MAX_DATA:
            raise LocalProtocolError(f"payload of {len(payload)} bytes > {MAX_DATA}")
        return self._frame(FrameType.DATA, payload)

    def close(self) -> bytes:
        self.closed = True
        return self._frame(FrameType.CLOSE, b"")

    # -- batches: frames sealed and checked elsewhere (the C path of core/frames.py) --------------

    @property
    def send_key(self) -> bytes:
        """The MAC key of this side's frames, for a sealer that takes counters with reserve()."""
        return self._send_key

    @property
    def receive_key(self) -> bytes:
        """The MAC key of the peer's frames, for a batch checker that shares replay_window."""
        return self._recv_key

    @property
    def replay_window(self) -> ReplayWindow:
        """The one replay window of this side: a batch checker must update this object, not a copy,
        or a frame accepted in a batch could be accepted again by receive()."""
        return self._replay

    def reserve(self, n: int) -> int:
        """Spend n counters for frames sealed outside this object; returns the first. They are spent
        whether or not the frames go out: a counter is never used twice."""
        if n < 0:
            raise LocalProtocolError(f"cannot reserve {n} counters")
        first = self._counter + 1
        self._counter += n
        return first

    def batch_checked(self, rejected: int, last_counter: int | None) -> None:
        """Account for a batch checked against receive_key and replay_window."""
        self.rejected += rejected
        if last_counter is not None:
            self.last_counter = last_counter

    # -- receiving ------------------------------------------------------------------------------

    def authenticate(self, data: bytes | bytearray | memoryview) -> Frame:
        """Structure, MAC and replay checks. Raises BadPacket; counts rejections."""
        try:
            frame = decode(data)
            if not hmac.compare_digest(frame.tag, _tag(self._recv_key, frame.signed)):
                raise BadPacket("bad MAC")
            if not self._replay.check(frame.counter):
                raise BadPacket(f"replayed counter {frame.counter}")
        except BadPacket:
            self.rejected += 1
            raise
        self._replay.accept(frame.counter)
        self.last_counter = frame.counter  # path statistics read the peer's counter gaps as loss
        return frame

    def ack(self, now: int) -> bytes | None:
        """A fresh ACK for the latest peer HELLO (to resend while no CONFIRM came), or None."""
        if self._peer_stamp is None:
            return None
        return self._frame(FrameType.ACK, self._peer_stamp + STAMP.pack(self.nonce, now & (2**64 - 1)))

    def _established(self, echo: tuple[bytes, int], now: int) -> int:
        nonce, t = echo
        if not hmac.compare_digest(nonce, self.nonce):
            self.rejected += 1
            raise BadPacket("echoes a nonce that is not ours")
        rtt = (now - t) & (2**64 - 1)
        self.rtt = rtt
        return rtt

    def receive(self, data: bytes | bytearray | memoryview, now: int) -> Received:
        """Handle one datagram. Raises BadPacket for anything not authentic (drop it and go on)."""
        frame = self.authenticate(data)
        if frame.type is FrameType.HELLO:
            self._peer_stamp = frame.body
            ack = self.ack(now)
            assert ack is not None
            return Received(Event.HELLO, (ack,))
        if frame.type in (FrameType.ACK, FrameType.CONFIRM):
            rtt = self._established(frame.stamp, now)
            replies: tuple[bytes, ...] = ()
            if frame.type is FrameType.ACK:
                replies = (self._frame(FrameType.CONFIRM, frame.body[STAMP.size:]),)
            if self.established:
                return Received(Event.ACK, replies, rtt=rtt)
            self.established = True
            return Received(Event.ESTABLISHED, replies, rtt=rtt)
        if frame.type is FrameType.KEEPALIVE:
            return Received(Event.KEEPALIVE)
        if frame.type is FrameType.DATA:
            return Received(Event.DATA, payload=frame.body)
        self.closed = True
        return Received(Event.CLOSE)
