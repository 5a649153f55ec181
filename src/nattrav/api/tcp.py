"""TCP (issue 8): the same phases, TCP mappings of one shared local port measured with TCP probes,
the TCP planner, and the winner a trio Stream (low-TTL SYN, simultaneous open, birthday)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..errors import ConnectError, StunTcpError, TcpPunchFailed
from ..io.interfaces import host_candidates
from ..io.session import Session
from ..io.stun_tcp import tcp_mappings
from ..io.tcp_punch import open_listener, tcp_punch
from ..proto.nat_behavior import NatBehavior
from ..proto.planner.tcp import TcpPlan, agreed_window, first_rung_slot, stated
from ..proto.planner.tcp import ladder as tcp_ladder
from ..proto.planner.tcp_mapping import classify, history
from ..proto.report import MAX_WINDOW, PORT_RANGE, NatReport, TcpReport, TcpSample
from ..proto.vocab import Filtering
from ..proto.hops import DEFAULT_HOPS, HopReading
from . import port_blocks
from .relay import RelayRung
from .behavior_cache import BehaviorCache
from .endpoint import (CacheUse, EventHook, discover_with_hops, emit_address, nat_report, own_ip, peer_udp_ips,
                       read_peer_report,
                       resolve)
from .secure import secure_tcp


@dataclass
class TcpEndpoint:
    """The shared local TCP port (held by the listener socket) and its TCP report for the peer."""

    listener: Any  # stdlib socket listening on the shared port; closed by the punch
    behavior: NatBehavior
    report: NatReport  # its TCP part holds the TCP mappings
    measured_at: float = 0.0  # trio time the report's sample times count from
    cached: CacheUse | None = None  # how the behaviour cache was used (None: it was off)
    hops: HopReading = DEFAULT_HOPS  # our NAT layers as traced: the low TTL of the opening SYNs
    # a listener on a port of its own for peers on the same network (the report's host candidates);
    # closed by the punch
    lan_listener: Any = None

    def close(self) -> None:
        self.listener.close()
        if self.lan_listener is not None:
            self.lan_listener.close()


async def _tcp_report(local: tuple[str, int], behavior: NatBehavior, emit: EventHook,
                      lan: tuple[str, int] | None = None) -> tuple[NatReport, float]:
    """The TCP report, and the trio time its samples' "t" count from."""
    s1, s2 = behavior.server, behavior.other_address
    assert s1 is not None
    # three endpoints, so a sequential NAT shows two equal steps (and a random one does not)
    servers = [s1] if s2 is None else [s1, (s2[0], s1[1]), (s1[0], s2[1])]
    servers = list(dict.fromkeys(servers))  # one server IP: its two ports, once each
    try:
        samples, started = await probe_tcp_mappings(local, [tuple(x) for x in servers], emit)
    except StunTcpError as exc:
        raise ConnectError(f"TCP mapping probe failed: {exc.strerror or exc} (does the server serve STUN "
                           "over TCP?)") from None
    tcp = TcpReport(local=(samples[0]["local_ip"], local[1]),
                    samples=tuple(TcpSample(x["ip"], x["port"], x["t"], tuple(x["dest"])) for x in samples),
                    # what the UDP tests measured (no STUN test measures TCP filtering): a hypothesis
                    # for TCP that the planner's ladder tries first and falls back from
                    # (proto/planner/tcp.py ladder()); unknown reads as the strictest
                    filtering=behavior.filtering or Filtering.APDF,
                    host=() if lan is None else host_candidates(lan))
    ports = [x["port"] for x in samples]
    emit("tcp-mapping", {"ports": ports, "local": list(local),
                         "steps": [b - a for a, b in zip(ports, ports[1:])]})
    return nat_report(behavior, tcp=_with_block(tcp, emit)), started


# A probe the server reset: once more, after a pause that lets lingering connections go. Over wan50
# a reset failed 2 TCP trials in 7,000 (a same-NAT pair's enrolment, and none → restricted-cone's
# re-measure a second after the enrolment's probes from the same port). The cause is not read: a
# connection of earlier probes whose RST was lost, or the server's cap per public address.
RESET_PAUSE = 0.5


async def probe_tcp_mappings(local: tuple[str, int], servers: list, emit: EventHook) -> tuple[list[dict], float]:
    """tcp_mappings(), once more after RESET_PAUSE if the server reset a probe; the samples and the
    trio time their "t" count from."""
    started = trio.current_time()
    try:
        return await tcp_mappings(local, servers), started
    except StunTcpError as exc:
        if exc.errno != errno.ECONNRESET:
            raise
        emit("tcp-mapping-retry", {"error": exc.strerror or str(exc), "pause": RESET_PAUSE})
    await trio.sleep(RESET_PAUSE)
    started = trio.current_time()
    return await tcp_mappings(local, servers), started


