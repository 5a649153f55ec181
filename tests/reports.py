"""Peer reports for tests, built through proto/report.py's dataclasses (the one encoding)."""

from __future__ import annotations

from nattrav.proto.report import PORT_RANGE, History, NatReport, Sample, TcpReport, TcpSample
from nattrav.proto.vocab import Allocation, Filtering, Mapping


def udp(mapping: str | None, filtering: str | None, ports=(), *, ip: str = "203.0.113.10", times=None,
        nat: bool = True, allocation: str | None = None, delta: int | None = None,
        port_range=PORT_RANGE, public: tuple[str, int] | None = None, host=(),
        delta_doubt: float | None = None) -> NatReport:
    """A UDP report: the punch socket's mapped `ports` in order (at `times`, if given), its public
    endpoint `ip` with the last of them (or `public`); nat=False means no NAT (Mapping.NONE); `host`:
    the punch socket's host candidates."""
    samples = tuple(Sample(p, None if times is None else float(times[i])) for i, p in enumerate(ports))
    if public is None and ports:
        public = (ip, ports[-1])
    return NatReport(mapping=Mapping.NONE if not nat else None if mapping is None else Mapping(mapping),
                     filtering=None if filtering is None else Filtering(filtering),
                     allocation=None if allocation is None else Allocation(allocation), delta=delta,
                     public=public, samples=samples, port_range=tuple(port_range),
                     host=tuple(tuple(h) for h in host), delta_doubt=delta_doubt)


def tcp(ports, *, public: str = "203.0.113.10", local=("10.0.1.2", 40000), filtering: str | None = "APDF",
        times=None, dests=None, port_range=PORT_RANGE, window: int | None = None,
        horizon: float | None = None, history: tuple[int, float] | None = None, host=()) -> TcpReport:
    """A TCP report: TCP Bindings from `local` to `dests` (default S1:3478 for each) saw `ports`."""
    times = times or [0.0] * len(ports)
    dests = dests or ["198.51.100.1"] * len(ports)
    ips = [public] * len(ports) if isinstance(public, str) else list(public)
    return TcpReport(local=tuple(local),
                     samples=tuple(TcpSample(ip, p, t, (d, 3478)) for ip, p, t, d in zip(ips, ports, times, dests)),
                     filtering=None if filtering is None else Filtering(filtering), port_range=tuple(port_range),
                     window=window, horizon=horizon, history=None if history is None else History(*history),
                     host=tuple(tuple(h) for h in host))


def wire(report: NatReport | TcpReport) -> dict:
    """What the rendezvous carries (and a peer parses back with from_wire)."""
    return report.to_wire()
