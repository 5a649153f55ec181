"""UDP: the punch socket (opened once and kept: its mapping is what the peer aims at), its mappings
from S1 and S2 in our report, the UDP planner and the UDP puncher (with worker processes for big
bursts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from ..errors import BadReport, ConnectError, PlanError, PunchFailed, WorkerError
from ..io.interfaces import host_candidates
from ..io.path import PunchedPath
from ..io.punch import punch
from ..io.session import Session
from ..io import presample
from ..io.fresh_port import fresh_trio_udp
from ..io.stun_client import by_reply_id, on_trio_clock, run_transactions
from ..io.stun_discover import local_address, second_address
from ..proto import moved
from ..proto.nat_behavior import NatBehavior
from ..proto.planner.budget import (DEFAULT_FLOW_BUDGET, FLOW_LINGER, FLOW_TABLE_CAP, FlowLedger, budget_left,
                                    default_flow_budget)
from ..proto.planner.horizon import HELD, measured_ages, sample_ages
from ..proto.planner.side import DEFAULT_HORIZON, Side
from ..proto.planner.udp import Plan, plan
from ..proto.port_block import TOP_REACH, to_top
from ..proto.rendezvous.beacon import fold_sample, make_beacon, offer_beacon, session_beacon
from ..proto.rendezvous.observe import observe_request, ticket_of
from ..proto.report import MAX_POOL, MAX_POOL_DRAWS, PORT_RANGE, NatReport, Sample, counter_sample
from ..proto.stun import binding_request
from ..proto.stun_client import Transaction
from ..proto.vocab import Allocation, Mapping, Role, Strategy
from ..workers import open_coordinator
from ..proto.hops import DEFAULT_HOPS, HopReading
from .block_edge import cross_top, new_flows
from .pool_survey import Survey, needs_survey, survey_pool
from .relay import RelayRung
from . import port_blocks
from .background import running
from .behavior_cache import BehaviorCache, Key, confirmed
from .flow_wait import wait_for_flows
from .endpoint import (CacheUse, EventHook, emit_address, emit_cached, measure_hops, nat_report, own_ip, peer_udp_ips,
                       read_peer_report, resolve, resolve_behavior)
from .secure import quic_settings, secure_udp

if TYPE_CHECKING:
    from ..io.relay_path import RelayedPath

WORKER_SOCKETS = 256  # bursts from this many sockets or more run in worker processes (C core)
# An EIM mapping is the same for every destination: sampling it again before a session shows nothing
# new unless it may have expired meanwhile (home routers keep idle UDP mappings 30 s or more).
EIM_SAMPLES_FRESH = 20.0
# A listener waiting for its next peer keeps an EIM punch socket's mapping confirmed this often
# (one binding on the flow it already has, which also keeps it alive), so that an offer finds its
# samples fresh and the accept needs no refresh round trip (keep_fresh)
STANDBY_EVERY = 15.0
# the punch socket's STUN transactions: retransmit after 0.1 s, give up after ~2.3 s
SAMPLE_RTO, SAMPLE_RC, SAMPLE_RM = 0.1, 5, 8
# its observation request (proto/rendezvous/observe.py): sent at 0 and 0.15 s, given up at 0.3 s (what a
# server without the observation port costs the endpoint at most; an answered one costs nothing)
OBSERVE_RTO, OBSERVE_RC, OBSERVE_RM = 0.15, 2, 1
OBSERVE_GIVE_UP = 0.3
# Our bursts of this process by local address, in time.monotonic() (the behaviour cache file keeps
# them across processes, in unix time): what they opened is not ours to spend again until it expires.
LEDGER = FlowLedger()


@dataclass
class Endpoint:
    """What this side learned about itself before meeting the peer."""

    sock: Any  # the trio UDP punch socket (kept open)
    behavior: NatBehavior
    report: NatReport  # the NAT's words + the punch socket's own mappings, as sent to the peer
    t0: float = 0.0  # trio time of the punch socket's first sample (the samples' "t" count from it)
    sampled_at: float = 0.0  # trio time of the latest mapping samples
    cached: CacheUse | None = None  # how the behaviour cache was used (None: it was off)
    hops: HopReading = DEFAULT_HOPS  # our NAT layers as traced: the low TTL
    budget: int = DEFAULT_FLOW_BUDGET  # new flows our bursts may have open on our NATs (before the ledger)
    local_ip: str = "0.0.0.0"  # where our bursts leave from: the ledger's key
    # the punch socket as the rendezvous server's observation port saw it (proto/rendezvous/observe.py):
    # tickets not yet handed to the server, and every address seen (what the peer learns from it)
    tickets: list = field(default_factory=list)
    seen_udp: list = field(default_factory=list)
    seen_ips: set = field(default_factory=set)  # every public IP this socket's flows showed (report.pool)
    seen_draws: int = 0  # the fresh flows those IPs were read from (report.pool_draws)
    waited: float = 0.0  # seconds the endpoint waited for our bursts' entries before it sampled
    refreshed: bool = False  # a refresh used the server addresses the socket had not sent to: old flows now

    def take_tickets(self) -> list:
        """The observations to hand to the server with our next info (each once)."""
        out, self.tickets = self.tickets, []
        return out

    def flows_held(self) -> int:
        """Flows our recent bursts opened that our NATs may still hold: this process's, or every
        process's that shares the behaviour cache file (the larger; the file may be unwritable)."""
        held = LEDGER.held(self.local_ip, time.monotonic())
        if self.cached is not None:
            held = max(held, self.cached.cache.flows_held(self.local_ip))
        return held

    def publish_flows(self, emit: EventHook | None = None) -> NatReport:
        """Our report with the flow budget our NATs have left now (NatReport.flows)."""
        held = self.flows_held()
        self.report = replace(self.report, flows=budget_left(self.budget, held))
        if emit is not None:
            emit("flow-budget", {"flows": self.report.flows, "budget": self.budget, "held": held,
                                 "cgn": self.hops.cgn})
        return self.report


