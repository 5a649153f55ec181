"""The embeddable puncher: `connect()` to a peer by ID, or `listen()` for peers, through our servers.

Both run the same phases, reported through an optional `on_event(phase, detail)` callback:
  discovery  -- the NAT's behaviour (RFC 5780 tests) against our STUN server;
  mapping    -- the punch socket asks S1 and then S2 what public port it has (the paper's phase 1-2);
  rendezvous -- node info goes to the rendezvous server, the peer's comes back with a session key;
  plan       -- the cheapest strategy for this pair of NATs, with its odds (phase 3);
  punch      -- low-TTL opening packets, bursts, and the authenticated handshake (phase 4).

The punch socket is opened once and kept: its mapping is what the peer aims at, and a new socket
would get a new mapping (the reason a tool that closes its STUN socket before punching fails).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import trio

from .errors import (
    BadReport,
    ConnectError,
    PlanError,
    StunErrorResponse,
    StunTcpError,
    StunTimeout,
    WorkerError,
)
from .hostport import parse_hostport
from .io import rendezvous_client as rv
from .io.punch import PunchedPath, punch
from .io.session import Session
from .io.stun_client import binding, discover
from .proto.nat_behavior import NatBehavior
from .proto.planner.udp import Plan, plan
from .proto.report import MAX_WINDOW, NatReport, Sample, TcpReport, TcpSample
from .proto.vocab import Filtering, Mapping
from .workers import open_coordinator

STUN_PORT = 3478
WORKER_SOCKETS = 256  # bursts from this many sockets or more run in worker processes (C core)
RENDEZVOUS_PORT = rv.DEFAULT_PORT

EventHook = Callable[[str, dict[str, Any]], None]


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise ConnectError(f"cannot resolve {host!r}") from None


@dataclass
class Endpoint:
    """What this side learned about itself before meeting the peer."""

    sock: Any  # the trio UDP punch socket (kept open)
    behavior: NatBehavior
    report: NatReport  # the NAT's words + the punch socket's own mappings, as sent to the peer
    t0: float = 0.0  # trio time of the punch socket's first sample (the samples' "t" count from it)


async def open_endpoint(
    stun: tuple[str, int],
    *,
    src_ip: str | None = None,
    src_port: int = 0,
    on_event: EventHook | None = None,
    behavior: NatBehavior | None = None,
) -> Endpoint:
    """Discover the NAT's behaviour (unless a recent `behavior` report is given: a NAT's behaviour
    does not change between sessions, its mappings do), then learn the punch socket's mappings
    from S1 and S2."""
    emit = on_event or (lambda phase, detail: None)
    stun = (_resolve(stun[0]), stun[1])
    if behavior is None:
        behavior = await discover_behavior(stun, src_ip, emit)

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    try:
        try:
            await sock.bind((src_ip or "0.0.0.0", src_port))
        except OSError as exc:
            raise ConnectError(
                f"cannot bind the punch socket to {src_ip or '0.0.0.0'}:{src_port}: {exc.strerror}"
            ) from None
        targets = [stun] + ([behavior.other_address] if behavior.other_address else [])
        t0 = trio.current_time()
        report = await _learn_mappings(sock, targets, behavior, emit, t0)
    except BaseException:
        sock.close()
        raise
    return Endpoint(sock, behavior, report, t0)


async def discover_behavior(stun: tuple[str, int], src_ip: str | None = None,
                            on_event: EventHook | None = None) -> NatBehavior:
    """The RFC 5780 behaviour tests against our STUN server; ConnectError when it does not answer."""
    emit = on_event or (lambda phase, detail: None)
    emit("discovery", {"stun": list(stun)})
    try:
        behavior = await discover(stun, src_ip, hairpin=False)
    except OSError as exc:
        raise ConnectError(f"STUN discovery against {stun[0]}:{stun[1]} failed: {exc.strerror or exc}") from None
    if behavior.public_ip is None:
        raise ConnectError(f"no answer from the STUN server {stun[0]}:{stun[1]} (is it running? is UDP blocked?)")
    emit("discovery-done", behavior.to_dict())
    return behavior


async def refresh_mappings(ep: Endpoint, on_event: EventHook | None = None) -> NatReport:
    """Sample the punch socket's mappings again right before a session: other hosts behind the NAT
    may have taken ports since. The same socket to the same server address would reuse its old
    mapping and show nothing new, so the refresh asks the two server addresses this socket has not
    used yet (S2 on S1's port, S1 on S2's port), which are new flows for an APDM NAT."""
    assert ep.behavior.server is not None
    s1, s2 = ep.behavior.server, ep.behavior.other_address
    if s2 is None:
        return ep.report
    ep.report = await _learn_mappings(ep.sock, [(s2[0], s1[1]), (s1[0], s2[1])], ep.behavior,
                                      on_event or (lambda phase, detail: None), ep.t0, ep.report)
    return ep.report


def _words(behavior: NatBehavior, **fields: Any) -> NatReport:
    """A report in the vocabulary's words: no NAT is Mapping.NONE for the planners."""
    mapping = Mapping.NONE if behavior.nat is False else behavior.mapping
    return NatReport(mapping=mapping, filtering=behavior.filtering, allocation=behavior.allocation,
                     delta=behavior.delta, **fields)


