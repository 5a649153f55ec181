"""A peer's report in its wire form (proto/report.py NatReport.from_wire), then the UDP planner
(proto/planner/udp.py plan(), planner/side.py side_from_report) on what the schema accepted, with
our own report fixed.

Input: byte 0 picks our report (LOCALS) and the role (bit 7); the rest is the peer's report as
msgpack, decoded the way a client decodes the rendezvous frame that carries it
(proto/rendezvous/wire.py), and kept only if the server would have relayed it (check_info of
{"report": ...}). What the schema accepts is planned on the way api/udp.py does: a report with no
public endpoint (published for TCP) is refused before plan() (side_from_report's BadReport).

Contract: from_wire raises BadReport and only that, and what it accepts writes back (to_wire) to a
map it reads as the same report; plan() of an accepted report with a public endpoint raises
nothing (PlanError is the caller's misuse, BadReport the schema's job). A plan aims every packet of
ours at the address the server observed, never at one the report names; our part stays within our
own limits (flows <= the budget OUR report publishes, sockets <= max_sockets) whatever the peer
claims, its budget (`flows`) included; odds in
[0, 1], a finite timeout, and its summary (printed with --json, sent as an event) packs. Planned
once more as if both sides shared the network (own_ip = the peer's observed address, our report with
a host candidate), the only packets not aimed at the observed address are LAN attempts, each to one
of the report's host candidates that is not globally routable, one packet a round, at most MAX_HOSTS.
"""

from __future__ import annotations

import math
from dataclasses import replace

import msgpack

from nattrav.errors import BadFrame, BadReport
from nattrav.proto.planner.lan import aimable
from nattrav.proto.planner.side import side_from_report
from nattrav.proto.planner.budget import CGN_FLOW_BUDGET, FLOW_TABLE_CAP
from nattrav.proto.planner.udp import plan
from nattrav.proto.rendezvous.wire import _unpack_body, check_info
from nattrav.proto.report import MAX_HOSTS, NatReport, Sample, TcpReport, TcpSample
from nattrav.proto.vocab import Allocation, Filtering, Mapping, Strategy

from fuzz_harness import Target, Violation, timed

PEER_IP = "203.0.113.77"
MAX_SOCKETS = 1024
EIM, ADM, APDM, NONE = Mapping.EIM, Mapping.ADM, Mapping.APDM, Mapping.NONE
EIF, ADF, APDF = Filtering.EIF, Filtering.ADF, Filtering.APDF
SEQ, RANDOM = Allocation.SEQUENTIAL, Allocation.RANDOM


def udp(mapping: Mapping | None, filtering: Filtering | None, ports: list[int], ip: str, *,
        times: list[float] | None = None, own: list[int] | None = None, **kw) -> NatReport:
    """A UDP report: the punch socket's mapped `ports` in order, its public endpoint `ip` with the
    last of them."""
    samples = tuple(Sample(p, None if times is None else times[i], 0 if own is None else own[i])
                    for i, p in enumerate(ports))
    return NatReport(mapping=mapping, filtering=filtering, public=(ip, ports[-1]), samples=samples, **kw)


LOCALS = (
    udp(EIM, APDF, [40000, 40000], "198.51.100.10"),
    udp(APDM, APDF, [20000, 20001], "198.51.100.11", times=[0.0, 0.01], allocation=SEQ, delta=1),
    udp(APDM, APDF, [31234, 5001], "198.51.100.12", allocation=RANDOM),
    udp(EIM, ADF, [40000, 40000], "198.51.100.13"),
    udp(NONE, EIF, [40000, 40000], "198.51.100.14"),
    udp(ADM, APDF, [20000, 20007, 20021], "198.51.100.15", times=[0.0, 0.5, 1.0], allocation=SEQ, delta=7),
    # budgets other than the default: behind a carrier-grade NAT, nearly spent, a user's big one
    udp(EIM, APDF, [40000, 40000], "198.51.100.16", flows=CGN_FLOW_BUDGET),
    udp(APDM, APDF, [31234, 5001], "198.51.100.17", allocation=RANDOM, flows=3),
    udp(APDM, APDF, [20000, 20001], "198.51.100.18", times=[0.0, 0.01], allocation=SEQ, delta=1, flows=65536),
)


def peer_wire(body: bytes) -> object | None:
    """The report's wire form as it reaches the schema, or None when the rendezvous would not carry it."""
    try:
        obj = _unpack_body(body)
        check_info({"report": obj})
    except BadFrame:
        return None
    return obj


def accept(wire: object) -> NatReport:
    """from_wire, timed, and its round trip: what the schema lets in is what to_wire writes."""
    with timed():
        report = NatReport.from_wire(wire)
    if NatReport.from_wire(report.to_wire()) != report:
        raise Violation("an accepted report does not read back the same through to_wire()")
    return report


