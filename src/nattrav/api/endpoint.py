"""What both transports share before the punch: the STUN server's address, the NAT's behaviour
(RFC 5780 discovery), this side's report in the vocabulary's words, and the peer's report with the
one address we may aim at (where the rendezvous server saw the peer)."""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import BadReport, ConnectError
from ..hostport import parse_hostport
from ..io import rendezvous_client as rv
from ..io.session import Session
from ..io.stun_discover import discover
from ..io.trace import MAX_TTL, trace_hops
from ..proto.hops import HopReading, filled, read_trace
from ..proto.nat_behavior import NatBehavior
from ..proto.planner.horizon import AGE, sample_age
from ..proto.rendezvous.beacon import TAKES_BEACON
from ..proto.rendezvous.held import TAKES_RESAMPLE
from ..proto.rendezvous.observe import read_observed
from ..proto.report import MAX_AGE, MAX_COUNT, History, NatReport
from ..proto.vocab import Mapping
from .background import running
from .behavior_cache import REFRESH_AFTER, BehaviorCache, Key

STUN_PORT = 3478
RENDEZVOUS_PORT = rv.DEFAULT_PORT

EventHook = Callable[[str, dict[str, Any]], None]


def resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise ConnectError(f"cannot resolve {host!r}") from None


def stun_endpoint(stun: str | tuple[str, int] | None, server: tuple[str, int]) -> tuple[str, int]:
    if stun is None:
        return (server[0], STUN_PORT)
    if isinstance(stun, str):
        return parse_hostport(stun, STUN_PORT)
    return stun


@dataclass(frozen=True)
class CacheUse:
    """Where a behaviour came from when the cache was on: its key, and the entry's age in seconds
    (None: measured now)."""

    cache: BehaviorCache
    key: Key
    age: float | None = None
    # the port blocks the entry kept, by protocol (Entry.blocks), read with it: a new process's
    # reports name them at once (api/port_blocks.seed)
    blocks: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        return self.age is not None and self.age > REFRESH_AFTER


async def discover_behavior(stun: tuple[str, int], src_ip: str | None = None,
                            on_event: EventHook | None = None) -> NatBehavior:
    """The RFC 5780 behaviour tests against our STUN server; ConnectError when it does not answer."""
    return (await resolve_behavior(stun, src_ip, on_event))[0]


async def resolve_behavior(stun: tuple[str, int], src_ip: str | None = None, on_event: EventHook | None = None,
                           cache: BehaviorCache | None = None,
                           mapped: Callable[[tuple[str, int] | None], None] | None = None,
                           remeasure: bool = False) -> tuple[NatBehavior, CacheUse | None]:
    """The NAT's behaviour: from `cache` when it knows this network (one STUN binding tells the
    public address that names it), else the RFC 5780 tests, whose result is then cached.
    `mapped`: discover()'s hook, called once the tests have made their mappings. `remeasure`: the
    caller found the cache's entry wrong: the tests run and their result replaces it."""
    emit = on_event or (lambda phase, detail: None)
    found: list[CacheUse] = []

    def known(local: tuple[str, int], mapped: tuple[str, int]) -> NatBehavior | None:
        assert cache is not None
        key = Key.of(local, mapped, stun)
        entry = cache.lookup(key)
        if entry is None or remeasure:
            # measured again, the network's port blocks still hold (save() keeps them too)
            found.append(CacheUse(cache, key, blocks=entry.blocks() if entry is not None else {}))
            emit("discovery", {"stun": list(stun)})
            return None
        behavior = entry.behavior
        behavior.local, behavior.public_ip = (str(local[0]), int(local[1])), str(mapped[0])
        found.append(CacheUse(cache, key, entry.age(), entry.blocks()))
        emit_cached(emit, entry, behavior)
        return behavior

    if cache is None:
        emit("discovery", {"stun": list(stun)})
    try:
        behavior = await discover(stun, src_ip, hairpin=False, known=known if cache is not None else None,
                                  mapped=mapped)
    except OSError as exc:
        raise ConnectError(f"STUN discovery against {stun[0]}:{stun[1]} failed: {exc.strerror or exc}") from None
    if behavior.public_ip is None:
        raise ConnectError(f"no answer from the STUN server {stun[0]}:{stun[1]} (is it running? is UDP blocked?)")
    use = found[0] if found else None
    if use is None or use.age is None:
        emit("discovery-done", behavior.to_dict())
        if use is not None:
            use.cache.save(use.key, behavior)
    return behavior, use