async def open_endpoint(
    stun: tuple[str, int],
    *,
    src_ip: str | None = None,
    src_port: int = 0,
    on_event: EventHook | None = None,
    behavior: NatBehavior | None = None,
    cache: BehaviorCache | None = None,
    max_flows: int | None = None,
    observe: tuple[str, int] | None = None,
    flow_wait: float = 0.0,
) -> Endpoint:
    """Discover the NAT's behaviour (unless a recent `behavior` report is given, or `cache` knows
    this network: a NAT's behaviour does not change between sessions, its mappings do), and learn
    the punch socket's mappings from S1 and S2 -- as soon as discovery's tests have made their own
    mappings, while its filtering tests still wait for answers that may never come.
    max_flows: our flow budget (default: a home router's, smaller when the trace shows a
    carrier-grade NAT: proto/planner/budget.py); the report publishes it less our recent bursts.
    observe: the rendezvous server's address: the punch socket asks its observation port (UDP, same
    port number) where it sees us, in the same volley as its first samples (no extra wait), so that
    the peer may aim at that address too (a NAT with an address pool: proto/rendezvous/observe.py).
    flow_wait: seconds we may first wait for our own earlier bursts' NAT entries to expire
    (api/flow_wait.py; 0: never)."""
    emit = on_event or (lambda phase, detail: None)
    stun = (resolve(stun[0]), stun[1])
    if observe is not None:
        observe = (resolve(observe[0]), observe[1])
    waited = 0.0
    if flow_wait > 0 and (waited := await wait_for_flows(LEDGER, emit, src_ip=src_ip, stun=stun, cache=cache,
                                                         budget=max_flows, cap=flow_wait)):
        presample.discard()  # nattrav-fast's early samples are as old as the wait now
    early = presample.take(src_ip, src_port, stun, observe)  # nattrav-fast's requests sent before its imports
    sock = trio.socket.from_stdlib_socket(early.sock) if early is not None else await _punch_socket(src_ip, src_port)
    try:
        cached = sampled = hops = guess = None
        remeasure = False
        # an ephemeral port only: a guess that fails leaves flows on this socket, and the socket
        # that measures again must be a fresh one (a fixed port would meet its old mappings)
        if behavior is None and cache is not None and src_port == 0:
            local = await local_address(sock, stun)
            guessed = cache.guess(local[0], stun)
            guess = (local, guessed[1]) if guessed is not None else None
        if early is not None and not _early_fits(early, stun, guess):
            # it sampled where this connect does not (the cache's guess says otherwise): its flows
            # stay with it, and a fresh socket does what it always did
            sock.close()
            early = None
            sock = await _punch_socket(src_ip, src_port)
            if guess is not None:
                guess = (await local_address(sock, stun), guess[1])
        if guess is not None and guess[1].trace is not None:
            # the network's hop trace is kept too: no trace to run, none to wait for
            warm, remeasure = await _cached_samples(sock, stun, cache, emit, observe, *guess, early=early)
            if warm is not None:
                (behavior, cached, sampled), hops = warm, guess[1].hops()
                emit("hops", {**hops.to_dict(), "cached": True})
            guess = None
        if remeasure:
            sock.close()
            sock = await _punch_socket(src_ip, src_port)
        if hops is None:
            # the trace runs beside discovery: its one flow is made before the punch socket samples
            # (a new mapping landing between them, or between them and the punch, reads as foreign)
            traced = trio.Event()
            async with running(measure_hops, stun, src_ip, emit, traced.set) as tracing:
                if guess is not None:
                    await traced.wait()  # the trace's first round: ~20 ms, not a round trip
                    warm, remeasure = await _cached_samples(sock, stun, cache, emit, observe, *guess)
                    if warm is not None:
                        behavior, cached, sampled = warm
                    elif remeasure:
                        sock.close()
                        sock = await _punch_socket(src_ip, src_port)
                if behavior is None:
                    (behavior, cached), sampled = await _behavior_and_samples(sock, stun, src_ip, emit, cache,
                                                                              observe, remeasure, traced.wait)
                if sampled is None:
                    if behavior.mapping is not Mapping.EIM:
                        # a behaviour given (a listener's next endpoint): the trace's flow would land
                        # among the samples and read as a foreign one, widening every window
                        await traced.wait()
                    t0 = trio.current_time()
                    sampled = (t0, await _sample(sock, _targets(stun, behavior.other_address), t0, observe))
                hops = await tracing.result()
            if cached is not None:
                cached.cache.set_hops(cached.key, hops)  # the next warm connect needs no trace
                port_blocks.seed_from(cached, pool=behavior.pool_ips)
        t0, got = sampled
        seen = _Seen()
        seen.add(got, emit)
        counter = None
        if observe is not None and needs_survey(behavior.mapping, seen.ips, behavior.mapped_ips()):
            survey = await survey_pool(observe, src_ip, [ip for ip, _ in seen.udp])
            seen.add_pool(survey, emit, {"flows": sorted(seen.ips), "discovery": sorted(behavior.mapped_ips())})
            if got.samples and behavior.allocation is Allocation.SEQUENTIAL:
                # the survey's fresh flows took ports after the last sample: predict from after them
                after = counter_sample(got.samples[-1], [port for _, port in survey.mapped], behavior.delta,
                                       PORT_RANGE, round(max(0.0, survey.started - t0), 6))
                if after is not None:
                    emit("mapping", {"ports": [after.port], "survey": True, "own": after.own})
                    counter = after
        # one counter's ports, whichever address of a pool they left from (port_blocks.join)
        port_blocks.join(seen.ips | behavior.mapped_ips())
        report = _report(sock, behavior, got.samples, got.public, emit, pool=len(seen.ips), draws=seen.draws,
                         counter=counter)
        if cached is not None and len(seen.ips) > 1:
            # the pool this connect's flows showed stays with the network's entry: a warm connect
            # runs no discovery, and its punch socket's 3 flows alone miss a pool of 4 1 time in 16
            cached.cache.add_pool(cached.key, seen.ips)
        port_blocks.keep_in(cached)
    except BaseException:
        sock.close()
        raise
    if max_flows is None:
        max_flows = default_flow_budget(hops, (ip for ip, _ in report.host))
    local_ip = behavior.local[0] if behavior.local else sock.getsockname()[0]
    ep = Endpoint(sock, behavior, report, t0, trio.current_time(), cached, hops, max_flows, str(local_ip),
                  seen.tickets, seen.udp, seen.ips, seen.draws, waited)
    await cross_block_top(ep, emit)
    ep.publish_flows(emit)
    return ep


