"""The TCP path through the relay (RFC 6062): `RelayedTcp`.

As for UDP (io/relay_path.py), one allocation serves the session: the asking side holds a TCP
allocation (io/turn.py's TurnTcpLink) and permits only the peer's server-observed IP; the other side
opens a plain TCP connection to the relayed address, which the relay announces to the allocating side
(ConnectionAttempt) and that side binds on a data connection of its own. The stream is then
authenticated exactly as a punched TCP connection is (proto/tcp_auth.py: HELLO/ACK under the
session key, the first side's SELECT), so a stranger who connects to the relayed address first is
dropped and the next connection waited for. The control connection must stay open for as long as the
data connection lives (the relay closes both together), so the allocating side serves its link for
the whole block. No upgrade in place here: a TCP stream cannot move to another 4-tuple.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..errors import BadPacket, RelayError
from ..proto.stun_attrs import Address
from ..proto.tcp_auth import StreamAuth
from ..proto.vocab import Strategy
from .path import now_ns
from .turn import TurnTcpLink

CONNECT_EVERY = 0.3  # seconds between the connecting side's tries (the permission may come later)
CHUNK = struct.Struct(">H")  # length of a data chunk on the relayed stream; 0 is the sender's EOF
MAX_CHUNK = 0xFFFF


class RelayedStream(trio.abc.HalfCloseableStream):
    """The user's stream over a relayed TCP connection. A TURN relay does not pass a half-close on
    (coturn tears both legs down, with a RST when bytes are still queued), so the bytes travel in
    length-prefixed chunks and send_eof() is an empty chunk; the connection itself closes only in
    aclose(). Attributes as io/tcp_punch.PunchedStream's: peer_addr, local_addr, rtt, strategy, via."""

    def __init__(self, stream: Any, *, peer_addr: Address, rtt: float, leftover: bytes = b"") -> None:
        self.stream = stream
        self.peer_addr = peer_addr
        self.local_addr = tuple(stream.socket.getsockname()[:2])
        self.rtt = rtt
        self.strategy = Strategy.RELAY
        self.via = "relay"
        self._buf = bytearray(leftover)
        self._left = 0  # bytes of the current chunk still to come
        self._eof = False
        self._sent_eof = False
        self._send_lock = trio.StrictFIFOLock()

    async def send_all(self, data: Any) -> None:
        if self._sent_eof:
            raise trio.ClosedResourceError("send_eof() was called")
        view = memoryview(bytes(data))
        async with self._send_lock:
            for i in range(0, len(view), MAX_CHUNK):
                part = view[i:i + MAX_CHUNK]
                await self.stream.send_all(CHUNK.pack(len(part)) + bytes(part))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._sent_eof:
            return
        async with self._send_lock:
            self._sent_eof = True
            await self.stream.send_all(CHUNK.pack(0))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or 65536
        while True:
            if self._left and self._buf:
                n = min(self._left, len(self._buf), limit)
                out = bytes(self._buf[:n])
                del self._buf[:n]
                self._left -= n
                await trio.lowlevel.checkpoint()
                return out
            if not self._left and len(self._buf) >= CHUNK.size:
                (self._left,) = CHUNK.unpack_from(self._buf)
                del self._buf[:CHUNK.size]
                if self._left == 0:
                    self._eof = True
                continue
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            more = await self.stream.receive_some(65536)
            if not more:
                if self._left or self._buf:
                    raise trio.BrokenResourceError("the relayed connection ended inside a chunk")
                self._eof = True  # the peer (or the relay) closed without an EOF chunk
                return b""
            self._buf += more

    async def aclose(self) -> None:
        await self.stream.aclose()