def _with_block(tcp: TcpReport, emit: EventHook) -> TcpReport:
    """`tcp` naming the block its NAT's TCP counter goes round, once this process saw the counter
    wrap (api/port_blocks.py; a NAT counts TCP apart from UDP): the peer's window then starts again
    at the block's bottom where the NAT does, instead of aiming past its top."""
    m = classify(tcp)
    if not m.sequential or m.per_address:
        return tcp
    block = port_blocks.observe(m.public_ip, [s.port for s in tcp.samples], proto="tcp").port_range(m.delta)
    if block is None:
        return tcp
    emit("tcp-port-block", {"range": list(block)})
    return replace(tcp, port_range=block)


async def open_tcp_endpoint(stun: tuple[str, int], *, src_ip: str | None = None, src_port: int = 0,
                            on_event: EventHook | None = None,
                            behavior: NatBehavior | None = None,
                            cache: BehaviorCache | None = None) -> TcpEndpoint:
    """Discovery (UDP, unless `behavior` is given or `cache` knows this network), then the TCP
    mappings of one shared local port."""
    emit = on_event or (lambda phase, detail: None)
    stun = (resolve(stun[0]), stun[1])
    behavior, cached, hops = await discover_with_hops(stun, src_ip, emit, behavior, cache)
    if cached is not None:
        port_blocks.seed_from(cached, "tcp")
    if behavior.server is None:
        raise ConnectError("the STUN discovery named no server address for the TCP probes")
    try:
        listener = open_listener((src_ip or "0.0.0.0", src_port))
    except OSError as exc:
        raise ConnectError(f"cannot listen on TCP {src_ip or '0.0.0.0'}:{src_port}: {exc.strerror}") from None
    ep = TcpEndpoint(listener, behavior, NatReport(), cached=cached, hops=hops)
    try:
        try:
            ep.lan_listener = open_listener((src_ip or "0.0.0.0", 0))
        except OSError as exc:
            raise ConnectError(f"cannot listen on TCP {src_ip or '0.0.0.0'} (LAN): {exc.strerror}") from None
        ep.report, ep.measured_at = await _tcp_report(listener.getsockname()[:2], behavior, emit,
                                                      ep.lan_listener.getsockname()[:2])
        port_blocks.keep_in(cached, "tcp")
    except BaseException:
        ep.close()
        raise
    return ep


async def _tcp_punch(ep: TcpEndpoint, session: Session, ttl: int | None, timeout: float,
                     emit: EventHook, relay: RelayRung | None = None) -> Any:
    """The TCP ladder's rungs, then the relay (when both sides have one) for a pair the planner
    calls infeasible or whose rungs all failed."""
    try:
        peer_report, peer_ip = read_peer_report(session)
        if peer_report.tcp is None:
            raise ConnectError(f"peer {session.peer_id} published no TCP report (is it listening with TCP?)")
    except ConnectError:
        ep.close()
        raise
    mine, peer = ep.report.tcp, peer_report.tcp
    assert mine is not None
    ours, theirs = session.own_info.get("rtt"), (session.peer_info or {}).get("rtt")
    # the whole reports: discovery's doubt about each side's Δ weighs into the odds
    rungs = tcp_ladder(ep.report, peer_report, session.role, window=agreed_window(mine, peer), peer_ip=peer_ip,
                       timeout=timeout, own_ip=own_ip(session), peer_udp=peer_udp_ips(session),
                       first_rung=first_rung_slot(ours, theirs))
    local = ep.listener.getsockname()[:2]
    low_ttl = ttl or ep.hops.low_ttl
    failures = []
    # infeasible: straight to the relay -- unless the first rung races the peer's LAN listeners
    # (its odds are then a floor)
    if relay is not None and not rungs[0].plan.feasible and not rungs[0].plan.lan:
        emit("plan", {**rungs[0].plan.to_dict(), "params": rungs[0].plan.params, "peer_targets": [],
                      "rungs": [r.plan.strategy.value for r in rungs]})
        ep.close()
        return relay.stream(session, peer_ip, why="infeasible", reason=rungs[0].plan.reason, emit=emit)
    said = stated(rungs)  # the odds of the whole ladder
    for i, rung in enumerate(rungs):
        p = rung.plan
        if i == 0:
            emit_address(emit, p.params, peer_ip)
            emit("plan", {**said.to_dict(), "params": p.params, **_aims(p),
                          "rungs": [r.plan.strategy.value for r in rungs]})
            emit("punch", {"start_in": round(session.start_in(), 3), "timeout": timeout})
            listener = ep.listener
        else:
            emit("rung", {"strategy": p.strategy.value, "reason": p.reason, "after": failures[-1], **_aims(p)})
            try:  # the same shared port: its mapping (or its place in a sequential NAT) is the plan's
                listener = open_listener(local)
            except OSError as exc:
                failures.append(f"{p.strategy.value}: cannot listen on {local[0]}:{local[1]} again: {exc.strerror}")
                break
        try:
            # the first rung also races the LAN (when p.lan names the peer's LAN listeners)
            stream = await tcp_punch(listener, p, session.key, session.start_at + rung.start, low_ttl=low_ttl,
                                     timeout=rung.budget, lan_listener=ep.lan_listener if i == 0 else None)
        except TcpPunchFailed as exc:
            failures.append(str(exc))
            continue
        emit("connected", {"peer": list(stream.peer_addr), "rtt_ms": round(stream.rtt * 1e3, 2),
                           "strategy": stream.strategy.value, "via": stream.via})
        if relay is not None:
            await relay.aclose()  # punched: the allocation goes back
        return stream
    why = failures[0] if len(failures) == 1 else "; then ".join(f"rung {i + 1}: {f}" for i, f in enumerate(failures))
    if relay is not None:
        ep.close()  # what the rungs left open (the LAN listener)
        return relay.stream(session, peer_ip, why="punch-failed", reason=why, emit=emit)
    # with the ladder's odds: they decide whether the connect goes a second round
    raise TcpPunchFailed(why, said)