def emit_cached(emit: EventHook, entry: Any, behavior: NatBehavior, via: str = "binding") -> None:
    """The "behavior-cached" event: which cached behaviour this connect uses, how old it is, and
    what named the network (`via`: discovery's own "binding", or the punch socket's "samples")."""
    emit("behavior-cached", {"age_s": round(entry.age(), 1), "public_ip": behavior.public_ip, "via": via,
                             **{k: behavior.to_dict()[k] for k in ("mapping", "filtering", "allocation",
                                                                   "delta", "classic")}})


async def refresh_cached(stun: tuple[str, int], src_ip: str | None, use: CacheUse) -> None:
    """Measure again what the cache said (in the background, once a session is up: the tests'
    new mappings must not land between a punch socket's samples and its punch)."""
    try:
        behavior = await discover(stun, src_ip, hairpin=False)
    except OSError:
        return
    if behavior.public_ip is not None and behavior.local is not None:
        key = Key.of(behavior.local, behavior.public_ip, stun)
        use.cache.save(key, behavior)
        # and the hop trace, which warm connects take from the entry instead of tracing
        use.cache.set_hops(key, await measure_hops(stun, src_ip, lambda phase, detail: None, reuse=False))


# Seconds a complete trace stands for the next ones of this process on the same route (a listener's
# next endpoints, an application's back-to-back connects). Routers rate-limit their ICMP time-exceeded
# (Linux: one a second per destination after a burst of 6), so traces more often than that go silent
# at the outer hops and read a NAT layer too few (the opening then dies inside our own CGN until the
# punch escalates its TTL). A route whose NATs change within this time still has the escalation.
RECENT_TRACE = 30.0
KEEP_TRACE = 600.0  # and a complete one this recent fills the hops a new trace of the same path lost
_recent: dict[tuple, tuple[HopReading, float]] = {}


def route(stun: tuple[str, int], src_ip: str | None) -> tuple:
    """(the STUN server, the local address the kernel routes to it from): no packet is sent."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((src_ip or "0.0.0.0", 0))
        probe.connect(stun)
        return (stun, probe.getsockname()[0])
    except OSError:
        return (stun, src_ip)
    finally:
        probe.close()


def _complete(reading: HopReading) -> bool:
    return reading.server_ttl is not None and bool(reading.hops) and all(ip is not None for _, ip in reading.hops)


async def measure_hops(stun: tuple[str, int], src_ip: str | None, emit: EventHook,
                       made: Callable[[], None] | None = None, *, reuse: bool = True) -> HopReading:
    """How many hops our own NATs span, traced on the way to the STUN server: the low TTL that
    opens every layer of ours and dies before the peer's NAT (proto/hops.py). Never fails: a
    trace that cannot run or sees no hop reads as the default, and says so. `made()`: called once
    the trace's flow is made on our NATs (or it will make none). `reuse`: a complete trace of the
    same route less than RECENT_TRACE seconds old stands instead (no packet sent)."""
    told = False

    def tell() -> None:
        nonlocal told
        if not told and made is not None:
            told = True
            made()

    try:
        return await _measure_hops(stun, src_ip, emit, tell, reuse)
    finally:
        # whatever happened: a caller that waits for the trace's flow before sampling must not wait
        # for ever on a trace that failed before it sent anything
        tell()


async def _measure_hops(stun: tuple[str, int], src_ip: str | None, emit: EventHook, made: Callable[[], None],
                        reuse: bool) -> HopReading:
    way = route(stun, src_ip)
    recent = _recent.get(way)
    if reuse and recent is not None and time.monotonic() - recent[1] < RECENT_TRACE:
        made()
        emit("hops", {**recent[0].to_dict(), "recent": True})
        return recent[0]
    try:
        reading = await trace_hops(stun, src_ip=src_ip, made=made)  # which calls made() however it ends
    except OSError:
        reading = read_trace({}, None, MAX_TTL)
    if not _complete(reading) and recent is not None and reading.server_ttl is not None \
            and reading.server_ttl == recent[0].server_ttl and time.monotonic() - recent[1] < KEEP_TRACE:
        reading = filled(reading, recent[0], MAX_TTL)  # the same path (the cache's set_hops does the same)
    if _complete(reading):
        _recent[way] = (reading, time.monotonic())
        while len(_recent) > 64:
            _recent.pop(next(iter(_recent)))
    emit("hops", reading.to_dict())
    return reading


async def discover_with_hops(stun: tuple[str, int], src_ip: str | None, emit: EventHook,
                             behavior: NatBehavior | None, cache: BehaviorCache | None = None,
                             ) -> tuple[NatBehavior, CacheUse | None, HopReading]:
    """The behaviour (unless `behavior` is given: resolve_behavior) and the hop trace, side by side."""
    async with running(measure_hops, stun, src_ip, emit) as tracing:
        cached = None
        if behavior is None:
            behavior, cached = await resolve_behavior(stun, src_ip, emit, cache)
        return behavior, cached, await tracing.result()


def nat_report(behavior: NatBehavior, **fields: Any) -> NatReport:
    """A report in the vocabulary's words: no NAT is Mapping.NONE for the planners."""
    mapping = Mapping.NONE if behavior.nat is False else behavior.mapping
    return NatReport(mapping=mapping, filtering=behavior.filtering, allocation=behavior.allocation,
                     delta=behavior.delta, delta_doubt=behavior.delta_doubt,
                     background=_background(behavior.background), **fields)


