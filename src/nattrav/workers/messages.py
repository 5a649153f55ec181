"""Coordinator <-> worker messages: small msgpack maps {"v": VERSION, "t": type, ...}, streamed over a
unix socketpair. Bulk data (port and index lists, plans) travel as packed arrays in bin fields.

Both directions go through MessageReader, which raises BadMessage (and only that) on anything that is
not a well-formed message of a known type with fields of the expected types."""

from __future__ import annotations

import msgpack

from ..errors import BadMessage

VERSION = 1
MAX_MESSAGE = 256 << 20  # a 16M-packet plan is ~170 MB; anything bigger is an error, not a plan
# What a worker sends back is small: the largest reply is the ports of an "open" of MAX_INDEX sockets
# (2 MiB). The coordinator reads with this bound, so a broken worker cannot make it buffer 256 MB.
MAX_REPLY = 4 << 20

_int, _num, _bin, _str = (int,), (int, float), (bytes,), (str,)
_opt_int = (int, type(None))
_opt_bin = (bytes, type(None))

# type -> {field: allowed python types}; "id" pairs a request with its one reply
SCHEMA: dict[str, dict[str, tuple]] = {
    # coordinator -> worker
    "open": {"id": _int, "count": _int, "ip": _str, "ttl": _opt_int, "ports": _opt_bin, "base": _int,
             "reuse_port": (bool,)},
    "close": {"id": _int, "base": _int, "count": _int},
    "fire": {"id": _int, "plan": (dict,), "timeout_ms": _int},
    "listen": {"id": _int, "match": _bin, "timeout": _num},
    "cancel": {},
    "set_ttl": {"id": _int, "indices": _bin, "ttl": _opt_int},
    "take": {"id": _int, "index": _int},
    "drain": {"id": _int},
    "stats": {"id": _int},
    "shutdown": {"id": _int},
    # worker -> coordinator
    "hello": {"pid": _int, "impl": _str},
    "result": {"id": _int},
    "error": {"id": _opt_int, "errno": _int, "kind": _str, "msg": _str},
}


def encode(t: str, **fields) -> bytes:
    if t not in SCHEMA:
        raise ValueError(f"unknown message type {t!r}")
    msg = {"v": VERSION, "t": t, **fields}
    validate(msg)
    return msgpack.packb(msg, use_bin_type=True)


def validate(msg: object) -> dict:
    if not isinstance(msg, dict):
        raise BadMessage(f"message is a {type(msg).__name__}, not a map")
    if msg.get("v") != VERSION:
        raise BadMessage(f"message version {msg.get('v')!r}, this side speaks {VERSION}")
    t = msg.get("t")
    schema = SCHEMA.get(t) if isinstance(t, str) else None
    if schema is None:
        raise BadMessage(f"unknown message type {t!r}")
    for name, types in schema.items():
        if name not in msg:
            raise BadMessage(f"{t!r} message without {name!r}")
        value = msg[name]
        # bool is an int in Python; a field that wants an int must not take True
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadMessage(f"{t!r} field {name!r} has type {type(value).__name__}")
    return msg


class MessageReader:
    """Feed bytes as they arrive; get whole validated messages back."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, max_buffer_size=max_message,
        )

    def feed(self, data: bytes) -> list[dict]:
        try:
            self._unpacker.feed(data)
            return [validate(m) for m in self._unpacker]
        except BadMessage:
            raise
        except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                msgpack.exceptions.StackError, msgpack.exceptions.BufferFull, ValueError,
                TypeError, UnicodeDecodeError) as e:
            raise BadMessage(f"undecodable message: {type(e).__name__}: {e}") from None


__all__ = ["MAX_MESSAGE", "MAX_REPLY", "MessageReader", "SCHEMA", "VERSION", "encode", "validate"]