async def _learn_mappings(sock: Any, targets: list[tuple[str, int]], behavior: NatBehavior,
                          emit: EventHook, t0: float, previous: NatReport | None = None) -> NatReport:
    # With APDM each new server address is a new mapping; the difference between consecutive ones
    # is the step Δ the next mapping will take, and the last one is where prediction starts.
    new = []
    for dest in targets:
        try:
            r = await binding(sock, dest, timeout=3.0)
        except (StunTimeout, StunErrorResponse) as exc:
            raise ConnectError(f"the punch socket got no STUN answer from {dest[0]}:{dest[1]}: {exc}") from None
        # sample times count from this socket's first sample (the peer's predictor reads them as ages)
        new.append(Sample(r.mapped[1], trio.current_time() - t0))
        public = (str(r.mapped[0]), r.mapped[1])
    series = (previous.samples if previous else ()) + tuple(new)
    ports = [s.port for s in new]
    emit("mapping", {"ports": ports, "public": list(public),
                     "delta": ports[-1] - ports[-2] if len(ports) > 1 else None})
    return _words(behavior, public=public, samples=series)


def _peer_report(session: Session) -> tuple[NatReport, str]:
    """The peer's report and the one address we may aim at: where the rendezvous server saw the
    peer. The report is the peer's own word; the server's observation is not."""
    info = session.peer_info if isinstance(session.peer_info, dict) else {}
    if "report" not in info:
        raise ConnectError(f"peer {session.peer_id} published no NAT report")
    try:
        report = NatReport.from_wire(info["report"])
    except BadReport as exc:
        raise ConnectError(f"peer {session.peer_id}'s NAT report is malformed: {exc}") from None
    observed = info.get("observed")
    try:
        ip = str(ipaddress.ip_address(observed[0]))  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError):
        raise ConnectError(f"the rendezvous server did not say where it saw {session.peer_id}") from None
    return report, ip


def _emit_address(emit: EventHook, params: dict[str, Any], ip: str) -> None:
    reported = params.get("reported_peer_ip")
    if reported is not None:
        emit("peer-address", {"observed": ip, "reported": reported})


async def _punch(ep: Endpoint, session: Session, ttl: int | None, emit: EventHook,
                 coordinator: Any = None) -> PunchedPath:
    peer_report, peer_ip = _peer_report(session)
    if peer_report.public is None:
        raise ConnectError(f"peer {session.peer_id} published no UDP mapping (is it listening with TCP?)")
    try:
        p: Plan = plan(ep.report, peer_report, session.role, peer_ip=peer_ip)
    except (BadReport, PlanError) as exc:
        raise ConnectError(f"peer {session.peer_id}'s NAT report is malformed: {exc}") from None
    _emit_address(emit, p.params, peer_ip)
    # the peer ports the first attempt aims at, so a caller can check the prediction against where
    # the peer's NAT really put its mapping (the matrix bench's hit rate); the infeasible pair still
    # runs its bounded best effort, whose odds are small but not zero
    emit("plan", {"strategy": p.strategy.value, "feasible": p.feasible, "odds": p.odds,
                  "reason": p.reason, "role": session.role, "params": p.params,
                  "peer_targets": list(p.attempts[0].local.targets[:4096])})
    emit("punch", {"start_in": round(session.start_in(), 3), "timeout": p.timeout})
    try:
        if coordinator is None and _needs_workers(p):
            # bursts of hundreds of sockets go to the C core in worker processes (one per core);
            # the winning socket is handed back to us, so the coordinator can go once punch returns
            async with open_coordinator() as coord:
                path = await punch(ep.sock, p, session, low_ttl=ttl or 2, coordinator=coord)
        else:
            path = await punch(ep.sock, p, session, low_ttl=ttl or 2, coordinator=coordinator)
    except WorkerError as exc:
        raise ConnectError(f"the burst's worker processes failed: {exc}") from None
    emit("connected", {"peer": list(path.peer_addr), "rtt_ms": round(path.rtt * 1e3, 2),
                       "strategy": path.strategy.value})
    return path


