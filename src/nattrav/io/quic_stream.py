"""The byte stream of io/quic_path.py: one unidirectional QUIC stream each way (so either side may
speak first), as a trio HalfCloseableStream; send_all / receive_some / send_eof, so the same code
pipes it as a TCP or TLS stream. And what a graceful close says about it: the close carries what we
received ("bye"), so a peer whose last acknowledgements our close cut off still learns that all its
data, and its end, arrived.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import trio

from ..errors import PathError

if TYPE_CHECKING:
    from aioquic.quic import events

    from .quic_path import QuicPath

BYE = "nattrav/1 bye"  # graceful close reason: "nattrav/1 bye <bytes received> <end received 0/1>"
_BYE_RE = re.compile(r"nattrav/1 bye (\d{1,20}) ([01])\Z")


class PathDead(PathError, trio.BrokenResourceError):
    """The QUIC path ended before the operation could complete: the peer went silent (idle timeout),
    closed with an error, or reset the stream. str() says which; data may not have arrived.

    A trio.BrokenResourceError too: that is what trio's Stream contract says a broken stream raises,
    so code written for any trio stream (TCP, TLS, this one) handles it; and a PathError, so code
    written for nattrav catches it with the rest of the family."""


class QuicStream(trio.abc.HalfCloseableStream):
    """The path's byte stream, one QUIC stream each way. One sender and one receiver at a time.
    Works on its path's connection (`_live_conn`, `_kick`, `_wait_change`, `_closing`, `_dead`)."""

    def __init__(self, path: QuicPath, rx_id: int) -> None:
        self._path = path
        self.tx_id: int | None = None
        self.tx_written = 0
        self.tx_fin = False
        self.tx_delivered = False  # the peer's close confirmed it got all we wrote and the end
        self.peer_reset: str | None = None
        self.rx_id = rx_id  # the peer's first unidirectional stream
        self.rx = bytearray()
        self.rx_total = 0
        self.rx_eof = False
        self.rx_reset: str | None = None
        self._sending = False
        self._receiving = False

    # -- trio's Stream --

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        path = self._path
        try:
            if self.tx_fin or path._closing:
                raise trio.ClosedResourceError("the stream was closed for sending")
            view = memoryview(data).cast("B")
            chunk = max(path.settings.send_buffer // 4, 16384)
            for start in range(0, len(view), chunk):
                await self.wait_send_all_might_not_block()
                conn = path._live_conn()
                piece = bytes(view[start:start + chunk])
                conn.send_stream_data(self.open(), piece)
                self.tx_written += len(piece)
                path._kick()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        path = self._path
        while True:
            conn = path._live_conn()
            if self.peer_reset is not None:
                raise PathDead(self.peer_reset)
            if self.tx_id is None or conn.unsent(self.tx_id, self.tx_written) < path.settings.send_buffer:
                return
            await path._wait_change()

    async def send_eof(self) -> None:
        self.finish()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        path = self._path
        try:
            while not self.rx:
                if self.rx_reset is not None:
                    raise PathDead(self.rx_reset)
                if self.rx_eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                if path._closing:
                    raise trio.ClosedResourceError("the path was closed")
                if path._dead is not None:
                    raise PathDead(f"the stream ended before the peer finished it: {path._dead}")
                await path._wait_change()
            n = len(self.rx) if max_bytes is None else min(max_bytes, len(self.rx))
            out = bytes(self.rx[:n])
            del self.rx[:n]
            self._credit(n)
            await trio.lowlevel.checkpoint()
            return out
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        await self._path.aclose()

    # -- for the path --

    def open(self) -> int:
        """Our stream's ID, opening it on first use."""
        if self.tx_id is None:
            conn = self._path._live_conn()
            self.tx_id = conn.get_next_available_stream_id(is_unidirectional=True)
            conn.send_stream_data(self.tx_id, b"", end_stream=False)
        return self.tx_id

    def finish(self) -> None:
        """Queue the end of our stream (once; not on a dead path)."""
        if self.tx_fin or self._path._dead is not None:
            return
        self.tx_fin = True
        self._path._live_conn().send_stream_data(self.open(), b"", end_stream=True)
        self._path._kick()

    def on_data(self, ev: events.StreamDataReceived) -> None:
        self.rx += ev.data
        self.rx_total += len(ev.data)
        if ev.end_stream:
            self.rx_eof = True

    def delivered(self) -> bool:
        """The peer has all we wrote and our end (its acknowledgements, or its bye said so)."""
        if self.tx_delivered or self.tx_id is None:
            return self.tx_delivered or self.tx_written == 0
        conn = self._path._conn
        return conn is not None and conn.send_finished(self.tx_id)

    async def wait_delivered(self, timeout: float) -> None:
        """Until delivered(), the path is dead, or `timeout` passes without the peer acknowledging
        more of our stream."""
        path = self._path
        conn = path._conn
        progress = conn.acked(self.open())
        deadline = trio.current_time() + timeout
        while not self.delivered() and path._dead is None:
            with trio.move_on_at(deadline) as scope:
                await path._wait_change()
            if scope.cancelled_caught:
                return
            if conn.acked(self.tx_id) > progress:
                progress = conn.acked(self.tx_id)
                deadline = trio.current_time() + timeout

    def bye(self) -> str:
        """Our graceful close's reason: what we received."""
        return f"{BYE} {self.rx_total} {int(self.rx_eof)}"

    def on_bye(self, reason: str | None) -> None:
        """The peer closed gracefully with `reason`: it may say it got all we wrote and our end.
        Our end counts as delivered too when we had written nothing it lacks: a peer that closes
        while our (empty) end is in flight has all our data, and nothing is missing."""
        got = _BYE_RE.match(reason or "")
        if got and self.tx_fin and int(got[1]) == self.tx_written and (got[2] == "1" or self.tx_written == 0):
            self.tx_delivered = True

    def _credit(self, n: int) -> None:
        """The application read `n` more bytes: the connection grants credit from that."""
        conn = self._path._conn
        if conn is not None and self.rx_id in conn.read_offsets:
            before = conn.read_offsets[self.rx_id]
            conn.read_offsets[self.rx_id] = before + n
            # a credit update is due every half window read
            half = self._path.settings.stream_window // 2
            if (before + n) // half != before // half:
                self._path._kick()


__all__ = ["BYE", "PathDead", "QuicStream"]
