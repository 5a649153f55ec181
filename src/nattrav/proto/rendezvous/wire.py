"""Rendezvous frames: a 4-byte big-endian length, then one msgpack map ``{"v": 1, "t": <type>, ...}``.
Requests from a client may carry an integer ``"id"``; the reply to a request echoes it, so a client
can keep many requests in flight on one connection. The message tables say every type's fields
(proto/schema.py checks them); every parser here raises BadFrame and only BadFrame."""

from __future__ import annotations

import enum
import math
import re
import struct
from typing import Any, Callable, Iterator

import msgpack

from ...errors import BadFrame, LocalProtocolError
from ..schema import Spec, check_map
from .observe import TICKET_BYTES

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
    "enroll": {"id": (_INT, False), "name": (_STR, False), "secret": (_STR, False), "info": (_MAP, False),
               "key": (_BYTES, False), "sig": (_BYTES, False),  # identity: names.py
               "nonce": (_BYTES, False), "at": (_INT, False)},  # a timed proof: timed_proof.py
    "challenge": {"id": (_INT, False)},
    "ping": {"id": (_INT, False)},
    "info": {"id": (_INT, False), "info": (_MAP, True)},
    "connect": {"id": (_INT, False), "target": (_STR, True), "timeout": (_NUM, False)},
    # beacon: a sample beacon left with this accept (beacon.py): start the session on it, or ask
    "accept": {"id": (_INT, False), "offer": (_STR, True), "beacon": ((bool,), False)},
    "refuse": {"id": (_INT, False), "offer": (_STR, True)},
    # the punch socket's UDP address as the server saw it, with the server's ticket for it (observe.py)
    # fresh: the first of a new punch socket's, which replaces what the connection recorded before
    "observe": {"id": (_INT, False), "addr": ((list,), True), "ticket": (_BYTES, True), "fresh": ((bool,), False)},
    # the STUN samples a "resample" asked for: the listener's node info the held session starts on
    "sampled": {"id": (_INT, False), "offer": (_STR, True), "info": (_MAP, True)},
}

SERVER_MESSAGES: dict[str, Spec] = {
    "enrolled": {
        "id": (_INT, False), "peer": (_STR, True), "secret": (_STR, True), "keepalive": (_NUM, True),
        "now": (_NUM, True), "observed": ((list,), True), "stun": ((list,), False),
        "relay": (_MAP, False),  # TURN credentials for this peer (proto/turn_rest.py checks them)
    },
    "pong": {"id": (_INT, False), "now": (_NUM, True)},
    "ok": {"id": (_INT, False)},
    "offer": {"offer": (_STR, True), "from": (_STR, True), "info": (_MAP, True), "expires": (_NUM, True),
              "from_key": (_BYTES, False)},  # the key the initiator proved, when it enrolled with one
    "challenge": {"id": (_INT, False), "nonce": (_BYTES, True)},
    "cancel": {"offer": (_STR, True), "code": (_STR, True), "message": (_STR, True)},
    "session": {
        "id": (_INT, False), "session": (_STR, True), "peer": (_STR, True), "info": (_MAP, True),
        "key": (_BYTES, True), "start_at": (_NUM, True), "now": (_NUM, True), "role": (_STR, True),
        "peer_key": (_BYTES, False),  # the identity key the peer proved at enroll (names.py)
        "sample": ((list,), False),  # [ip, port]: our beacon as the server saw it (beacon.py; asked for only)
    },
    "error": {"id": (_INT, False), "code": (_STR, True), "message": (_STR, True)},
    # the answer to observe: recorded, or why not (a stale or foreign ticket is no error of the link)
    "observation": {"id": (_INT, False), "recorded": ((bool,), True), "reason": (_STR, False)},
    # no beacon came in time for an accept that announced one: send STUN samples ("sampled")
    "resample": {"id": (_INT, False), "session": (_STR, True)},
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


MAX_STUN = 8  # STUN servers an enrolled frame may name


def _stun_list(servers: list) -> bool:
    """The STUN servers the tier hands out: at most MAX_STUN [host, port] pairs."""
    return len(servers) <= MAX_STUN and all(
        type(s) is list and len(s) == 2 and type(s[0]) is str and 0 < len(s[0]) <= 255
        and type(s[1]) is int and 0 < s[1] < 65536 for s in servers)


# Checks beyond types, for fields whose values the receiver relies on.
_EXTRA_CHECKS: dict[str, Callable[[dict], bool]] = {
    "session": lambda m: len(m["key"]) == KEY_BYTES and m["role"] in ("first", "second")
    and _finite(m["start_at"]) and _finite(m["now"]) and len(m.get("peer_key", b"0" * 32)) == 32
    and _address(m.get("sample", ["0.0.0.0", 1])),
    "enroll": lambda m: len(m.get("key", b"0" * 32)) == 32 and len(m.get("sig", b"0" * 64)) == 64
    and ("key" in m) == ("sig" in m) and ("nonce" in m) == ("at" in m) and ("nonce" not in m or "key" in m)
    and len(m.get("nonce", b"0" * 16)) == 16,
    "enrolled": lambda m: len(m["observed"]) == 2 and isinstance(m["observed"][0], str)
    and isinstance(m["observed"][1], int) and _finite(m["now"]) and _finite(m["keepalive"])
    and m["keepalive"] > 0 and _stun_list(m.get("stun", [])),
    "pong": lambda m: _finite(m["now"]),
    "challenge": lambda m: "nonce" not in m or len(m["nonce"]) == 32,
    "offer": lambda m: _finite(m["expires"]) and len(m.get("from_key", b"0" * 32)) == 32,
    "observe": lambda m: len(m["addr"]) == 2 and type(m["addr"][0]) is str and len(m["addr"][0]) <= 64
    and type(m["addr"][1]) is int and 0 < m["addr"][1] < 65536 and len(m["ticket"]) == TICKET_BYTES,
    "observation": lambda m: len(m.get("reason", "")) <= MAX_MESSAGE,
}


def _address(a: list) -> bool:
    return (len(a) == 2 and type(a[0]) is str and len(a[0]) <= 64 and type(a[1]) is int
            and 0 < a[1] < 65536)


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


_PACKED_KEYS: dict[str, bytes] = {}  # field names that carry Packed values, as msgpack (a handful)


def _packed_key(key: str) -> bytes:
    data = _PACKED_KEYS.get(key)
    if data is None:
        data = msgpack.packb(key, use_bin_type=True)
        if len(_PACKED_KEYS) < 64:
            _PACKED_KEYS[key] = data
    return data


def encode(msg: dict) -> bytes:
    """Frame one message (the caller's own data: misuse is a LocalProtocolError)."""
    if type(msg) is dict and any(type(v) is Packed for v in msg.values()):
        # The plain fields in one packb call (one call per field cost 3x the CPU: a session frame is
        # sent twice per connect), then its map header swapped for one counting the Packed fields
        # too, which follow as they are (a msgpack map's order means nothing).
        plain = {k: v for k, v in msg.items() if type(v) is not Packed}
        if len(msg) > 0xFFFF:
            raise LocalProtocolError(f"a message of {len(msg)} fields")
        head = msgpack.packb(plain, use_bin_type=True)
        parts = [_map_header(len(msg)), memoryview(head)[1 if len(plain) < 16 else 3:]]
        for k, v in msg.items():
            if type(v) is Packed:
                parts.append(_packed_key(k))
                parts.append(v.data)
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
