"""UDP: the punch socket (opened once and kept: its mapping is what the peer aims at), its mappings
from S1 and S2 in our report, the UDP planner and the UDP puncher (with worker processes for big
bursts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from ..errors import BadReport, ConnectError, PlanError, PunchFailed, StunErrorResponse, StunTimeout, WorkerError
from ..io.path import PunchedPath
from ..io.punch import punch
from ..io.relay_path import RelayedPath
from ..io.session import Session
from ..io.stun_client import binding
from ..proto.nat_behavior import NatBehavior
from ..proto.planner.odds import FLOW_TABLE_CAP
from ..proto.planner.udp import DEFAULT_FLOW_BUDGET, Plan, plan
from ..proto.report import NatReport, Sample
from ..workers import open_coordinator
from ..proto.hops import DEFAULT_HOPS, HopReading
from .relay import RelayRung
from .endpoint import EventHook, discover_with_hops, emit_address, nat_report, read_peer_report, resolve

WORKER_SOCKETS = 256  # bursts from this many sockets or more run in worker processes (C core)


@dataclass
class Endpoint:
    """What this side learned about itself before meeting the peer."""

    sock: Any  # the trio UDP punch socket (kept open)
    behavior: NatBehavior
    report: NatReport  # the NAT's words + the punch socket's own mappings, as sent to the peer
    t0: float = 0.0  # trio time of the punch socket's first sample (the samples' "t" count from it)
    hops: HopReading = DEFAULT_HOPS  # our NAT layers as traced: the low TTL


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
    stun = (resolve(stun[0]), stun[1])
    behavior, hops = await discover_with_hops(stun, src_ip, emit, behavior)

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
    return Endpoint(sock, behavior, report, t0, hops)


async def refresh_mappings(ep: Endpoint, on_event: EventHook | None = None) -> NatReport:
    """Sample the punch socket's mappings again right before a session: other hosts behind the NAT
    may have taken ports since. The same socket to the same server address would reuse its old
    mapping and show nothing new, so the refresh asks the two server addresses this socket has not
    used yet (S2 on S1's port, S1 on S2's port), which are new flows for an APDM NAT."""
    assert ep.behavior.server is not None
    s1, s2 = ep.behavior.server, ep.behavior.other_address
    if s2 is None or s2[0] == s1[0]:  # one server IP: both its ports are old flows already
        return ep.report
    ep.report = await _learn_mappings(ep.sock, [(s2[0], s1[1]), (s1[0], s2[1])], ep.behavior,
                                      on_event or (lambda phase, detail: None), ep.t0, ep.report)
    return ep.report


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
    return nat_report(behavior, public=public, samples=series)


def _plan(ep: Endpoint, session: Session, emit: EventHook, max_flows: int) -> tuple[Plan, NatReport, str]:
    """The plan for this pair (emitted as "plan"), the peer's report and the one IP we may aim at."""
    peer_report, peer_ip = read_peer_report(session)
    if peer_report.public is None:
        raise ConnectError(f"peer {session.peer_id} published no UDP mapping (is it listening with TCP?)")
    try:
        p: Plan = plan(ep.report, peer_report, session.role, peer_ip=peer_ip, flow_budget=max_flows)
    except (BadReport, PlanError) as exc:
        raise ConnectError(f"peer {session.peer_id}'s NAT report is malformed: {exc}") from None
    emit_address(emit, p.params, peer_ip)
    # the peer ports the first attempt aims at, so a caller can check the prediction against where
    # the peer's NAT really put its mapping (the matrix bench's hit rate); the infeasible pair still
    # runs its bounded best effort (unless a relay takes it), whose odds are small but not zero
    emit("plan", {"strategy": p.strategy.value, "feasible": p.feasible, "odds": p.odds,
                  "reason": p.reason, "role": session.role, "params": p.params,
                  "peer_targets": list(p.attempts[0].local.targets[:4096])})
    return p, peer_report, peer_ip


async def _punch(ep: Endpoint, session: Session, ttl: int | None, emit: EventHook,
                 coordinator: Any = None, max_flows: int = DEFAULT_FLOW_BUDGET,
                 relay: RelayRung | None = None) -> PunchedPath | RelayedPath:
    """The ladder: the plan's punch, then the relay (when both sides have one) for a pair the
    planner calls infeasible or a punch that failed. A RelayedPath comes back not yet running:
    the caller opens it (RelayedPath.open)."""
    p, peer_report, peer_ip = _plan(ep, session, emit, max_flows)
    if relay is not None and not p.feasible:
        return relay.path(ep.sock, session, peer_ip, peer_report, why="infeasible", reason=p.failure_message(),
                          emit=emit)
    emit("punch", {"start_in": round(session.start_in(), 3), "timeout": p.timeout})
    try:
        if coordinator is None and _needs_workers(p):
            # bursts of hundreds of sockets go to the C core in worker processes (one per core);
            # the winning socket is handed back to us, so the coordinator can go once punch returns
            async with open_coordinator() as coord:
                path = await punch(ep.sock, p, session, low_ttl=ttl or ep.hops.low_ttl, coordinator=coord,
                                   on_event=emit)
        else:
            path = await punch(ep.sock, p, session, low_ttl=ttl or ep.hops.low_ttl, coordinator=coordinator,
                               on_event=emit)
    except WorkerError as exc:
        raise ConnectError(f"the burst's worker processes failed: {exc}") from None
    except PunchFailed as exc:
        if relay is None:
            raise
        return relay.path(ep.sock, session, peer_ip, peer_report, why="punch-failed", reason=str(exc), emit=emit)
    if relay is not None:
        await relay.aclose()  # punched: the allocation goes back
    emit("connected", {"peer": list(path.peer_addr), "rtt_ms": round(path.rtt * 1e3, 2),
                       "strategy": path.strategy.value})
    return path


def _needs_workers(p: Plan) -> bool:
    return any(a.local.sockets >= WORKER_SOCKETS for a in p.attempts)


class UdpTransport:
    """UDP: the punch socket, its mappings in the report, the planner and the UDP puncher."""

    def __init__(self, coordinator: Any = None, max_flows: int = DEFAULT_FLOW_BUDGET) -> None:
        if not 1 <= max_flows <= FLOW_TABLE_CAP:
            raise ValueError(f"max_flows must be in 1..{FLOW_TABLE_CAP}, got {max_flows!r}")
        self.coordinator = coordinator
        self.max_flows = max_flows

    async def open(self, stun, src_ip, src_port, emit, behavior) -> Endpoint:
        return await open_endpoint(stun, src_ip=src_ip, src_port=src_port, on_event=emit, behavior=behavior)

    async def refresh(self, ep: Endpoint, emit: EventHook) -> None:
        await refresh_mappings(ep, emit)

    relays = True  # the ladder may end at the relay (api/relay.py)

    async def punch(self, ep: Endpoint, session: Session, ttl: int | None, emit: EventHook,
                    relay: RelayRung | None = None) -> Any:
        return await _punch(ep, session, ttl, emit, self.coordinator, self.max_flows, relay)

    @staticmethod
    def close(ep: Endpoint) -> None:
        ep.sock.close()