def _needs_workers(p: Plan) -> bool:
    return any(a.local.sockets >= WORKER_SOCKETS for a in p.attempts)


def _stun_endpoint(stun: str | tuple[str, int] | None, server: tuple[str, int]) -> tuple[str, int]:
    if stun is None:
        return (server[0], STUN_PORT)
    if isinstance(stun, str):
        return parse_hostport(stun, STUN_PORT)
    return stun


# --- TCP (issue 8): the same phases, TCP mappings measured with TCP probes, the winner a trio Stream


@dataclass
class TcpEndpoint:
    """The shared local TCP port (held by the listener socket) and its TCP report for the peer."""

    listener: Any  # stdlib socket listening on the shared port; closed by the punch
    behavior: NatBehavior
    report: NatReport  # its TCP part holds the TCP mappings
    measured_at: float = 0.0  # trio time the report's sample times count from


async def _tcp_report(local: tuple[str, int], behavior: NatBehavior,
                      emit: EventHook) -> tuple[NatReport, float]:
    """The TCP report, and the trio time its samples' "t" count from."""
    from .io.stun_tcp import tcp_mappings

    s1, s2 = behavior.server, behavior.other_address
    assert s1 is not None
    # three endpoints, so a sequential NAT shows two equal steps (and a random one does not)
    servers = [s1] if s2 is None else [s1, (s2[0], s1[1]), (s1[0], s2[1])]
    started = trio.current_time()
    try:
        samples = await tcp_mappings(local, [tuple(x) for x in servers])
    except StunTcpError as exc:
        raise ConnectError(f"TCP mapping probe failed: {exc.strerror or exc} (does the server serve STUN "
                           "over TCP?)") from None
    tcp = TcpReport(local=(samples[0]["local_ip"], local[1]),
                    samples=tuple(TcpSample(x["ip"], x["port"], x["t"], tuple(x["dest"])) for x in samples),
                    # what the UDP tests measured: TCP filtering is assumed to follow it (true of the
                    # lab); unknown reads as the strictest
                    filtering=behavior.filtering or Filtering.APDF)
    ports = [x["port"] for x in samples]
    emit("tcp-mapping", {"ports": ports, "local": list(local),
                         "steps": [b - a for a, b in zip(ports, ports[1:])]})
    return _words(behavior, tcp=tcp), started


async def open_tcp_endpoint(stun: tuple[str, int], *, src_ip: str | None = None, src_port: int = 0,
                            on_event: EventHook | None = None,
                            behavior: NatBehavior | None = None) -> TcpEndpoint:
    """Discovery (UDP, unless `behavior` is given), then the TCP mappings of one shared local port."""
    from .io.tcp_punch import open_listener

    emit = on_event or (lambda phase, detail: None)
    stun = (_resolve(stun[0]), stun[1])
    if behavior is None:
        behavior = await discover_behavior(stun, src_ip, emit)
    if behavior.server is None:
        raise ConnectError("the STUN discovery named no server address for the TCP probes")
    try:
        listener = open_listener((src_ip or "0.0.0.0", src_port))
    except OSError as exc:
        raise ConnectError(f"cannot listen on TCP {src_ip or '0.0.0.0'}:{src_port}: {exc.strerror}") from None
    try:
        report, started = await _tcp_report(listener.getsockname()[:2], behavior, emit)
    except BaseException:
        listener.close()
        raise
    return TcpEndpoint(listener, behavior, report, started)


async def _tcp_punch(ep: TcpEndpoint, session: Session, ttl: int | None, timeout: float,
                     emit: EventHook) -> Any:
    from .io.tcp_punch import tcp_punch
    from .proto.planner.tcp import agreed_window, plan as tcp_plan

    try:
        peer_report, peer_ip = _peer_report(session)
        if peer_report.tcp is None:
            raise ConnectError(f"peer {session.peer_id} published no TCP report (is it listening with TCP?)")
    except ConnectError:
        ep.listener.close()
        raise
    mine, peer = ep.report.tcp, peer_report.tcp
    assert mine is not None
    p = tcp_plan(mine, peer, session.role, window=agreed_window(mine, peer), peer_ip=peer_ip)
    _emit_address(emit, p.params, peer_ip)
    emit("plan", {**p.to_dict(), "params": p.params,
                  # the peer ports we bet on (an address-open opener aims at an address, not a port)
                  "peer_targets": [] if p.accept else [t[1] for t in p.targets]})
    emit("punch", {"start_in": round(session.start_in(), 3), "timeout": timeout})
    stream = await tcp_punch(ep.listener, p, session.key, session.start_at, low_ttl=ttl or 2, timeout=timeout)
    emit("connected", {"peer": list(stream.peer_addr), "rtt_ms": round(stream.rtt * 1e3, 2),
                       "strategy": stream.strategy.value, "via": stream.via})
    return stream


