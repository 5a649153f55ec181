"""A half-closeable, delivery-confirmed byte stream over TLS (what nattrav-fast --tcp pipes through).

TLS has no half-close: close_notify ends both directions, so "my stdin ended, keep sending me
yours" cannot be said with trio.SSLStream alone. And TCP's own acknowledgements say a byte reached
the peer's kernel, not its application: a peer that dies with unread data loses it silently. So the
bytes go in frames inside TLS, with two control frames:

    type 1 | length 4 | body            DATA: body is payload
    EOF  body: 8-byte count of DATA bytes this side sent, in total
    DONE body: 8-byte count of DATA bytes this side received when the peer's EOF came

send_eof() sends EOF; the peer answers DONE once its application has read up to that EOF, and
wait_delivered() returns only when DONE names every byte we sent (PathDead otherwise, after a
timeout). An EOF whose count is not what arrived is a broken stream, never a short file.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

from .quic_stream import PathDead

HEADER = struct.Struct(">BI")
COUNT = struct.Struct(">Q")
DATA, EOF, DONE = 0, 1, 2
MAX_BODY = 64 * 1024
RECEIVE = 65536


class FramedTls(trio.abc.HalfCloseableStream):
    """Frames over `tls` (a handshaken trio.SSLStream or any Stream). One reader at a time; sends may
    come from two tasks (the application's, and the DONE the reader owes the peer)."""

    def __init__(self, tls: trio.abc.Stream) -> None:
        self.tls = tls
        self.sent = 0  # DATA bytes we sent
        self.received = 0  # DATA bytes we received
        self.confirmed: int | None = None  # the peer's DONE count
        self._buf = bytearray()
        self._send_lock = trio.Lock()
        self._eof_sent = False
        self._peer_eof = False
        self.peer_id: Any = None  # the verified peer (a PeerId), set by whoever authenticated `tls`
        self.punched: Any = None  # the punched stream under it, when the API made it

    @property
    def peer_key(self) -> bytes:
        """The peer's verified Ed25519 public key (raw 32 bytes)."""
        return self.peer_id.key_bytes

    async def _send_frame(self, kind: int, body: bytes) -> None:
        async with self._send_lock:
            await self.tls.send_all(HEADER.pack(kind, len(body)) + body)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called")
        view = memoryview(data)
        for i in range(0, len(view), MAX_BODY):
            chunk = bytes(view[i:i + MAX_BODY])
            await self._send_frame(DATA, chunk)
            self.sent += len(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await self.tls.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            await self._send_frame(EOF, COUNT.pack(self.sent))

    async def _next_frame(self) -> tuple[int, bytes] | None:
        """The next frame, None at the end of the TLS stream."""
        while True:
            if len(self._buf) >= HEADER.size:
                kind, length = HEADER.unpack_from(self._buf)
                if kind not in (DATA, EOF, DONE) or length > MAX_BODY or (kind != DATA and length != COUNT.size):
                    raise PathDead(f"the peer sent a malformed frame (type {kind}, {length} bytes)")
                end = HEADER.size + length
                if len(self._buf) >= end:
                    body = bytes(self._buf[HEADER.size:end])
                    del self._buf[:end]
                    return kind, body
            try:
                data = await self.tls.receive_some(RECEIVE)
            except trio.BrokenResourceError as exc:
                raise PathDead(f"the connection broke: {exc}") from None
            if not data:
                return None
            self._buf += data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Payload, b"" at the peer's EOF (after answering it with DONE). PathDead when the stream
        ends or breaks without an EOF that accounts for every byte."""
        if self._peer_eof:
            return b""
        while True:
            frame = await self._next_frame()
            if frame is None:
                raise PathDead(f"the connection ended without the peer's end of data "
                               f"({self.received} bytes received)")
            kind, body = frame
            if kind == DATA:
                self.received += len(body)
                if max_bytes is not None and len(body) > max_bytes:
                    # keep the rest for the next call, as a frame of its own
                    self._buf[:0] = HEADER.pack(DATA, len(body) - max_bytes) + body[max_bytes:]
                    self.received -= len(body) - max_bytes
                    body = body[:max_bytes]
                if body:
                    return body
            elif kind == EOF:
                (count,) = COUNT.unpack(body)
                if count != self.received:
                    raise PathDead(f"the peer says it sent {count} bytes, {self.received} arrived")
                self._peer_eof = True
                await self._send_frame(DONE, COUNT.pack(self.received))
                return b""
            else:
                (self.confirmed,) = COUNT.unpack(body)

    async def wait_delivered(self, timeout: float) -> None:
        """Until the peer confirmed every byte we sent (call after send_eof(), with no other reader);
        PathDead when it does not within `timeout` seconds."""
        with trio.move_on_after(timeout):
            while self.confirmed is None:
                frame = await self._next_frame()
                if frame is None:
                    break
                if frame[0] == DONE:
                    (self.confirmed,) = COUNT.unpack(frame[1])
                elif frame[0] == DATA:
                    raise PathDead("the peer sent data after its end of data")
        if self.confirmed != self.sent:
            got = "nothing" if self.confirmed is None else f"{self.confirmed} bytes"
            raise PathDead(f"data may not have been delivered: sent {self.sent} bytes, the peer confirmed {got}")

    async def aclose(self) -> None:
        await self.tls.aclose()


__all__ = ["FramedTls"]
