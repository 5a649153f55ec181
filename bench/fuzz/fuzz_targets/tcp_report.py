"""The TCP planner's reading of a peer's TCP report (proto/tcp_plan.py classify, agreed_window,
plan) with our own report fixed and the peer's fuzzed; the input is decoded as in udp_report.

Contract: classify raises BadReport and only that; agreed_window and plan raise nothing for any
peer report (a malformed one is a plan that says so). Every connect() and low-TTL SYN of the plan
goes to the address the server observed; the plan's counts stay within the module's limits
(2W-1 targets with W <= MAX_WINDOW, BIRTHDAY_SOCKETS sockets, MAX_BIRTHDAY_PROBES guesses); its
to_dict() (printed with --json) packs.
"""

from __future__ import annotations

import math

import msgpack

from nattrav.proto import tcp_plan
from nattrav.proto.tcp_plan import BadReport, agreed_window, classify, plan

from fuzz_harness import Target, Violation, timed
from fuzz_targets.udp_report import PEER_IP, peer_report


def _report(ports, *, public="198.51.100.10", local=("10.0.1.2", 40000), filtering="APDF", times=None, **extra):
    times = times or [0.0] * len(ports)
    return {"local": list(local), "filtering": filtering, **extra,
            "samples": [{"dest": ["198.51.100.1", 3478 + i], "ip": public, "port": p, "t": t}
                        for i, (p, t) in enumerate(zip(ports, times))]}


LOCALS = (
    _report([40000, 40000, 40000]),  # cone
    _report([20010, 20011, 20012], times=[0.0, 0.01, 0.02]),  # sequential
    _report([8586, 64041, 35105]),  # random
    _report([40000, 40000], filtering="ADF"),  # address-restricted cone
    _report([40000, 40000], public="10.0.1.2", filtering=None),  # no NAT
    _report([20091, 20098, 20105], filtering="ADF", window=64, history={"extra": 3, "exposure": 30.0}),
)


def run(data: bytes) -> None:
    if not data:
        return
    mine = LOCALS[(data[0] & 0x7F) % len(LOCALS)]
    role = "second" if data[0] & 0x80 else "first"
    peer = peer_report(data[1:])
    if peer is None:
        return
    try:
        with timed():
            classify(peer)
    except BadReport:
        pass
    with timed():
        window = agreed_window(mine, peer)
        p = plan(mine, peer, role, window=window, peer_ip=PEER_IP)
    for ip, _port in p.targets:
        if ip != PEER_IP:
            raise Violation(f"{p.strategy.value} connects to {ip}, not the observed {PEER_IP}")
    if len(p.targets) > 2 * tcp_plan.MAX_WINDOW - 1 or p.sockets > tcp_plan.BIRTHDAY_SOCKETS \
            or p.random_probes > tcp_plan.MAX_BIRTHDAY_PROBES:
        raise Violation(f"{len(p.targets)} targets, {p.sockets} sockets, {p.random_probes} probes")
    if not 0.0 <= p.odds <= 1.0 or not math.isfinite(p.odds):
        raise Violation(f"odds {p.odds}")
    msgpack.packb(p.to_dict(), use_bin_type=True)


def seeds() -> dict[str, bytes]:
    at = dict(public=PEER_IP, local=("10.0.2.2", 41000))
    remotes = {
        "cone": _report([50000, 50000, 50000], **at),
        "seq": _report([30000, 30001, 30002], times=[0.0, 0.01, 0.02], **at),
        "seq7-window": _report([20091, 20098, 20105], window=200, horizon=2.0, **at),
        "noisy-seq-history": _report([20010, 20012, 20013], history={"extra": 10, "exposure": 60.0}, **at),
        "adm": {"local": ["10.0.2.2", 41000], "filtering": "APDF", "samples": [
            {"dest": ["198.51.100.1", 3478], "ip": PEER_IP, "port": 30000, "t": 0.0},
            {"dest": ["198.51.100.1", 3479], "ip": PEER_IP, "port": 30000, "t": 0.01},
            {"dest": ["198.51.100.2", 3478], "ip": PEER_IP, "port": 30001, "t": 0.02}]},
        "random": _report([8586, 64041, 35105], port_range=[1024, 65535], **at),
        "full-cone": _report([50000] * 2, filtering="EIF", **at),
        "no-nat": _report([41000] * 2, public="10.0.2.2", local=("10.0.2.2", 41000), filtering=None),
        "third-party": _report([50000] * 3, public="192.0.2.99", local=("10.0.2.2", 41000)),
        "pool": {"local": ["10.0.2.2", 41000], "samples": [
            {"ip": PEER_IP, "port": 1000}, {"ip": "203.0.113.78", "port": 1000}]},
    }
    out = {}
    for i, (name, rep) in enumerate(remotes.items()):
        out[name] = bytes([i % len(LOCALS) | (0x80 if i % 2 else 0)]) + msgpack.packb(rep, use_bin_type=True)
    return out


TARGET = Target("tcp_report", run, (BadReport,), seeds, max_len=8192,
                what="tcp_plan.classify / agreed_window / plan(fixed local, fuzzed peer report)")
