"""Connection trials over pairs of lab NATs: the matrix tests and bench/matrix.py share this.

For one case — left NAT in front of host a, right NAT in front of host b (or both peers behind the
left NAT: `same_nat`), over a Shape (delay, jitter, loss, routers) — a lab comes up with our servers;
an agent (agent.py) in the listening host and one in the connecting host run `trials` trials, each a
fresh punch socket and a fresh rendezvous session. The agents get only what a user would type: the
server's address. The driver joins their JSON lines into TrialResult rows.

Expectations come from the lab's descriptions (effective()), never from the planner; summarise() sets
the planner's stated odds against the measured rate with a Wilson interval.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .agent import SERVER_PORT

TURN_PORT = 3490  # coturn beside the STUN server (3478/3479) and the two-host link (3480), as in docs/deploy.md

MATRIX_PRESETS = (
    "none", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq", "symmetric-seq-7",
    "symmetric-random", "cgnat",
)
SAME_NAT = "same-NAT"  # the right side of a case whose two peers share the left NAT
# How our servers are deployed for a case (issue 16): one host with two addresses (RFC 5780), one
# host with ONE address (the common cloud VM: two ports), or two hosts with one address each.
SERVER_LAYOUTS = ("two-address", "one-address", "two-host")


def _kind(name: str, proto: str = "udp") -> str:
    """open | cone | sequential | random, for what a peer behind `name` shows the outside world."""
    from .spec import effective, resolve

    e = effective(resolve(name), proto)
    if e is None:
        return "open"
    if e["public_ips"] > 1 and e["pooling"] == "arbitrary" and e["mapping"] != "EIM":
        return "random"  # a new address per flow: no port window can name it
    if e["mapping"] == "EIM":
        return "open" if e["filtering"] == "EIF" else "cone"
    return "random" if e["allocation"] == "random" else "sequential"


def expectation(left: str, right: str) -> str:
    """UDP ground truth from the lab's descriptions: "feasible", "probabilistic" (random allocation
    facing sequential allocation: a guess by nature) or "infeasible" (random allocation on both sides
    with address-and-port-dependent behaviour). Peers behind one NAT can always reach each other
    (the LAN, or the NAT's hairpin): feasible."""
    if right == SAME_NAT:
        return "feasible"
    kinds = {_kind(left), _kind(right)}
    if kinds == {"random"}:
        return "infeasible"
    if kinds == {"random", "sequential"}:
        return "probabilistic"
    return "feasible"


def tcp_expectation(left: str, right: str) -> str:
    """TCP ground truth from the lab's descriptions (TCP's own behaviour where a NAT has one): a SYN
    can be aimed only at a mapping that can be predicted (EIM or sequential), unless the other side
    takes unsolicited SYNs (no NAT, or EIM+EIF). A side that filters by address only (ADF) and
    allocates predictably opens its filter to the peer's address, so then anything goes. A random
    NAT facing a cone is met by the TCP birthday attack; facing a sequential NAT or another random one
    it is "infeasible": each probe there can meet only flows aimed at its own new port, which takes
    far more TCP connections than a flow table holds."""
    from .spec import effective, resolve

    if right == SAME_NAT:
        return "feasible"

    def address_open(name: str) -> bool:
        e = effective(resolve(name), "tcp")
        return _kind(name, "tcp") in ("cone", "sequential") and e["filtering"] in ("ADF", "EIF")

    kinds = {_kind(left, "tcp"), _kind(right, "tcp")}
    if ("open" in kinds or "random" not in kinds or kinds == {"random", "cone"}
            or address_open(left) or address_open(right)):
        return "feasible"
    return "infeasible"


@dataclass
class TrialResult:
    left: str
    right: str
    trial: int
    ok: bool
    strategy: str | None = None
    seconds: float | None = None  # from the agreed start time to the authenticated path
    rtt_ms: float | None = None
    odds: float | None = None
    odds_floor: bool = False  # the odds leave the LAN attempts out: a floor, not an estimate
    reason: str | None = None
    shape: str = "flat"
    extra: dict[str, Any] = field(default_factory=dict)
    server: str = "two-address"  # the servers' layout (SERVER_LAYOUTS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the driver: runs in the root namespace, owns the lab --------------------------------------


def _collect(proc: subprocess.Popen, rows: list[dict[str, Any]]) -> None:
    for line in iter(proc.stdout.readline, b""):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass


def start_relay(lab: Any, files: list[str]) -> tuple[Any, list[str]]:
    """coturn beside our servers (S1, TURN_PORT), run with a fresh TURN REST secret in a file (as on
    a real host: docs/deploy.md); returns the running Coturn (stop it with __exit__) and the flags
    that give nattrav-server the relay."""
    import functools
    import os
    import tempfile

    from .coturn import Coturn, CoturnConfig

    fd, secret_file = tempfile.mkstemp(prefix="nt-matrix-turn-")
    secret = os.urandom(16).hex()
    os.write(fd, secret.encode())
    os.close(fd)
    files.append(secret_file)
    turn = Coturn(CoturnConfig(listen_ip=lab.S1, port=TURN_PORT, secret=secret),
                  runner=functools.partial(lab.popen, "server"))
    turn.__enter__()
    return turn, ["--turn", f"{lab.S1}:{TURN_PORT}", "--turn-secret-file", secret_file]


# seconds a lab's servers may take to answer: a Python start is ~1 s of CPU, and a dozen labs coming
# up beside running ones (several matrix runs on two cores) took more than 20 s, and six labs of 8
# ran no trial (session 13)
SERVER_START = 60.0


def start_servers(lab: Any, layout: str = "two-address", relay: list[str] | None = None,
                  procs: list[subprocess.Popen] | None = None) -> list[str]:
    """Start nattrav-server in the lab in `layout` (SERVER_LAYOUTS), rendezvous on S1:SERVER_PORT in
    every layout, and wait for it; returns temporary files to remove once the lab is down. `relay`:
    start_relay()'s flags for the rendezvous server, so that its peers may end at the relay. `procs`
    collects the server processes, for a caller that stops them before the lab goes down."""
    import os
    import tempfile

    py = sys.executable
    server = [py, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}", *(relay or [])]
    files: list[str] = []
    if layout == "two-address":
        _keep(procs, lab.popen("server", [*server, "--stun", f"{lab.S1},{lab.S2}"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    elif layout == "one-address":
        _keep(procs, lab.popen("server", [*server, "--stun", lab.S1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    elif layout == "two-host":
        # the control link's key travels in a file, as on two real hosts (the namespaces share /tmp)
        fd, key = tempfile.mkstemp(prefix="nt-matrix-stun-")
        os.write(fd, os.urandom(16).hex().encode())
        os.close(fd)
        files.append(key)
        _keep(procs, lab.popen("server", [*server, "--stun", lab.S1, "--stun-peer", lab.S3, "--stun-secret-file", key],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _keep(procs, lab.popen("server2", [py, "-m", "nattrav.cli.server", "--listen", f"{lab.S3}:{SERVER_PORT}",
                              "--stun", lab.S3, "--stun-peer", lab.S1, "--stun-secret-file", key],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    else:
        raise ValueError(f"server layout must be one of {SERVER_LAYOUTS}, got {layout!r}")
    wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + SERVER_START)
    return files


def _keep(procs: list[subprocess.Popen] | None, proc: subprocess.Popen) -> subprocess.Popen:
    if procs is not None:
        procs.append(proc)
    return proc


# labs coming up at once (bench/matrix.py --jobs): a dozen started in the same second once starved
# each other's servers past start_servers' wait, and four of twelve ran no trial
BRING_UP = threading.BoundedSemaphore(4)


def run_pair(left: str, right: str, trials: int = 3, *, trial_timeout: float = 20.0,
             background: float | None = None, tcp: bool = False, shape: Any = None,
             server_layout: str = "two-address", prepare: Any = None, relay: bool = False,
             server_flags: list[str] | None = None, gap: float = 0.0,
             accept_delay: float = 0.0, agent_flags: list[str] | None = None) -> list[TrialResult]:
    """Bring up a lab for (left, right) over `shape`, run `trials` connection trials, tear it down.
    right == SAME_NAT puts both peers behind the left NAT (hosts a and a2). `server_layout`: how our
    servers are deployed (SERVER_LAYOUTS); the agents are told only the rendezvous address either way.
    `prepare(lab)`: called once the lab is up, before the server starts (a test that changes the
    lab's world, never the product's arguments). `relay`: a coturn beside the servers, and the
    rendezvous server hands out credentials for it (the ladder may end at the relay). `server_flags`:
    more nattrav-server flags (what an operator would type, e.g. a baseline's --no-observe). `gap`:
    seconds both agents pause between trials (lab/agent.py --gap). `accept_delay`: seconds the
    listener waits after enrolling before it calls accept() (a late listener: --accept-delay).
    `agent_flags`: options of a user's both agents pass on (lab/agent.py: `--flow-wait 0`)."""
    import os

    from .lab import Lab
    from .spec import resolve

    if server_layout not in SERVER_LAYOUTS:
        raise ValueError(f"server layout must be one of {SERVER_LAYOUTS}, got {server_layout!r}")
    same = right == SAME_NAT
    peers = {"connect": "a", "listen": "a2" if same else "b"}
    # background traffic needs a NAT to consume ports on: a public host ("none") gets none
    rates = {side: background for side, preset in (("a", left), ("b", "none" if same else right))
             if background and resolve(preset) is not None}
    files: list[str] = []
    with contextlib.ExitStack() as stack:
        with BRING_UP:
            lab = stack.enter_context(Lab(left=left, right="none" if same else right, background=rates or None,
                                          shape=shape, hosts_per_nat=2 if same else 1,
                                          second_server=server_layout == "two-host"))
            shape_name = lab.shape.name
            if prepare is not None:
                prepare(lab)
            relay_files, flags = [], None
            if relay:
                turn, flags = start_relay(lab, relay_files)
                stack.callback(turn.__exit__, None, None, None)  # before the lab goes down
            files = start_servers(lab, server_layout, (flags or []) + (server_flags or [])) + relay_files
        py = sys.executable
        name = f"m{time.monotonic_ns() % 10**9}"
        # only what a user would type: the server (and, for the matrix's bookkeeping, a name)
        common = ["-m", "nattrav.lab.agent", "--server", f"{lab.S1}:{SERVER_PORT}", "--name", name,
                  "--trials", str(trials), "--trial-timeout", str(trial_timeout), "--gap", str(gap)] + (["--tcp"] if tcp else []) \
            + list(agent_flags or [])
        procs, rows = {}, {"a": [], "b": []}
        threads = []
        for role, key in (("listen", "b"), ("connect", "a")):
            late = ["--accept-delay", str(accept_delay)] if role == "listen" and accept_delay else []
            procs[key] = lab.popen(peers[role], [py, *common, "--role", role, *late],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t = threading.Thread(target=_collect, args=(procs[key], rows[key]), daemon=True)
            t.start()
            threads.append(t)
        errors = reap(procs, threads, time.monotonic() + 30 + trials * (trial_timeout + 1 + gap + accept_delay))
    for f in files:
        os.unlink(f)
    rows_out = _join(left, right, trials, rows, errors, shape_name)
    for r in rows_out:
        r.server = server_layout
    return rows_out


def reap(procs: dict[str, subprocess.Popen], readers: list[threading.Thread], deadline: float,
         tail: int = 2000) -> dict[str, str]:
    """Wait for a trial's agents until `deadline` (then kill them) and for their output readers;
    the end of each failed agent's stderr, by its key."""
    errors = {}
    for key, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode:
            errors[key] = proc.stderr.read().decode(errors="replace")[-tail:]
    for t in readers:
        t.join(timeout=2)
    return errors


def _join(left: str, right: str, trials: int, rows: dict[str, list], errors: dict[str, str],
          shape: str = "flat") -> list[TrialResult]:
    by_trial = {node: {r["trial"]: r for r in rows[node] if r.get("event") == "trial"} for node in rows}
    out = []
    for i in range(trials):
        a, b = by_trial["a"].get(i, {}), by_trial["b"].get(i, {})
        ok = bool(a.get("ok") and b.get("ok"))
        reason = a.get("reason") or b.get("reason")
        if not a or not b:
            missing = [n for n, r in (("a", a), ("b", b)) if not r]
            # the crash behind a missing row matters more than the survivor's "timed out"
            reason = f"agent(s) {missing} reported nothing: {errors}" + (f" ({reason})" if reason else "")
        secs = [x for x in (a.get("seconds"), b.get("seconds")) if x is not None]
        out.append(TrialResult(
            left, right, i, ok, strategy=a.get("strategy") or b.get("strategy"),
            seconds=max(secs) if ok and secs else None, rtt_ms=a.get("rtt_ms"), odds=a.get("odds"),
            odds_floor=bool(a.get("odds_floor")), reason=None if ok else reason, shape=shape,
            extra={"prediction_a": _prediction(a), "prediction_b": _prediction(b),
                   "behavior_a": next((r for r in rows["a"] if r.get("event") == "behavior"), None),
                   "behavior_b": next((r for r in rows["b"] if r.get("event") == "behavior"), None),
                   "plan_reason_a": a.get("plan_reason"), "plan_reason_b": b.get("plan_reason"),
                   "diag_a": a.get("diag"), "diag_b": b.get("diag"), "reason_a": a.get("reason"),
                   "reason_b": b.get("reason"), "flow_wait_a": a.get("flow_wait"), "flow_wait_b": b.get("flow_wait"),
                   "again": max(a.get("again") or 0, b.get("again") or 0),
                   "crossings": (a.get("crossings") or 0) + (b.get("crossings") or 0)},
        ))
    return out


def _prediction(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("predicted"):
        return None
    return {"hit": row.get("prediction_hit"), "rank": row.get("prediction_rank"), "port": row.get("peer_port")}


def wait_tcp(lab: Any, ip: str, port: int, deadline: float) -> None:
    probe = f"import socket\nsocket.create_connection(('{ip}', {port}), timeout=1.0).close()\n"
    while (left := deadline - time.monotonic()) > 0:
        try:
            # a Python started in the lab may take seconds under load (two dozen labs on two
            # cores): a slow probe is no answer yet, not the end of the wait (3 of 20 labs once
            # ran no trial so)
            if lab.run("a", [sys.executable, "-c", probe], timeout=max(left, 1.0)).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.1)
    from .errors import LabError

    raise LabError(f"the rendezvous server {ip}:{port} did not come up in the lab")


_wait_tcp = wait_tcp  # the name older tests import


# --- summaries ------------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) for a success rate measured as successes/n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # at 0 or n successes a bound is exactly 0 or 1; the float sum lands a hair inside it (6/6 gave
    # 0.9999999999999999), and stated odds of exactly 1 then read as outside the interval
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(rows: list[TrialResult], *, tcp: bool = False) -> dict:
    """Per case: success rate, time to connect (median, p95), strategies, and the planner's stated
    odds against the measured rate with its Wilson interval."""
    left, right = rows[0].left, rows[0].right
    ok = [r for r in rows if r.ok]
    secs = [r.seconds for r in ok if r.seconds is not None]
    preds = [p for r in rows for p in (r.extra.get("prediction_a"), r.extra.get("prediction_b")) if p]
    hits = [p for p in preds if p.get("hit")]
    odds = [r.odds for r in rows if r.odds is not None]
    lo, hi = wilson(len(ok), len(rows))
    # the mean: trials whose plans state p_i connect sum(p_i) times on average (a case whose
    # discovery misread the NAT in 6 trials of 8 mixes 0.2 % plans with 99.9 % ones; their median
    # says 0.2 %, the expected rate is 25 %)
    stated = statistics.fmean(odds) if odds else None
    floor = any(r.odds_floor for r in rows)
    return {
        "left": left, "right": right, "shape": rows[0].shape, "server": rows[0].server,
        "expect": (tcp_expectation if tcp else expectation)(left, right),
        "trials": len(rows), "connected": len(ok), "success": len(ok) / len(rows),
        "wilson": [round(lo, 6), round(hi, 6)],
        "odds": stated, "odds_median": statistics.median(odds) if odds else None, "odds_floor": floor,
        # a floor agrees when the measured rate may be at or above it
        "odds_agree": None if stated is None else (stated <= hi if floor else lo <= stated <= hi),
        "strategies": sorted({r.strategy for r in rows if r.strategy}),
        "median_s": statistics.median(secs) if secs else None, "p95_s": percentile(secs, 0.95),
        "median_rtt_ms": statistics.median(rtts) if (rtts := [r.rtt_ms for r in ok if r.rtt_ms]) else None,
        "predictions": len(preds), "prediction_hits": len(hits),
        # trials whose first punch failed at high odds and that went a second round (api/session.py)
        "again": sum(1 for r in rows if r.extra.get("again")),
        "again_connected": sum(1 for r in ok if r.extra.get("again")),
        # what each such trial's fresh samples said broke its first round (proto/moved.py), by side
        "again_found": [[r.trial, r.ok, *_found(r)] for r in rows if r.extra.get("again")][:20],
        # connects that took a counter through its block's top first (api/block_edge.py), and the trials
        "crossings": sum(r.extra.get("crossings") or 0 for r in rows),
        "crossing_trials": [r.trial for r in rows if r.extra.get("crossings")][:200],
        "median_rank": statistics.median([p["rank"] for p in hits]) if hits else None,
        "failures": sorted({(r.reason or "")[:4000] for r in rows if not r.ok})[:3],  # whole: the rungs come last
        # each missed trial's evidence (both sides' events and plan parameters), so that a miss in a
        # run of thousands can be read afterwards: the reasons alone often name no cause
        "missed": [_missed(r) for r in rows if not r.ok][:MISSED_KEPT],
        # each trial's outcome beside the odds its plan stated: a case's mean hides a run whose later
        # trials planned with a spent flow budget (calibration() bins them by the odds stated)
        # (a third element 1: the odds were a floor, the LAN attempts' chance not counted)
        "runs": [[int(r.ok), None if r.odds is None else round(r.odds, 6)] + ([1] if r.odds_floor else [])
                 for r in rows],
        # beside "runs": each trial's burst and the budgets it was planned to, as the initiator's
        # plan stated them. A streak of low odds is caused by a connected trial before it (one wide
        # burst that spent a budget), which "missed" does not keep.
        "bursts": [_burst(r) for r in rows],
    }


BURST_KEYS = ("local_packets", "remote_packets", "flow_budget", "remote_flow_budget")


def _burst(r: TrialResult) -> list[int | None] | None:
    """[local packets, remote packets, own flow budget, peer's flow budget] of trial `r`'s plan, as
    the initiator's diagnosis gave them; None when it planned nothing."""
    params = (r.extra.get("diag_a") or {}).get("params") or {}
    if not any(params.get(k) is not None for k in BURST_KEYS):
        return None
    return [params.get(k) for k in BURST_KEYS]


MISSED_KEPT = 20  # missed trials whose evidence a case keeps (a few KB each)


def _missed(r: TrialResult) -> dict[str, Any]:
    """What a missed trial left: its plan's odds and strategy, each side's reason and diagnosis."""
    return {"trial": r.trial, "odds": r.odds, "strategy": r.strategy, "again": r.extra.get("again"),
            **{k: r.extra.get(k) for k in ("reason_a", "reason_b", "diag_a", "diag_b")}}


def _found(r: TrialResult) -> list[str | None]:
    """The again-found event's words on each side of trial `r` (None where that side said none)."""
    out = []
    for side in ("a", "b"):
        events = (r.extra.get(f"diag_{side}") or {}).get("events") or []
        out.append(next(((e[2] or {}).get("found") for e in events if e[0] == "again-found"), None))
    return out


# the bands of stated odds calibration() reports: the goal's 99.9 % on its own
ODDS_BANDS = ((0.999, 1.0), (0.99, 0.999), (0.9, 0.99), (0.5, 0.9), (0.0, 0.5))


def calibration(cases: list[dict]) -> list[dict]:
    """The trials of `cases` (summarise()'s, with "runs") grouped by the odds their plans stated:
    per band, trials, connected, expected (the sum of the stated odds) and the measured rate's Wilson
    interval. Stated odds agree with the lab when the band's mean odds lie inside that interval.
    Plans whose odds were a floor (the LAN attempts' chance not counted: "at least") are a group of
    their own ("floor": True), which agrees when the measured rate may be at or above its mean."""
    out = []
    every = [(run[0], run[1], len(run) > 2 and bool(run[2])) for case in cases for run in case.get("runs", [])
             if run[1] is not None]
    groups = [([(ok, odds) for ok, odds, floor in every if not floor and lo_band <= odds <= hi_band
                and (odds < hi_band or hi_band == 1.0)], [lo_band, hi_band], False) for lo_band, hi_band in ODDS_BANDS]
    groups.append(([(ok, odds) for ok, odds, floor in every if floor], [0.0, 1.0], True))
    for runs, band, floor in groups:
        if not runs:
            continue
        ok = sum(r[0] for r in runs)
        lo, hi = wilson(ok, len(runs))
        mean = sum(r[1] for r in runs) / len(runs)
        out.append({"band": band, "floor": floor, "trials": len(runs), "connected": ok,
                    "expected": round(sum(r[1] for r in runs), 2), "mean_odds": mean,
                    "wilson": [round(lo, 5), round(hi, 5)], "agree": mean <= hi if floor else lo <= mean <= hi})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m nattrav.lab.matrix",
                                description="run connection trials for one pair of lab NATs")
    p.add_argument("left")
    p.add_argument("right", help=f"a NAT, or {SAME_NAT} for two peers behind the left one")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--shape", default="flat")
    p.add_argument("--tcp", action="store_true")
    p.add_argument("--server", choices=SERVER_LAYOUTS, default="two-address", help="how our servers are deployed")
    args = p.parse_args(argv)
    rows = run_pair(args.left, args.right, args.trials, tcp=args.tcp, shape=args.shape, server_layout=args.server)
    for r in rows:
        print(json.dumps(r.to_dict()))
    print(json.dumps(summarise(rows, tcp=args.tcp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
