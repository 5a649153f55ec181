"""What one side's TCP report says about its NAT, in the vocabulary's words (TcpMapping): reachable,
a cone (one port for every destination), sequential (per flow, or per address: ADM), or random; the
shift pmf a sequential one's window is sized on, and the rate evidence two measurements give."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .. import predict as _predict
from ..port_block import at_top, under_bottom
from ..report import MAX_AGE, MAX_WINDOW, PORT_RANGE, History, NatReport, TcpReport
from ..vocab import Allocation, Filtering, Mapping
from .side import DEFAULT_HORIZON

# A sequential NAT's measured steps may differ when other hosts' flows slip in between the probes;
# steps up to this size that disagree are still read as "sequential, with noise".
NOISY_STEP_MAX = 64


@dataclass(frozen=True)
class TcpMapping:
    """One side's TCP NAT as its report shows it, in the vocabulary's words."""

    mapping: Mapping  # NONE (no NAT), EIM (one port for every destination), ADM or APDM
    allocation: Allocation | None  # SEQUENTIAL or RANDOM for a port per destination, else None
    public_ip: str
    last_port: int
    delta: int = 0
    ports: tuple[int, ...] = ()
    filtering: Filtering | None = None
    # where a random NAT draws its ports from; a sequential one's block, once its side saw it wrap
    port_range: tuple[int, int] = PORT_RANGE
    # the rate evidence: foreign flows seen between our own, over `exposure` seconds (0: no times)
    extra: int = 0
    exposure: float = 0.0
    horizon: float = DEFAULT_HORIZON  # seconds from the last sample to the punch
    # P(Δ is a multiple of the NAT's true step, and every guess on the wrong grid): discovery's, read
    # from the UDP gaps of its fresh sockets, when it found this same Δ. None: not weighed (three
    # SYNs microseconds apart cannot tell a quiet Δ = 4 from a busy Δ = 2; docs/tcp.md)
    delta_doubt: float | None = None

    @property
    def reachable(self) -> bool:
        """Unsolicited SYNs reach the host: no NAT, or EIM + EIF."""
        return self.mapping is Mapping.NONE or (self.mapping is Mapping.EIM and self.filtering is Filtering.EIF)

    @property
    def cone(self) -> bool:
        """EIM behind a filter: the same public port for every destination."""
        return self.mapping is Mapping.EIM and not self.reachable

    @property
    def sequential(self) -> bool:
        """A new port per destination, base + k·Δ."""
        return self.allocation is Allocation.SEQUENTIAL

    @property
    def random(self) -> bool:
        """A new port per destination, no pattern (or several public addresses)."""
        return self.allocation is Allocation.RANDOM

    @property
    def per_address(self) -> bool:
        """Sequential per destination ADDRESS (ADM): every flow to the peer's address shares the port
        of the first one, so only one index is ever consumed towards the peer."""
        return self.mapping is Mapping.ADM

    def shift_pmf(self) -> list[float]:
        """pmf of the shift s (foreign flows before our first punch flow), s = 0..MAX_WINDOW-1 at most:
        a window never looks further. Only a sequential NAT shifts."""
        if not self.sequential:
            return [1.0]
        rate = self.extra / self.exposure if self.exposure else 0.0
        model = _predict.Model(_predict.Kind.SEQUENTIAL, self.last_port, self.delta, rate, True,
                               self.port_range, self.extra, self.exposure)
        return _predict.noise_pmf(model, self.horizon, limit=MAX_WINDOW)

    @property
    def delta_confidence(self) -> float:
        """P(the window is on the NAT's grid), as planner/side.py's Side says it for UDP: 1 for a
        port that does not step."""
        return 1.0 - (self.delta_doubt or 0.0) if self.sequential else 1.0

    @property
    def span(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    def predict(self, k: int) -> int:
        """The public port this NAT gives the side's k-th new flow after its last sample (k >= 1)."""
        if self.sequential:
            lo, hi = self.port_range
            if (lo, hi) != PORT_RANGE and lo <= self.last_port <= hi:
                # the block the side's counter was seen to go round (api/port_blocks.py): past its
                # top the NAT starts again at its bottom, not at the next port up
                return lo + (self.last_port - lo + self.delta * k) % (hi - lo + 1)
            return (self.last_port + self.delta * k - 1) % 65535 + 1
        return self.last_port

    @property
    def at_block_top(self) -> bool:
        """Sequential, and its last port is the top of the block its side published (port_block.at_top)."""
        return self.sequential and at_top(self.port_range, self.last_port, self.delta)

    def twin(self, k: int) -> int | None:
        """Where the k-th new flow goes if the block's top is higher than its side has seen: straight
        on past it (proto/port_block.py), when predict() wraps it to the bottom; else None."""
        lo, hi = self.port_range
        if not self.sequential or (lo, hi) == PORT_RANGE or not lo <= self.last_port <= hi:
            return None
        straight = self.last_port + self.delta * k
        return straight if hi < straight <= 65535 else None

    def under(self, ks: Iterable[int]) -> list[int]:
        """Where the flows among the k-th ones `ks` that wrap to the block's bottom go if that bottom
        is lower than its side has seen: its lowest port seen bounds the NAT's bottom from above,
        as its highest bounds the top from below (twin()), and samples a few a cycle rarely meet it
        (a Δ = 2 block seen from 20010 where the NAT's starts at 20000 leaves the flows 2..6 past
        the top outside every window). The ports just under it, one a wrapped flow, nearest first."""
        lo, hi = self.port_range
        if not self.sequential or (lo, hi) == PORT_RANGE or not lo <= self.last_port <= hi:
            return []
        return under_bottom(lo, self.delta, sum(1 for k in ks if self.last_port + self.delta * k > hi))

    def describe(self) -> str:
        ports = ",".join(map(str, self.ports))
        if self.mapping is Mapping.NONE:
            return f"no NAT, TCP port {self.last_port}"
        if self.reachable:
            return f"full cone (EIM/{self.filtering}), TCP port {self.last_port}"
        if self.cone:
            return f"cone (EIM/{self.filtering or '?'}), TCP port {self.last_port}"
        if self.sequential and self.per_address:
            return f"address-dependent sequential (ADM, TCP step {self.delta:+d} per address; ports {ports})"
        if self.sequential:
            return f"symmetric sequential (APDM, TCP step {self.delta:+d}; ports {ports})"
        return f"symmetric random (APDM, random TCP ports {ports})"


def as_cone(m: TcpMapping) -> TcpMapping:
    """`m` with its port taken as fixed: an address-open plan sizes its window on the opener's shift
    alone (the other side's port never matters there)."""
    return replace(m, mapping=Mapping.EIM, allocation=None)


def classify(report: TcpReport, udp: NatReport | None = None) -> TcpMapping:
    """What one side's TCP report says about its NAT (the schema checked the report: proto/report.py).
    `udp`: the side's whole report, whose discovery weighed its Δ over more gaps than three SYNs
    give; its doubt is this Δ's when both counters step alike (one NAT, one step)."""
    lo, hi = report.port_range
    filtering = report.filtering
    ports = [s.port for s in report.samples]
    ips = {s.ip for s in report.samples}
    times = [s.t for s in report.samples]
    dests = [s.dest[0] if s.dest else None for s in report.samples]
    extra, exposure = (report.history.extra, report.history.exposure) if report.history else (0, 0.0)
    if len(ips) != 1:
        # several public addresses (a NAT pool): no prediction can name the address to aim at
        return TcpMapping(Mapping.APDM, Allocation.RANDOM, sorted(ips)[0], ports[-1], 0, tuple(ports), filtering,
                          (lo, hi))
    public_ip = ips.pop()
    if public_ip == report.local[0] and all(p == report.local[1] for p in ports):
        return TcpMapping(Mapping.NONE, None, public_ip, ports[-1], 0, tuple(ports), None)
    if len(set(ports)) == 1:
        return TcpMapping(Mapping.EIM, None, public_ip, ports[-1], 0, tuple(ports), filtering or Filtering.APDF)
    # the NAT's allocations in order: one per sample, or one per new address for an ADM NAT
    adm = _per_address_ports(ports, dests)
    allocated = ports if adm is None else adm
    steps = [b - a for a, b in zip(allocated, allocated[1:])]
    # equal steps (any sign) say "sequential" only with a sample per flow; an ADM NAT's one or two
    # steps must also look like a counter moving up
    sequential = steps and ((adm is None and all(d == steps[0] for d in steps))
                            or all(0 < d <= NOISY_STEP_MAX for d in steps))
    if sequential:
        # unequal steps: other flows took ports between our probes. Every step is a multiple of the
        # NAT's Δ, so Δ is their gcd (the smallest step is not: +4, +6 is Δ = 2 with a foreign flow
        # in each gap).
        delta = steps[0] if len(set(steps)) == 1 else math.gcd(*steps)
        extra += sum(abs(d) // abs(delta) - 1 for d in steps)
        if None not in times:
            exposure += max(0.0, times[-1] - times[0])  # type: ignore[operator]
        doubt = udp.delta_doubt if udp is not None and udp.delta == delta else None
        return TcpMapping(Mapping.APDM if adm is None else Mapping.ADM, Allocation.SEQUENTIAL, public_ip,
                          allocated[-1], delta, tuple(ports), filtering, (lo, hi), extra, exposure,
                          DEFAULT_HORIZON if report.horizon is None else report.horizon, doubt)
    return TcpMapping(Mapping.APDM, Allocation.RANDOM, public_ip, ports[-1], 0, tuple(ports), filtering, (lo, hi))


def _per_address_ports(ports: list[int], dests: list[str | None]) -> list[int] | None:
    """The ports of an address-dependent NAT in allocation order (one per new destination address),
    or None unless the samples show that pattern: probes to the same address share a port while a
    new address gets a new one (an APDM NAT gives the same address a new port per destination port)."""
    if None in dests or len(set(dests)) < 2 or len(set(dests)) == len(dests):
        return None  # without a repeated address there is nothing to tell ADM from APDM by
    seen: dict[str | None, int] = {}
    order: list[int] = []
    for port, dest in zip(ports, dests):
        if dest in seen:
            if seen[dest] != port:
                return None
        else:
            seen[dest] = port
            order.append(port)
    return order if len(set(order)) == len(order) else None


def history(old_report: TcpReport, new_report: TcpReport, seconds: float) -> History | None:
    """The rate evidence between two measurements of one port `seconds` apart (old's last sample to
    new's first): the flows a sequential NAT gave others in between, plus what the old one had. A
    listener waits long between enrolment and a peer, so this is what pins its rate down; the few
    milliseconds between fresh probes say almost nothing. None when the two do not read as one
    sequential counter (another Δ or address) or the counter may have wrapped (can't count)."""
    old, new = classify(old_report), classify(new_report)
    if not (old.sequential and new.sequential and old.delta == new.delta
            and not (old.per_address or new.per_address)
            and old.public_ip == new.public_ip and old.port_range == new.port_range and 0 <= seconds):
        return None
    lo, hi = new.port_range
    gap = (new.ports[0] - old.last_port) * (1 if new.delta > 0 else -1) % (hi - lo + 1)
    steps, rest = divmod(gap, abs(new.delta))
    if rest or not 1 <= steps <= (hi - lo + 1) // abs(new.delta) // 2:
        return None
    return History(min(65535, old.extra + steps - 1), min(MAX_AGE, old.exposure + seconds))