def run(data: bytes) -> None:
    if not data:
        return
    local = LOCALS[(data[0] & 0x7F) % len(LOCALS)]
    role = "second" if data[0] & 0x80 else "first"
    wire = peer_wire(data[1:])
    if wire is None:
        return
    report = accept(wire)
    if report.public is None:
        # published for TCP: the API refuses it before planning, side_from_report says BadReport
        try:
            side_from_report(report)
        except BadReport:
            return
        raise Violation("side_from_report took a report with no public endpoint")
    with timed():
        p = plan(local, report, role, peer_ip=PEER_IP)
    if p.remote.ip != PEER_IP:
        raise Violation(f"the plan's peer is {p.remote.ip}, the server saw {PEER_IP}")
    for a in p.attempts:
        if a.local.peer_ip != PEER_IP:
            raise Violation(f"{a.strategy.value} aims at {a.local.peer_ip}, not the observed {PEER_IP}")
        if a.local.flows > local.flows or a.local.sockets > MAX_SOCKETS:
            raise Violation(f"{a.strategy.value}: {a.local.flows} flows from {a.local.sockets} sockets "
                            f"(our budget {local.flows})")
    if not 0.0 <= p.odds <= 1.0 or not math.isfinite(p.timeout):
        raise Violation(f"odds {p.odds}, timeout {p.timeout}")
    msgpack.packb(p.summary(), use_bin_type=True)
    p.failure_message()
    with timed():
        p = plan(replace(local, host=OUR_HOST), report, role, peer_ip=PEER_IP, own_ip=PEER_IP)
    lan = [a for a in p.attempts if a.strategy is Strategy.LAN]
    if len(lan) > MAX_HOSTS:
        raise Violation(f"{len(lan)} LAN attempts")
    for a in p.attempts:
        if a.strategy is not Strategy.LAN:
            if a.local.peer_ip != PEER_IP:
                raise Violation(f"{a.strategy.value} aims at {a.local.peer_ip}, not the observed {PEER_IP}")
        elif a.local.targets and ((a.local.peer_ip, a.local.targets[0]) not in report.host
                                  or not aimable(a.local.peer_ip, PEER_IP)):
            raise Violation(f"a LAN attempt aims at {a.local.peer_ip}:{a.local.targets}, no LAN candidate")
        elif a.local.packets > 1 or a.local.opens:
            raise Violation(f"a LAN attempt sends {a.local.packets} packets a round")
    p.failure_message()


OUR_HOST = (("10.0.1.2", 40000),)  # our host candidate when both sides share the network


def encode(role_byte: int, report: NatReport | dict) -> bytes:
    wire = report if isinstance(report, dict) else report.to_wire()
    return bytes([role_byte]) + msgpack.packb(wire, use_bin_type=True)


def seeds() -> dict[str, bytes]:
    at = PEER_IP
    remotes = {
        "cone": udp(EIM, APDF, [40000, 40000], at),
        "full-cone": udp(EIM, EIF, [40000, 40000], at),
        "seq": udp(APDM, APDF, [20000, 20001], at, times=[0.0, 0.01], allocation=SEQ, delta=1),
        # the punch socket's samples with the fresh sockets' mappings in between (api's four samples)
        "seq-own": udp(APDM, APDF, [41000, 41002, 41004, 41006], at, times=[0.0, 0.005, 0.01, 0.015],
                       own=[0, 1, 1, 1], allocation=SEQ, delta=1),
        "seq-unmeasured": udp(None, None, [30000, 30002, 30004], at, times=[0.0, 0.5, 1.0]),
        "random": udp(APDM, APDF, [31234, 5001], "192.0.2.99", allocation=RANDOM),
        "random-cgnat-block": udp(APDM, APDF, [1000, 1511], at, allocation=RANDOM, port_range=(1000, 1511)),
        "adf": udp(EIM, ADF, [40000, 40000], at),
        "no-nat": udp(NONE, EIF, [40000, 40000], at),
        "adm-seq7": udp(ADM, APDF, [20000, 20007, 20021], at, times=[0.0, 0.5, 1.0], allocation=SEQ, delta=7),
        # a busy sequential NAT: twelve samples three ports apart (the old corpus's slowest plan)
        "busy-seq": udp(APDM, APDF, [20000 + 3 * i for i in range(12)], at, times=[i * 0.001 for i in range(12)],
                        allocation=SEQ),
        "long-wait": udp(APDM, APDF, [20000, 20001, 20900], at, times=[0.0, 0.01, 3600.0], allocation=SEQ, delta=1),
        "same-network": udp(APDM, APDF, [20000, 20001], at, times=[0.0, 0.01], allocation=SEQ, delta=1,
                            host=(("10.0.1.3", 41000), ("192.168.7.3", 41000), ("8.8.8.8", 41000))),
        "cone-cgn-budget": udp(EIM, APDF, [40000, 40000], at, flows=CGN_FLOW_BUDGET),
        "random-whole-table": udp(APDM, APDF, [31234, 5001], at, allocation=RANDOM, flows=FLOW_TABLE_CAP),
        "seq-one-flow": udp(APDM, APDF, [20000, 20001], at, times=[0.0, 0.01], allocation=SEQ, delta=1, flows=1),
        # an older peer's report: no budget key (read as the default)
        "random-no-budget": {k: v for k, v in udp(APDM, APDF, [31234, 5001], at, allocation=RANDOM).to_wire().items()
                             if k != "flows"},
        "tcp-only": NatReport(mapping=APDM, filtering=APDF, tcp=TcpReport(
            local=("10.0.2.2", 41000), samples=(TcpSample(at, 30000, 0.0, ("198.51.100.1", 3478)),))),
    }
    return {name: encode(i % len(LOCALS) | (0x80 if i % 2 else 0), rep) for i, (name, rep) in enumerate(remotes.items())}


TARGET = Target("udp_report", run, (BadReport,), seeds, max_len=8192,
                what="NatReport.from_wire, then planner/udp.plan(fixed local report, the accepted one)")
