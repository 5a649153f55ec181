"""The session flow both transports share: connect() to a peer by ID, or listen() and accept() the
peers an AcceptPolicy admits. What differs is the transport (udp.py, tcp.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..hostport import parse_hostport
from ..io import rendezvous_client as rv
from ..io.path import PunchedPath
from ..proto.nat_behavior import NatBehavior
from .endpoint import RENDEZVOUS_PORT, EventHook, stun_endpoint
from .tcp import TcpTransport
from .udp import UdpTransport


@asynccontextmanager
async def _connect(transport: Any, server: str | tuple[str, int], peer_id: str, *,
                   stun: str | tuple[str, int] | None, src_ip: str | None, src_port: int,
                   ttl: int | None, timeout: float, on_event: EventHook | None,
                   behavior: NatBehavior | None) -> AsyncIterator[Any]:
    emit = on_event or (lambda phase, detail: None)
    server_ep = parse_hostport(server, RENDEZVOUS_PORT) if isinstance(server, str) else server
    stun_ep = stun_endpoint(stun, server_ep)
    with trio.fail_after(timeout):
        async with rv.open_rendezvous(server_ep) as client:
            emit("rendezvous", {"server": list(server_ep), "peer_id": client.peer_id})
            ep = await transport.open(stun_ep, src_ip, src_port, emit, behavior)
            try:
                await client.update_info({"report": ep.report.to_wire()})
                emit("rendezvous-connect", {"peer": peer_id})
                session = await client.connect(peer_id, timeout=timeout)
                path = await transport.punch(ep, session, ttl, emit)
            except BaseException:
                transport.close(ep)
                raise
    async with path:
        yield path


@asynccontextmanager
async def connect(
    server: str | tuple[str, int],
    peer_id: str,
    *,
    stun: str | tuple[str, int] | None = None,
    src_ip: str | None = None,
    src_port: int = 0,
    ttl: int | None = None,
    timeout: float = 30.0,
    on_event: EventHook | None = None,
    coordinator: Any = None,
    behavior: NatBehavior | None = None,
) -> AsyncIterator[PunchedPath]:
    """Connect to `peer_id` through the rendezvous `server`; yields the authenticated UDP path."""
    async with _connect(UdpTransport(coordinator), server, peer_id, stun=stun, src_ip=src_ip, src_port=src_port,
                        ttl=ttl, timeout=timeout, on_event=on_event, behavior=behavior) as path:
        yield path


@asynccontextmanager
async def connect_tcp(
    server: str | tuple[str, int],
    peer_id: str,
    *,
    stun: str | tuple[str, int] | None = None,
    src_ip: str | None = None,
    src_port: int = 0,
    ttl: int | None = None,
    timeout: float = 30.0,
    punch_timeout: float = 10.0,
    window: int = 8,
    on_event: EventHook | None = None,
    behavior: NatBehavior | None = None,
) -> AsyncIterator[Any]:
    """Connect to `peer_id` over TCP through the rendezvous `server`; yields a trio.abc.Stream
    (io.tcp_punch.PunchedStream: a trio.SocketStream plus peer_addr, rtt, strategy)."""
    async with _connect(TcpTransport(punch_timeout, window), server, peer_id, stun=stun, src_ip=src_ip,
                        src_port=src_port, ttl=ttl, timeout=timeout, on_event=on_event,
                        behavior=behavior) as stream:
        yield stream


class AcceptPolicy:
    """Which offers a listener takes. Every accepted offer makes us send packets (a birthday burst
    is thousands) towards whoever asked, so acceptance is rate-limited by default: a token bucket of
    `burst` sessions refilled at `per_minute`; `allow(offer)` can refuse by peer ID or node info."""

    def __init__(self, allow: Callable[[rv.Offer], bool] | None = None, *, per_minute: float = 30.0,
                 burst: int = 10) -> None:
        if per_minute < 0 or burst < 1:
            raise ValueError("per_minute must be >= 0 and burst >= 1")
        self.allow = allow
        self.rate = per_minute / 60.0
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def admits(self, offer: rv.Offer, now: float) -> str | None:
        """None when the offer may be accepted (and takes a token), else why not."""
        if self.allow is not None and not self.allow(offer):
            return "not allowed by the listener's policy"
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return "too many sessions: the listener's rate limit"
        self._tokens -= 1.0
        return None


class Listener:
    """Enrolled with the rendezvous server; `accept()` waits for a peer and punches to it."""

    def __init__(self, client: rv.RendezvousClient, transport: Any, stun: tuple[str, int],
                 src: tuple[str | None, int], ttl: int | None, emit: EventHook,
                 behavior: NatBehavior | None = None, policy: AcceptPolicy | None = None) -> None:
        self._client, self._transport, self._stun, self._src = client, transport, stun, src
        self._ttl, self._emit, self._behavior = ttl, emit, behavior
        self.policy = policy if policy is not None else AcceptPolicy()
        self.endpoint: Any = None  # Endpoint (UDP) or TcpEndpoint, ready for the next peer

    @property
    def peer_id(self) -> str:
        return self._client.peer_id

    async def _prepare(self) -> None:
        self.endpoint = await self._transport.open(self._stun, self._src[0], self._src[1], self._emit,
                                                   self._behavior)
        self._behavior = self.endpoint.behavior
        await self._client.update_info({"report": self.endpoint.report.to_wire()})

    def _close(self) -> None:
        if self.endpoint is not None:
            self._transport.close(self.endpoint)
            self.endpoint = None

    @asynccontextmanager
    async def accept(self) -> AsyncIterator[Any]:
        """The next peer that asks for us and that the policy admits (others are refused): fresh
        mappings, accept, punch; yields the path/stream."""
        while True:
            offer = await self._client.next_offer()
            self._emit("offer", {"from": offer.peer_id})
            why = self.policy.admits(offer, trio.current_time())
            if why is None:
                break
            self._emit("refused", {"from": offer.peer_id, "reason": why})
            await self._client.refuse(offer)
        if self.endpoint is None:
            await self._prepare()
        ep = self.endpoint
        self.endpoint = None  # this socket now belongs to the session; the next peer gets a new one
        try:
            await self._transport.refresh(ep, self._emit)
            await self._client.update_info({"report": ep.report.to_wire()})
            session = await self._client.accept(offer)
            path = await self._transport.punch(ep, session, self._ttl, self._emit)
        except BaseException:
            self._transport.close(ep)
            raise
        async with path:
            yield path


TcpListener = Listener  # the same listener, built by listen_tcp() with the TCP transport


@asynccontextmanager
async def _listen(transport: Any, server: str | tuple[str, int], *, name: str | None, secret: str | None,
                  stun: str | tuple[str, int] | None, src_ip: str | None, src_port: int, ttl: int | None,
                  on_event: EventHook | None, behavior: NatBehavior | None,
                  policy: AcceptPolicy | None) -> AsyncIterator[Listener]:
    emit = on_event or (lambda phase, detail: None)
    server_ep = parse_hostport(server, RENDEZVOUS_PORT) if isinstance(server, str) else server
    stun_ep = stun_endpoint(stun, server_ep)
    async with rv.open_rendezvous(server_ep, name=name, secret=secret) as client:
        listener = Listener(client, transport, stun_ep, (src_ip, src_port), ttl, emit, behavior, policy)
        try:
            await listener._prepare()
            emit("enrolled", {"peer_id": client.peer_id})
            yield listener
        finally:
            listener._close()


@asynccontextmanager
async def listen(
    server: str | tuple[str, int],
    *,
    name: str | None = None,
    secret: str | None = None,
    stun: str | tuple[str, int] | None = None,
    src_ip: str | None = None,
    src_port: int = 0,
    ttl: int | None = None,
    on_event: EventHook | None = None,
    coordinator: Any = None,
    behavior: NatBehavior | None = None,
    policy: AcceptPolicy | None = None,
) -> AsyncIterator[Listener]:
    """Enroll with the rendezvous server and publish our NAT report; yields a Listener (UDP).
    `policy` decides which offers accept() takes (default: AcceptPolicy(), rate-limited)."""
    async with _listen(UdpTransport(coordinator), server, name=name, secret=secret, stun=stun, src_ip=src_ip,
                       src_port=src_port, ttl=ttl, on_event=on_event, behavior=behavior,
                       policy=policy) as listener:
        yield listener


@asynccontextmanager
async def listen_tcp(
    server: str | tuple[str, int],
    *,
    name: str | None = None,
    secret: str | None = None,
    stun: str | tuple[str, int] | None = None,
    src_ip: str | None = None,
    src_port: int = 0,
    ttl: int | None = None,
    punch_timeout: float = 10.0,
    window: int = 8,
    on_event: EventHook | None = None,
    behavior: NatBehavior | None = None,
    policy: AcceptPolicy | None = None,
) -> AsyncIterator[Listener]:
    """Enroll with the rendezvous server and publish our TCP report; yields a Listener (TCP)."""
    async with _listen(TcpTransport(punch_timeout, window), server, name=name, secret=secret, stun=stun,
                       src_ip=src_ip, src_port=src_port, ttl=ttl, on_event=on_event,
                       behavior=behavior, policy=policy) as listener:
        yield listener
