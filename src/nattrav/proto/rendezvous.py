"""Rendezvous protocol: frames, message schemas and the server state machine (sans-IO).

Wire format: every frame is a 4-byte big-endian length followed by one msgpack map
``{"v": 1, "t": <type>, ...}``. Requests from a client may carry an integer ``"id"``; the reply to a
request echoes it, so a client can keep many requests in flight on one connection.

The server state machine never touches a socket or a clock: the I/O layer feeds it bytes and the
current time, and drains the list of actions (send this frame on that connection, close that
connection). The same object therefore serves the Trio server, the tests and the benchmark.

The server only exchanges node information. There is no message that carries payload from one peer
to another except the size-limited node info, so it can never be used as a relay.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import math
import random
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack

from ..errors import BadFrame, LocalProtocolError
from .schema import Spec, check_map, cut
from .timers import Timers
from .vocab import Role

VERSION = 1
HEADER = struct.Struct("!I")
MAX_FRAME = 16 * 1024  # a whole frame body; node info is the only large field
MAX_INFO = 8 * 1024  # packed size of a node info map
MAX_DEPTH = 6  # nesting of a node info map
MAX_INFO_OBJECTS = 1024  # keys + values + containers of a node info map (a real report has ~100)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SECRET_MIN = 16
SECRET_MAX = 128
KEY_BYTES = 32
MAX_MESSAGE = 200  # characters of an error message; they quote attacker data, so they are cut


class ErrorCode(str, enum.Enum):
    UNKNOWN_PEER = "unknown-peer"
    OFFLINE = "offline"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    BAD_FRAME = "bad-frame"
    NAME_TAKEN = "name-taken"
    BAD_REQUEST = "bad-request"  # well-formed but not allowed now (e.g. connect before enroll)
    UNKNOWN_OFFER = "unknown-offer"  # accept/refuse of an offer that ended or never existed
    BUSY = "busy"  # a server limit (peers, pending offers) was reached


# --- schemas (proto/schema.py checks them) -------------------------------------------------------
# A field spec is (python types, required). The tables make adding a message one line.

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_MAP = (dict,)
_BYTES = (bytes,)

CLIENT_MESSAGES: dict[str, Spec] = {
    "enroll": {"id": (_INT, False), "name": (_STR, False), "secret": (_STR, False), "info": (_MAP, False)},
    "ping": {"id": (_INT, False)},
    "info": {"id": (_INT, False), "info": (_MAP, True)},
    "connect": {"id": (_INT, False), "target": (_STR, True), "timeout": (_NUM, False)},
    "accept": {"id": (_INT, False), "offer": (_STR, True)},
    "refuse": {"id": (_INT, False), "offer": (_STR, True)},
}

SERVER_MESSAGES: dict[str, Spec] = {
    "enrolled": {
        "id": (_INT, False), "peer": (_STR, True), "secret": (_STR, True), "keepalive": (_NUM, True),
        "now": (_NUM, True), "observed": ((list,), True),
    },
    "pong": {"id": (_INT, False), "now": (_NUM, True)},
    "ok": {"id": (_INT, False)},
    "offer": {"offer": (_STR, True), "from": (_STR, True), "info": (_MAP, True), "expires": (_NUM, True)},
    "cancel": {"offer": (_STR, True), "code": (_STR, True), "message": (_STR, True)},
    "session": {
        "id": (_INT, False), "session": (_STR, True), "peer": (_STR, True), "info": (_MAP, True),
        "key": (_BYTES, True), "start_at": (_NUM, True), "now": (_NUM, True), "role": (_STR, True),
    },
    "error": {"id": (_INT, False), "code": (_STR, True), "message": (_STR, True)},
}


def _check_shape(msg: Any, table: dict[str, Spec]) -> dict:
    check_map(msg, table, version=VERSION, error=BadFrame, what="frame")
    kind = msg["t"]
    if "id" in msg and not 0 <= msg["id"] < 2**63:
        raise BadFrame(f"{kind}: id out of range")
    if "info" in msg:
        check_info(msg["info"])
    extra = _EXTRA_CHECKS.get(kind)
    if extra is not None and not extra(msg):
        raise BadFrame(f"{kind}: field values out of range")
    return msg


def _finite(x: Any) -> bool:
    return math.isfinite(x)


# Checks beyond types, for fields whose values the receiver relies on.
_EXTRA_CHECKS: dict[str, Callable[[dict], bool]] = {
    "session": lambda m: len(m["key"]) == KEY_BYTES and m["role"] in ("first", "second")
    and _finite(m["start_at"]) and _finite(m["now"]),
    "enrolled": lambda m: len(m["observed"]) == 2 and isinstance(m["observed"][0], str)
    and isinstance(m["observed"][1], int) and _finite(m["now"]) and _finite(m["keepalive"])
    and m["keepalive"] > 0,
    "pong": lambda m: _finite(m["now"]),
    "offer": lambda m: _finite(m["expires"]),
}


def check_info(info: Any) -> dict:
    """Validate a node info map: str keys at the top, bounded depth, object count and packed size.

    Bytes alone do not bound memory: 8 KB of empty arrays unpack into ~8,000 list objects (~0.5 MB),
    so every key, value and container counts against MAX_INFO_OBJECTS."""
    if not isinstance(info, dict):
        raise BadFrame("node info is not a map")
    if not all(isinstance(k, str) for k in info):
        raise BadFrame("node info keys must be strings")
    if _count_objects(info) > MAX_INFO_OBJECTS:
        raise BadFrame(f"node info has more than {MAX_INFO_OBJECTS} objects")
    try:
        size = len(msgpack.packb(info, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:  # values that came from msgpack pack back
        raise BadFrame(f"node info cannot be packed: {exc}") from None
    if size > MAX_INFO:
        raise BadFrame(f"node info is {size} bytes, at most {MAX_INFO}")
    return info


def _count_objects(info: dict) -> int:
    """Keys, values and containers under `info` (stops counting once past the cap); raises BadFrame
    when anything sits deeper than MAX_DEPTH. Iterative: the depth is attacker-chosen."""
    count = 1
    stack: list[tuple[Any, int]] = [(info, 0)]
    while stack:
        value, depth = stack.pop()
        if not value:
            continue
        if depth >= MAX_DEPTH:
            raise BadFrame(f"node info nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            count += 2 * len(value)
            children = value.values()
        else:
            count += len(value)
            children = value
        if count > MAX_INFO_OBJECTS:
            return count
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list, tuple)))
    return count


class Packed:
    """A field value that is already msgpack: encode() splices its bytes into the frame unchanged.

    The registry keeps each peer's node info packed (its wire size, a few KB) rather than as the
    Python objects it unpacks into (up to ~70 times more), and never has to unpack it to forward it.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def unpack(self) -> Any:
        return msgpack.unpackb(self.data, raw=False)

    def __repr__(self) -> str:
        return f"Packed({len(self.data)} bytes)"


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack("!H", n)


