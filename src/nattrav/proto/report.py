"""The report a peer publishes about its NAT, and the one schema that reads it.

A peer's report crosses the rendezvous as node info: it is the most important untrusted input, so
it gets the strictest schema in the package. `NatReport.from_wire()` accepts exactly what
`to_wire()` writes and nothing else: the version, every key (no more, no fewer), the type of every
value, bounds on every number and list, IP literals only for addresses (a name would need a lookup,
and resolves wherever its owner likes). Anything else is BadReport, and nothing else escapes it.

    {"v": 2, "mapping": "APDM", "filtering": "APDF", "allocation": "sequential", "delta": 1,
     "public": ["203.0.113.10", 20003], "samples": [[20000, 0.0, 0], [20001, 0.01, 0], ...],
     "port_range": [1024, 65535], "host": [["10.0.1.2", 40000]], "flows": 1024, "tcp": null}

A sample is [port, seconds since the socket's first sample (or null), mappings our OTHER sockets made
since the previous sample]; the TCP part's samples are [public ip, port, seconds or null, [server ip,
server port] or null]. `host` holds this side's host candidates (ICE's word): its own IPv4 interface
addresses with the port a peer on the same network reaches directly (UDP: the punch socket's; TCP,
in the TCP part: the LAN listener's). The dataclasses are what every consumer reads (the predictor, both planners);
`public` and the samples are the peer's own word, which is why the planners aim at the address the
rendezvous server observed instead. `flows` is this side's flow budget: the new flows its bursts
may open on its own NATs now (proto/planner/budget.py); the UDP planner sizes each side's part by
that side's number. A report without the key (an older peer) reads as DEFAULT_FLOW_BUDGET, the one
number every side used before; a false claim only moves load onto the claimant's own NATs.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import BadReport
from .planner.budget import DEFAULT_FLOW_BUDGET, FLOW_TABLE_CAP
from .schema import cut
from .vocab import Allocation, Filtering, Mapping

# 2: the optional keys (flows, pool, delta_doubt, background) are part of the format. A reader of 1
# refuses them as unknown keys; with 2 it says instead that the peer runs a newer format.
# 3: pool_draws. Written only by a report that carries it (a side whose flows showed an address
# pool): every other report stays a 2, which older peers read.
# 4: background's third item, the number of gaps it was counted over (History.gaps). Written only by
# a report that carries it; a 4 with pool_draws too.
VERSION = 4
READS = (1, 2, 3, 4)  # a version-1 report is read with every optional key at its default
PORT_RANGE = (1024, 65535)  # Linux masquerade's default for unprivileged source ports
MAX_SAMPLES = 64  # the punch socket's mappings (api sends four)
MAX_TCP_SAMPLES = 16
MAX_DELTA = 65534
MAX_AGE = 86400.0  # seconds a TCP measurement or a rate observation may span
# a UDP sample's time counts from the punch socket's first sample, and a listener may keep that
# socket for a long time before a peer comes (its refreshed samples then carry the wait)
MAX_SAMPLE_AGE = 366 * 86400.0
MAX_HORIZON = 600.0  # seconds from the last sample to the punch a report may claim
MAX_WINDOW = 256  # the TCP planner's largest window (511 descriptors for the first side)
MAX_COUNT = 65535  # foreign or own flows counted between samples
MAX_HOSTS = 8  # host candidates a side publishes (the planner aims a handful of packets at each)

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Sample:
    """One mapped port the punch socket got, in order."""

    port: int
    t: float | None = None  # seconds since the socket's first sample; None when not timed
    # new mappings our OTHER sockets made since the previous sample (the STUN client's fresh-socket
    # tests): known consumption, not background traffic
    own: int = 0


@dataclass(frozen=True)
class TcpSample:
    """One TCP Binding from the shared local port: the public endpoint a server saw, in order."""

    ip: str
    port: int
    t: float | None = None
    dest: Endpoint | None = None  # the server endpoint asked (tells ADM from APDM)


@dataclass(frozen=True)
class History:
    """Rate evidence for a sequential NAT: a TCP listener's enrolment-to-refresh gap, discovery's
    background on Δ's grid (NatReport.background)."""

    extra: int  # flows other hosts took
    exposure: float  # over this many seconds
    # between how many pairs of our own mappings: what `extra` is under another step than Δ
    # (predict's divisor grids). None: not said (an older peer, a TCP history)
    gaps: int | None = None


