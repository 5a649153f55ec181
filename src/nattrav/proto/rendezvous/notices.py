"""Notices: what the front tells one peer's connection because of something another peer did (an
offer, a session, an error, a cancel, or "you were replaced"). A notice for a connection on this
instance becomes a frame at once; one for another instance is relayed there (io/ publishes it
through the shared registry) and becomes a frame when it arrives.

Times in a notice are durations (`expires_in`, `start_in`): every instance has its own clock, and
the frame is written in the clock of the instance whose peer reads it. A relayed notice carries the
wall-clock time it was sent, so the receiver can take the transit off; that correction is capped,
because the two instances' wall clocks may disagree.

A relayed notice comes from another instance through Redis: trusted, but still checked: anything
malformed raises BadMessage and is dropped, never framed.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from ...errors import BadFrame, BadMessage
from ..schema import Spec, check_map
from .wire import MAX_FRAME, MAX_MESSAGE, Packed, check_info

NOTICE_VERSION = 1
MAX_TRANSIT = 1.0  # seconds of transit taken off a relayed notice's durations, at most

_STR, _INT, _NUM, _BYTES = (str,), (int,), (int, float), (bytes,)

NOTICES: dict[str, Spec] = {
    "offer": {"to": (_STR, True), "conn": (_INT, True), "sent": (_NUM, True), "offer": (_STR, True),
              "from": (_STR, True), "info": (_BYTES, True), "expires_in": (_NUM, True),
              "from_key": (_BYTES, False)},
    "session": {"to": (_STR, True), "conn": (_INT, True), "sent": (_NUM, True), "id": (_INT, False),
                "session": (_STR, True), "peer": (_STR, True), "info": (_BYTES, True), "key": (_BYTES, True),
                "role": (_STR, True), "start_in": (_NUM, True), "peer_key": (_BYTES, False)},
    "error": {"to": (_STR, True), "conn": (_INT, True), "sent": (_NUM, True), "id": (_INT, False),
              "code": (_STR, True), "message": (_STR, True), "ends": (_STR, False)},
    "cancel": {"to": (_STR, True), "conn": (_INT, True), "sent": (_NUM, True), "offer": (_STR, True),
               "code": (_STR, True), "message": (_STR, True)},
    "evict": {"to": (_STR, True), "conn": (_INT, True), "sent": (_NUM, True)},
}


def notice(kind: str, to: str, conn: int, **fields: Any) -> dict:
    """A notice for peer `to` on connection `conn` (of whichever instance the Home names)."""
    out = {"v": NOTICE_VERSION, "t": kind, "to": to, "conn": conn, "sent": 0.0}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def pack_notice(note: dict, wall: float) -> bytes:
    body = dict(note)
    body["sent"] = wall
    if type(body.get("info")) is Packed:
        body["info"] = body["info"].data
    return msgpack.packb(body, use_bin_type=True)


def unpack_notice(data: bytes, wall: float) -> dict:
    """A relayed notice, checked, with its durations shortened by the time it spent in transit."""
    try:
        note = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=MAX_FRAME,
                               max_bin_len=MAX_FRAME, max_array_len=64, max_map_len=32, max_ext_len=0)
    except Exception as exc:  # msgpack raises a zoo of types
        raise BadMessage(f"undecodable notice: {type(exc).__name__}") from None
    check_map(note, NOTICES, version=NOTICE_VERSION, error=BadMessage, what="notice")
    if not all(math.isfinite(v) for k, v in note.items() if k in ("sent", "expires_in", "start_in")):
        raise BadMessage("notice: a time is not finite")
    if len(note.get("message", "")) > MAX_MESSAGE:
        raise BadMessage("notice: message too long")
    if "info" in note:
        try:
            check_info(msgpack.unpackb(note["info"], raw=False, strict_map_key=True, max_ext_len=0))
        except BadFrame as exc:
            raise BadMessage(f"notice: node info: {exc}") from None
        except Exception as exc:
            raise BadMessage(f"notice: undecodable node info: {type(exc).__name__}") from None
        note["info"] = Packed(note["info"])
    if note["t"] == "session" and (len(note["key"]) != 32 or note["role"] not in ("first", "second")):
        raise BadMessage("notice: bad session key or role")
    if any(len(note.get(k, b"0" * 32)) != 32 for k in ("from_key", "peer_key")):
        raise BadMessage("notice: an identity key is not 32 bytes")
    transit = min(max(wall - note["sent"], 0.0), MAX_TRANSIT)
    for key in ("expires_in", "start_in"):
        if key in note:
            note[key] = max(note[key] - transit, 0.0)
    return note


__all__ = ["NOTICES", "NOTICE_VERSION", "notice", "pack_notice", "unpack_notice"]