async def _punch_socket(src_ip: str | None, src_port: int) -> Any:
    try:
        if src_port == 0:  # a port none of our recent sockets had (io/fresh_port.py says why)
            return await fresh_trio_udp(src_ip)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        try:
            await sock.bind((src_ip or "0.0.0.0", src_port))
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConnectError(
            f"cannot bind the punch socket to {src_ip or '0.0.0.0'}:{src_port}: {exc.strerror}"
        ) from None
    return sock


def _early_fits(early: presample.EarlySamples, stun: tuple[str, int], guess: Any) -> bool:
    """The early requests are the ones the warm path sends now: the guess keeps its trace (so the
    samples go first thing) and they went to its STUN server and second address."""
    return (guess is not None and guess[1].trace is not None
            and early.targets == _targets(stun, guess[1].behavior.other_address))


async def _cached_samples(sock: Any, stun: tuple[str, int], cache: BehaviorCache, emit: EventHook,
                          observe: tuple[str, int] | None, local: tuple[str, int], guess: Any,
                          early: presample.EarlySamples | None = None,
                          ) -> tuple[tuple[NatBehavior, CacheUse, Any] | None, bool]:
    """The warm path in one round trip: `guess`, the cache's newest entry for our `local` address
    and this STUN server, is a guess at the network, good enough to know where to sample (its
    server and OTHER-ADDRESS); the punch socket's samples then show the public address that names
    the network, and the entry under that name must agree with the guess (behavior_cache.confirmed,
    the same hop trace too when the guess's stood in for ours): ((behaviour, its CacheUse,
    (t0, samples)), False). Else nothing is used: (None, True), and the caller measures from scratch
    with a fresh socket, the cache's word not taken. Never a plan from a behaviour the public
    address does not name. `early`: the requests sent before the imports (_early_fits them)."""
    t0 = trio.current_time() if early is None else on_trio_clock(early.sent[0][2])
    try:
        got = await _sample(sock, _targets(stun, guess.behavior.other_address), t0, observe, early)
    except ConnectError as exc:  # the entry's second address no longer answers: measure again
        emit("behavior-cache-miss", {"reason": str(exc)})
        return None, True
    # the STUN server's own view, as discovery's first test had it (a NAT with an address pool may
    # show the second server another IP)
    public_ip = got.first_ip or got.public[0]
    key = Key.of(local, public_ip, stun)
    found = cache.lookup(key)
    if not confirmed(guess, found, got.announced, same_trace=guess.trace is not None):
        emit("behavior-cache-miss", {"reason": "no entry for this public address" if found is None
                                     else "the server's second address changed", "public_ip": public_ip})
        return None, True
    assert found is not None
    behavior = found.behavior
    behavior.local, behavior.public_ip = (str(local[0]), int(local[1])), public_ip
    emit_cached(emit, found, behavior, via="samples")
    return (behavior, CacheUse(cache, key, found.age(), found.blocks()), (t0, got)), False


def _targets(stun: tuple[str, int], other: tuple[str, int] | None) -> list[tuple[str, int]]:
    return [stun] + ([other] if other else [])


async def _behavior_and_samples(sock: Any, stun: tuple[str, int], src_ip: str | None, emit: EventHook,
                                cache: BehaviorCache | None, observe: tuple[str, int] | None,
                                remeasure: bool = False, traced: Any = None) -> tuple[Any, Any]:
    """resolve_behavior(), with the punch socket's samples taken once the tests' mappings are made
    (None when discovery never got that far: the cache answered, or the server did not).
    remeasure: the cache's entry did not hold, measure and replace it. traced: awaited before the
    samples, so that the hop trace's one flow is made before them, not among them."""
    made = trio.Event()
    other: list[tuple[str, int] | None] = []

    def mapped(other_address: tuple[str, int] | None) -> None:
        other.append(other_address)
        made.set()

    async with running(resolve_behavior, stun, src_ip, emit, cache, mapped, remeasure) as job:
        async with trio.open_nursery() as nursery:
            async def first(wait: Any) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, made.wait)
            nursery.start_soon(first, job.wait)
        sampled = None
        if made.is_set():
            if traced is not None:
                await traced()  # the hop trace's flow first (it is done by now, all but always)
            t0 = trio.current_time()
            sampled = (t0, await _sample(sock, _targets(stun, other[0]), t0, observe))
        return await job.result(), sampled