@dataclass(frozen=True)
class TcpReport:
    """The TCP part: TCP mappings of ONE local port (the listener's) to several server endpoints."""

    local: Endpoint
    samples: tuple[TcpSample, ...]
    # the filtering assumed for TCP (the UDP measurement's; unknown reads as the strictest)
    filtering: Filtering | None = None
    port_range: tuple[int, int] = PORT_RANGE
    window: int | None = None  # the smallest window this side's user asked for
    horizon: float | None = None  # seconds from the last sample to the punch, when known
    history: History | None = None
    host: tuple[Endpoint, ...] = ()  # the LAN listener's host candidates (see the module docstring)

    def to_wire(self) -> dict[str, Any]:
        return {"local": list(self.local),
                "samples": [[s.ip, s.port, s.t, list(s.dest) if s.dest else None] for s in self.samples],
                "filtering": _value(self.filtering), "port_range": list(self.port_range),
                "window": self.window, "horizon": self.horizon,
                "history": None if self.history is None else [self.history.extra, self.history.exposure],
                "host": [list(h) for h in self.host]}

    @classmethod
    def from_wire(cls, wire: Any) -> TcpReport:
        return _guarded(_tcp_from_wire, wire)


@dataclass(frozen=True)
class NatReport:
    """What a peer publishes before a session: its NAT in the vocabulary's words and the punch
    socket's mappings (UDP), or the TCP part (TCP). Frozen; `from_wire` is the only way in from the
    network."""

    VERSION: ClassVar[int] = VERSION

    mapping: Mapping | None = None  # NONE: no NAT; None: not measured
    filtering: Filtering | None = None
    allocation: Allocation | None = None
    delta: int | None = None  # the port step of new mappings, when sequential
    public: Endpoint | None = None  # the punch socket's last mapped endpoint (UDP)
    samples: tuple[Sample, ...] = ()  # the punch socket's mapped ports, in order (UDP)
    port_range: tuple[int, int] = PORT_RANGE  # where the NAT draws its ports from (a guess)
    host: tuple[Endpoint, ...] = ()  # the punch socket's host candidates (UDP)
    flows: int = DEFAULT_FLOW_BUDGET  # new flows this side's bursts may open on its NATs (its budget)
    tcp: TcpReport | None = None
    # public addresses the punch socket's flows were seen on (UDP): more than one is a NAT that takes
    # an address of its pool per flow (RFC 4787 §4.1). Only ever the peer's word against itself: it
    # can make the plan for the pair harder, never aim a packet anywhere.
    pool: int = 1
    # how many fresh flows showed those addresses (the punch socket's observation and samples, the
    # pool survey's sockets): with `pool` the evidence for the pool's size (planner/pool.py). None:
    # not said (an older peer), read as `pool` draws, the weakest evidence.
    pool_draws: int | None = None
    # P(the published Δ is a multiple of the NAT's true step), from every gap discovery saw
    # (predict.delta_posterior); None: not assessed (an older peer), the planner then weighs the
    # samples above alone. The peer's word, like its Δ and samples.
    delta_doubt: float | None = None
    # the background discovery saw on Δ's grid (flows of other hosts, over seconds): rate evidence
    # the punch socket's two samples a millisecond apart cannot give (predict.predict adds it)
    background: History | None = None

    def to_wire(self) -> dict[str, Any]:
        """The msgpack- and JSON-safe map (plain str, int, float, list, None)."""
        return {"v": self._version(), "mapping": _value(self.mapping), "filtering": _value(self.filtering),
                "allocation": _value(self.allocation), "delta": self.delta,
                "public": None if self.public is None else list(self.public),
                "samples": [[s.port, s.t, s.own] for s in self.samples],
                "port_range": list(self.port_range), "host": [list(h) for h in self.host],
                "flows": self.flows, "tcp": None if self.tcp is None else self.tcp.to_wire(),
                **({"pool": self.pool} if self.pool != 1 else {}),
                **({"pool_draws": self.pool_draws} if self.pool_draws is not None else {}),
                **({"delta_doubt": self.delta_doubt} if self.delta_doubt is not None else {}),
                **({"background": [self.background.extra, self.background.exposure]
                                  + ([] if self.background.gaps is None else [self.background.gaps])}
                   if self.background is not None else {})}

    def _version(self) -> int:
        # the oldest format that holds what this report says, so that older peers still read it
        if self.background is not None and self.background.gaps is not None:
            return 4
        return 3 if self.pool_draws is not None else 2

    @classmethod
    def from_wire(cls, wire: Any) -> NatReport:
        """Read a report from the network. Raises BadReport, and only BadReport."""
        return _guarded(_from_wire, wire)


