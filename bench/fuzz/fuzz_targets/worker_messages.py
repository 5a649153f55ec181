"""Coordinator <-> worker messages (workers/messages.MessageReader), fed in chunks, with the
worker's bound (MAX_MESSAGE) or the coordinator's (MAX_REPLY).

Input: byte 0 picks the bound (bit 0) and the chunk size (bits 1-3); the rest is the stream.

Contract: feed() raises BadMessage and only that (the caller then drops the peer); every message it
returns passes validate() (a known type with the schema's field types).
"""

from __future__ import annotations

from nattrav.workers import messages
from nattrav.errors import BadMessage
from nattrav.workers.messages import MessageReader

from fuzz_harness import Target, Violation, timed

CHUNKS = (1, 2, 5, 16, 100, 1000, 4096, 1 << 30)


def run(data: bytes) -> None:
    if not data:
        return
    reader = MessageReader(messages.MAX_REPLY if data[0] & 1 else messages.MAX_MESSAGE)
    chunk = CHUNKS[(data[0] >> 1) & 7]
    stream = data[1:]
    for i in range(0, len(stream), chunk):
        with timed():
            got = reader.feed(stream[i:i + chunk])
        for msg in got:
            try:
                messages.validate(msg)
            except BadMessage as exc:
                raise Violation(f"the reader returned an invalid message: {exc}") from None


def seeds() -> dict[str, bytes]:
    e = messages.encode
    msgs = {
        "open": e("open", id=1, count=4, ip="10.0.1.2", ttl=2, ports=b"\x9c\x40" * 4, base=0, reuse_port=False),
        "close": e("close", id=2, base=0, count=4),
        "fire": e("fire", id=3, plan={"targets": b"\0\0\x9c\x40", "rate": 20000.0, "sockets": [0, 1]},
                  timeout_ms=500),
        "listen": e("listen", id=4, match=b"nT\x01\x01", timeout=1.5),
        "cancel": e("cancel"),
        "set_ttl": e("set_ttl", id=5, indices=b"\0\0\0\x01", ttl=None),
        "take": e("take", id=6, index=3),
        "drain": e("drain", id=7),
        "stats": e("stats", id=8),
        "shutdown": e("shutdown", id=9),
        "hello": e("hello", pid=1234, impl="c"),
        "result": e("result", id=3, ports=b"\x9c\x40", sent=4),
        "error": e("error", id=None, errno=24, kind="OSError", msg="Too many open files"),
    }
    out = {f"one-{k}": bytes([6 << 1 | (k in ("hello", "result", "error"))]) + v for k, v in msgs.items()}
    out["all-bytewise"] = bytes([0]) + b"".join(msgs.values())
    out["all-chunk16"] = bytes([3 << 1 | 1]) + b"".join(msgs.values())
    return out


TARGET = Target("worker_messages", run, (BadMessage,), seeds, max_len=8192,
                what="workers/messages.MessageReader.feed (both bounds, chunked)")