def _refresh_targets(ep: Endpoint) -> list[tuple[str, int]] | None:
    """Where a refresh samples (None: the samples are fresh enough, or there is nowhere new)."""
    assert ep.behavior.server is not None
    s1, s2 = ep.behavior.server, ep.behavior.other_address
    fresh = ep.behavior.mapping is Mapping.EIM and trio.current_time() - ep.sampled_at < EIM_SAMPLES_FRESH
    one_ip = s2 is not None and s2[0] == s1[0]  # one server IP: both its ports are old flows already
    if s2 is not None and not fresh and not one_ip:
        return [(s2[0], s1[1]), (s1[0], s2[1])]
    return None


async def refresh_mappings(ep: Endpoint, on_event: EventHook | None = None) -> NatReport:
    """Sample the punch socket's mappings again right before a session: other hosts behind the NAT
    may have taken ports since. The same socket to the same server address would reuse its old
    mapping and show nothing new, so the refresh asks the two server addresses this socket has not
    used yet (S2 on S1's port, S1 on S2's port), which are new flows for an APDM NAT."""
    targets = _refresh_targets(ep)
    if targets is not None and ep.refreshed and ep.behavior.mapping is not Mapping.EIM:
        # Those flows answer with the mappings they have: the same ports again, which the series
        # reads as a step back round the whole range, i.e. random ports (a listener that refreshed
        # at its accept and was asked for samples again: every miss of s17f over wan50).
        await _sample_counter(ep, on_event)
    elif targets is not None:
        ep.refreshed = True
        got = await _sample(ep.sock, targets, ep.t0)
        ep.seen_ips |= got.ips
        ep.seen_draws += len(got.samples)
        # an address of the pool first seen now is the same counter's (as at the opening)
        port_blocks.join(ep.seen_ips | ep.behavior.mapped_ips())
        ep.report = _report(ep.sock, ep.behavior, got.samples, got.public, on_event or (lambda phase, detail: None),
                            ep.report, pool=len(ep.seen_ips), draws=ep.seen_draws)
        port_blocks.keep_in(ep.cached)
        ep.sampled_at = trio.current_time()
        await cross_block_top(ep, on_event)
    # the budget too: bursts since the report was made (a listener's earlier sessions) hold flows
    return ep.publish_flows(on_event)


# fresh flows a second refresh samples the counter with (the last that answers is the sample)
COUNTER_FLOWS = 2


async def _sample_counter(ep: Endpoint, on_event: EventHook | None = None) -> None:
    """A refresh after one that used every server address: fresh sockets' flows show where a
    sequential counter stands now, folded in as a counter sample (report.counter_sample: the punch
    socket's next mapping takes the port after it). Nothing for a NAT that does not count (its
    random ports say nothing of the next one), or a pool's (each address counts on its own): their
    report keeps the samples it has, as old as they are."""
    r, b = ep.report, ep.behavior
    if not _counting(b) or b.server is None or r.public is None or not r.samples or len(ep.seen_ips) > 1:
        return
    if budget_left(ep.budget, ep.flows_held()) < 2 * COUNTER_FLOWS:
        return  # the punch needs what is left more than fresher samples
    src_ip = None if ep.local_ip in ("", "0.0.0.0") else ep.local_ip
    t = round(max(0.0, trio.current_time() - ep.t0), 6)
    got = await new_flows(b.server, src_ip, r.public[0], COUNTER_FLOWS)
    if got is None:
        return
    _hold(ep, COUNTER_FLOWS)
    ports = [p for p in got if p is not None]
    emit = on_event or (lambda phase, detail: None)
    emit("counter", {"flows": COUNTER_FLOWS, "ports": ports})
    port_blocks.observe(r.public[0], ports)
    counter = counter_sample(r.samples[-1], ports, b.delta, r.port_range, t)
    if counter is None:
        return
    ep.report = _report(ep.sock, b, [], tuple(r.public), emit, r, pool=1, draws=ep.seen_draws, counter=counter)
    port_blocks.keep_in(ep.cached)
    ep.sampled_at = trio.current_time()
    await cross_block_top(ep, on_event)


def _hold(ep: Endpoint, flows: int) -> None:
    """Our other sockets' fresh flows hold NAT entries as a burst's do: in the ledger (and the cache's)."""
    LEDGER.record(ep.local_ip, flows, time.monotonic() + FLOW_LINGER, ep.budget)
    if ep.cached is not None:
        ep.cached.cache.record_flows(ep.local_ip, flows, time.time() + FLOW_LINGER)


async def cross_block_top(ep: Endpoint, on_event: EventHook | None = None) -> None:
    """A sequential counter within reach of its published block's top is taken through it now, and
    the report says where it stands (api/block_edge.py says why). Not for a pool's addresses: each
    counts on its own, and the punch socket's samples may come from another one. Nor for a mapping
    kept for every destination (EIM): the peer aims at the one it has, whatever the counter does."""
    r, b = ep.report, ep.behavior
    if not _counting(b) or b.server is None or r.public is None or not r.samples or len(ep.seen_ips) > 1:
        return
    src_ip = None if ep.local_ip in ("", "0.0.0.0") else ep.local_ip
    # half of what our bursts left of the budget at most: the punch's own window comes next
    most = budget_left(ep.budget, ep.flows_held()) // 2
    got = await cross_top(b.server, src_ip, r.public[0], r.port_range, r.samples[-1].port, b.delta, most)
    if not got.flows:
        return
    _hold(ep, got.flows)
    emit = on_event or (lambda phase, detail: None)
    emit("block-top", {"flows": got.flows, "wrapped": got.wrapped,
                       "ports": [got.ports[0], got.ports[-1]] if got.ports else []})
    if got.ports:
        counter = Sample(got.ports[-1], round(max(0.0, got.started - ep.t0), 6), got.before_last)
        ep.report = _report(ep.sock, b, [], tuple(r.public), emit, r, pool=1, draws=ep.seen_draws, counter=counter)
        port_blocks.keep_in(ep.cached)


