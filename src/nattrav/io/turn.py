"""Trio driver of proto/turn.py's TurnClient: a TURN allocation on a UDP socket of its own
(`TurnLink`), or a TCP allocation (RFC 6062) over a control connection (`TurnTcpLink`).

A link is made by `allocate_udp()` / `allocate_tcp()` (which run the exchange until the server
answered), then served by whoever uses it: `serve()` reads the server's messages, hands peers' data
to a callback and keeps the allocation, permissions and channels fresh. Requests made while it is
served (`permit`, `bind`) wait for their answer. Failures are RelayError with the server's reason.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

import trio

from ..errors import BadPacket, RelayError
from ..proto.stun_attrs import Address
from ..proto.turn import (TCP, UDP, Allocated, ChannelBound, ConnectionAttempt, Failed, Kind, PeerData,
                          PermissionInstalled, TurnClient, stream_message_length)
from ..proto.turn_rest import RelayGrant

RECV_SIZE = 65536
MAX_STREAM_MESSAGE = 65536 + 4


def resolve_server(grant: RelayGrant) -> Address:
    """The relay's address (one lookup; the answers must come from exactly there)."""
    try:
        infos = socket.getaddrinfo(grant.host, grant.port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise RelayError(f"cannot resolve the relay {grant.host}: {exc.strerror or exc}") from None
    return (infos[0][4][0], grant.port)


class _Waiters:
    """Requests waiting for the client's events while something else serves the link."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[Any], bool], trio.Event, list[Any]]] = []

    def dispatch(self, event: Any) -> bool:
        """Hand `event` to the first waiter that wants it; True if one did."""
        for item in self._waiting:
            wants, done, slot = item
            if wants(event):
                slot.append(event)
                done.set()
                self._waiting.remove(item)
                return True
        return False

    async def wait(self, wants: Callable[[Any], bool], timeout: float, what: str) -> Any:
        done, slot = trio.Event(), []
        item = (wants, done, slot)
        self._waiting.append(item)
        try:
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            if item in self._waiting:
                self._waiting.remove(item)
        if not slot:
            raise RelayError(f"{what}: no answer from the relay within {timeout:g} s")
        event = slot[0]
        if isinstance(event, Failed):
            raise RelayError(f"{what}: the relay said {event.reason}")
        return event


def _for(kind: Kind, pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda ev: (isinstance(ev, Failed) and ev.kind is kind) or pred(ev)


class _Link:
    """What the UDP and TCP links share: the client, its events, its timers."""

    client: TurnClient
    server: Address

    def __init__(self) -> None:
        self.waiters = _Waiters()
        self.on_data: Callable[[Address, bytes], None] = lambda peer, data: None
        self.on_event: Callable[[Any], None] = lambda ev: None
        self._wake = trio.Event()
        self.failed: str | None = None

    @property
    def relayed(self) -> Address:
        assert self.client.relayed is not None
        return self.client.relayed

    @property
    def mapped(self) -> Address | None:
        return self.client.mapped

    async def _send_outgoing(self) -> None:
        raise NotImplementedError

    def _handle(self, data: bytes) -> None:
        self.client.receive(data, trio.current_time())
        for ev in self.client.take_events():
            if isinstance(ev, PeerData):
                self.on_data(ev.peer, ev.data)
            elif not self.waiters.dispatch(ev):
                if isinstance(ev, Failed) and ev.fatal:
                    self.failed = ev.reason
                self.on_event(ev)
        self._wake.set()

    async def _timers(self) -> None:
        while True:
            # a fresh event BEFORE the work: an answer that comes in while _send_outgoing() waits
            # (a stream's send_all) sets this one, so its reply is sent at once -- an event made
            # after the send would lose that wake-up, and a reliable transport has no timer to
            # retry on (seen as Allocates over TCP that never got their second, credentialed try)
            self._wake = trio.Event()
            self.client.tick(trio.current_time())
            for ev in self.client.take_events():
                if not self.waiters.dispatch(ev):
                    if isinstance(ev, Failed) and ev.fatal:
                        self.failed = ev.reason
                    self.on_event(ev)
            await self._send_outgoing()
            deadline = self.client.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wake.wait()

    def _kick(self) -> None:
        self._wake.set()

    async def permit(self, ips: list[str], timeout: float = 5.0) -> None:
        """Permissions for these peer IPs (waits for the server's answer; needs serve() running)."""
        self.client.create_permission(ips, trio.current_time())
        self._kick()
        want = set(ips)
        await self.waiters.wait(_for(Kind.PERMISSION, lambda ev: isinstance(ev, PermissionInstalled)
                                     and want <= set(ev.ips)), timeout, "CreatePermission")

    async def bind(self, peer: Address, timeout: float = 5.0) -> int:
        """A channel to `peer` (needs serve() running); its number."""
        if peer in self.client.channels:
            return self.client.channels[peer][0]
        number = self.client.bind_channel(peer, trio.current_time())
        self._kick()
        await self.waiters.wait(_for(Kind.CHANNEL, lambda ev: isinstance(ev, ChannelBound) and ev.peer == peer),
                                timeout, "ChannelBind")
        return number


class TurnLink(_Link):
    """A UDP allocation on a UDP socket of its own (the socket talks to the relay only)."""

    def __init__(self, sock: socket.socket, server: Address, client: TurnClient) -> None:
        super().__init__()
        self.sock = sock  # stdlib, non-blocking: send_to() may be called from sync code
        self.server = server
        self.client = client

    async def _send_outgoing(self) -> None:
        for data in self.client.take_outgoing():
            await self._sendto(data)

    async def _sendto(self, data: bytes) -> None:
        while True:
            try:
                self.sock.sendto(data, self.server)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError:
                self.client.stats["send_errors"] += 1
                return

    def send_to(self, peer: Address, data: bytes) -> None:
        """Relay `data` to `peer` now, best effort (a full socket buffer drops it, as UDP may)."""
        try:
            self.sock.sendto(self.client.wrap(peer, data), self.server)
        except OSError:
            self.client.stats["send_errors"] += 1

    async def send(self, peer: Address, data: bytes) -> None:
        """Relay `data` to `peer`, waiting for room in the socket buffer."""
        await self._sendto(self.client.wrap(peer, data))

    async def _reader(self) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(self.sock)
            except trio.ClosedResourceError:
                return  # aclose() while serving: the link is over
            while True:
                try:
                    data, src = self.sock.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # an ICMP error queued on the socket
                if (src[0], src[1]) != self.server:
                    self.client.stats["foreign"] += 1
                    continue
                self._handle(data)
            await trio.lowlevel.checkpoint()

    async def serve(self) -> None:
        """Read the relay's messages and keep everything fresh, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader)
            nursery.start_soon(self._timers)

    async def aclose(self) -> None:
        """Give the allocation back (best effort, one datagram) and close the socket."""
        try:
            if self.client.state == "allocated":
                self.client.release(trio.current_time())
                with trio.move_on_after(0.2):
                    await self._send_outgoing()
        finally:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


async def allocate_udp(grant: RelayGrant, *, local_ip: str | None = None, timeout: float = 5.0,
                       server: Address | None = None) -> TurnLink:
    """A UDP allocation with the grant's credentials, on a fresh UDP socket; RelayError when the
    relay refuses or does not answer within `timeout`."""
    server = server or resolve_server(grant)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((local_ip or "0.0.0.0", 0))
        link = TurnLink(sock, server, TurnClient(grant.username, grant.password, transport=UDP))
        await _allocate(link, timeout)
    except BaseException:
        sock.close()
        raise
    return link


async def _allocate(link: _Link, timeout: float) -> None:
    failure: list[RelayError] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.serve)
        link.client.allocate(trio.current_time())
        link._kick()
        try:
            await link.waiters.wait(_for(Kind.ALLOCATE, lambda ev: isinstance(ev, Allocated)), timeout, "Allocate")
        except RelayError as exc:
            failure.append(exc)  # raised below, not wrapped in the nursery's group
        finally:
            nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]


class TurnTcpLink(_Link):
    """A TCP allocation (RFC 6062): the control connection carries requests and ConnectionAttempt
    indications; every peer connection is bound on a new data connection (`accept_peer`)."""

    def __init__(self, stream: trio.SocketStream, server: Address, client: TurnClient) -> None:
        super().__init__()
        self.stream = stream
        self.server = server
        self.client = client
        self.attempts: trio.MemorySendChannel
        self.attempts, self.incoming = trio.open_memory_channel(16)
        self._send_lock = trio.Lock()

    async def _send_outgoing(self) -> None:
        out = self.client.take_outgoing()
        if not out:
            return
        async with self._send_lock:
            try:
                await self.stream.send_all(b"".join(out))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.failed = f"the control connection to the relay broke: {exc}"

    async def _reader(self) -> None:
        buf = bytearray()
        while True:
            try:
                chunk = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.failed = f"the control connection to the relay broke: {exc}"
                return
            if not chunk:
                self.failed = "the relay closed the control connection"
                return
            buf += chunk
            while True:
                try:
                    n = stream_message_length(buf)
                except BadPacket as exc:
                    self.failed = f"the relay's control stream is not TURN: {exc}"
                    return
                if n is None or len(buf) < n:
                    break
                message, buf = bytes(buf[:n]), buf[n:]
                self._handle(message)

    def _dispatch_attempt(self, ev: Any) -> None:
        if isinstance(ev, ConnectionAttempt):
            try:
                self.attempts.send_nowait(ev)
            except trio.WouldBlock:
                self.client.stats["attempts_dropped"] += 1

    async def serve(self) -> None:
        self.on_event = self._dispatch_attempt
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader)
            nursery.start_soon(self._timers)

    async def accept_peer(self, timeout: float) -> tuple[trio.SocketStream, Address]:
        """The next peer that connects to our relayed address: a data connection bound to it
        (its bytes are the peer's from now on) and the peer's address. Needs serve() running."""
        with trio.move_on_after(timeout):
            attempt = await self.incoming.receive()
            break_at = trio.current_time() + timeout
            data = await trio.open_tcp_stream(*self.server)
            try:
                with trio.fail_after(max(0.1, break_at - trio.current_time())):
                    await data.send_all(self.client.connection_bind(attempt.connection_id, trio.current_time()))
                    answer, rest = await _read_message(data)
                self.client.check_connection_bind(answer)
            except (BadPacket, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                await data.aclose()
                raise RelayError(f"ConnectionBind for {attempt.peer[0]}:{attempt.peer[1]} failed: {exc}") from None
            # the peer's first bytes may have come in the same segment as the answer
            return PrefixedStream(data, rest), attempt.peer
        raise RelayError(f"no peer connected to the TCP relay within {timeout:g} s")

    async def aclose(self) -> None:
        try:
            if self.client.state == "allocated":
                self.client.release(trio.current_time())
                with trio.move_on_after(0.2):
                    await self._send_outgoing()
        finally:
            await trio.aclose_forcefully(self.stream)


async def _read_message(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """One TURN message from the start of `stream`, and whatever came after it."""
    buf = bytearray()
    while True:
        n = stream_message_length(buf)
        if n is not None and n > MAX_STREAM_MESSAGE:
            raise BadPacket("message too long")
        if n is not None and len(buf) >= n:
            return bytes(buf[:n]), bytes(buf[n:])
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadPacket("the relay closed the connection")
        buf += chunk


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return out
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def allocate_tcp(grant: RelayGrant, *, timeout: float = 5.0, server: Address | None = None) -> TurnTcpLink:
    """A TCP allocation (RFC 6062) over a TCP control connection to the relay."""
    server = server or resolve_server(grant)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(*server)
    except (OSError, trio.TooSlowError) as exc:
        raise RelayError(f"cannot reach the relay {server[0]}:{server[1]} over TCP: {exc}") from None
    link = TurnTcpLink(stream, server, TurnClient(grant.username, grant.password, transport=TCP, reliable=True))
    try:
        await _allocate(link, timeout)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return link


__all__ = ["PrefixedStream", "TurnLink", "TurnTcpLink", "allocate_tcp", "allocate_udp", "resolve_server"]
