"""Lab trials for experiments: a lab case (NAT pair, lab shape, background traffic) is brought up once
with our servers; each trial then runs an experiment agent (agent.py) in each host with the trial's
session options and traffic, and joins their two JSON lines into one record.

Direct-path trials (the baseline a punched path's traffic is compared against) run the traffic tool
between two hosts of a lab whose NATs are `none`: plain sockets, no rendezvous."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..lab.agent import SERVER_PORT
from ..lab.matrix import reap, wait_tcp

DIRECT_PORT = 5201


@dataclass(frozen=True)
class Case:
    left: str
    right: str
    shape: str = "flat"
    background: float = 0.0  # packets/s of other hosts' new flows behind each NAT

    def key(self) -> tuple:
        return (self.left, self.right, self.shape, self.background)


def hop_matched_shape(case: Case) -> Any:
    """The lab shape whose NAT-less hosts are as many forwarding hops apart as `case`'s hosts are:
    each NAT layer a host crosses becomes one more router on its side (flat, one NAT a side: a ─
    r_a1 ─ router ─ r_b1 ─ b, three hops like a ─ nat_a ─ router ─ nat_b ─ b). The direct path a
    punched one is compared against, without the difference in distance."""
    import dataclasses

    from ..lab.shape import resolve_shape
    from ..lab.spec import resolve

    shape = resolve_shape(case.shape)
    extra = {side: (resolve(p).layers if resolve(p) is not None else 0)
             for side, p in (("a", case.left), ("b", case.right))}
    return dataclasses.replace(shape, routers_a=shape.routers_a + extra["a"],
                               routers_b=shape.routers_b + extra["b"],
                               name=f"{shape.name}+{extra['a']}/{extra['b']} routers").validate()


@contextmanager
def open_case(case: Case, *, server: bool = True, shape: Any = None) -> Iterator[Any]:
    """The lab of `case`, with our rendezvous and STUN server running when `server`; `shape` (a
    lab Shape) replaces the case's named one (hop_matched_shape)."""
    from ..lab.lab import Lab
    from ..lab.spec import resolve

    rates = {side: case.background for side, preset in (("a", case.left), ("b", case.right))
             if case.background and resolve(preset) is not None}
    with Lab(left=case.left, right=case.right, shape=shape or case.shape, background=rates or None) as lab:
        if server:
            lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}",
                                 "--stun", f"{lab.S1},{lab.S2}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
        yield lab


def _last_json(proc: subprocess.Popen, out: dict[str, Any]) -> None:
    for line in iter(proc.stdout.readline, b""):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == "trial" or "receiver" in d or "sender" in d:
            out["row"] = d


def run_hosts(lab: Any, cmds: dict[str, list[str]], timeout: float) -> tuple[dict, dict, dict[str, str]]:
    """Start the receiving/listening host's command first, then the other's; both rows and errors."""
    procs, rows, threads = {}, {"a": {}, "b": {}}, []
    for host in ("b", "a"):
        procs[host] = lab.popen(host, cmds[host], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t = threading.Thread(target=_last_json, args=(procs[host], rows[host]), daemon=True)
        t.start()
        threads.append(t)
        if host == "b":
            time.sleep(0.3)  # the receiver binds or enrolls first
    errors = reap(procs, threads, time.monotonic() + timeout)
    return rows["a"].get("row", {}), rows["b"].get("row", {}), errors


def punched_trial(lab: Any, name: str, options: dict[str, Any], traffic: dict[str, Any] | None,
                  timeout: float = 20.0, transport: str = "udp") -> dict[str, Any]:
    """One connection (and, with `traffic`, one measurement) between hosts a (connects, sends) and b;
    transport "tcp": a punched TCP stream (connect_tcp/listen_tcp)."""
    py = sys.executable
    common = ["-m", "nattrav.experiment.agent", "--server", f"{lab.S1}:{SERVER_PORT}", "--name", name,
              "--options", json.dumps(options), "--timeout", str(timeout), "--transport", transport]
    if traffic:
        common += ["--traffic", json.dumps(traffic)]
    t_budget = timeout + 15 + float((traffic or {}).get("time", 0)) * 2
    a, b, errors = run_hosts(lab, {"a": [py, *common, "--role", "connect"],
                                   "b": [py, *common, "--role", "listen"]}, t_budget)
    ok = bool(a.get("ok") and b.get("ok"))
    reason = a.get("reason") or b.get("reason") or (f"agent errors: {errors}" if errors else None)
    if not a or not b:
        reason = f"agent(s) {[h for h, r in (('a', a), ('b', b)) if not r]} reported nothing: {errors}"
    secs = [x for x in (a.get("seconds"), b.get("seconds")) if x is not None]
    traffic_res = (a.get("traffic") or {}) if traffic else None
    if traffic_res is not None and not traffic_res.get("receiver") and b.get("traffic"):
        traffic_res["receiver"] = b["traffic"].get("receiver")  # the receiver's own copy of its report
    return {
        "ok": ok, "strategy": a.get("strategy") or b.get("strategy"),
        "seconds": max(secs) if ok and secs else None, "rtt_ms": a.get("rtt_ms"), "odds": a.get("odds"),
        "odds_floor": bool(a.get("odds_floor")),
        "plan": a.get("plan"), "reason": None if ok else reason,
        "prediction": {"a": _prediction(a), "b": _prediction(b)},
        "path": {"a": a.get("path"), "b": b.get("path")}, "traffic": traffic_res,
    }


def _prediction(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("predicted"):
        return None
    return {"hit": row.get("prediction_hit"), "rank": row.get("prediction_rank")}


def direct_trial(lab: Any, traffic: dict[str, Any]) -> dict[str, Any]:
    """The same traffic between the hosts of a lab without NATs, over plain sockets."""
    py = sys.executable
    load = ["-b", str(traffic.get("rate", "10M")), "-l", str(traffic.get("size", 1200)),
            "-T", str(traffic.get("time", 2)), "-i", str(traffic.get("interval", 1)), "--json"]
    load += ["--tcp"] if traffic.get("tcp") else []
    load += ["--sockbuf", str(traffic["sockbuf"])] if "sockbuf" in traffic else []
    b_ip = lab.ip("b")
    a, b, errors = run_hosts(lab, {
        "b": [py, "-m", "nattrav.cli.perf", "--direct-listen", f"{b_ip}:{DIRECT_PORT}", *load],
        "a": [py, "-m", "nattrav.cli.perf", "--direct", f"{b_ip}:{DIRECT_PORT}", *load]},
        float(traffic.get("time", 2)) * 2 + 20)
    res = dict(a) if a else {}
    if not res.get("receiver") and b.get("receiver"):
        res["receiver"] = b["receiver"]
    return {"ok": bool(res.get("receiver")), "traffic": res,
            "reason": None if res.get("receiver") else f"direct measurement failed: {errors}"}
