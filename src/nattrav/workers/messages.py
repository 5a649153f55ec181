"""Coordinator <-> worker messages: small msgpack maps {"v": VERSION, "t": type, ...}, streamed over a
unix socketpair. Bulk data (port and index lists, bursts) travel as packed arrays in bin fields.

Both directions go through MessageReader, which raises BadMessage (and only that) on anything that is
not a well-formed message of a known type with exactly its fields, of the expected types
(proto/schema.py, the checker the rendezvous frames use too)."""

from __future__ import annotations

import msgpack

from ..errors import BadMessage
from ..proto.schema import Spec, check_map

VERSION = 1
MAX_MESSAGE = 256 << 20  # a 16M-packet burst is ~170 MB; anything bigger is an error, not a burst
# What a worker sends back is small: the largest reply is the ports of an "open" of MAX_INDEX sockets
# (2 MiB). The coordinator reads with this bound, so a broken worker cannot make it buffer 256 MB.
MAX_REPLY = 4 << 20

_int, _num, _bin, _str, _bool = (int,), (int, float), (bytes,), (str,), (bool,)
_opt_int = (int, type(None))
_opt_bin = (bytes, type(None))


def _required(**fields: tuple) -> Spec:
    return {name: (types, True) for name, types in fields.items()}


# type -> its fields (proto/schema.py: exactly these, no more); "id" pairs a request with its reply
SCHEMA: dict[str, Spec] = {
    # coordinator -> worker
    "open": _required(id=_int, count=_int, ip=_str, ttl=_opt_int, ports=_opt_bin, base=_int, reuse_port=_bool),
    "close": _required(id=_int, base=_int, count=_int),
    "fire": _required(id=_int, burst=(dict,), timeout_ms=_int),
    "listen": _required(id=_int, match=_bin, timeout=_num),
    "cancel": {},
    "set_ttl": _required(id=_int, indices=_bin, ttl=_opt_int),
    "take": _required(id=_int, index=_int),
    "drain": _required(id=_int),
    "stats": _required(id=_int),
    "shutdown": _required(id=_int),
    # worker -> coordinator; a result carries what its request asked for
    "hello": _required(pid=_int, impl=_str),
    "result": {"id": (_int, True), "ports": (_bin, False), "stats": ((dict,), False), "done": (_int, False),
               "index": (_int, False), "fd": (_bool, False), "icmp_errors": (_int, False),
               "recv": ((dict,), False), "hit": ((list, type(None)), False), "cancelled": (_bool, False)},
    "error": _required(id=_opt_int, errno=_int, kind=_str, msg=_str),
}


def encode(t: str, **fields) -> bytes:
    if t not in SCHEMA:
        raise ValueError(f"unknown message type {t!r}")
    msg = {"v": VERSION, "t": t, **fields}
    validate(msg)
    return msgpack.packb(msg, use_bin_type=True)


def validate(msg: object) -> dict:
    return check_map(msg, SCHEMA, version=VERSION, error=BadMessage)


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