# --- the sample beacon (proto/rendezvous/beacon.py) ------------------------------------------------
# copies of one beacon: one flow (one mapping) however many leave, so each copy only covers a loss
BEACON_COPIES, BEACON_GAP = 3, 0.02


def beacon_wanted(ep: Endpoint, offer_info: Any) -> tuple[bytes, int] | None:
    """(secret, port) when the accept of this offer may go with a beacon instead of a refresh: the
    refresh would sample (an APDM mapping, or an EIM one gone stale), the server asked for a beacon
    and the initiator folds it into our report. Not while our counter may have come within reach
    of its block's top since the endpoint's samples (a listener's wait for its offer, and for its
    flows, lets other hosts' flows move it): the refresh's samples tell, and take it through."""
    if _refresh_targets(ep) is None or _may_near_top(ep):
        return None
    return offer_beacon(offer_info)


def _may_near_top(ep: Endpoint) -> bool:
    """Our counter was within twice the crossing's reach of its published top at the last sample."""
    r = ep.report
    return _counting(ep.behavior) and bool(r.samples) and \
        to_top(r.port_range, r.samples[-1].port, ep.behavior.delta, 2 * TOP_REACH) > 0


def _counting(b: NatBehavior) -> bool:
    """A sequential counter that gives each destination a mapping of its own: the one a peer's
    window aims along (an EIM side's peer aims at the mapping it has)."""
    return b.allocation is Allocation.SEQUENTIAL and b.mapping is not None and b.mapping.symmetric


async def send_beacon(ep: Endpoint, dest: tuple[str, int], secret: bytes, offer_id: str,
                      emit: EventHook | None = None) -> float | None:
    """The beacon's first copy, from the punch socket to the server's beacon port: the time it left
    in our samples' timeline (the sample's "t" both peers fold in), or None when it could not leave
    (the accept then refreshes first, as without a beacon)."""
    t = trio.current_time() - ep.t0
    try:
        await ep.sock.sendto(make_beacon(secret, offer_id), dest)
    except OSError as exc:
        if emit is not None:
            emit("beacon-error", {"error": str(exc)})
        return None
    return round(t, 6)


async def repeat_beacon(ep: Endpoint, dest: tuple[str, int], secret: bytes, offer_id: str) -> None:
    """The beacon's other copies, BEACON_GAP apart (cancelled once the session came): the same flow,
    so the same mapping; each copy only covers a loss."""
    data = make_beacon(secret, offer_id)
    for _ in range(BEACON_COPIES - 1):
        await trio.sleep(BEACON_GAP)
        try:
            await ep.sock.sendto(data, dest)
        except OSError:
            return


def take_beacon(ep: Endpoint, session: Session, at: float | None, emit: EventHook | None = None) -> bool:
    """Our report with the sample the server saw our beacon at, as the peer folds it (read_report):
    True when the session started on our beacon."""
    if session.sample is None:
        return False
    before = ep.report
    ep.report = fold_sample(ep.report, session.sample, at)
    ep.sampled_at = trio.current_time()
    if emit is not None:
        emit("mapping", {"ports": [session.sample[1]], "public": list(session.sample), "beacon": True,
                         "folded": ep.report is not before})
    return True


def read_report(session: Session) -> tuple[NatReport, str]:
    """The peer's report (endpoint.read_peer_report) with the sample the server saw its beacon at,
    when the session started on one, as its newest sample."""
    report, ip = read_peer_report(session)
    seen = session_beacon(session.peer_info)
    if seen is not None:
        report = fold_sample(report, *seen)
    return report, ip


def what_broke(p: Plan, first: tuple[Session, NatReport], second: tuple[Session, NatReport]) -> str:
    """What the second round's samples say broke the first plan `p` (proto/moved.py): each round's
    session (the peer's report) and our report."""
    try:
        before, after = read_report(first[0])[0], read_report(second[0])[0]
    except ConnectError:  # (the second session's report is planned on next; it raises there)
        return moved.AGREE
    return moved.what_broke(p, (before, after), (first[1], second[1]))


async def keep_fresh(ep: Endpoint, on_event: EventHook | None = None) -> None:
    """While a listener waits: every STANDBY_EVERY seconds, one binding from the punch socket to the
    server it sampled first (an old flow: an EIM NAT answers with the same mapping while it lives,
    and the packet keeps it alive). The same public address as the report's marks the samples fresh
    (refresh_mappings then skips its round trip); anything else -- no answer, another port -- marks
    nothing, and the accept's refresh measures as before. Only for an EIM mapping: an APDM one's
    next port moves with the NAT's other flows, and only new samples can tell it. Runs until
    cancelled (the offer came: the socket is the session's)."""
    emit = on_event or (lambda phase, detail: None)
    server = ep.behavior.server
    if ep.behavior.mapping is not Mapping.EIM or server is None or ep.report.public is None:
        return
    while True:
        await trio.sleep_until(ep.sampled_at + STANDBY_EVERY)
        try:
            got = await _sample(ep.sock, [server], ep.t0)
        except ConnectError:
            emit("standby", {"fresh": False, "why": "no answer"})
            return
        same = got.public == tuple(ep.report.public)
        emit("standby", {"fresh": same, "public": list(got.public)})
        if not same:
            return
        ep.sampled_at = trio.current_time()


@dataclass
class _Sampled:
    samples: list[Sample]
    public: tuple[str, int]  # the last sample's
    ips: set  # the public IPs the samples showed
    observed: tuple[tuple[str, int], bytes] | None = None  # (address, ticket) from the observation port
    announced: tuple[str, int] | None = None  # the first server's second address (OTHER-ADDRESS), if named
    first_ip: str | None = None  # the public IP the first target (the STUN server) saw: what names the network


