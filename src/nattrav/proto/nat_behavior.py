"""What a NAT does, in RFC 4787 words, computed from STUN test outcomes. Pure: no sockets, no clock.

The Trio driver (io/stun_discover.discover) runs the tests and hands the raw outcomes to `classify()`;
everything that decides "EIM or APDM", "sequential with Δ = 2", "full cone" lives here so that tests
can feed it any outcome.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .vocab import Allocation, Filtering, Mapping
# a "step" larger than this between two of our own back-to-back mappings is a coincidence of random ports
MAX_SEQUENTIAL_STEP = 1000

Address = tuple[str, int]


@dataclass
class BindingSample:
    """One mapped endpoint seen: from which local socket, to which server address, at what time."""

    socket: int  # 0 = the main socket (the one a puncher keeps); 1.. = fresh sockets
    local: Address
    server: Address
    mapped: Address
    t: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "socket": self.socket,
            "local": list(self.local),
            "server": list(self.server),
            "mapped": list(self.mapped),
            "t": self.t,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BindingSample:
        return cls(
            int(d["socket"]),
            _addr(d["local"]),
            _addr(d["server"]),
            _addr(d["mapped"]),
            float(d.get("t", 0.0)),
        )


def _addr(v: Any) -> Address:
    ip, port = v
    return (str(ip), int(port))


@dataclass
class NatBehavior:
    """The report. to_dict()/from_dict() are JSON- and msgpack-safe (lists, str, int, float, None)."""

    # EIM with nat=False when there is no NAT: the measurement, not the planner's Mapping.NONE
    mapping: Mapping | None = None  # None: could not tell
    filtering: Filtering | None = None
    allocation: Allocation | None = None
    delta: int | None = None  # port step between two new mappings (0 for EIM; None when random)
    # P(delta is a multiple of the true step): its gaps all shared a factor (predict.delta_posterior)
    delta_doubt: float | None = None
    # [extra, exposure, gaps]: other hosts' allocations between our mappings on Δ's grid, over
    # seconds, counted in that many gaps (a cache written before gaps were kept holds two items)
    background: list | None = None
    hairpin: bool | None = None
    lifetime: float | None = None  # seconds a mapping survived idle (lower bound), when measured
    nat: bool | None = None  # False: the mapped address is the local one (no NAT)
    classic: str = "unknown"  # RFC 3489 name
    public_ip: str | None = None
    local: Address | None = None
    server: Address | None = None
    other_address: Address | None = None
    # mapped ports seen from ONE socket to S1, S2, ... in order (the predictor's input)
    one_socket_ports: list[int] = field(default_factory=list)
    # (local port, mapped port) of fresh sockets, each to S1, in order
    fresh_ports: list[tuple[int, int]] = field(default_factory=list)
    samples: list[BindingSample] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    discarded: dict[str, int] = field(default_factory=dict)
    # public IPs a measurement's flows showed, kept where its raw samples are not (the behaviour
    # cache): several say an address pool (mapped_ips)
    pool_ips: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["local"] = list(self.local) if self.local else None
        d["server"] = list(self.server) if self.server else None
        d["other_address"] = list(self.other_address) if self.other_address else None
        d["fresh_ports"] = [list(p) for p in self.fresh_ports]
        d["samples"] = [s.to_dict() for s in self.samples]
        # the predictor reads the one-socket series as "samples"-like {"port", "t"} maps
        main = [s for s in self.samples if s.socket == 0]
        d["one_socket"] = [{"port": s.mapped[1], "t": s.t} for s in _distinct_by_server(main)]
        return d

    def mapped_ips(self) -> set[str]:
        """The public IPs the tests' mappings showed. With a mapping per destination each of the
        tests' new flows (test I, II, III, the fresh sockets: ~7) is a draw from the NAT's pool
        ("arbitrary" pooling, RFC 4787 §4.1), evidence a punch socket's own 3 flows miss 1 time in
        16 on a pool of 4 (4^-6 with these too). A behaviour from the cache has no samples: the
        addresses its measurement showed (pool_ips) stand for them."""
        return {s.mapped[0] for s in self.samples} | set(self.pool_ips)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NatBehavior:
        def opt_addr(v: Any) -> Address | None:
            return _addr(v) if v else None

        def opt(kind: type, v: Any) -> Any:
            return None if v is None else kind(v)

        return cls(
            mapping=opt(Mapping, d.get("mapping")),
            filtering=opt(Filtering, d.get("filtering")),
            allocation=opt(Allocation, d.get("allocation")),
            delta=d.get("delta"),
            delta_doubt=d.get("delta_doubt"),
            background=d.get("background"),
            hairpin=d.get("hairpin"),
            lifetime=d.get("lifetime"),
            nat=d.get("nat"),
            classic=d.get("classic", "unknown"),
            public_ip=d.get("public_ip"),
            local=opt_addr(d.get("local")),
            server=opt_addr(d.get("server")),
            other_address=opt_addr(d.get("other_address")),
            one_socket_ports=[int(p) for p in d.get("one_socket_ports", [])],
            fresh_ports=[(int(a), int(b)) for a, b in d.get("fresh_ports", [])],
            samples=[BindingSample.from_dict(s) for s in d.get("samples", [])],
            findings=[str(f) for f in d.get("findings", [])],
            discarded={str(k): int(v) for k, v in d.get("discarded", {}).items()},
            pool_ips=[str(ip) for ip in d.get("pool_ips", [])],
        )


def _first_by(samples: Sequence[BindingSample], key: Callable[[BindingSample], Address]) -> list[BindingSample]:
    """The first sample of each key, in order."""
    seen: set[Address] = set()
    out = []
    for s in samples:
        k = key(s)
        if k not in seen:
            seen.add(k)
            out.append(s)
    return out


def _distinct_by_server(samples: Sequence[BindingSample]) -> list[BindingSample]:
    return _first_by(samples, lambda s: s.server)


def classify_mapping(m1: Address, m2: Address | None, m3: Address | None) -> Mapping | None:
    """RFC 5780 §4.3: m1 to (A, P), m2 to (B, P), m3 to (B, P') -- all from one socket."""
    if m2 is None:
        return None
    if m2 == m1:
        return Mapping.EIM
    if m3 is None:
        return None
    return Mapping.ADM if m3 == m2 else Mapping.APDM


def classify_mapping_one_ip(m1: Address, m_port: Address | None) -> Mapping | None:
    """Against a one-IP server: m1 to (A, P), m_port to (A, P'), from one socket. A new port for a
    new destination port is APDM; the same one is EIM -- or ADM, which only a second IP could show
    (the finding says so)."""
    if m_port is None:
        return None
    return Mapping.EIM if m_port == m1 else Mapping.APDM


def classify_filtering(change_both: bool | None, change_port: bool | None) -> Filtering | None:
    """RFC 5780 §4.4: did the answer to change-IP+port arrive? to change-port only?"""
    if change_both is None:
        return None
    if change_both:
        return Filtering.EIF
    if change_port is None:
        return None
    return Filtering.ADF if change_port else Filtering.APDF


def _step(ports: Sequence[int]) -> int | None:
    """The common difference of a port series, if most consecutive differences agree."""
    diffs = [b - a for a, b in zip(ports, ports[1:])]
    if not diffs:
        return None
    step, count = Counter(diffs).most_common(1)[0]
    # one stray difference is tolerated (another host took a port in between), only with >= 3 diffs
    needed = len(diffs) if len(diffs) < 3 else len(diffs) - 1
    if count >= needed and step != 0 and abs(step) <= MAX_SEQUENTIAL_STEP:
        return step
    return None


def _gaps(ports: Sequence[int]) -> list[int]:
    return [b - a for a, b in zip(ports, ports[1:])]


def _scattered(ports: Sequence[int]) -> bool:
    """Whether fresh sockets' ports jump far apart, as no sequential allocator numbers them: two
    ports of a random allocator land within MAX_SEQUENTIAL_STEP of each other ~3 % of the time, so
    one far jump in two (a sequential counter may wrap once) says random."""
    diffs = [b - a for a, b in zip(ports, ports[1:])]
    far = sum(abs(d) > MAX_SEQUENTIAL_STEP for d in diffs)
    return len(diffs) >= 2 and far >= max(1, len(diffs) - 1)


def classify_filtering_one_ip(change_port: bool | None) -> Filtering | None:
    """Against a one-IP server, only the change-port test exists: an answer from the other port
    means the filter ignores ports (ADF -- or EIF, which only a second IP could show); none is APDF."""
    if change_port is None:
        return None
    return Filtering.ADF if change_port else Filtering.APDF


def classify_allocation(
    mapping: Mapping | None,
    one_socket_ports: Sequence[int],
    fresh_ports: Sequence[tuple[int, int]],
) -> tuple[Allocation | None, int | None]:
    """(allocation, Δ). `one_socket_ports`: ports of the distinct mappings one socket created, in
    order; `fresh_ports`: (local, mapped) of fresh sockets, each sending to the same server."""
    if fresh_ports and all(local == mapped for local, mapped in fresh_ports):
        return Allocation.PRESERVE, 0 if mapping == Mapping.EIM else None
    if mapping == Mapping.EIM:
        # one mapping per socket: Δ between servers is 0; how new sockets are numbered is separate
        step = _step([m for _, m in fresh_ports])
        return (Allocation.SEQUENTIAL if step else Allocation.RANDOM if len(fresh_ports) >= 3 else None), 0
    series = list(one_socket_ports)
    gaps = _gaps(series) + _gaps([m for _, m in fresh_ports])
    if len(gaps) >= 3 and all(0 < g <= MAX_SEQUENTIAL_STEP for g in gaps):
        # Every allocation, ours or another host's, moves a sequential counter by Δ, so each gap is
        # Δ·(1 + N), N the background's allocations in between: Δ is their gcd. On a busy NAT the
        # gaps need not agree (at 50 flows/s discovery read such a NAT as random) and the most common
        # one may be a multiple of Δ (at 800 flows/s it read Δ=1 as 2 or 3, and the predicted window,
        # on the wrong grid, missed at 99.9 % stated odds). Three or more small forward gaps from a
        # random allocator: ~1e-5.
        return Allocation.SEQUENTIAL, math.gcd(*gaps)
    step = _step(series)
    fresh_step = _step([m for _, m in fresh_ports])
    # a one-IP server gives one socket only two mappings, whose one difference is small by chance
    # now and then: fresh sockets that scatter overrule it
    agrees = fresh_step == step or len(fresh_ports) < 3 or (fresh_step is None and
                                                            not _scattered([m for _, m in fresh_ports]))
    if step is not None and agrees:
        return Allocation.SEQUENTIAL, step
    if step is None and fresh_step is not None and len(series) < 3:
        return Allocation.SEQUENTIAL, fresh_step
    if len(series) + len(fresh_ports) >= 3:
        return Allocation.RANDOM, None
    return None, None


def _first_per_mapping(samples: Sequence[BindingSample]) -> list[BindingSample]:
    return _first_by(samples, lambda s: s.mapped)


# The allocation test's fresh sockets, each a new mapping right after the main socket's. Their gaps
# are the evidence that the step Δ is not a multiple of a busy NAT's smaller one (delta_evidence
# below): each gap of exactly Δ a millisecond apart cuts that doubt about 4×. The main socket's 3
# gaps and 2 from 3 fresh sockets left Δ = 3 at ~0.3 % doubt and Δ = 2 at ~1.5 %, more than a
# 99.9 % plan may carry; 7 (9 gaps) leave ~1e-5 and ~3e-4, for 4 more flows and ~4 ms.
FRESH_SOCKETS = 7


def delta_evidence(delta: int, *series: Sequence[BindingSample]) -> tuple[float | None, list | None]:
    """(P(`delta` is a multiple of the NAT's true step), [background allocations, seconds, gaps]) from
    the gaps of each series of new mappings (one socket's, fresh sockets'), each spanning the time
    between its two samples: the evidence discovery read Δ from, which the peer's planner never
    sees (predict.delta_posterior; predict.predict adds the background to the punch socket's).
    (None, None) when the gaps do not fit a sequential counter."""
    from .predict import delta_posterior_of_gaps  # predict reads reports, which this module feeds

    gaps: list[int] = []
    taus: list[float] = []
    for one in series:
        for a, b in zip(one, one[1:]):
            gaps.append(b.mapped[1] - a.mapped[1])
            taus.append(b.t - a.t)
    if not gaps or any(g <= 0 or g % delta for g in gaps):
        return None, None
    # a gap of no time would make any foreign flow in it impossible and favour the largest Δ
    timed = all(t > 0 for t in taus)
    post = delta_posterior_of_gaps(gaps, taus if timed else None, [0] * len(gaps), delta)
    background = [sum(g // delta - 1 for g in gaps), round(sum(taus), 6), len(gaps)] if timed else None
    return round(1.0 - post.get(delta, 0.0), 6), background


def classic_name(nat: bool | None, mapping: Mapping | None, filtering: Filtering | None,
                 blocked: bool = False) -> str:
    if blocked:
        return "UDP blocked"
    if nat is False:
        return "open internet" if filtering == Filtering.EIF else "symmetric UDP firewall"
    if mapping in (Mapping.ADM, Mapping.APDM):
        return "symmetric"
    if mapping == Mapping.EIM:
        return {
            Filtering.EIF: "full cone",
            Filtering.ADF: "restricted cone",
            Filtering.APDF: "port restricted cone",
        }.get(filtering, "cone (filtering unknown)")
    return "unknown"


def findings_for(b: NatBehavior, *, server_ignored_change: bool, repeat_same_port: bool | None) -> list[str]:
    """Plain-language notes answering "why did the external port (not) change?" for this NAT."""
    out: list[str] = []
    if b.nat is False:
        out.append("no NAT on the path: the server saw this socket's own address and port")
    elif b.mapping == Mapping.EIM and b.allocation == Allocation.PRESERVE:
        out.append(
            "external port == local port for every server: EIM with port preservation, the port "
            "legitimately stays the same"
        )
    elif b.mapping == Mapping.EIM:
        out.append("one socket keeps one external port for every destination (EIM): Δ = 0")
    symmetric = b.mapping in (Mapping.ADM, Mapping.APDM)
    if symmetric and repeat_same_port:
        out.append(
            f"the same socket to the same server address kept its port: that is mapping reuse and "
            f"hides {b.mapping}; only a second server address shows the port move (Δ = {b.delta})"
        )
    if symmetric:
        out.append(
            "mappings are per socket and per destination: punch from the very socket whose mapping "
            "was learned (a new socket or a closed one loses it); predict the next port as last + kΔ"
        )
    if server_ignored_change:
        out.append(
            "the server answered CHANGE-REQUEST from the address we sent to: it ignores change "
            "requests; accepting that reply unvalidated would make this NAT look like a full cone"
        )
    return out


def classify(
    *,
    local: Address,
    server: Address,
    other_address: Address | None,
    samples: Sequence[BindingSample],
    test1: Address | None,
    test2: Address | None,
    test3: Address | None,
    filter_change_both: bool | None,
    filter_change_port: bool | None,
    hairpin: bool | None = None,
    lifetime: float | None = None,
    server_ignored_change: bool = False,
    repeat_same_port: bool | None = None,
    discarded: dict[str, int] | None = None,
    one_ip: bool = False,
) -> NatBehavior:
    """Build the report from the raw outcomes of the RFC 5780 tests. one_ip: the server has one IP
    and two ports (other_address is its second port): test3 is the answer from (A, P'), test2 is
    not run, and only the change-port filtering test is."""
    b = NatBehavior(local=local, server=server, other_address=other_address, samples=list(samples))
    b.discarded = dict(discarded or {})
    b.hairpin = hairpin
    b.lifetime = lifetime
    if test1 is None:
        b.classic = classic_name(None, None, None, blocked=True)
        b.findings = ["no valid STUN answer: the server is down or elsewhere, or UDP is blocked"]
        return b
    b.public_ip = test1[0]
    b.nat = test1 != local
    if one_ip:
        b.mapping = classify_mapping_one_ip(test1, test3)
        b.filtering = classify_filtering_one_ip(filter_change_port)
    else:
        b.mapping = classify_mapping(test1, test2, test3)
        b.filtering = classify_filtering(filter_change_both, filter_change_port)
    main = _distinct_by_server([s for s in samples if s.socket == 0])
    b.one_socket_ports = [s.mapped[1] for s in main]
    # distinct mappings only: with ADM, (B, P) and (B, P') share one
    created: list[int] = []
    seen_mapped: set[Address] = set()
    for s in main:
        if s.mapped not in seen_mapped:
            seen_mapped.add(s.mapped)
            created.append(s.mapped[1])
    b.fresh_ports = [(s.local[1], s.mapped[1]) for s in samples if s.socket > 0]
    if b.nat is False:
        b.allocation, b.delta = Allocation.PRESERVE, 0
        b.hairpin = None  # a NAT property: with no NAT there is nothing to hairpin through
    else:
        b.allocation, b.delta = classify_allocation(b.mapping, created, b.fresh_ports)
        if b.allocation is Allocation.SEQUENTIAL and b.delta and b.mapping is not Mapping.EIM:
            b.delta_doubt, b.background = delta_evidence(b.delta, _first_per_mapping(main),
                                                         [s for s in samples if s.socket > 0])
    b.classic = classic_name(b.nat, b.mapping, b.filtering)
    b.findings = findings_for(b, server_ignored_change=server_ignored_change, repeat_same_port=repeat_same_port)
    if one_ip and b.nat:
        b.findings.append(one_ip_finding(b))
    return b


def one_ip_finding(b: NatBehavior) -> str:
    """What a server with one IP and two ports could not measure."""
    blind = []
    if b.mapping is Mapping.EIM:
        blind.append("EIM may be ADM (a new port per destination address)")
    if b.filtering is Filtering.ADF:
        blind.append("ADF may be EIF (a full cone)")
    return ("the server has one IP and two ports: mapping and filtering were told apart by port only"
            + (f"; {' and '.join(blind)}: only a second server IP shows it" if blind else ""))


__all__ = [
    "BindingSample",
    "NatBehavior",
    "classic_name",
    "classify",
    "classify_allocation",
    "classify_filtering",
    "classify_mapping",
    "classify_mapping_one_ip",
    "classify_filtering_one_ip",
    "findings_for",
]