def encode(msg: dict) -> bytes:
    """Frame one message (the caller's own data: misuse is a LocalProtocolError)."""
    if type(msg) is dict and any(type(v) is Packed for v in msg.values()):
        parts = [_map_header(len(msg))]
        for k, v in msg.items():
            parts.append(msgpack.packb(k, use_bin_type=True))
            parts.append(v.data if type(v) is Packed else msgpack.packb(v, use_bin_type=True))
        body = b"".join(parts)
    else:
        body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def make(kind: str, **fields: Any) -> dict:
    msg = {"v": VERSION, "t": kind}
    msg.update({k: v for k, v in fields.items() if v is not None})
    return msg


def _unpack_body(body: bytes) -> Any:
    # Limits bound what one frame may allocate even though MAX_FRAME already bounds the body.
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_FRAME, max_bin_len=MAX_FRAME, max_array_len=4096, max_map_len=1024,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types (ValueError, ExtraData, FormatError, ...)
        raise BadFrame(f"undecodable msgpack: {type(exc).__name__}") from None


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    After a bad length header the byte stream cannot be resynchronised: the decoder is ``broken`` and
    every later feed raises. A bad body with a sane header only loses that frame.
    """

    def __init__(self, table: dict = CLIENT_MESSAGES, max_frame: int = MAX_FRAME):
        self._buf = bytearray()
        self._table = table
        self._max = max_frame
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            raise BadFrame("stream already desynchronised")
        self._buf += data
        # Bounded: at most one header plus one maximal body is kept unless the peer floods us, and a
        # flood beyond that is cut off by next_message() raising on the header.
        if len(self._buf) > 64 * (self._max + HEADER.size):
            self.broken = True
            self._buf.clear()
            raise BadFrame("too much unread data")

    def next_message(self) -> dict | None:
        """Return the next complete message, None when more bytes are needed; raise BadFrame."""
        if self.broken:
            raise BadFrame("stream already desynchronised")
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        if length == 0 or length > self._max:
            self.broken = True
            self._buf.clear()
            raise BadFrame(f"frame length {length} outside 1..{self._max}")
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return _check_shape(_unpack_body(body), self._table)

    def __iter__(self) -> Iterator[dict]:
        while (msg := self.next_message()) is not None:
            yield msg


def decode_one(frame: bytes, table: dict = CLIENT_MESSAGES) -> dict:
    """Decode exactly one whole frame (tests, fuzzing); trailing bytes are malformed."""
    dec = FrameDecoder(table)
    dec.feed(frame)
    msg = dec.next_message()
    if msg is None or dec._buf:
        raise BadFrame("not exactly one frame")
    return msg


class ClockMap:
    """Maps the server's clock into ours, NTP-style, from request/reply pairs.

    offset = server_now - (sent + received) / 2 assumes symmetric one-way delays; its error is at most
    half the round trip, so the sample with the smallest round trip is kept.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.rtt = math.inf

    def sample(self, sent: float, received: float, server_now: float) -> None:
        rtt = received - sent
        if not (math.isfinite(server_now) and 0 <= rtt):
            return  # a clock that went backwards or a nonsense server time tells us nothing
        if rtt <= self.rtt:
            self.rtt = rtt
            self.offset = server_now - (sent + received) / 2

    def to_local(self, server_time: float) -> float:
        return server_time - self.offset