# --- the session flow, shared by UDP and TCP: what differs is the transport


class _Udp:
    """UDP: the punch socket, its mappings in the report, the planner and the UDP puncher."""

    def __init__(self, coordinator: Any = None) -> None:
        self.coordinator = coordinator

    async def open(self, stun, src_ip, src_port, emit, behavior) -> Endpoint:
        return await open_endpoint(stun, src_ip=src_ip, src_port=src_port, on_event=emit, behavior=behavior)

    async def refresh(self, ep: Endpoint, emit: EventHook) -> None:
        await refresh_mappings(ep, emit)

    async def punch(self, ep: Endpoint, session: Session, ttl: int | None, emit: EventHook) -> Any:
        return await _punch(ep, session, ttl, emit, self.coordinator)

    @staticmethod
    def close(ep: Endpoint) -> None:
        ep.sock.close()


class _Tcp:
    """TCP: one shared local port, its TCP mappings in the report's TCP part, low-TTL SYN +
    simultaneous open."""

    def __init__(self, punch_timeout: float = 10.0, window: int = 8) -> None:
        self.punch_timeout = punch_timeout
        self.window = window  # how many predicted ports to cover (proto/planner/tcp.py)

    async def open(self, stun, src_ip, src_port, emit, behavior) -> TcpEndpoint:
        ep = await open_tcp_endpoint(stun, src_ip=src_ip, src_port=src_port, on_event=emit, behavior=behavior)
        ep.report = self._windowed(ep.report)
        return ep

    def _windowed(self, report: NatReport, **tcp: Any) -> NatReport:
        assert report.tcp is not None
        window = min(max(self.window, 1), MAX_WINDOW)
        return replace(report, tcp=replace(report.tcp, window=window, **tcp))

    async def refresh(self, ep: TcpEndpoint, emit: EventHook) -> None:
        # the mappings may be stale (other flows since enrolment): measure the same port again; the
        # flows others took in between tell the window planner the NAT's rate over that whole wait
        from .proto.planner.tcp_mapping import history

        old, old_at = ep.report.tcp, ep.measured_at
        new, ep.measured_at = await _tcp_report(ep.listener.getsockname()[:2], ep.behavior, emit)
        assert old is not None and new.tcp is not None
        seen = history(old, new.tcp, ep.measured_at + (new.tcp.samples[0].t or 0.0)
                       - old_at - (old.samples[-1].t or 0.0))
        ep.report = self._windowed(new, history=seen)

    async def punch(self, ep: TcpEndpoint, session: Session, ttl: int | None, emit: EventHook) -> Any:
        return await _tcp_punch(ep, session, ttl, self.punch_timeout, emit)

    @staticmethod
    def close(ep: TcpEndpoint) -> None:
        ep.listener.close()


@asynccontextmanager
async def _connect(transport: Any, server: str | tuple[str, int], peer_id: str, *,
                   stun: str | tuple[str, int] | None, src_ip: str | None, src_port: int,
                   ttl: int | None, timeout: float, on_event: EventHook | None,
                   behavior: NatBehavior | None) -> AsyncIterator[Any]:
    emit = on_event or (lambda phase, detail: None)
    server_ep = parse_hostport(server, RENDEZVOUS_PORT) if isinstance(server, str) else server
    stun_ep = _stun_endpoint(stun, server_ep)
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
    async with _connect(_Udp(coordinator), server, peer_id, stun=stun, src_ip=src_ip, src_port=src_port,
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
    async with _connect(_Tcp(punch_timeout, window), server, peer_id, stun=stun, src_ip=src_ip,
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
    stun_ep = _stun_endpoint(stun, server_ep)
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
    async with _listen(_Udp(coordinator), server, name=name, secret=secret, stun=stun, src_ip=src_ip,
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
    async with _listen(_Tcp(punch_timeout, window), server, name=name, secret=secret, stun=stun,
                       src_ip=src_ip, src_port=src_port, ttl=ttl, on_event=on_event,
                       behavior=behavior, policy=policy) as listener:
        yield listener


__all__ = [
    "AcceptPolicy", "Endpoint", "Listener", "connect", "discover_behavior", "listen", "open_endpoint",
    "TcpEndpoint", "TcpListener", "connect_tcp", "listen_tcp", "open_tcp_endpoint",
]