def samples_from_bindings(bindings: Iterable[Any]) -> tuple[Sample, ...]:
    """The punch socket's series from nat_behavior's BindingSamples, in the order taken: socket 0's
    first answer per server, each with the count of new mappings other sockets made since the
    previous one (known consumption, which the predictor must not read as background traffic)."""
    out: list[Sample] = []
    seen_main: set[Endpoint] = set()
    seen_other: set[tuple[int, Endpoint]] = set()
    own = 0
    for b in bindings:
        if b.socket != 0:
            if (b.socket, b.server) not in seen_other:
                seen_other.add((b.socket, b.server))
                own += 1
            continue
        if b.server in seen_main:
            continue
        seen_main.add(b.server)
        out.append(Sample(b.mapped[1], b.t, own if out else 0))
        own = 0
    return tuple(out)


def counter_sample(last: Sample, ports: Iterable[int], delta: int | None, port_range: tuple[int, int],
                   t: float | None) -> Sample | None:
    """The NAT's port counter after our other sockets' fresh flows (a pool survey's, api/pool_survey.py),
    as a sample that follows `last`: without it the punch socket's next mapping would be predicted
    from before those flows, each of which took the next port of a sequential NAT. The furthest of
    their `ports` ahead of `last` on Δ's grid is where the counter stands; the others are our own
    mappings in between (Sample.own), not background. None when no port fits the grid (the NAT is not
    sequential with this Δ, or every answer was lost): nothing is folded."""
    if not delta or delta <= 0:
        return None
    lo, hi = port_range
    span = hi - lo + 1
    ahead = sorted({(p - last.port) % span for p in ports if lo <= p <= hi})
    steps = [g // delta for g in ahead if g and g % delta == 0]
    # our own flows and a little background: further ahead is not our counter (wrapped, or random)
    steps = [k for k in steps if k <= 2 * len(ahead) + 64]
    if not steps:
        return None
    far = max(steps)
    t = t if t is None or last.t is None or t >= last.t else last.t
    return Sample(lo + (last.port - lo + far * delta) % span, t, len(steps) - 1)


# --- the schema ----------------------------------------------------------------------------------

_KEYS = {"v", "mapping", "filtering", "allocation", "delta", "public", "samples", "port_range", "host", "tcp"}
_OPTIONAL_KEYS = {"flows", "pool", "pool_draws", "delta_doubt", "background"}  # absent in an older peer's report: read as the default
MAX_POOL = 256
MAX_POOL_DRAWS = 4096
_TCP_KEYS = {"local", "samples", "filtering", "port_range", "window", "horizon", "history", "host"}


def _guarded(reader: Any, wire: Any) -> Any:
    try:
        return reader(wire)
    except BadReport:
        raise
    except Exception as exc:  # a reader bug must still surface as the one documented error
        raise BadReport(f"malformed report: {type(exc).__name__}") from None


def _from_wire(w: Any) -> NatReport:
    _exact(w, _KEYS, "report", _OPTIONAL_KEYS)
    if type(w["v"]) is not int or w["v"] not in READS:
        newer = type(w["v"]) is int and w["v"] > VERSION
        raise BadReport(f"report version {cut(w['v'])}, this side reads {' and '.join(map(str, READS))}"
                        + (" (the peer runs a newer nattrav: upgrade this side)" if newer else ""))
    if "pool_draws" in w and w["v"] < 3:
        raise BadReport(f"pool_draws in a version {w['v']} report")
    background = _history(w["background"], "background", gaps=w["v"] >= 4) if "background" in w else None
    samples = _list(w["samples"], MAX_SAMPLES, "samples")
    return NatReport(
        mapping=_word(Mapping, w["mapping"], "mapping"),
        filtering=_word(Filtering, w["filtering"], "filtering"),
        allocation=_word(Allocation, w["allocation"], "allocation"),
        delta=None if w["delta"] is None else _int(w["delta"], -MAX_DELTA, MAX_DELTA, "delta"),
        public=None if w["public"] is None else _endpoint(w["public"], "public"),
        samples=tuple(_sample(s) for s in samples),
        port_range=_port_range(w["port_range"], 1),
        host=_hosts(w["host"]),
        flows=_int(w["flows"], 1, FLOW_TABLE_CAP, "flows") if "flows" in w else DEFAULT_FLOW_BUDGET,
        tcp=None if w["tcp"] is None else _tcp_from_wire(w["tcp"]),
        pool=_int(w["pool"], 1, MAX_POOL, "pool") if "pool" in w else 1,
        pool_draws=_int(w["pool_draws"], 1, MAX_POOL_DRAWS, "pool_draws") if "pool_draws" in w else None,
        delta_doubt=_probability(w["delta_doubt"], "delta_doubt") if "delta_doubt" in w else None,
        background=background,
    )


def _tcp_from_wire(w: Any) -> TcpReport:
    _exact(w, _TCP_KEYS, "TCP report")
    samples = _list(w["samples"], MAX_TCP_SAMPLES, "TCP samples")
    if not samples:
        raise BadReport("TCP report has no samples")
    # a false claim only moves the shared window within 1..MAX_WINDOW
    history = None if w["history"] is None else _history(w["history"], "history")
    return TcpReport(
        local=_endpoint(w["local"], "local"),
        samples=tuple(_tcp_sample(s) for s in samples),
        filtering=_word(Filtering, w["filtering"], "TCP filtering"),
        # two ports at least: a random NAT's birthday is sized on the span
        port_range=_port_range(w["port_range"], 2),
        window=None if w["window"] is None else _int(w["window"], 1, MAX_WINDOW, "window"),
        horizon=None if w["horizon"] is None else _seconds(w["horizon"], MAX_HORIZON, "horizon"),
        history=history,
        host=_hosts(w["host"]),
    )


def _sample(v: Any) -> Sample:
    v = _list(v, 3, "sample")
    if len(v) != 3:
        raise BadReport("a sample is [port, t, own]")
    t = None if v[1] is None else _seconds(v[1], MAX_SAMPLE_AGE, "sample t")
    return Sample(_int(v[0], 1, 65535, "sample port"), t, _int(v[2], 0, MAX_COUNT, "sample own"))


def _tcp_sample(v: Any) -> TcpSample:
    v = _list(v, 4, "TCP sample")
    if len(v) != 4:
        raise BadReport("a TCP sample is [ip, port, t, dest]")
    t = None if v[2] is None else _seconds(v[2], MAX_AGE, "TCP sample t")
    dest = None if v[3] is None else _endpoint(v[3], "TCP sample dest")
    return TcpSample(_ip(v[0], "TCP sample ip"), _int(v[1], 1, 65535, "TCP sample port"), t, dest)


def _hosts(v: Any) -> tuple[Endpoint, ...]:
    """Host candidates: IPv4 unicast literals with a port, no duplicates. Which of them the planner
    may aim at (only inside the same network) is proto/planner/lan.py's decision, not the schema's."""
    out = tuple(_endpoint(h, "host candidate") for h in _list(v, MAX_HOSTS, "host candidates"))
    for ip, _ in out:
        a = ipaddress.ip_address(ip)
        if a.version != 4 or a.is_loopback or a.is_multicast or a.is_unspecified or a == _BROADCAST:
            raise BadReport(f"host candidate {ip} is not an IPv4 unicast address")
    if len(set(out)) != len(out):
        raise BadReport("host candidates repeat")
    return out


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _exact(w: Any, keys: set[str], what: str, optional: set[str] = frozenset()) -> None:
    if type(w) is not dict:
        raise BadReport(f"{what} is not a map")
    if not keys <= w.keys() or not w.keys() <= keys | optional:
        extra = [k for k in w if k not in keys | optional]
        missing = sorted(keys - w.keys())
        raise BadReport(f"{what}: unknown key {cut(extra[0])}" if extra else f"{what}: missing {missing[0]!r}")


def _list(v: Any, limit: int, what: str) -> list:
    if type(v) is not list:
        raise BadReport(f"{what} is not a list")
    if len(v) > limit:
        raise BadReport(f"{what}: {len(v)} items, at most {limit}")
    return v


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadReport(f"{what}: {cut(v)} is not an integer in {lo}..{hi}")
    return v


def _history(v: Any, what: str, *, gaps: bool = False) -> History:
    """[extra, exposure], or with `gaps` (a version-4 report's background) also [extra, exposure, gaps]."""
    items = _list(v, 3 if gaps else 2, what)
    if len(items) not in ((2, 3) if gaps else (2,)):
        raise BadReport(f"{what} is not [extra, exposure{', gaps' if gaps else ''}]")
    return History(_int(items[0], 0, MAX_COUNT, f"{what} extra"), _seconds(items[1], MAX_AGE, f"{what} exposure"),
                   _int(items[2], 1, MAX_COUNT, f"{what} gaps") if len(items) == 3 else None)


def _probability(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not (math.isfinite(v) and 0 <= v <= 1):
        raise BadReport(f"{what}: {cut(v)} is not a probability in 0..1")
    return float(v)


def _seconds(v: Any, limit: float, what: str) -> float:
    if type(v) not in (int, float) or not (math.isfinite(v) and 0 <= v <= limit):
        raise BadReport(f"{what}: {cut(v)} is not a number of seconds in 0..{limit:g}")
    return float(v)


def _ip(v: Any, what: str) -> str:
    if type(v) is not str or len(v) > 45:
        raise BadReport(f"{what}: not an IP address")
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise BadReport(f"{what}: {cut(v)} is not an IP address") from None


def _endpoint(v: Any, what: str) -> Endpoint:
    v = _list(v, 2, what)
    if len(v) != 2:
        raise BadReport(f"{what} is not [ip, port]")
    return _ip(v[0], f"{what} ip"), _int(v[1], 1, 65535, f"{what} port")


def _port_range(v: Any, least: int) -> tuple[int, int]:
    v = _list(v, 2, "port_range")
    if len(v) != 2:
        raise BadReport("port_range is not [low, high]")
    lo, hi = (_int(x, 1, 65535, "port_range bound") for x in v)
    if hi - lo + 1 < least:
        raise BadReport(f"port_range {lo}..{hi} holds fewer than {least} port(s)")
    return lo, hi


def _word(kind: type, v: Any, what: str) -> Any:
    if v is None:
        return None
    if type(v) is not str or v not in kind._value2member_map_:
        raise BadReport(f"unknown {what} {cut(v)}")
    return kind(v)


def _value(v: Any) -> Any:
    return None if v is None else v.value


__all__ = ["History", "MAX_HOSTS", "MAX_SAMPLES", "MAX_TCP_SAMPLES", "NatReport", "PORT_RANGE", "Sample", "TcpReport",
           "READS", "TcpSample", "VERSION", "counter_sample", "samples_from_bindings"]