@dataclass
class _Seen:
    """What an endpoint's samples and observation showed, before the Endpoint exists."""

    ips: set = field(default_factory=set)
    tickets: list = field(default_factory=list)
    udp: list = field(default_factory=list)
    draws: int = 0  # fresh flows whose public address was seen (each a draw from a pool)

    def add(self, got: _Sampled, emit: EventHook) -> None:
        self.ips |= got.ips
        self.draws += len(got.samples) + (got.observed is not None)
        if got.observed is not None:
            addr, _ = got.observed
            self.tickets.append(got.observed)
            self.udp.append(addr)
            self.ips.add(addr[0])
            emit("observed", {"udp": list(addr)})

    def add_pool(self, survey: Survey, emit: EventHook, why: dict) -> None:
        """A pool survey's observations (pool_survey.py), before the punch socket's: the server
        keeps the newest last, and the planners take the last as the punch socket's. `why`: the
        addresses that called for it (the punch socket's flows and discovery's), for the event."""
        found = survey.new
        self.draws += len(survey.mapped)
        self.tickets[:0] = found
        self.udp[:0] = [addr for addr, _ in found]
        self.ips |= {addr[0] for addr, _ in found}
        emit("pool-survey", {"addresses": [addr[0] for addr, _ in found], **why})


def _adopt(jobs: list[tuple[Any, Transaction]], early: presample.EarlySamples) -> list[tuple[Any, Transaction]]:
    """The jobs with the early socket's requests in their place (same IDs, started when they left:
    their schedules run on from then), and the replies that came meanwhile handed to them."""
    adopted = []
    for (sock, tx), (msg, dest, at) in zip(jobs, early.sent):
        twin = Transaction(msg, dest, rto=tx.rto, rc=tx.rc, rm=tx.rm)
        twin.start(on_trio_clock(at))
        adopted.append((sock, twin))
    by_id = by_reply_id(tx for _, tx in adopted)
    now = trio.current_time()
    for data, src in early.queued():
        tx = by_id.get(bytes(data[8:20]))
        if tx is not None:
            tx.receive(data, src, now)
    return adopted


async def _sample(sock: Any, targets: list[tuple[str, int]], t0: float,
                  observe: tuple[str, int] | None = None, early: presample.EarlySamples | None = None) -> _Sampled:
    """The punch socket's mappings seen by `targets`, and the last public address. With APDM each
    new server address is a new mapping; the difference between consecutive ones is the step Δ the
    next mapping will take, and the last one is where prediction starts. The requests leave
    together, in order (the NAT numbers the mappings in the order they arrive). `observe`: the
    rendezvous server's observation port, asked first (its flow is then older than every sample,
    and predictions count from the last sample) with a short schedule of its own: a server without
    it costs at most OBSERVE_GIVE_UP seconds, and its silence fails nothing."""
    jobs = [(sock, Transaction(binding_request(), dest, rto=SAMPLE_RTO, rc=SAMPLE_RC, rm=SAMPLE_RM))
            for dest in targets]
    if observe is not None:
        jobs.insert(0, (sock, Transaction(observe_request(), observe, rto=OBSERVE_RTO, rc=OBSERVE_RC,
                                          rm=OBSERVE_RM)))
    # no gap after the observation: it shares the socket with the first sample, whose datagram the
    # kernel sends after it anyway (a gap is one more timer on the critical path)
    gaps = [0.0] + [presample.SAMPLE_GAP] * len(targets) if observe is not None else presample.SAMPLE_GAP
    if early is not None:
        jobs = _adopt(jobs, early)
    results = await run_transactions(jobs, stagger=gaps)
    observed = None
    if observe is not None:
        first = results.pop(0)
        jobs.pop(0)
        if first is not None and first.ok:
            observed = ticket_of(first.message, first.mapped)
    new, ips = [], set()
    announced = second_address(results[0], targets[0]) if results and results[0] is not None else None
    for dest, (_, tx), r in zip(targets, jobs, results):
        if r is None or not r.ok:
            why = f"error {r.error.code}" if r is not None and r.error is not None else f"{tx.sent} requests unanswered"
            raise ConnectError(f"the punch socket got no STUN answer from {dest[0]}:{dest[1]}: {why}")
        # sample times count from this socket's first sample (the peer's predictor reads them as ages)
        # when the first request left: the NAT made the mapping then (replies come back bunched).
        # Not the answered one: SAMPLE_RTO is below a 100 ms path's round trip, and a sample whose
        # retransmission was answered read 0.1 s late -- the first one's after the second one's, and
        # the predictor took that series for an untimed one (a 7-port window where ~90 were due)
        new.append(Sample(r.mapped[1], max(0.0, r.first_sent_at - t0)))
        public = (str(r.mapped[0]), r.mapped[1])
        ips.add(public[0])
    first_ip = str(results[0].mapped[0]) if results else None
    return _Sampled(new, public, ips, observed, announced, first_ip)


def _report(sock: Any, behavior: NatBehavior, new: list[Sample], public: tuple[str, int], emit: EventHook,
            previous: NatReport | None = None, pool: int = 1, draws: int = 0,
            counter: Sample | None = None) -> NatReport:
    """`counter`: the port counter after our other sockets' flows (report.counter_sample), the series'
    last sample (not the punch socket's own: the mapping event leaves it out)."""
    series = (previous.samples if previous else ()) + tuple(new) + ((counter,) if counter else ())
    ports = [s.port for s in new]
    if ports:  # (a counter sample alone says its own event)
        emit("mapping", {"ports": ports, "public": list(public),
                         "delta": ports[-1] - ports[-2] if len(ports) > 1 else None})
    # where the NAT's counter starts again, once this process saw it do so (proto/port_block.py)
    block = port_blocks.observe(public[0], ports).port_range(behavior.delta)
    if block is not None and behavior.allocation is Allocation.SEQUENTIAL:
        emit("port-block", {"range": list(block)})
    else:
        block = None
    # the host candidates are read again at every refresh: a listener's interfaces may change
    return nat_report(behavior, public=public, samples=series, host=host_candidates(sock.getsockname()),
                      pool=max(1, min(pool, MAX_POOL)), **({"flows": previous.flows} if previous else {}),
                      **({"port_range": block} if block else {}),
                      # the evidence for the pool's size (planner/pool.py), said only with a pool
                      **({"pool_draws": max(pool, min(draws, MAX_POOL_DRAWS))} if pool > 1 else {}))