def reconnect_delay(attempt: int, *, cap: float, first: float = 0.25,
                    rng: Callable[[], float] = random.random) -> float:
    """Seconds a client waits before re-enroll attempt `attempt` (0 = right after the loss).

    The first attempt is immediate (a restart or a blip is over soon); then the wait doubles from
    `first` up to `cap`, drawn from its upper half: thousands of peers that lost the same server must
    not all come back in the same millisecond, and none should wait much longer than `cap` (the
    client caps it at its keepalive, so a peer is reachable again within one keepalive of the
    server's return)."""
    if attempt <= 0:
        return 0.0
    ceiling = min(cap, first * 2 ** min(attempt - 1, 32))
    return ceiling * (0.5 + 0.5 * rng())


# --- server state machine ----------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    conn: int
    msg: dict


@dataclass(frozen=True)
class Close:
    conn: int
    reason: str


@dataclass(slots=True)
class _Peer:
    peer_id: str
    secret_hash: bytes
    info: bytes  # packed public node info (the peer's map plus "observed"), forwarded as is
    observed: list
    source: str
    conn: int | None
    last_seen: float
    offline_since: float | None = None
    offers: set = field(default_factory=set)  # pending offer ids this peer is part of


@dataclass(slots=True)
class _Conn:
    addr: list
    source: str
    decoder: FrameDecoder
    peer: str | None = None


