"""The UDP planner's reading of a peer's report (proto/plan.py side_from_report, plan) with our
own report fixed and the peer's fuzzed.

Input: byte 0 picks our report (LOCALS) and the role (bit 7); the rest is the peer's report as
msgpack, decoded the way a client decodes the rendezvous frame that carries it, and kept only if
the server would have relayed it (check_info of {"report": ...}). A report that is not a map never
reaches plan() (api._peer_report refuses it), but side_from_report gets it too.

Contract: side_from_report and plan raise ReportError and only that (PlanError is the caller's
misuse: never here). A plan aims every packet of ours at the address the server observed, never at
one the report names; our part stays within our own limits (flows <= the flow budget, sockets <=
max_sockets) whatever the peer claims; odds in [0, 1], a finite timeout, and its summary (printed
with --json, sent as an event) packs.
"""

from __future__ import annotations

import math

import msgpack

from nattrav.proto import rendezvous as rv
from nattrav.proto.plan import DEFAULT_FLOW_BUDGET, plan, side_from_report
from nattrav.proto.predict import ReportError

from fuzz_harness import Target, Violation, timed

PEER_IP = "203.0.113.77"
MAX_SOCKETS = 1024
LOCALS = (
    dict(mapping="EIM", filtering="APDF", samples=[40000, 40000], public_ip="198.51.100.10"),
    dict(mapping="APDM", filtering="APDF", allocation="sequential", delta=1, public_ip="198.51.100.11",
         one_socket=[{"port": 20000, "t": 0.0}, {"port": 20001, "t": 0.01}]),
    dict(mapping="APDM", filtering="APDF", allocation="random", samples=[31234, 5001], public_ip="198.51.100.12"),
    dict(mapping="EIM", filtering="ADF", samples=[40000, 40000], public_ip="198.51.100.13"),
    dict(nat=False, mapping="EIM", filtering="EIF", samples=[40000, 40000], public_ip="198.51.100.14"),
    dict(mapping="ADM", filtering="APDF", allocation="sequential", delta=7, public_ip="198.51.100.15",
         one_socket=[{"port": 20000, "t": 0.0}, {"port": 20007, "t": 0.5}, {"port": 20021, "t": 1.0}]),
)


def peer_report(body: bytes) -> object | None:
    """The report as it reaches the planner, or None when the rendezvous would not carry it."""
    try:
        obj = rv._unpack_body(body)
        rv.check_info({"report": obj})
    except rv.BadFrame:
        return None
    return obj


def run(data: bytes) -> None:
    if not data:
        return
    local = LOCALS[(data[0] & 0x7F) % len(LOCALS)]
    role = "second" if data[0] & 0x80 else "first"
    report = peer_report(data[1:])
    if report is None:
        return
    try:
        with timed():
            side_from_report(report)
    except ReportError:
        pass
    if not isinstance(report, dict):
        return
    with timed():
        p = plan(local, report, role, peer_ip=PEER_IP)
    if p.remote.ip != PEER_IP:
        raise Violation(f"the plan's peer is {p.remote.ip}, the server saw {PEER_IP}")
    for a in p.attempts:
        if a.local.peer_ip != PEER_IP:
            raise Violation(f"{a.strategy.value} aims at {a.local.peer_ip}, not the observed {PEER_IP}")
        if a.local.flows > DEFAULT_FLOW_BUDGET or a.local.sockets > MAX_SOCKETS:
            raise Violation(f"{a.strategy.value}: {a.local.flows} flows from {a.local.sockets} sockets")
    if not 0.0 <= p.odds <= 1.0 or not math.isfinite(p.timeout):
        raise Violation(f"odds {p.odds}, timeout {p.timeout}")
    msgpack.packb(p.summary(), use_bin_type=True)
    p.failure_message()


def seeds() -> dict[str, bytes]:
    remotes = {
        "cone": dict(mapping="EIM", filtering="APDF", samples=[40000, 40000], public=["203.0.113.77", 40000]),
        "seq": dict(LOCALS[1], public_ip="203.0.113.77"),
        "seq-binding-samples": {
            "mapping": "APDM", "filtering": "APDF", "allocation": "sequential", "delta": 1, "nat": True,
            "public_ip": "203.0.113.77", "samples": [
                {"socket": 0, "local": ["10.0.1.2", 5000], "server": ["198.51.100.1", 3478],
                 "mapped": ["203.0.113.77", 41000], "t": 0.0},
                {"socket": 1, "local": ["10.0.1.2", 5001], "server": ["198.51.100.1", 3478],
                 "mapped": ["203.0.113.77", 41001], "t": 0.005},
                {"socket": 0, "local": ["10.0.1.2", 5000], "server": ["198.51.100.2", 3478],
                 "mapped": ["203.0.113.77", 41002], "t": 0.01}]},
        "random": dict(LOCALS[2], public_ip="192.0.2.99"),
        "random-cgnat-block": dict(LOCALS[2], samples=[1000, 1511], port_range=[1000, 1511]),
        "adf": dict(LOCALS[3], public=["203.0.113.77", 40000]),
        "no-nat": dict(LOCALS[4], public_ip="203.0.113.77"),
        "busy-seq": dict(mapping="APDM", filtering="APDF", allocation="sequential", public_ip="203.0.113.77",
                         one_socket=[{"port": 20000 + 3 * i, "t": i * 0.001} for i in range(12)],
                         one_socket_ports=[1, 2]),
        "pairs": {"samples": [[0.0, 30000], [0.5, 30002], [1.0, 30004]], "mapped": ["203.0.113.77", 30004]},
    }
    out = {}
    for i, (name, rep) in enumerate(remotes.items()):
        out[name] = bytes([i % len(LOCALS) | (0x80 if i % 2 else 0)]) + msgpack.packb(rep, use_bin_type=True)
    return out


TARGET = Target("udp_report", run, (ReportError,), seeds, max_len=8192,
                what="plan.side_from_report / plan(fixed local report, fuzzed peer report)")