async def _punch(ep: Endpoint, session: Session, ttl: int | None, emit: EventHook,
                 coordinator: Any = None, plan_knobs: dict[str, Any] | None = None,
                 workers: int | None = None, relay: RelayRung | None = None,
                 early: bool = False) -> PunchedPath | RelayedPath:
    """The ladder: the plan's punch, then the relay (when both sides have one) for a pair the
    planner calls infeasible or a punch that failed. A RelayedPath comes back not yet running:
    the caller opens it (RelayedPath.open)."""
    peer_report, peer_ip = read_report(session)
    if peer_report.public is None:
        raise ConnectError(f"peer {session.peer_id} published no UDP mapping (is it listening with TCP?)")
    knobs = dict(plan_knobs or {})
    if knobs.get("horizon") is None:
        knobs["horizon"], knobs["horizons"] = DEFAULT_HORIZON, session_horizons(session, DEFAULT_HORIZON)
    try:
        # each side's part within the budget its own report published (ours: ep.report.flows)
        p: Plan = plan(ep.report, peer_report, session.role, peer_ip=peer_ip, own_ip=own_ip(session),
                       peer_udp=peer_udp_ips(session), own_udp=[a[0] for a in ep.seen_udp], **knobs)
    except (BadReport, PlanError) as exc:
        raise ConnectError(f"peer {session.peer_id}'s NAT report is malformed: {exc}") from None
    # infeasible: straight to the relay -- unless the peer may be on our LAN (the plan's odds are
    # then a floor: its LAN attempts may well connect), where the relay waits for the punch's end
    if relay is not None and not p.feasible and not p.odds_floor:
        _emit_plan(emit, p, session, peer_ip)
        return relay.path(ep.sock, session, peer_ip, peer_report, why="infeasible", reason=p.failure_message(),
                          emit=emit)
    with _ledgered(ep, p, session):
        try:
            return await _punch_plan(ep, p, session, ttl, emit, coordinator, peer_ip, workers, relay, early)
        except PunchFailed as exc:
            if relay is None:
                raise
            return relay.path(ep.sock, session, peer_ip, peer_report, why="punch-failed", reason=str(exc),
                              emit=emit)


def session_horizons(session: Session, cap: float) -> tuple[float, float] | None:
    """(the initiator's, the listener's) sample age at the start (proto/planner/horizon.py): from
    the sample ages both node infos published, the server's hold (HELD: it puts the same in both
    sessions' infos) and its margin; else (an older peer or server) guessed from the round trips,
    at most `cap`; None when even those are unknown."""
    ours, theirs = session.own_info, session.peer_info if isinstance(session.peer_info, dict) else {}
    first, second = (ours, theirs) if session.role is Role.FIRST else (theirs, ours)
    measured = measured_ages(first, second, theirs.get(HELD), session.margin)
    if measured is not None:
        return measured
    return sample_ages(first.get("rtt"), second.get("rtt"), session.margin, cap)


def burst_flows(p: Plan) -> int:
    """The new flows our side of `p` may open on our NATs: every attempt that leaves through them
    (LAN packets stay inside the network)."""
    return sum(a.local.flows for a in p.attempts if a.strategy is not Strategy.LAN)


@contextmanager
def _ledgered(ep: Endpoint, p: Plan, session: Session) -> Iterator[None]:
    """The plan's flows in the ledger from the moment they may leave until FLOW_LINGER after the
    punch ends (at first: after its timeout, for a session that plans meanwhile)."""
    flows = burst_flows(p)
    burst = LEDGER.record(ep.local_ip, flows, time.monotonic() + max(0.0, session.start_in()) + p.timeout
                          + FLOW_LINGER, ep.budget)
    try:
        yield
    finally:
        LEDGER.settle(burst, time.monotonic() + FLOW_LINGER)
        if ep.cached is not None and flows:
            ep.cached.cache.record_flows(ep.local_ip, flows, time.time() + FLOW_LINGER)


def _emit_plan(emit: EventHook, p: Plan, session: Session, peer_ip: str) -> None:
    emit_address(emit, p.params, peer_ip)
    # the peer ports the first attempt aims at, so a caller can check the prediction against where
    # the peer's NAT really put its mapping (the matrix bench's hit rate); the infeasible pair still
    # runs its bounded best effort (unless a relay takes it), whose odds are small but not zero
    emit("plan", {"strategy": p.strategy.value, "feasible": p.feasible, "odds": p.odds,
                  "odds_floor": p.odds_floor, "reason": p.reason, "role": session.role, "params": p.params,
                  "peer_targets": list(p.attempts[0].local.targets[:4096]),
                  "sides": {"local": _seen(p.local), "remote": _seen(p.remote)}})


def _seen(x: Side) -> dict[str, Any]:
    """Where a side's window starts, how wide it is, and the block its counter goes round (when one
    was published): what a diagnosis of a missed window needs."""
    pr = x.prediction
    block = pr.model.port_range
    return {"port": x.port, "next": pr.next_port, "window": len(pr.ports), "rate": round(pr.model.rate, 3),
            **({"block": list(block)} if block != PORT_RANGE else {})}