@dataclass(slots=True)
class _Offer:
    offer_id: str
    initiator: str
    target: str
    source: str  # the initiator's source: a target's slots are shared out per source
    request_id: int | None
    expires: float


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def source_key(addr: tuple | list) -> str:
    """Whom a connection counts against in per-source limits: its IPv4 address, or its IPv6 /64
    (one subscriber gets a whole /64, so single IPv6 addresses would cost an attacker nothing)."""
    text = str(addr[0])
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RendezvousServer:
    """Registry of peers and the connect/offer/accept dance, driven by the I/O layer.

    Call connection_made / receive_data / connection_lost / tick with the current time, then take the
    resulting actions with ``actions()``. ``next_deadline()`` says when tick() next has work to do.

    What one source (an IPv4 address or IPv6 /64) can hold is bounded: ``max_conns_per_source``
    connections, ``max_peers_per_source`` registered peers (its own oldest disconnected peer makes
    room first), and ``max_offers_per_source`` of a target's ``max_offers_per_peer`` pending-offer
    slots, one per initiator; a full registry forgets its oldest disconnected peer before it says busy.
    """

    def __init__(
        self,
        *,
        keepalive: float = 15.0,
        keepalive_timeout: float = 45.0,
        retain: float = 300.0,
        enroll_timeout: float = 10.0,
        offer_timeout: float = 10.0,
        max_offer_timeout: float = 60.0,
        start_margin: float = 0.5,
        max_peers: int = 100_000,
        max_peers_per_source: int = 256,
        max_conns_per_source: int = 128,
        max_offers_per_peer: int = 16,
        max_offers_per_source: int = 2,
        token: Callable[[int], str] = secrets.token_urlsafe,
        key: Callable[[int], bytes] = secrets.token_bytes,
    ):
        limits = dict(max_peers=max_peers, max_peers_per_source=max_peers_per_source,
                      max_conns_per_source=max_conns_per_source, max_offers_per_peer=max_offers_per_peer,
                      max_offers_per_source=max_offers_per_source)
        for name, value in limits.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.retain = retain
        self.enroll_timeout = enroll_timeout
        self.offer_timeout = offer_timeout
        self.max_offer_timeout = max_offer_timeout
        self.start_margin = start_margin
        self.max_peers = max_peers
        self.max_peers_per_source = max_peers_per_source
        self.max_conns_per_source = max_conns_per_source
        self.max_offers_per_peer = max_offers_per_peer
        self.max_offers_per_source = max_offers_per_source
        self._token = token
        self._key = key
        self.peers: dict[str, _Peer] = {}
        self.conns: dict[int, _Conn] = {}
        self.offers: dict[str, _Offer] = {}
        self._out: list[Send | Close] = []
        # one deadline per connection (enroll), per peer (keepalive, then expiry) and per offer
        self._timers = Timers()
        self._conns_of: dict[str, int] = {}  # source -> open connections
        self._peers_of: dict[str, dict[str, None]] = {}  # source -> its peer ids, oldest first
        self._offline: dict[str, None] = {}  # disconnected peer ids, longest offline first
        self.stats = {"enrolled": 0, "sessions": 0, "bad_frames": 0, "expired": 0, "evicted": 0,
                      "refused": 0}

    # -- outputs --
    def actions(self) -> list[Send | Close]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def _send(self, conn: int | None, kind: str, **fields: Any) -> None:
        if conn is not None and conn in self.conns:
            self._out.append(Send(conn, make(kind, **fields)))

    def _error(self, conn: int, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        self._send(conn, "error", id=request_id, code=code.value, message=message)

    def _close(self, conn: int, reason: str, now: float) -> None:
        if conn in self.conns:
            self._out.append(Close(conn, reason))
            self.connection_lost(conn, now)

    # -- inputs --
    def connection_made(self, conn: int, addr: tuple | list, now: float) -> None:
        if conn in self.conns:
            raise LocalProtocolError(f"connection {conn} already open")
        source = source_key(addr)
        self.conns[conn] = _Conn(list(addr[:2]), source, FrameDecoder(CLIENT_MESSAGES))
        count = self._conns_of[source] = self._conns_of.get(source, 0) + 1
        if count > self.max_conns_per_source:
            self.stats["refused"] += 1
            self._error(conn, ErrorCode.BUSY,
                        f"too many connections from {source} (at most {self.max_conns_per_source})")
            self._close(conn, "too many connections from one source", now)
            return
        self._timers.set(("conn", conn), now + self.enroll_timeout)

    def connection_lost(self, conn: int, now: float) -> None:
        c = self.conns.pop(conn, None)
        if c is None:
            return
        self._timers.cancel(("conn", conn))
        left = self._conns_of[c.source] - 1
        if left:
            self._conns_of[c.source] = left
        else:
            del self._conns_of[c.source]
        if c.peer is None:
            return
        peer = self.peers.get(c.peer)
        if peer is not None and peer.conn == conn:
            self._go_offline(peer, now, "the peer disconnected")

    def receive_data(self, conn: int, data: bytes, now: float) -> None:
        c = self.conns.get(conn)
        if c is None:
            raise LocalProtocolError(f"data for unknown connection {conn}")
        try:
            c.decoder.feed(data)
        except BadFrame as exc:
            self._bad_frame(conn, c, exc, now)
            return
        while conn in self.conns:
            try:
                msg = c.decoder.next_message()
            except BadFrame as exc:
                self._bad_frame(conn, c, exc, now)
                if c.decoder.broken:
                    return
                continue
            if msg is None:
                return
            self._handle(conn, c, msg, now)

    def _bad_frame(self, conn: int, c: _Conn, exc: BadFrame, now: float) -> None:
        self.stats["bad_frames"] += 1
        self._error(conn, ErrorCode.BAD_FRAME, str(exc))
        if c.decoder.broken:
            self._close(conn, f"bad frame: {exc}", now)

    def tick(self, now: float, limit: int | None = None) -> bool:
        """Fire the deadlines due at `now`, at most `limit` of them; True when more are due.

        A limit lets the I/O layer serve other connections between batches: a thousand slowloris
        connections opened together all reach their enroll timeout in the same instant."""
        fired = 0
        while (due := self._timers.pop_due(now)) is not None:
            fired += 1
            kind, key = due
            if kind == "conn":
                c = self.conns.get(key)
                if c is not None and c.peer is None:
                    self._error(key, ErrorCode.TIMEOUT, "no enroll in time")
                    self._close(key, "no enroll in time", now)
            elif kind == "peer":
                peer = self.peers.get(key)
                if peer is None:
                    continue
                if peer.conn is None:
                    self._forget(peer)  # its retention is over
                    self.stats["expired"] += 1
                elif peer.last_seen + self.keepalive_timeout <= now:
                    conn = peer.conn
                    self._error(conn, ErrorCode.TIMEOUT, "keepalive timeout")
                    self._close(conn, "keepalive timeout", now)
                else:  # heard from since: check again when its silence could be long enough
                    self._timers.set(due, peer.last_seen + self.keepalive_timeout)
            elif kind == "offer":
                offer = self.offers.get(key)
                if offer is not None:
                    self._end_offer(offer, ErrorCode.TIMEOUT, f"{offer.target} did not answer in time")
            if limit is not None and fired >= limit:
                deadline = self._timers.next_deadline()
                return deadline is not None and deadline <= now
        return False

    # -- handlers --
    def _handle(self, conn: int, c: _Conn, msg: dict, now: float) -> None:
        kind = msg["t"]
        rid = msg.get("id")
        if kind == "enroll":
            self._enroll(conn, c, msg, rid, now)
            return
        if c.peer is None:
            self._error(conn, ErrorCode.BAD_REQUEST, f"{kind} before enroll", rid)
            return
        peer = self.peers[c.peer]
        peer.last_seen = now
        if kind == "ping":
            self._send(conn, "pong", id=rid, now=now)
        elif kind == "info":
            peer.info = self._public_info(msg["info"], peer.observed)
            self._send(conn, "ok", id=rid)
        elif kind == "connect":
            self._connect(conn, peer, msg, rid, now)
        elif kind in ("accept", "refuse"):
            self._answer(conn, peer, msg, rid, now)

    @staticmethod
    def _public_info(info: dict | None, observed: list) -> bytes:
        # The server's own observation wins over anything the peer wrote under that key.
        out = dict(info or {})
        out["observed"] = list(observed)
        return msgpack.packb(out, use_bin_type=True)

    def _enroll(self, conn: int, c: _Conn, msg: dict, rid: int | None, now: float) -> None:
        if c.peer is not None:
            self._error(conn, ErrorCode.BAD_REQUEST, "already enrolled on this connection", rid)
            return
        name, secret = msg.get("name"), msg.get("secret")
        if secret is not None and not SECRET_MIN <= len(secret) <= SECRET_MAX:
            self._error(conn, ErrorCode.BAD_REQUEST, f"secret must be {SECRET_MIN}..{SECRET_MAX} chars", rid)
            return
        if name is not None and not NAME_RE.match(name):
            self._error(conn, ErrorCode.BAD_REQUEST, "name must be 1..64 of [A-Za-z0-9._-]", rid)
            return
        existing = self.peers.get(name) if name is not None else None
        if existing is not None:
            if secret is None or not hmac.compare_digest(existing.secret_hash, _hash_secret(secret)):
                self._error(conn, ErrorCode.NAME_TAKEN, f"{cut(name)} belongs to another peer", rid)
                return
            if existing.source != c.source:
                refusal = self._make_room(c.source, new_peer=False)
                if refusal is not None:
                    self._error(conn, ErrorCode.BUSY, refusal, rid)
                    return
                self._unregister(existing)
                existing.source = c.source
                self._peers_of.setdefault(c.source, {})[existing.peer_id] = None
            # Ownership proven: this connection replaces the old one; what the old one had pending
            # cannot be answered on this connection, so it ends.
            for offer_id in list(existing.offers):
                offer = self.offers.get(offer_id)
                if offer is not None:
                    self._end_offer(offer, ErrorCode.OFFLINE, f"{existing.peer_id} enrolled again")
            if existing.conn is not None and existing.conn != conn:
                old = existing.conn
                existing.conn = None
                self._error(old, ErrorCode.NAME_TAKEN, "the same peer enrolled again elsewhere")
                self._close(old, "replaced by a new enrollment", now)
            peer = existing
            peer.offline_since = None
            self._offline.pop(peer.peer_id, None)
        else:
            refusal = self._make_room(c.source, new_peer=True)
            if refusal is not None:
                self._error(conn, ErrorCode.BUSY, refusal, rid)
                return
            peer_id = name
            # minted IDs follow the names' rule: an ID is typed after `-d` on a command line, and one
            # starting with "-" (1 in 64 of token_urlsafe's) would read as an option
            while peer_id is None or peer_id in self.peers or not NAME_RE.match(peer_id):
                peer_id = self._token(16)
            secret = secret if secret is not None else self._token(24)
            peer = _Peer(peer_id, _hash_secret(secret), b"", c.addr, c.source, None, now)
            self.peers[peer_id] = peer
            self._peers_of.setdefault(c.source, {})[peer_id] = None
        peer.conn = conn
        peer.last_seen = now
        peer.observed = c.addr
        peer.info = self._public_info(msg.get("info"), c.addr)
        c.peer = peer.peer_id
        self.stats["enrolled"] += 1
        self._timers.cancel(("conn", conn))
        self._timers.set(("peer", peer.peer_id), now + self.keepalive_timeout)
        self._send(conn, "enrolled", id=rid, peer=peer.peer_id, secret=secret, keepalive=self.keepalive,
                   now=now, observed=list(c.addr))

    def _make_room(self, source: str, *, new_peer: bool) -> str | None:
        """Make room for one more peer of `source` by forgetting disconnected ones (the source's own
        first, then the longest offline); the reason to refuse when only online peers are left."""
        mine = self._peers_of.get(source, {})
        if len(mine) >= self.max_peers_per_source:
            victim = next((pid for pid in mine if self.peers[pid].conn is None), None)
            if victim is None:
                return f"too many peers from {source} (at most {self.max_peers_per_source})"
            self._forget(self.peers[victim])
            self.stats["evicted"] += 1
        if new_peer and len(self.peers) >= self.max_peers:
            if not self._offline:
                return "too many peers"
            self._forget(self.peers[next(iter(self._offline))])
            self.stats["evicted"] += 1
        return None

    def _connect(self, conn: int, peer: _Peer, msg: dict, rid: int | None, now: float) -> None:
        target_id = msg["target"]
        target = self.peers.get(target_id)
        if target_id == peer.peer_id:
            self._error(conn, ErrorCode.BAD_REQUEST, "cannot connect to yourself", rid)
            return
        if target is None:
            self._error(conn, ErrorCode.UNKNOWN_PEER, f"no peer {cut(target_id)}", rid)
            return
        if target.conn is None:
            self._error(conn, ErrorCode.OFFLINE, f"peer {cut(target_id)} is offline", rid)
            return
        busy = self._offer_refusal(peer, target)
        if busy is not None:
            self._error(conn, ErrorCode.BUSY, busy, rid)
            return
        timeout = msg.get("timeout", self.offer_timeout)
        timeout = float(timeout)
        if not math.isfinite(timeout):
            timeout = self.offer_timeout
        timeout = min(max(timeout, 0.0), self.max_offer_timeout)
        offer_id = self._token(12)
        while offer_id in self.offers:
            offer_id = self._token(12)
        offer = _Offer(offer_id, peer.peer_id, target_id, peer.source, rid, now + timeout)
        self.offers[offer_id] = offer
        peer.offers.add(offer_id)
        target.offers.add(offer_id)
        self._timers.set(("offer", offer_id), offer.expires)
        self._send(target.conn, "offer", offer=offer_id, **{"from": peer.peer_id}, info=Packed(peer.info),
                   expires=offer.expires)

    def _offer_refusal(self, peer: _Peer, target: _Peer) -> str | None:
        """Why this connect may not add a pending offer (None: it may). A target's slots are shared
        out per initiator and per source, so no single source can make a target unreachable."""
        if len(peer.offers) >= self.max_offers_per_peer:
            return f"you have {len(peer.offers)} pending offers (at most {self.max_offers_per_peer})"
        from_source = 0
        for offer_id in target.offers:
            offer = self.offers[offer_id]
            if offer.initiator == peer.peer_id:
                return f"already asking {target.peer_id}: wait for its answer"
            from_source += offer.source == peer.source
        if from_source >= self.max_offers_per_source:
            return f"{from_source} offers to {target.peer_id} from {peer.source} are pending"
        if len(target.offers) >= self.max_offers_per_peer:
            return f"{target.peer_id} has too many pending offers"
        return None

    def _answer(self, conn: int, peer: _Peer, msg: dict, rid: int | None, now: float) -> None:
        offer = self.offers.get(msg["offer"])
        if offer is None or offer.target != peer.peer_id:
            self._error(conn, ErrorCode.UNKNOWN_OFFER, "no such pending offer", rid)
            return
        self._drop_offer(offer)
        initiator = self.peers.get(offer.initiator)
        if msg["t"] == "refuse":
            if initiator is not None:
                self._error(initiator.conn, ErrorCode.REFUSED, f"{peer.peer_id} refused", offer.request_id)
            self._send(conn, "ok", id=rid)
            return
        if initiator is None or initiator.conn is None:
            self._error(conn, ErrorCode.OFFLINE, f"{offer.initiator} went offline", rid)
            return
        key = self._key(KEY_BYTES)
        start_at = now + self.start_margin
        self.stats["sessions"] += 1
        common = dict(session=offer.offer_id, key=key, start_at=start_at, now=now)
        self._send(initiator.conn, "session", id=offer.request_id, peer=peer.peer_id, info=Packed(peer.info),
                   role=Role.FIRST.value, **common)
        self._send(conn, "session", id=rid, peer=initiator.peer_id, info=Packed(initiator.info),
                   role=Role.SECOND.value, **common)

    # -- helpers --
    def _drop_offer(self, offer: _Offer) -> None:
        self.offers.pop(offer.offer_id, None)
        self._timers.cancel(("offer", offer.offer_id))
        for pid in (offer.initiator, offer.target):
            p = self.peers.get(pid)
            if p is not None:
                p.offers.discard(offer.offer_id)

    def _end_offer(self, offer: _Offer, code: ErrorCode, message: str) -> None:
        self._drop_offer(offer)
        initiator = self.peers.get(offer.initiator)
        target = self.peers.get(offer.target)
        if initiator is not None:
            self._error(initiator.conn, code, message, offer.request_id)
        if target is not None:
            self._send(target.conn, "cancel", offer=offer.offer_id, code=code.value, message=message)

    def _go_offline(self, peer: _Peer, now: float, why: str) -> None:
        peer.conn = None
        peer.offline_since = now
        self._offline[peer.peer_id] = None
        self._timers.set(("peer", peer.peer_id), now + self.retain)
        for offer_id in list(peer.offers):
            offer = self.offers.get(offer_id)
            if offer is not None:
                self._end_offer(offer, ErrorCode.OFFLINE, f"{peer.peer_id}: {why}")

    def _unregister(self, peer: _Peer) -> None:
        mine = self._peers_of.get(peer.source)
        if mine is not None:
            mine.pop(peer.peer_id, None)
            if not mine:
                del self._peers_of[peer.source]

    def _forget(self, peer: _Peer) -> None:
        """Drop a disconnected peer from the registry (its name is free again)."""
        del self.peers[peer.peer_id]
        self._offline.pop(peer.peer_id, None)
        self._timers.cancel(("peer", peer.peer_id))
        self._unregister(peer)

    # -- introspection for the I/O layer and tests --
    def online(self) -> list[str]:
        return [p.peer_id for p in self.peers.values() if p.conn is not None]