def _aims(p: TcpPlan) -> dict[str, Any]:
    """What a rung bets on: the peer ports (an address-open opener aims at an address, not a port),
    and the blocks each side's counter was seen to go round (where a window wraps)."""
    blocks = {who: list(m.port_range) for who, m in (("mine", p.mine), ("peer", p.peer))
              if m is not None and m.port_range != PORT_RANGE}
    return {"peer_targets": [] if p.accept else [t[1] for t in p.targets], "blocks": blocks}


class TcpTransport:
    """TCP: one shared local port, its TCP mappings in the report's TCP part, low-TTL SYN +
    simultaneous open."""

    def __init__(self, punch_timeout: float = 10.0, window: int = 8) -> None:
        self.punch_timeout = punch_timeout
        self.window = window  # how many predicted ports to cover (proto/planner/tcp.py)

    async def open(self, stun, src_ip, src_port, emit, behavior, cache=None, observe=None, *,
                   waits: bool = True) -> TcpEndpoint:  # (TCP bursts wait for no flows)
        # `observe` (the UDP punch socket's observation port) has no TCP twin: a TCP peer is aimed
        # at its connection's address, or at a UDP-observed one its TCP report names
        ep = await open_tcp_endpoint(stun, src_ip=src_ip, src_port=src_port, on_event=emit, behavior=behavior,
                                     cache=cache)
        ep.report = self._windowed(ep.report)
        return ep

    def _windowed(self, report: NatReport, **tcp: Any) -> NatReport:
        assert report.tcp is not None
        window = min(max(self.window, 1), MAX_WINDOW)
        return replace(report, tcp=replace(report.tcp, window=window, **tcp))

    async def refresh(self, ep: TcpEndpoint, emit: EventHook) -> None:
        # the mappings may be stale (other flows since enrolment): measure the same port again; the
        # flows others took in between tell the window planner the NAT's rate over that whole wait
        old, old_at = ep.report.tcp, ep.measured_at
        new, ep.measured_at = await _tcp_report(ep.listener.getsockname()[:2], ep.behavior, emit,
                                                None if ep.lan_listener is None else ep.lan_listener.getsockname()[:2])
        assert old is not None and new.tcp is not None
        seen = history(old, new.tcp, ep.measured_at + (new.tcp.samples[0].t or 0.0)
                       - old_at - (old.samples[-1].t or 0.0))
        ep.report = self._windowed(new, history=seen)
        port_blocks.keep_in(ep.cached, "tcp")

    relays = True  # the ladder may end at the relay (api/relay.py): a TCP allocation, RFC 6062

    async def punch(self, ep: TcpEndpoint, session: Session, ttl: int | None, emit: EventHook,
                    relay: RelayRung | None = None) -> Any:
        return await _tcp_punch(ep, session, ttl, self.punch_timeout, emit, relay)

    @staticmethod
    def secure(ep: TcpEndpoint, stream: Any, session: Session, identity: Any, expected: Any,
               emit: EventHook) -> Any:
        return secure_tcp(stream, session, identity, expected, emit)

    @staticmethod
    def close(ep: TcpEndpoint) -> None:
        ep.close()