class RelayedTcp:
    """A relayed TCP stream to be opened (`open(timeout)` yields a RelayedStream)."""

    strategy = Strategy.RELAY

    def __init__(self, key: bytes, role: str, *, peer_ip: str, link: TurnTcpLink | None = None,
                 relayed: Address | None = None, emit: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        if (link is None) == (relayed is None):
            raise ValueError("the allocating side passes its TurnTcpLink, the other the peer's relayed address")
        self.key, self.role, self.peer_ip = key, role, peer_ip
        self.link, self.relayed = link, relayed
        self.emit = emit or (lambda phase, detail: None)
        self.rejected = 0

    @asynccontextmanager
    async def open(self, timeout: float) -> AsyncIterator[RelayedStream]:
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    if self.link is not None:
                        nursery.start_soon(self.link.serve)
                        stream = await self._accept(timeout)
                    else:
                        stream = await self._connect(timeout)
                    self.emit("relay-connected", {"relay": list(self.link.relayed if self.link else self.relayed),
                                                  "rtt_ms": round(stream.rtt * 1e3, 2)})
                    try:
                        yield stream
                    finally:
                        await trio.aclose_forcefully(stream)
                except BaseException as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        finally:
            if self.link is not None:
                with trio.CancelScope(shield=True):
                    await self.link.aclose()
        if failure is not None:
            raise failure

    async def _accept(self, timeout: float) -> RelayedStream:
        """(allocating side) the peer's connection through the relay, authenticated."""
        assert self.link is not None
        deadline = trio.current_time() + timeout
        await self.link.permit([self.peer_ip], timeout=max(0.5, timeout))
        while True:
            left = deadline - trio.current_time()
            if left <= 0:
                raise RelayError(f"the peer never came through the TCP relay {self._where()} "
                                 f"({self.rejected} connection(s) failed authentication)")
            try:
                data, who = await self.link.accept_peer(left)
            except RelayError:
                if self.link.failed:
                    raise RelayError(f"the relay failed: {self.link.failed}") from None
                continue
            if who[0] != self.peer_ip:
                self.rejected += 1  # the permission is per IP; anything else is not our peer
                await trio.aclose_forcefully(data)
                continue
            stream = await self._authenticate(data, who, deadline)
            if stream is not None:
                return stream

    async def _connect(self, timeout: float) -> RelayedStream:
        """(the other side) a plain TCP connection to the peer's relayed address, authenticated;
        retried while the relay refuses it (the peer's permission may not be there yet)."""
        assert self.relayed is not None
        deadline = trio.current_time() + timeout
        last = "no attempt"
        while trio.current_time() < deadline:
            try:
                with trio.fail_after(max(0.1, deadline - trio.current_time())):
                    data = await trio.open_tcp_stream(*self.relayed)
            except (OSError, trio.TooSlowError) as exc:
                last = str(exc) or type(exc).__name__
                await trio.sleep(CONNECT_EVERY)
                continue
            stream = await self._authenticate(data, self.relayed, deadline)
            if stream is not None:
                return stream
            last = "the connection failed authentication"
            await trio.sleep(CONNECT_EVERY)
        raise RelayError(f"no authenticated connection through the TCP relay {self._where()}: {last}")

    async def _authenticate(self, data: Any, who: Address, deadline: float) -> RelayedStream | None:
        """The punch handshake on the stream (proto/tcp_auth.py); None (connection dropped) when the
        other end is not the peer."""
        auth = StreamAuth(self.key, self.role)
        try:
            with trio.fail_after(max(0.1, deadline - trio.current_time())):
                await data.send_all(auth.opening(now_ns()))
                while not auth.done:
                    chunk = await data.receive_some(4096)
                    if not chunk:
                        raise BadPacket("connection closed during the handshake")
                    reply = auth.feed(chunk, now_ns())
                    if reply:
                        await data.send_all(reply)
                if self.role == "first":
                    await data.send_all(auth.select())
        except (BadPacket, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.rejected += 1
            await trio.aclose_forcefully(data)
            return None
        return RelayedStream(data, peer_addr=(str(who[0]), int(who[1])), rtt=(auth.rtt or 0) / 1e9,
                             leftover=auth.leftover)

    def _where(self) -> str:
        where = self.link.relayed if self.link is not None else self.relayed
        assert where is not None
        return f"{where[0]}:{where[1]}"


__all__ = ["RelayedStream", "RelayedTcp"]