async def _punch_plan(ep: Endpoint, p: Plan, session: Session, ttl: int | None, emit: EventHook,
                      coordinator: Any, peer_ip: str, workers: int | None = None,
                      relay: RelayRung | None = None, early: bool = False) -> PunchedPath:
    _emit_plan(emit, p, session, peer_ip)
    emit("punch", {"start_in": round(session.start_in(), 3), "timeout": p.timeout})
    try:
        if coordinator is None and _needs_workers(p):
            # bursts of hundreds of sockets go to the C core in worker processes (one per core);
            # the winning socket is handed back to us, so the coordinator can go once punch returns
            async with open_coordinator(workers) as coord:
                path = await punch(ep.sock, p, session, low_ttl=ttl or ep.hops.low_ttl, coordinator=coord,
                                   on_event=emit, early=early)
        else:
            path = await punch(ep.sock, p, session, low_ttl=ttl or ep.hops.low_ttl, coordinator=coordinator,
                               on_event=emit, early=early)
    except WorkerError as exc:
        raise ConnectError(f"the burst's worker processes failed: {exc}") from None
    if relay is not None:
        await relay.aclose()  # punched: the allocation goes back
    # an early path's RTT is not measured yet (QUIC's handshake measures it)
    emit("connected", {"peer": list(path.peer_addr), "rtt_ms": round(path.rtt * 1e3, 2) if path.rtt else None,
                       "strategy": path.strategy.value})
    return path


def _needs_workers(p: Plan) -> bool:
    return any(a.local.sockets >= WORKER_SOCKETS for a in p.attempts)


class UdpTransport:
    """UDP: the punch socket, its mappings in the report, the planner and the UDP puncher."""

    def __init__(self, coordinator: Any = None, max_flows: int | None = None,
                 quic: dict[str, Any] | None = None, *,
                 plan_knobs: dict[str, Any] | None = None, workers: int | None = None,
                 early_quic: bool = False, flow_wait: float = 0.0) -> None:
        if max_flows is not None and not 1 <= max_flows <= FLOW_TABLE_CAP:
            raise ValueError(f"max_flows must be in 1..{FLOW_TABLE_CAP}, got {max_flows!r}")
        if workers is not None and not (isinstance(workers, int) and 1 <= workers <= 256):
            raise ValueError(f"workers must be 1..256 or None, got {workers!r}")
        self.coordinator = coordinator
        self.max_flows = max_flows
        self.flow_wait = flow_wait  # open_endpoint's, and pace()'s before an accept
        self.plan_knobs = dict(plan_knobs or {})
        self.workers = workers
        self.quic = dict(quic or {})  # QuicSettings fields over secure.quic_settings()'s
        # QUIC will run on the path: its client (the initiator) takes the first answered HELLO as
        # the path and starts its handshake a round trip sooner (io/punch.py, early), unless a relay
        # rung waits behind the punch
        self.early_quic = early_quic
        quic_settings(**self.quic)  # a bad field is the caller's TypeError/ValueError now, not after a punch

    def secure(self, ep: Endpoint, path: PunchedPath, session: Session, identity: Any, expected: Any,
               emit: EventHook) -> Any:
        """QUIC over the punched socket, keepalives sized from our NAT's mapping lifetime."""
        settings = quic_settings(ep.behavior.lifetime, **self.quic)
        return secure_udp(path, session, identity, expected, settings, emit)

    async def open(self, stun, src_ip, src_port, emit, behavior, cache=None, observe=None, *,
                   waits: bool = True) -> Endpoint:
        """`waits=False`: no wait for our earlier bursts' entries (a listener's second round, inside
        its initiator's connect: it plans at what is left, and says so in its odds)."""
        return await open_endpoint(stun, src_ip=src_ip, src_port=src_port, on_event=emit, behavior=behavior,
                                   cache=cache, max_flows=self.max_flows, observe=observe,
                                   flow_wait=self.flow_wait if waits else 0.0)

    async def pace(self, ep: Endpoint, emit: EventHook) -> None:
        """Before a listener's accept samples again: its earlier sessions' bursts (api/flow_wait.py).
        One cap for the endpoint's waits: a listener that waited 9 s when it opened the endpoint and
        5 s more at the accept outlasted its initiator's 15 s connect."""
        cap = self.flow_wait - ep.waited
        if cap > 0:
            ep.waited += await wait_for_flows(LEDGER, emit, ep.local_ip, cache=ep.cached.cache if ep.cached else None,
                                              stun=ep.behavior.server, budget=ep.budget, cap=cap)

    async def refresh(self, ep: Endpoint, emit: EventHook) -> None:
        await refresh_mappings(ep, emit)

    beacon_wanted = staticmethod(beacon_wanted)
    send_beacon = staticmethod(send_beacon)
    repeat_beacon = staticmethod(repeat_beacon)
    take_beacon = staticmethod(take_beacon)

    async def standby(self, ep: Endpoint, emit: EventHook) -> None:
        await keep_fresh(ep, emit)

    relays = True  # the ladder may end at the relay (api/relay.py)
    what_broke = staticmethod(what_broke)  # after a second round's session (api/session.py)

    async def punch(self, ep: Endpoint, session: Session, ttl: int | None, emit: EventHook,
                    relay: RelayRung | None = None) -> Any:
        # not with a relay rung: a path heard one way only (a firewall that drops our packets) would
        # commit to QUIC, which then fails, where the 3-way handshake falls back to the relay
        early = self.early_quic and session.role is Role.FIRST and relay is None
        return await _punch(ep, session, ttl, emit, self.coordinator, self.plan_knobs, self.workers, relay, early)

    @staticmethod
    def close(ep: Endpoint) -> None:
        ep.sock.close()
