"""A peer's report in its wire form with its TCP part (proto/report.py NatReport.from_wire,
TcpReport), then the TCP planner (proto/planner/tcp_mapping.py classify, planner/tcp.py
agreed_window, plan) on what the schema accepted, with our own TCP report fixed; the input is
decoded as in udp_report. A report without a TCP part is refused before planning, as api/tcp.py does.

Contract: from_wire raises BadReport and only that (its round trip as in udp_report); classify,
agreed_window and plan raise nothing for an accepted TCP part. Every connect() and low-TTL SYN of
the plan goes to the address the server observed; the plan's counts stay within the module's limits
(2W-1 targets with W <= MAX_WINDOW, BIRTHDAY_SOCKETS sockets, MAX_BIRTHDAY_PROBES guesses); its
to_dict() (printed with --json) packs. As if both sides shared the network (own_ip = the peer's
observed address), the plan's LAN listeners are host candidates of the report that are not globally
routable, at most MAX_HOSTS.
"""

from __future__ import annotations

import math
from dataclasses import replace

import msgpack

from nattrav.errors import BadReport
from nattrav.proto.planner import tcp as tcp_planner
from nattrav.proto.planner.tcp import agreed_window, plan
from nattrav.proto.planner.lan import aimable
from nattrav.proto.planner.tcp_mapping import classify
from nattrav.proto.report import MAX_HOSTS, MAX_WINDOW, History, NatReport, TcpReport, TcpSample
from nattrav.proto.vocab import Filtering, Mapping

from fuzz_harness import Target, Violation, timed
from fuzz_targets.udp_report import PEER_IP, accept, encode, peer_wire


def tcp(ports: list[int], *, public: str = "198.51.100.10", local: tuple[str, int] = ("10.0.1.2", 40000),
        filtering: Filtering | None = Filtering.APDF, times: list[float] | None = None,
        dests: list[tuple[str, int]] | None = None, **kw) -> TcpReport:
    """TCP Bindings from `local` to S1:3478, S1:3479, ... (or `dests`) that saw `ports`."""
    times = times or [0.0] * len(ports)
    dests = dests or [("198.51.100.1", 3478 + i) for i in range(len(ports))]
    return TcpReport(local=local, samples=tuple(TcpSample(public, p, t, d) for p, t, d in zip(ports, times, dests)),
                     filtering=filtering, **kw)


LOCALS = (
    tcp([40000, 40000, 40000]),  # cone
    tcp([20010, 20011, 20012], times=[0.0, 0.01, 0.02]),  # sequential
    tcp([8586, 64041, 35105]),  # random
    tcp([40000, 40000], filtering=Filtering.ADF),  # address-restricted cone
    tcp([40000, 40000], public="10.0.1.2", filtering=None),  # no NAT
    tcp([20091, 20098, 20105], filtering=Filtering.ADF, window=64, history=History(3, 30.0)),
)


def run(data: bytes) -> None:
    if not data:
        return
    mine = LOCALS[(data[0] & 0x7F) % len(LOCALS)]
    role = "second" if data[0] & 0x80 else "first"
    wire = peer_wire(data[1:])
    if wire is None:
        return
    peer = accept(wire).tcp
    if peer is None:
        return  # published for UDP: api/tcp.py refuses it before planning
    with timed():
        classify(peer)
    with timed():
        window = agreed_window(mine, peer)
        p = plan(mine, peer, role, window=window, peer_ip=PEER_IP)
    for ip, _port in p.targets:
        if ip != PEER_IP:
            raise Violation(f"{p.strategy.value} connects to {ip}, not the observed {PEER_IP}")
    if len(p.targets) > 2 * MAX_WINDOW - 1 or p.sockets > tcp_planner.BIRTHDAY_SOCKETS \
            or p.random_probes > tcp_planner.MAX_BIRTHDAY_PROBES:
        raise Violation(f"{len(p.targets)} targets, {p.sockets} sockets, {p.random_probes} probes")
    if not 0.0 <= p.odds <= 1.0 or not math.isfinite(p.odds):
        raise Violation(f"odds {p.odds}")
    msgpack.packb(p.to_dict(), use_bin_type=True)
    with timed():
        lan = plan(replace(mine, host=(("10.0.1.2", 42000),)), peer, role, window=window, peer_ip=PEER_IP,
                   own_ip=PEER_IP).lan
    if len(lan) > MAX_HOSTS or any(t not in peer.host or not aimable(t[0], PEER_IP) for t in lan):
        raise Violation(f"LAN listeners {lan} of {peer.host}")


def seeds() -> dict[str, bytes]:
    at = dict(public=PEER_IP, local=("10.0.2.2", 41000))
    s1, s2 = "198.51.100.1", "198.51.100.2"
    remotes = {
        "cone": tcp([50000, 50000, 50000], **at),
        "seq": tcp([30000, 30001, 30002], times=[0.0, 0.01, 0.02], **at),
        "seq7-window": tcp([20091, 20098, 20105], window=200, horizon=2.0, **at),
        "noisy-seq-history": tcp([20010, 20012, 20013], history=History(10, 60.0), **at),
        "adm": tcp([30000, 30000, 30001], times=[0.0, 0.01, 0.02], dests=[(s1, 3478), (s1, 3479), (s2, 3478)], **at),
        "random": tcp([8586, 64041, 35105], port_range=(1024, 65535), **at),
        "full-cone": tcp([50000] * 2, filtering=Filtering.EIF, **at),
        "no-nat": tcp([41000] * 2, public="10.0.2.2", local=("10.0.2.2", 41000), filtering=None),
        "same-network": tcp([30000, 30001, 30002], times=[0.0, 0.01, 0.02],
                            host=(("10.0.2.3", 43000), ("8.8.8.8", 43000)), **at),
        "third-party": tcp([50000] * 3, public="192.0.2.99", local=("10.0.2.2", 41000)),
        "untimed-pool": TcpReport(local=("10.0.2.2", 41000), samples=(
            TcpSample(PEER_IP, 1000), TcpSample("203.0.113.78", 1000))),
        "v6": tcp([50000, 50001], public="2001:db8::77", local=("2001:db8::2", 41000), times=[0.0, 0.01],
                  dests=[("2001:db8::1", 3478), ("2001:db8::1", 3479)]),
    }
    out = {}
    for i, (name, part) in enumerate(remotes.items()):
        report = NatReport(mapping=Mapping.APDM, filtering=part.filtering, tcp=part)
        out[name] = encode(i % len(LOCALS) | (0x80 if i % 2 else 0), report)
    return out


TARGET = Target("tcp_report", run, (BadReport,), seeds, max_len=8192,
                what="NatReport.from_wire (its TCP part), then planner tcp classify / agreed_window / plan")
