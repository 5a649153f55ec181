"""The punched UDP path: the winning socket and the peer's address, carrying authenticated DATA
frames (the handshake's keys and replay window), answering the peer's late punch packets and
keepalives on the way.

Receiving takes a recvmmsg batch at a time and checks its DATA frames in one C call (core/frames.py:
the same structure, tag and replay-window checks as Handshake.receive, on the Handshake's own window);
any handshake frame in the batch goes to the Handshake in order. At 300 Mbit/s that is the difference
between ~8 us of Python a frame and ~1.5 us of C (bench/results/perf-punched-vs-direct.md). The batch
calls use the Handshake's own keys, frame counter and replay window (its _recv_key, _send_key,
_counter, _replay), so frames it builds or checks one at a time and the batches never disagree."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from ..core.errors import ICMP_ERRNOS
from ..core.frames import HEADER, OVERHEAD, FrameBatch, MacKey, seal
from ..errors import BadPacket
from ..proto.handshake import MAX_DATA, Event, Handshake
from ..proto.vocab import Strategy
from .path_stats import PathCounters

RECV_SIZE = 2048


def now_ns() -> int:
    """The handshake's clock: trio time in nanoseconds (its stamps and RTT)."""
    return int(trio.current_time() * 1e9)


async def recv_ready(sock: Any, batch: Any) -> int:
    """Wait until `sock` is readable, then take one recvmmsg batch into `batch` (a core RecvBatch or
    FrameBatch); errors the socket reports for earlier ICMP messages are skipped. Returns the count."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return batch.recv(sock)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno not in ICMP_ERRNOS:
                raise


class PunchedPath:
    """An authenticated UDP path to the peer. Not thread-safe; one reader at a time."""

    def __init__(self, sock: Any, peer_addr: tuple[str, int], rtt: float, strategy: Strategy,
                 handshake: Handshake, stats: dict[str, Any] | None = None,
                 also: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.sock = sock
        self.peer_addr = peer_addr
        # other addresses the peer authenticated from during the punch: with LAN attempts racing the
        # planned one, each side may have won on another path (ours to its LAN address, its to our
        # public one through a hairpin), and both carry the peer's frames
        self.also = also
        self.rtt = rtt  # seconds, from the handshake
        self.strategy = strategy
        self.handshake = handshake
        self.stats = stats or {}  # the punch's own: packets sent and received, each attempt
        self.closed_by_peer = False
        self.counters = PathCounters()
        self.counters.rtt_samples.append(rtt)
        self.timings: dict[str, Any] = {}  # set by connect()/listen(): each phase's time (api/timeline.py)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._frames: FrameBatch | None = None  # made on the first receive
        self._send_mac: MacKey | None = None
        self._pending: deque[bytes] = deque()  # payloads of a batch not handed out yet
        self.received_at_ns = 0  # CLOCK_MONOTONIC of the last recvmmsg (one-way delays)

    def statistics(self) -> dict[str, Any]:
        """Everything an experiment records about the path: what crossed it, the punch, the phases."""
        return {"strategy": self.strategy.value, "peer": list(self.peer_addr), "rtt_ms": round(self.rtt * 1e3, 4),
                **self.counters.to_dict(),
                "punch": {k: self.stats.get(k) for k in ("sent", "received", "rejected")},
                "attempts": self.stats.get("attempts", []), "timings": self.timings}

    async def send(self, data: bytes) -> None:
        """Send a payload; longer than MAX_DATA is split into several DATA frames."""
        data = bytes(data)
        for i in range(0, max(len(data), 1), MAX_DATA):
            chunk = data[i : i + MAX_DATA]
            await self.sock.sendto(self.handshake.data(chunk), self.peer_addr)
            self.counters.sent(len(chunk))

    async def send_keepalive(self) -> None:
        await self.sock.sendto(self.handshake.keepalive(), self.peer_addr)

    async def serve_keepalives(self, interval: float = 15.0) -> None:
        """Run forever (in the caller's nursery): keep both NATs' mappings alive."""
        while True:
            await trio.sleep(interval)
            await self.send_keepalive()

    async def receive(self) -> bytes:
        """The next payload from the peer. Answers late handshake packets on the way; drops anything
        unauthenticated or from an address the peer did not authenticate from during the punch.
        Returns b"" once the peer closed the path."""
        while not self._pending:
            got = await self.receive_many()
            if not got:
                return b""
            self._pending.extend(got)
        return self._pending.popleft()

    async def receive_many(self) -> list[bytes]:
        """The peer's non-empty payloads from the next datagrams that carry any (one recvmmsg batch
        of up to 64), in order; [] once the peer closed the path. Same checks as receive()."""
        if self._pending:
            out = list(self._pending)
            self._pending.clear()
            return out
        if self._frames is None:
            # the Handshake's key and window: its own receive() and these batches share the window
            self._frames = FrameBatch([self.peer_addr, *self.also], key=self.handshake.receive_key)
        fb, hs = self._frames, self.handshake
        while not self.closed_by_peer:
            await recv_ready(self.sock, fb)
            self.received_at_ns = time.monotonic_ns()
            out: list[bytes] = []
            start = 0
            # shielded: a cancel half-way through would lose the batch's payloads (already read)
            with trio.CancelScope(shield=True):
                while start < fb.count:
                    stop, payloads, s = fb.open(start, hs.replay_window)
                    hs.batch_checked(s.rejected, s.last_counter if s.accepted else None)
                    if s.accepted:
                        self.counters.peer_frames(s.accepted, s.first_counter, s.high_counter)
                        self.counters.received(s.data_bytes, s.data)
                    out += [p for p in payloads if p]
                    if stop < fb.count:
                        await self._handshake_frame(fb.frame(stop))
                    start = stop + 1
            if out:
                return out
        return []

    async def _handshake_frame(self, data: bytes) -> None:
        """A HELLO, ACK, CONFIRM or CLOSE from the peer's address, after the punch: the Handshake
        checks it and answers."""
        try:
            got = self.handshake.receive(data, now_ns())
        except BadPacket:
            return
        if self.counters.first_counter is not None:
            self.counters.peer_frame(self.handshake.last_counter)
        for reply in got.replies:
            try:
                await self.sock.sendto(reply, self.peer_addr)
            except OSError as exc:
                if exc.errno not in ICMP_ERRNOS:
                    raise
        if got.event is Event.CLOSE:
            self.closed_by_peer = True

    def seal_data(self, frames: bytearray, frame_len: int, n: int) -> None:
        """Make n DATA frames in place (a sender's burst): frame i at i*frame_len, its payload of
        frame_len - OVERHEAD bytes already at i*frame_len + HEADER. Takes n of the Handshake's counters."""
        if not OVERHEAD <= frame_len <= OVERHEAD + MAX_DATA:
            raise ValueError(f"frame_len must be {OVERHEAD}..{OVERHEAD + MAX_DATA}, got {frame_len}")
        if self._send_mac is None:
            self._send_mac = MacKey(self.handshake.send_key)
        first = self.handshake.reserve(n)
        seal(self._send_mac, first, frames, frame_len, n)

    async def aclose(self) -> None:
        try:
            if not self.handshake.closed:
                with trio.move_on_after(0.5):
                    await self.sock.sendto(self.handshake.close(), self.peer_addr)
        except OSError:
            pass
        finally:
            self.sock.close()

    async def __aenter__(self) -> PunchedPath:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["HEADER", "OVERHEAD", "PunchedPath", "now_ns", "recv_ready"]
