"""The STUN-over-TCP stream reader (io/stun_tcp.read_message), driven without sockets or Trio: the
stream is a stand-in whose receive_some() returns the input's chunks at once, so the coroutine runs
to completion in one send().

Input: a script of records (fuzz_harness.records); each record's payload is one chunk the peer's
TCP delivers (op 0xFF: the peer closes the stream).

Contract: read_message raises BadPacket and only that; every message it returns is one whole STUN
framing unit of at most MAX_MESSAGE bytes; it asks the stream for more only while it holds less than
one MAX_MESSAGE (never buffers more than that before reading again); a clean EOF between messages
is None, an EOF inside one is BadPacket.
"""

from __future__ import annotations

from nattrav.errors import BadPacket
from nattrav.io import stun_tcp
from nattrav.proto import stun

from fuzz_harness import Target, Violation, record, records, timed
from fuzz_targets.stun_codec import seeds as codec_seeds


class ChunkStream:
    def __init__(self, chunks: list[bytes], buf: bytearray) -> None:
        self.chunks = chunks
        self.buf = buf

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if len(self.buf) >= stun_tcp.MAX_MESSAGE:
            raise Violation(f"reads more while holding {len(self.buf)} bytes (> MAX_MESSAGE)")
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        n = len(chunk) if max_bytes is None else max_bytes
        if len(chunk) > n:
            self.chunks[0] = chunk[n:]
            return chunk[:n]
        self.chunks.pop(0)
        return chunk


def _complete(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise Violation("read_message waited on something other than the stream")


def run(data: bytes) -> None:
    chunks = []
    for op, payload in records(data):
        if op == 0xFF:
            break
        if payload:
            chunks.append(payload)
    buf = bytearray()
    stream = ChunkStream(chunks, buf)
    for _ in range(4096):
        with timed():
            msg = _complete(stun_tcp.read_message(stream, buf))
        if msg is None:
            if buf:
                raise Violation("EOF inside a message was taken for a clean end")
            return
        if not stun.HEADER_LEN <= len(msg) <= stun_tcp.MAX_MESSAGE:
            raise Violation(f"a {len(msg)}-byte message off the stream")
        if len(msg) != stun.HEADER_LEN + int.from_bytes(msg[2:4], "big"):
            raise Violation("a message whose length field disagrees with its size")


def seeds() -> dict[str, bytes]:
    msgs = [m for m in codec_seeds().values() if len(m) <= stun_tcp.MAX_MESSAGE]
    whole = b"".join(msgs)
    out = {"one-chunk": record(0, whole)}
    out["byte-by-byte-two"] = b"".join(record(0, bytes([c])) for c in msgs[0] + msgs[1])
    out["split-headers"] = b"".join(record(0, whole[i:i + 17]) for i in range(0, len(whole), 17))
    out["eof-mid-message"] = record(0, msgs[2][:30]) + record(0xFF)
    return out


TARGET = Target("stun_tcp_stream", run, (BadPacket,), seeds, max_len=8192,
                what="io/stun_tcp.read_message over chunked stream bytes")
