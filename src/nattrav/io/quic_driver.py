"""The two tasks that drive io/quic_path.py's connection over the punched socket (io/quic_wire.py):
one receives the peer's datagrams and feeds QUIC, one sends what QUIC queued and keeps its timers
and the keepalives. Only the send task sends QUIC packets; answers to late punch packets and the
repeats of our close go out from the receive task, best effort.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from .quic_conn import Connection
from .quic_wire import PeerSocket

if TYPE_CHECKING:
    from .quic_path import QuicPath


class Driver:
    """Moves packets between a path's connection and its socket. `close_datagrams` is our
    CONNECTION_CLOSE once sent, repeated to a peer that keeps sending."""

    def __init__(self, path: QuicPath, wire: PeerSocket) -> None:
        self.path = path
        self.wire = wire
        self.close_datagrams: list[bytes] | None = None
        self.last_send = -math.inf
        self._wake = trio.Event()  # something to send, or the timer moved
        self._ping_uid = 0

    def kick(self) -> None:
        """Something to send, or QUIC's timer moved: the send task looks again."""
        self._wake.set()

    async def receive_task(self) -> None:
        path = self.path
        while True:
            try:
                await self.wire.wait_readable()
            except trio.ClosedResourceError:
                return
            now = None
            try:
                for data in self.wire.received():
                    if not self._for_quic(data):
                        continue
                    if now is None:
                        now = trio.current_time()
                    accepted = path._conn.packets_accepted
                    path._conn.receive_datagram(data, path.peer_addr, now)
                    if path._conn.packets_accepted == accepted:
                        # no packet in it decrypted as new: forged, replayed, corrupt, or too late
                        path.counters["discarded"] += 1
            except OSError as exc:
                path._die(f"receive failed: {exc.strerror or exc}")
                return
            if now is not None:
                path._process_events()
                path._notify()  # also for what raises no event (HANDSHAKE_DONE, acknowledgements)
                self.kick()

    def _for_quic(self, data: bytes) -> bool:
        """Whether a datagram from the peer goes to QUIC (else it was answered or dropped here)."""
        path = self.path
        if path._intercept is not None:
            replies = path._intercept(data)
            if replies is not None:
                path.counters["intercepted"] += 1
                for reply in replies:
                    self.wire.send_now(reply)
                return False
        if self.close_datagrams is not None:
            # aioquic stays silent once closing; RFC 9000 10.2.1 wants the close repeated to a peer
            # still sending (it lost ours, and may wait on it for its data's fate)
            if path.counters["close_repeated"] < 16:
                path.counters["close_repeated"] += 1
                for packet in self.close_datagrams:
                    self.wire.send_now(packet)
            return False
        if path._conn is None and not path._accept_first(data):
            path.counters["before_initial"] += 1
            return False
        return True

    async def send_task(self) -> None:
        """The one task that sends: runs aioquic's timer, keepalives and the send queue."""
        path = self.path
        while True:
            conn = path._conn
            deadline = math.inf
            if conn is not None:
                deadline = conn.get_timer() or math.inf
                if self._keepalives(conn):
                    deadline = min(deadline, self.last_send + path.settings.keepalive_interval)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            conn = path._conn
            if conn is None:
                continue
            now = trio.current_time()
            timer = conn.get_timer()
            if timer is not None and now >= timer:
                conn.handle_timer(now)
                path._process_events()
            if self._keepalives(conn) and now >= self.last_send + path.settings.keepalive_interval:
                self._ping_uid += 1
                conn.send_ping(self._ping_uid)
                path.counters["keepalives"] += 1
            try:
                await self._flush(conn, now)
            except OSError as exc:
                path._die(f"send failed: {exc.strerror or exc}")
                return
            if path._dead is not None and conn.get_timer() is None:
                return  # terminated: nothing left to time

    def _keepalives(self, conn: Connection) -> bool:
        path = self.path
        return path._authenticated and path.settings.keepalive_interval is not None and not conn.ending()

    async def _flush(self, conn: Connection, now: float) -> None:
        path = self.path
        closing = conn.close_pending()
        datagrams = [data for data, _addr in conn.datagrams_to_send(now)]
        if closing and datagrams and self.close_datagrams is None:
            self.close_datagrams = datagrams
        await self.wire.send(datagrams)
        if datagrams:
            path.counters["datagrams_out"] += len(datagrams)
            self.last_send = now
            path._notify()  # sends free queue space and may finish a stream
        await trio.lowlevel.checkpoint()


__all__ = ["Driver"]
