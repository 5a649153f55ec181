"""The session flow both transports share: connect() to a peer by ID, or listen() and accept() the
peers an AcceptPolicy admits. What differs is the transport (udp.py, tcp.py); the keywords all four
take are SessionOptions' fields."""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..errors import ConnectError, PeerAuthError, PunchFailed, UsageError, WrongPeer
from ..io import rendezvous_client as rv
from ..identity import Identity, PeerId
from ..io.session import Session
from ..proto.handshake_kx import Half, KeyAgreement
from ..proto.nat_behavior import NatBehavior
from ..proto.rendezvous.beacon import BEACON_AT
from ..proto.rendezvous.held import stale_at_connect
from . import relay
from .background import running
from .behavior_cache import BehaviorCache
from .endpoint import EventHook, node_info, published_age, refresh_cached, resolve, stun_endpoint
from .liveness import LifetimeWatch, wants_lifetime
from .relay import RelayRung
from .secure import agree_as_initiator, agree_as_responder, expected_peer, preload_secure
from ..proto.planner.budget import FLOW_LINGER, PACE_CAP
from ..proto.planner.odds import FLOW_TABLE_CAP
from ..proto.planner.side import DEFAULT_TARGET
from ..proto.vocab import Strategy
from .timeline import Timeline
from .udp import UdpTransport

Server = str | tuple[str, int]  # "host[:port]" (default port 7000; several: "h1:p1,h2:p2") or (host, port)


