"""The punched UDP path: the winning socket and the peer's address, carrying authenticated DATA
frames (the handshake's keys and replay window), answering the peer's late punch packets and
keepalives on the way."""

from __future__ import annotations

from typing import Any

import trio

from ..core.errors import ICMP_ERRNOS
from ..errors import BadPacket
from ..proto.handshake import MAX_DATA, Event, Handshake
from ..proto.vocab import Strategy
from .path_stats import PathCounters

RECV_SIZE = 2048


def now_ns() -> int:
    """The handshake's clock: trio time in nanoseconds (its stamps and RTT)."""
    return int(trio.current_time() * 1e9)


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
        while True:
            if self.closed_by_peer:
                return b""
            try:
                data, addr = await self.sock.recvfrom(RECV_SIZE)
            except OSError as exc:
                if exc.errno in ICMP_ERRNOS:
                    continue
                raise
            addr = tuple(addr[:2])
            if addr != self.peer_addr and addr not in self.also:
                continue
            try:
                got = self.handshake.receive(data, now_ns())
            except BadPacket:
                continue
            if got.event in (Event.DATA, Event.KEEPALIVE) or self.counters.first_counter is not None:
                self.counters.peer_frame(self.handshake.last_counter)
            for reply in got.replies:
                await self.sock.sendto(reply, self.peer_addr)
            if got.event is Event.HELLO:
                continue  # the peer missed our ACK/CONFIRM; replied above
            if got.event is Event.DATA and got.payload:
                self.counters.received(len(got.payload))
                return got.payload
            if got.event is Event.CLOSE:
                self.closed_by_peer = True
                return b""

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


__all__ = ["PunchedPath", "now_ns"]