def _background(value: Any) -> History | None:
    """Discovery's [extra, exposure, gaps] (a cached behaviour's too, maybe from before gaps were
    kept: [extra, exposure]), if it is one."""
    try:
        extra, exposure, *rest = value
        gaps = rest[0] if len(rest) == 1 and type(rest[0]) is int and 1 <= rest[0] <= MAX_COUNT else None
        if type(extra) is int and 0 <= extra <= MAX_COUNT and 0 <= float(exposure) <= MAX_AGE and len(rest) <= 1:
            return History(extra, float(exposure), gaps)
    except (TypeError, ValueError):
        pass
    return None


def node_info(report: NatReport, server_rtt: float, age: float | None = None) -> dict[str, Any]:
    """What we publish through the rendezvous server: our report, and our round trip to the server
    (it sets the session's start margin from both peers' round trips); `age`: our newest sample's
    (published_age), from which both peers size the windows aimed at our NAT (planner/horizon.py)."""
    info: dict[str, Any] = {"report": report.to_wire()}
    if report.public is not None:  # a UDP report: we fold a listener's beacon into it (udp.read_report)
        info[TAKES_BEACON] = True
        info[TAKES_RESAMPLE] = True  # as an initiator: connect(resample=) re-samples the punch socket
    if math.isfinite(server_rtt) and server_rtt >= 0:
        info["rtt"] = round(server_rtt, 6)
    if age is not None:
        info[AGE] = age
    return info


def published_age(ep: Any, beacon_at: float | None = None) -> float | None:
    """Seconds since the first request of the newest sample in `ep`'s report, or of our beacon
    (`beacon_at`, in the samples' time: newer than any sample), now, as the info leaves. None for an
    endpoint whose samples are not timed from a `t0` (TCP's report keeps its own horizon)."""
    t0, samples = getattr(ep, "t0", None), ep.report.samples
    last = beacon_at if beacon_at is not None else (samples[-1].t if samples else None)
    if t0 is None or last is None:
        return None
    return sample_age(t0 + last, trio.current_time())


def read_peer_report(session: Session) -> tuple[NatReport, str]:
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


def peer_udp_ips(session: Session) -> list[str]:
    """The IPs the rendezvous server saw the peer's punch socket on (its observation port, UDP),
    oldest first: beside the TCP connection's address, the only other ones we may aim at."""
    info = session.peer_info if isinstance(session.peer_info, dict) else {}
    ips: list[str] = []
    for ip, _port in read_observed(info.get("observed_udp")):
        if ip not in ips:
            ips.append(ip)
    return ips


def own_ip(session: Session) -> str | None:
    """Where the rendezvous server saw us (it decides with the peer's whether we share a network)."""
    return session.observed[0] if session.observed else None


def emit_address(emit: EventHook, params: dict[str, Any], ip: str) -> None:
    reported = params.get("reported_peer_ip")
    if reported is not None:
        emit("peer-address", {"observed": ip, "reported": reported})