@dataclass(frozen=True)
class SessionOptions:
    """The keywords connect(), connect_tcp(), listen() and listen_tcp() share (an unknown one is a
    TypeError, as in any call)."""

    # STUN server "host[:port]" (default: the first of the STUN servers the rendezvous tier names when
    # we enroll, else the rendezvous host, port 3478)
    stun: Server | None = None
    src_ip: str | None = None  # local IP to send from (default: any)
    src_port: int = 0  # local port of the UDP punch socket or the shared TCP port (0: a free one)
    ttl: int | None = None  # TTL of the opening packets (default: measured, see proto/hops.py)
    # new flows our UDP bursts may hold open on our own NATs (default: a home router's share, less
    # behind a carrier-grade NAT: proto/planner/budget.py); an explicit number always wins
    max_flows: int | None = None
    # seconds a UDP connect may first wait for the NAT entries of our own bursts of the last
    # FLOW_LINGER s to expire, when the budget they left would not hold a burst like the last
    # (api/flow_wait.py; at most its timeout less CONNECT_RESERVE; an accept half of it); 0: never
    # wait, the plan then states its odds at what is left
    flow_wait: float = PACE_CAP
    on_event: EventHook | None = None  # progress, on_event(phase, detail): see nattrav.cli.events
    behavior: NatBehavior | None = None  # an earlier discovery's result: the RFC 5780 tests are skipped
    # The UDP planner's knobs (proto/planner/udp.plan). Both peers derive the plan from the same two
    # reports and never tell each other what they will do, so an experiment that changes one of
    # these must give both sides the same value, or their halves of a burst will not meet.
    target: float = DEFAULT_TARGET  # odds a strategy is sized for
    # seconds from the last STUN sample to the punch, for prediction; None: each side's from the sample
    # ages and round trips both peers published, the server's hold on the connect and its margin,
    # else (an older peer or server) guessed from the round trips, at most DEFAULT_HORIZON
    # (planner/horizon.py)
    horizon: float | None = None
    max_sockets: int = 1024  # most sockets one side's burst opens
    birthday_sockets: int = 256  # sockets of the EIM side of a birthday burst
    max_window: int = 4096  # most predicted ports a side aims at
    best_effort_flows: int = 4096  # flows of the bounded attempt for a pair with no feasible plan
    workers: int | None = None  # burst worker processes (None: one per core) when connect() starts them
    # the NAT behaviour cached per network (api/behavior_cache.py): True for the default file, a
    # path or a BehaviorCache for another, False to measure every time and keep nothing
    cache: bool | str | os.PathLike | BehaviorCache = True
    identity: Identity | None = None  # our key (identity.py); None: a fresh one for this call only
    secure: bool = True  # QUIC (UDP) or TLS (TCP) authenticated by the keys; False: the raw punched path
    server_tls: ssl.SSLContext | None = None  # TLS to the rendezvous server (io/rendezvous_tls.py); None: plain
    # connect(): when our endpoint is ready before the enroll reply, send the connect right behind
    # the enroll instead of waiting for the reply (one server round trip less). Only at a server the
    # behaviour cache saw grant us no relay the last time: a grant comes in the reply, too late for
    # an early connect to offer its allocation, so a server that grants one (or one not yet known)
    # always gets the connect after its reply. False never sends it early
    pipeline: bool = True

    def the_identity(self) -> Identity:
        return self.identity if self.identity is not None else Identity.generate()

    def __post_init__(self) -> None:
        # a bad knob is the caller's mistake: say so now, not as a plan error once the peer is found
        if not 0 < self.target < 1:
            raise UsageError(f"target must be in (0, 1), got {self.target!r}")
        if self.horizon is not None and not 0 <= self.horizon <= 3600:
            raise UsageError(f"horizon must be 0..3600 seconds, got {self.horizon!r}")
        for name in ("max_sockets", "birthday_sockets", "max_window", "best_effort_flows"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= FLOW_TABLE_CAP:
                raise UsageError(f"{name} must be an integer in 1..{FLOW_TABLE_CAP}, got {value!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or not 1 <= self.workers <= 256):
            raise UsageError(f"workers must be 1..256 or None, got {self.workers!r}")
        if isinstance(self.flow_wait, bool) or not isinstance(self.flow_wait, (int, float)) \
                or not 0 <= self.flow_wait <= FLOW_LINGER:
            raise UsageError(f"flow_wait must be 0..{FLOW_LINGER:g} seconds, got {self.flow_wait!r}")

    def plan_knobs(self) -> dict[str, Any]:
        """The planner's keywords, as plan() takes them (the flow budgets come from the reports)."""
        return {"target": self.target, "horizon": self.horizon, "max_sockets": self.max_sockets,
                "birthday_sockets": self.birthday_sockets, "max_window": self.max_window,
                "best_effort_flows": self.best_effort_flows}

    def behavior_cache(self) -> BehaviorCache | None:
        if self.cache is True:
            return BehaviorCache()
        if self.cache is False or self.cache is None:
            return None
        if isinstance(self.cache, BehaviorCache):
            return self.cache
        return BehaviorCache(self.cache)

    def emit(self, phase: str, detail: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(phase, detail)

    def endpoints(self, server: Server) -> tuple[Any, tuple[str, int]]:
        """(rendezvous server, STUN server of last resort) as (host, port) pairs; "HOST:PORT,..."
        (the instances of one tier, io/rendezvous_client.py) gives a list of them as the server,
        and the first one's host is the STUN default when neither the user nor the tier names one."""
        servers = rv.parse_servers(server)
        return (servers if len(servers) > 1 else servers[0]), stun_endpoint(self.stun, servers[0])


@asynccontextmanager
async def _enrolled_and_opening(transport: Any, server_ep: Any, fallback_stun: tuple[str, int], o: SessionOptions,
                                emit: EventHook, cache: BehaviorCache | None,
                                early: tuple[rv.EarlyConnect, Callable[[Any, float], dict]] | None = None,
                                **enroll: Any) -> AsyncIterator[tuple[rv.RendezvousClient, Any, tuple[str, int]]]:
    """The rendezvous client, the task making our endpoint, and the STUN server it measures with.

    The endpoint is made while we enroll. A STUN server the caller named is the one measured. None:
    the enroll reply names the tier's STUN servers (rotated per enrollment, so its first spreads the
    load), but waiting for it would put the rendezvous' round trips (TCP, enroll) in front of
    discovery; so discovery starts at once against `fallback_stun` (the rendezvous host's STUN port)
    and is kept when the tier names that server too (or names none), or when the connect already
    published it (`early`); otherwise it is abandoned and started again against the tier's first.

    `early`: a connect that goes behind the enroll once the endpoint is ready, and how to make its
    node info from the endpoint and our round trip to the server."""
    opener = (transport.open, o.src_ip, o.src_port, emit, o.behavior, cache, _first(server_ep))
    if o.stun is not None:
        async with running(_open_with, opener, fallback_stun, unclaimed=transport.close) as opening, \
                _handing_early(opening, early):
            async with rv.open_rendezvous(server_ep, early=_early_of(early), **enroll) as client:
                yield client, opening, fallback_stun
        return
    guess = trio.CancelScope()
    async with running(_open_with, opener, fallback_stun, guess, unclaimed=transport.close) as guessed, \
            _handing_early(guessed, early):
        async with rv.open_rendezvous(server_ep, early=_early_of(early), **enroll) as client:
            stun_ep = _tier_stun(client.stun, fallback_stun)
            if stun_ep == fallback_stun or client.early_went:
                # (a guess the early connect published is the one used: the peer has its report)
                yield client, guessed, stun_ep
                return
            guess.cancel()  # the tier measures elsewhere: its server, not our guess
            try:
                stale = await guessed.result()
            except Exception:  # the guess failed (nobody answers STUN there): nothing to close
                stale = None
            if stale is not None:
                transport.close(stale)  # it finished before the reply came: its socket goes
            emit("discovery-restart", {"stun": list(stun_ep), "guessed": list(fallback_stun)})
            async with running(_open_with, opener, stun_ep, unclaimed=transport.close) as opening:
                yield client, opening, stun_ep


def _may_pipeline(o: SessionOptions, transport: Any, cache: BehaviorCache | None, server_ep: Any) -> bool:
    """May the connect go in the enroll's flight? Only where no relay grant can come too late for
    it: a transport without the relay rung, or a server that granted us none when we last enrolled
    there (the behaviour cache remembers; unknown waits for the reply, as a first run does)."""
    if not o.pipeline:
        return False
    if not getattr(transport, "relays", False):
        return True
    return cache is not None and cache.relay_granted(_first(server_ep)) is False


def _early_of(early: tuple[rv.EarlyConnect, Any] | None) -> rv.EarlyConnect | None:
    return None if early is None else early[0]


@asynccontextmanager
async def _handing_early(opening: Any, early: tuple[rv.EarlyConnect, Callable[[Any, float], dict]] | None
                         ) -> AsyncIterator[None]:
    """Beside the enroll: once the endpoint is made, hand its node info to the early connect (the
    endpoint stays the opening's: whoever takes its result owns it)."""
    if early is None:
        yield
        return

    async def hand() -> None:
        await opening.wait()
        ep = opening.peek()
        if ep is not None:
            connect, info = early
            connect.ready(lambda rtt: info(ep, rtt), lambda: _tickets(ep))

    async with running(hand):
        yield


def _tier_stun(named: list[tuple[str, int]], fallback: tuple[str, int]) -> tuple[str, int]:
    """The STUN server to measure with, given the tier's list from the enroll reply: the rendezvous
    host's (`fallback`, measured since the start) when the tier lists it or lists none, else the
    tier's first."""
    if not named or any(_same_server(s, fallback) for s in named):
        return fallback
    return named[0]


def _same_server(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and a[0].lower() == b[0].lower()


async def _open_with(opener: tuple, stun: tuple[str, int], scope: trio.CancelScope | None = None) -> Any:
    """transport.open against `stun`; with `scope`, None once the scope is cancelled (a guess given up)."""
    open_, *rest = opener
    src_ip, src_port, emit, behavior, cache, observe = rest
    if scope is None:
        return await open_(stun, src_ip, src_port, emit, behavior, cache, observe)
    with scope:
        return await open_(stun, src_ip, src_port, emit, behavior, cache, observe)
    return None


async def _punch(transport: Any, ep: Any, session: Session, ttl: int | None, emit: EventHook,
                 rung: RelayRung | None = None) -> Any:
    try:
        if rung is not None:  # the ladder may end at the relay
            return await transport.punch(ep, session, ttl, emit, rung)
        return await transport.punch(ep, session, ttl, emit)
    except ConnectError:
        if ep.cached is not None and ep.cached.age is not None:
            ep.cached.cache.forget(ep.cached.key)  # the next connect measures again
        raise


@asynccontextmanager
async def _refreshing(ep: Any, stun: tuple[str, int], src_ip: str | None) -> AsyncIterator[None]:
    """While a session is up: measure again a cached behaviour that is getting old."""
    if ep.cached is None or not ep.cached.stale:
        yield
        return
    async with running(refresh_cached, stun, src_ip, ep.cached):
        yield


@asynccontextmanager
async def _background(transport: Any, ep: Any, stun: tuple[str, int], src_ip: str | None,
                      emit: EventHook) -> AsyncIterator[LifetimeWatch | None]:
    """While a session is up: the cache refresh above, and the mapping lifetime measured when
    nobody knows it (api/liveness.py); yields the watch whose result retunes the path's keepalives."""
    async with _refreshing(ep, stun, src_ip):
        if not wants_lifetime(ep):
            yield None
            return
        watch = LifetimeWatch(ep, stun, src_ip, emit,
                              fixed_keepalive="keepalive_interval" in getattr(transport, "quic", {}))
        async with running(watch.run):
            yield watch


@asynccontextmanager
async def _connect(transport: Any, server: Server, peer_id: str, timeout: float,
                   o: SessionOptions) -> AsyncIterator[Any]:
    server_ep, stun_ep = o.endpoints(server)
    clock = Timeline(o.emit)
    emit = clock.emit
    identity = o.the_identity()
    if o.secure:
        as_peer_id_or_name(peer_id)
        _preload()
    deadline = trio.current_time() + timeout
    rung: RelayRung | None = None
    try:
        with trio.fail_after(timeout):
            # our endpoint (discovery or the cache, then the punch socket's mappings) is made while the
            # rendezvous connection comes up, or after the enroll reply named the tier's STUN servers
            kx = KeyAgreement()  # this session's own: the punch key is never the server's
            cache = o.behavior_cache()
            early = None
            if _may_pipeline(o, transport, cache, server_ep):
                early = (rv.EarlyConnect(peer_id, timeout),
                         lambda ep, rtt: {**node_info(ep.report, rtt, published_age(ep)), **kx.offer(identity, peer_id).to_info()})
            async with _enrolled_and_opening(transport, server_ep, stun_ep, o, emit, cache, early,
                                             identity=identity, tls=o.server_tls) as (client, opening, stun_ep):
                emit("rendezvous", {"server": list(server_ep), "peer_id": client.peer_id})
                if cache is not None and getattr(transport, "relays", False):
                    cache.note_relay(client.server, client.relay is not None)  # decides the next pipelining
                ep = await opening.result()

                def our_info() -> dict:
                    # our report with its samples' age, the relay rung we offer, our key agreement
                    return {**node_info(ep.report, client.rtt, published_age(ep)), **relay.info(rung),
                            **kx.offer(identity, peer_id).to_info()}

                async def resample() -> dict:
                    # a listener slow to accept: the server asks for fresh samples of the punch
                    # socket (proto/rendezvous/held.py); the rest of our info is as we connected
                    emit("resample", {"initiator": True})
                    await transport.refresh(ep, emit)
                    return our_info()

                try:
                    if client.early_went:
                        # the connect went behind the enroll (node info, observations and all)
                        emit("rendezvous-connect", {"peer": peer_id, "early": True})
                        if client.relay is not None:
                            emit("relay-note", {"note": "the connect went before the server's relay grant: "
                                                        "no relay offered for this session"})
                        session = await client.connect(peer_id, timeout=timeout, resample=resample)
                    else:
                        if getattr(transport, "relays", False):
                            # the ladder's last rung: an allocation offered beside our report
                            rung = await relay.allocate(client.relay, client.relay_problem, o.src_ip, emit,
                                                        tcp=not isinstance(transport, UdpTransport))
                        if stale_at_connect(age := published_age(ep), client.rtt):
                            # the rendezvous connection (or the relay's allocation) took long: our
                            # samples aged meanwhile, and the peer's windows would be sized for that
                            emit("resample", {"initiator": True, "age": round(age or 0.0, 3)})
                            await transport.refresh(ep, emit)
                        emit("rendezvous-connect", {"peer": peer_id})
                        session = await client.connect(peer_id, timeout=timeout, info=our_info(), observed=_tickets(ep),
                                                       resample=resample)
                    # before any packet: a server that names another key for a peer ID, or that
                    # changed the peer's key agreement, is not followed
                    verified = expected_peer(peer_id, session)
                    session = agree_as_initiator(kx, session, verified, identity)
                    expected = verified if o.secure else None
                    try:
                        path = await _punch(transport, ep, session, o.ttl, emit, rung)
                    except PunchFailed as exc:
                        if rung is not None or not again_after(exc, deadline - trio.current_time(), o.src_port,
                                                               _punch_time(transport, exc)):
                            raise
                        first, before = exc, (session, ep.report)
                        emit("again", {"left": round(deadline - trio.current_time(), 3),
                                       "odds": exc.plan.odds, "strategy": exc.plan.strategy.value})
                        # out of time, the first round's evidence is the answer, not a bare timeout
                        with trio.move_on_at(deadline - AGAIN_SPARE) as in_time:
                            # a fresh socket's samples: whatever moved the peer's or our mappings
                            # since the first ones (a counter's wrap, another host's flows) shows
                            fresh = await transport.open(stun_ep, o.src_ip, 0, emit, _trusted_behavior(ep), cache,
                                                         _first(server_ep))
                            transport.close(ep)
                            ep, kx = fresh, KeyAgreement()
                            emit("rendezvous-connect", {"peer": peer_id, "again": True})
                            session = await client.connect(peer_id, timeout=max(1.0, deadline - trio.current_time()),
                                                           info=our_info(), observed=_tickets(ep), resample=resample)
                            if expected_peer(peer_id, session) != verified:
                                raise WrongPeer(f"the rendezvous server named another key for {peer_id} "
                                                "in the second round") from None
                            session = agree_as_initiator(kx, session, verified, identity)
                            found = found_after(transport, first, before, (session, ep.report), emit)
                            try:
                                path = await _punch(transport, ep, session, o.ttl, emit, rung)
                            except PunchFailed as again:
                                raise both_rounds(first, again, found) from None
                        if in_time.cancelled_caught:
                            raise PunchFailed(f"{first}; then a second round with fresh samples ran out of time",
                                              first.plan) from None
                except BaseException:
                    transport.close(ep)
                    raise
    finally:
        if rung is not None:
            await rung.aclose()  # unless the relayed path took the allocation over
    async with _held(path, max(1.0, deadline - trio.current_time()), emit) as held, \
            _background(transport, ep, stun_ep, o.src_ip, emit) as watch, \
            _secured(transport, ep, held, session, identity, expected, clock) as secured:
        if watch is not None:
            watch.follow(secured)
        yield secured


@asynccontextmanager
async def _held(path: Any, relay_wait: float, emit: EventHook) -> AsyncIterator[Any]:
    """The path for the caller's block: a relayed one runs in the background and first waits for
    the peer through the relay (RelayError after `relay_wait` s), a punched one just closes after."""
    if _relayed(path):
        async with path.open(relay_wait) as opened:
            emit("connected", {"peer": list(opened.peer_addr), "rtt_ms": round(opened.rtt * 1e3, 2),
                               "strategy": opened.strategy.value, "via": opened.via})
            yield opened
    else:
        async with path:
            yield path


def _relayed(path: Any) -> bool:
    """A relayed path (io/relay_path.py, io/relay_stream.py)? Their modules are imported only once
    the ladder reaches the relay (api/relay.py), so a module not loaded yet made no such path."""
    import sys

    kinds = [getattr(sys.modules.get(module), name, None) for module, name in
             (("nattrav.io.relay_path", "RelayedPath"), ("nattrav.io.relay_stream", "RelayedTcp"))]
    return isinstance(path, tuple(k for k in kinds if k is not None))


@asynccontextmanager
async def _secured(transport: Any, ep: Any, path: Any, session: Any, identity: Identity,
                   expected: PeerId | None, clock: Timeline) -> AsyncIterator[Any]:
    """The caller's path: `path` itself (raw), or QUIC/TLS over it checking the peer's key; `path`
    is entered already (_held)."""
    clock.attach(path)
    if expected is None:
        yield path
    else:
        async with transport.secure(ep, path, session, identity, expected, clock.emit) as secured:
            # the timings cover the handshake too; the raw path's summary() carries them as well
            clock.attach(secured)
            yield secured


def _preload() -> None:
    """The QUIC/TLS stack is needed only once the path is punched: a thread imports it meanwhile,
    once per process (api/secure.py)."""
    import sys

    if "nattrav.io.quic_path" not in sys.modules:
        preload_secure()


# a punch that failed at these odds broke an assumption (a counter that wrapped, a mapping that
# moved, a packet the path lost): the initiator samples again on a fresh socket and asks the server
# for a second session, while this much of its timeout is left (a punch's own window is ~3 s)
AGAIN_ODDS, AGAIN_LEFT = 0.99, 4.0
# a window of tens of flows (not a birthday's or a random-sequential burst's thousands) is worth a
# second round at lower odds too: fresh samples give it another chance at that price. Below even
# odds a plan mostly met a spent flow budget (a CGN side's), which a second round would meet again
# (the arbitrary pool over wan50: plans stated at 75-99 % failed and raised with most of their time left).
AGAIN_CHEAP_ODDS = 0.5
CHEAP = frozenset({Strategy.DIRECT, Strategy.SIMULTANEOUS, Strategy.ADDRESS_OPEN, Strategy.PREDICTED})
# how long a listener whose punch failed so waits for that second offer before it gives up
AGAIN_WAIT = 10.0
AGAIN_SPARE = 0.05  # seconds before the connect's deadline when a second round gives up for the first's failure


def again_after(exc: PunchFailed, left: float | None, src_port: int = 0, needs: float = 0.0) -> bool:
    """Is a failed punch worth a second round with fresh samples? Only a plan that stated high
    odds (a low-odds plan failed as it said it might, and its flows are spent), or a cheap one
    (CHEAP: a window's tens of flows) at even odds or better, with time `left` for another punch of
    `needs` seconds and its sampling (None: a listener, which only waits for the offer; both sides
    judge the same plan alike), from an ephemeral port (a fixed port would meet its old mappings,
    the very samples that may have been wrong)."""
    p = exc.plan
    if p is None or not getattr(p, "feasible", False):
        return False
    odds = getattr(p, "odds", 0.0)
    if odds < AGAIN_ODDS and not (odds >= AGAIN_CHEAP_ODDS and getattr(p, "strategy", None) in CHEAP):
        return False
    return src_port == 0 and (left is None or left >= max(AGAIN_LEFT, needs + 1.0))


def _punch_time(transport: Any, exc: PunchFailed) -> float:
    """Seconds a second punch may take: TCP's whole ladder, else the failed UDP plan's own time."""
    return float(getattr(transport, "punch_timeout", None) or getattr(exc.plan, "timeout", 0.0) or 0.0)


def both_rounds(first: PunchFailed, again: PunchFailed, found: str | None) -> PunchFailed:
    """The failure of a connect that went a second round: both rounds' evidence, in order, and
    what the fresh samples said about the first (`found`)."""
    said = f" ({found})" if found else ""
    return PunchFailed(f"{first}; then a second round with fresh samples{said}: {again}", again.plan)


def found_after(transport: Any, exc: PunchFailed, first: tuple[Session, Any], second: tuple[Session, Any],
                emit: EventHook) -> str | None:
    """What broke the first round, read from the second's samples (api/udp.py what_broke), said."""
    reader = getattr(transport, "what_broke", None)
    if reader is None:
        return None
    found = reader(exc.plan, first, second)
    emit("again-found", {"found": found})
    return found


def _trusted_behavior(ep: Any) -> NatBehavior | None:
    """The behaviour a second round may reuse: measured in this run; one from the cache may be
    the wrong assumption (the first round already made the cache forget it), so it is measured again."""
    return None if ep.cached is not None and ep.cached.age is not None else ep.behavior


def _first(server_ep: Any) -> tuple[str, int]:
    """The rendezvous server the punch socket asks where it sees us (observe_udp.py): the first of a
    tier's list, which the client also tries first."""
    return server_ep[0] if isinstance(server_ep, list) else server_ep


def _tickets(ep: Any) -> list:
    """The endpoint's observation tickets not yet handed to the server (a TCP endpoint has none)."""
    take = getattr(ep, "take_tickets", None)
    return take() if take is not None else []


def as_peer_id_or_name(text: str) -> None:
    """A UsageError for what looks like a peer ID but is not a valid one (a typo in a key)."""
    if isinstance(text, str) and text.startswith("12D3KooW"):
        PeerId.parse(text)


# Of a connect's timeout, what a wait for our own bursts' NAT entries (flow_wait) leaves at least for
# the rendezvous, the punch and the handshake (seconds: ~3 over wan50, the rest for a ladder's rungs)
CONNECT_RESERVE = 10.0


def _udp(coordinator: Any, o: SessionOptions, quic: dict[str, Any] | None,
         timeout: float | None = None) -> UdpTransport:
    """The UDP transport. A connect waits for its flows at most what its `timeout` can spare; a
    listener half of flow_wait at an accept (the initiator's connect is held by the server meanwhile,
    its timeout running)."""
    wait = o.flow_wait / 2 if timeout is None else min(o.flow_wait, max(0.0, timeout - CONNECT_RESERVE))
    return UdpTransport(coordinator, o.max_flows, quic, plan_knobs=o.plan_knobs(), workers=o.workers,
                        early_quic=o.secure, flow_wait=wait)


@asynccontextmanager
async def connect(server: Server, peer_id: str, *, timeout: float = 30.0, coordinator: Any = None,
                  quic: dict[str, Any] | None = None, **options: Any) -> AsyncIterator[Any]:
    """Connect to `peer_id` (a peer ID, or a name the server binds to a key) through the rendezvous
    `server` within `timeout` seconds; yields a QuicPath (io/quic_path.py: `stream`, datagrams,
    `peer_id` and `peer_key` verified), or with secure=False the raw PunchedPath (authenticated
    datagrams, not encrypted). `coordinator`: a running burst coordinator (nattrav.workers) to use
    instead of starting one for a big burst; `quic`: QuicSettings fields to override;
    `options`: SessionOptions' keywords."""
    o = SessionOptions(**options)
    async with _connect(_udp(coordinator, o, quic, timeout), server, peer_id, timeout, o) as path:
        yield path


@asynccontextmanager
async def connect_tcp(server: Server, peer_id: str, *, timeout: float = 30.0, punch_timeout: float = 10.0,
                      window: int = 8, **options: Any) -> AsyncIterator[Any]:
    """Connect to `peer_id` over TCP through the rendezvous `server`; yields a trio.abc.Stream: TLS
    1.3 authenticated by the keys, framed for half-close and delivery confirmation
    (io/tls_frames.py's FramedTls: `peer_id`, `peer_key`, `punched`), or with secure=False the
    plain io.tcp_punch.PunchedStream (a trio.SocketStream plus peer_addr, rtt, strategy). `window`: the
    fewest predicted ports to cover (proto/planner/tcp.py); `options`: SessionOptions' keywords."""
    from .tcp import TcpTransport  # imported by the TCP calls only (start-up time, issue 13)

    transport = TcpTransport(punch_timeout, window)
    async with _connect(transport, server, peer_id, timeout, SessionOptions(**options)) as stream:
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
                 behavior: NatBehavior | None = None, policy: AcceptPolicy | None = None,
                 cache: BehaviorCache | None = None, identity: Identity | None = None,
                 secure: bool = False) -> None:
        self._client, self._transport, self._stun, self._src = client, transport, stun, src
        self._ttl, self._emit, self._behavior, self._cache = ttl, emit, behavior, cache
        self.policy = policy if policy is not None else AcceptPolicy()
        self.secure = secure and identity is not None
        self.identity = identity if identity is not None else Identity.generate()  # signs our punch-key half
        self.endpoint: Any = None  # Endpoint (UDP) or TcpEndpoint, ready for the next peer
        # names an initiator may have asked for us by besides our enrolled name and our peer ID: an
        # offer's signed half names its target, and one meant for someone else is refused
        self.aliases: tuple[str, ...] = ()

    @property
    def peer_id(self) -> str:
        return self._client.peer_id

    async def _open(self, waits: bool = True) -> Any:
        return await self._transport.open(self._stun, self._src[0], self._src[1], self._emit, self._behavior,
                                          self._cache, self._client.server, waits=waits)

    async def _publish(self, ep: Any) -> None:
        """`ep` is the endpoint for the next peer: its report goes to the server."""
        self.endpoint = ep
        self._behavior = ep.behavior  # later endpoints skip discovery and the cache
        await self._client.update_info(node_info(ep.report, self._client.rtt, published_age(ep)),
                                      observed=_tickets(ep))

    def _close(self) -> None:
        if self.endpoint is not None:
            self._transport.close(self.endpoint)
            self.endpoint = None

    async def _next_offer(self, emit: EventHook) -> rv.Offer:
        """The next offer; meanwhile the transport keeps the published endpoint's mapping confirmed
        (udp.keep_fresh), so that the accept need not sample it again. Stopped before the offer is
        handled: the socket is then the session's."""
        standby = getattr(self._transport, "standby", None)
        if standby is None or self.endpoint is None:
            return await self._client.next_offer()
        async with running(standby, self.endpoint, emit):
            return await self._client.next_offer()

    async def _accepted(self, ep: Any, offer: rv.Offer, kx_info: dict, emit: EventHook,
                        waits: bool = True) -> Session:
        """Fresh mappings and the accept: with a sample beacon when the server and the initiator
        take one (proto/rendezvous/beacon.py: the accept leaves at once, the session starts on the
        beacon, or on STUN samples if the server asks for them), else a refresh first. `waits`: as
        the endpoint's open (a second round waits for no flows)."""
        async def refreshed() -> dict:
            await self._transport.refresh(ep, emit)
            return {**node_info(ep.report, self._client.rtt, published_age(ep)), **kx_info}

        pace = getattr(self._transport, "pace", None)
        if pace is not None and waits:
            await pace(ep, emit)  # our previous sessions' bursts (the initiator's server hold covers it)
        wanted = getattr(self._transport, "beacon_wanted", None)
        beacon = wanted(ep, offer.peer_info) if wanted is not None else None
        at = None
        if beacon is not None:
            secret, port = beacon
            dest = (resolve(self._client.server[0]), port)
            ep.publish_flows(emit)
            at = await self._transport.send_beacon(ep, dest, secret, offer.offer_id, emit)
        async def resample() -> dict:
            emit("resample", {})
            return await refreshed()

        if at is None:  # (the server may still ask for samples: after a long-held initiator's)
            return await self._client.accept(offer, info=await refreshed(), observed=_tickets(ep), resample=resample,
                                             beacon=False)
        emit("beacon", {"port": port, "t": at})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._transport.repeat_beacon, ep, dest, secret, offer.offer_id)
            info = {**node_info(ep.report, self._client.rtt, published_age(ep, at)), **kx_info, BEACON_AT: at}
            session = await self._client.accept(offer, info=info, observed=_tickets(ep), resample=resample)
            nursery.cancel_scope.cancel()
        self._transport.take_beacon(ep, session, at, emit)
        return session

    async def _admitted(self, emit: EventHook) -> tuple[rv.Offer, PeerId, KeyAgreement, Any]:
        """The next offer the policy admits (others are refused), whom its handshake must meet, and
        our half of its punch key (an initiator that proved no key, or whose signed half does not
        verify, is refused)."""
        while True:
            offer = await self._next_offer(emit)
            emit("offer", {"from": offer.peer_id})
            try:
                initiator = expected_peer(None, offer)
                kx = KeyAgreement()
                answer = kx.answer(self.identity, Half.from_info(offer.peer_info, offer.peer_id),
                                   initiator.key_bytes,
                                   (self._client.peer_id, self.identity.peer_id.text, *self.aliases),
                                   offer.offer_id)
                why = self.policy.admits(offer, trio.current_time())
            except (PeerAuthError, WrongPeer) as exc:
                why = str(exc)
            if why is None:
                return offer, initiator, kx, answer
            emit("refused", {"from": offer.peer_id, "reason": why})
            await self._client.refuse(offer)

    @asynccontextmanager
    async def accept(self) -> AsyncIterator[Any]:
        """The next peer that asks for us and that the policy admits (others are refused): fresh
        mappings, accept, punch; yields the path/stream. A punch that failed at high odds waits
        AGAIN_WAIT for the initiator's second round before it raises."""
        clock = Timeline(self._emit)  # this session's phases, timed from the wait for its offer
        emit = clock.emit
        first: PunchFailed | None = None
        before: tuple[Session, Any] | None = None
        first_from: PeerId | None = None
        while True:
            got = None
            # after a failed punch: the initiator's second round (again_after), or the failure
            with trio.move_on_after(math.inf if first is None else AGAIN_WAIT):
                got = await self._admitted(emit)
            if got is None:
                raise first  # type: ignore[misc]
            offer, initiator, kx, answer = got
            rung = None
            # A second round's endpoint waits for no flows: the initiator's one connect timeout runs
            # meanwhile (a listener behind a CGN waited its whole 10 s cap there, after a first
            # round's burst, and its initiator's 15 s ran out: one miss in 4,000 over wan50).
            waits = first is None
            ep = self.endpoint if self.endpoint is not None else await self._open(waits)
            self.endpoint = None  # this socket now belongs to the session; the next peer gets a new one
            try:
                session = await self._accepted(ep, offer, answer.to_info(), emit, waits)
                if expected_peer(None, session) != initiator:
                    raise WrongPeer(f"the rendezvous server offered {initiator} but made a session with another key")
                session = agree_as_responder(kx, session, offer.offer_id)
                expected = initiator if self.secure else None
                if getattr(self._transport, "relays", False):
                    rung = await relay.peer_rung(session, self._client.relay, emit)
                # (an offer from someone else meanwhile is a session of its own: nothing to compare)
                found = None if first is None or before is None or initiator != first_from else found_after(
                    self._transport, first, before, (session, ep.report), emit)
                path = await _punch(self._transport, ep, session, self._ttl, emit, rung)
            except PunchFailed as exc:
                self._transport.close(ep)
                if first is not None:  # (a second offer from someone else failed on its own)
                    raise (both_rounds(first, exc, found) if initiator == first_from else exc) from None
                if rung is not None or not again_after(exc, None):
                    raise
                first, before, first_from = exc, (session, ep.report), initiator
                emit("again", {"wait": AGAIN_WAIT, "odds": exc.plan.odds, "strategy": exc.plan.strategy.value})
                continue
            except BaseException:
                self._transport.close(ep)
                raise
            break
        async with _held(path, relay.RELAY_WAIT, emit) as held, \
                _background(self._transport, ep, self._stun, self._src[0], emit) as watch, \
                _secured(self._transport, ep, held, session, self.identity, expected, clock) as secured:
            if watch is not None:
                watch.follow(secured)
            yield secured


TcpListener = Listener  # the same listener, built by listen_tcp() with the TCP transport


@asynccontextmanager
async def _listen(transport: Any, server: Server, name: str | None, secret: str | None,
                  policy: AcceptPolicy | None, o: SessionOptions) -> AsyncIterator[Listener]:
    server_ep, stun_ep = o.endpoints(server)
    cache = o.behavior_cache()
    identity = o.the_identity()
    if o.secure:
        _preload()
    async with _enrolled_and_opening(transport, server_ep, stun_ep, o, o.emit, cache, name=name, secret=secret,
                                     identity=identity, tls=o.server_tls) as (client, opening, stun_ep):
        listener = Listener(client, transport, stun_ep, (o.src_ip, o.src_port), o.ttl, o.emit, o.behavior,
                            policy, cache, identity, o.secure)
        try:
            await listener._publish(await opening.result())
            o.emit("enrolled", {"peer_id": client.peer_id})
            yield listener
        finally:
            listener._close()


@asynccontextmanager
async def listen(server: Server, *, name: str | None = None, secret: str | None = None,
                 policy: AcceptPolicy | None = None, coordinator: Any = None,
                 quic: dict[str, Any] | None = None, **options: Any) -> AsyncIterator[Listener]:
    """Enroll with the rendezvous server under our identity's peer ID (or under `name`, which the
    server binds to our key on first claim; `secret` only for a client without a key) and publish
    our NAT report; yields a Listener (UDP) whose accept() yields what connect() does. `policy`
    decides which offers accept() takes (default: AcceptPolicy(), rate-limited); `quic`:
    QuicSettings fields to override; `options`: SessionOptions' keywords."""
    o = SessionOptions(**options)
    async with _listen(_udp(coordinator, o, quic), server, name, secret, policy, o) as listener:
        yield listener


@asynccontextmanager
async def listen_tcp(server: Server, *, name: str | None = None, secret: str | None = None,
                     policy: AcceptPolicy | None = None, punch_timeout: float = 10.0, window: int = 8,
                     **options: Any) -> AsyncIterator[Listener]:
    """Enroll with the rendezvous server and publish our TCP report; yields a Listener (TCP).
    Keywords as listen()'s, with connect_tcp()'s punch_timeout and window instead of coordinator."""
    from .tcp import TcpTransport  # imported by the TCP calls only (start-up time, issue 13)

    transport = TcpTransport(punch_timeout, window)
    async with _listen(transport, server, name, secret, policy, SessionOptions(**options)) as listener:
        yield listener
