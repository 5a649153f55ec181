"""Connection trials over pairs of lab NATs: the matrix test and bench/matrix.py share this.

For one ordered pair (left NAT in front of host a, right NAT in front of host b) a lab comes up with
our servers; an agent process in b listens and an agent in a connects, `trials` times, each trial a
fresh punch socket and a fresh rendezvous session. Discovery runs once per agent (the NAT's behaviour
is fixed; its mappings are not, and are sampled again every trial). Each agent prints one JSON line
per trial; the driver joins them into TrialResult rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

SERVER_PORT = 7000
MATRIX_PRESETS = (
    "none", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq", "symmetric-seq-7",
    "symmetric-random", "cgnat",
)


def expectation(left: str, right: str) -> str:
    """Ground truth from the lab's descriptions, not from the planner: "feasible", "probabilistic"
    (random allocation facing sequential allocation: a guess by nature) or "infeasible" (random
    allocation on both sides with address-and-port-dependent behaviour)."""
    from .spec import resolve

    def kind(name: str) -> str:
        spec = resolve(name)
        if spec is None:
            return "open"
        while spec.outer is not None and spec.allocation != "random":
            spec = spec.outer
        if spec.mapping == "EIM":
            return "open" if spec.filtering == "EIF" else "cone"
        return "random" if spec.allocation == "random" else "sequential"

    kinds = {kind(left), kind(right)}
    if kinds == {"random"}:
        return "infeasible"
    if kinds == {"random", "sequential"}:
        return "probabilistic"
    return "feasible"


def tcp_expectation(left: str, right: str) -> str:
    """TCP ground truth from the lab's descriptions: a SYN can be aimed only at a mapping that can be
    predicted (EIM or sequential), unless the other side takes unsolicited SYNs (no NAT, or EIM+EIF).
    A side whose every layer filters by address only (ADF) and allocates predictably opens its filter
    to the peer's address, so then anything goes. A random-allocation NAT facing a cone (EIM with a
    filter) is met by the TCP birthday attack; facing a sequential NAT or another random one it is
    "infeasible": each probe there can meet only flows aimed at its own new port, which takes far more
    TCP connections than a flow table holds."""
    from .spec import resolve

    def layers(name: str) -> list:
        spec = resolve(name)
        return [] if spec is None else [spec] + ([spec.outer] if spec.outer is not None else [])

    def kind(name: str) -> str:
        nat = layers(name)
        if not nat:
            return "open"
        if any(x.allocation == "random" for x in nat):
            return "random"
        if all(x.mapping == "EIM" for x in nat):
            return "open" if all(x.filtering == "EIF" for x in nat) else "cone"
        return "sequential"

    def address_open(name: str) -> bool:
        return kind(name) in ("cone", "sequential") and all(x.filtering in ("ADF", "EIF") for x in layers(name))

    kinds = {kind(left), kind(right)}
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
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the agent: runs inside a lab host ---------------------------------------------------------


async def _agent(args: argparse.Namespace) -> None:
    from ..api import ConnectError, connect, discover_behavior, listen, parse_endpoint
    if args.tcp:
        from ..api import connect_tcp as connect  # noqa: F811
        from ..api import listen_tcp as listen  # noqa: F811
    from ..io import rendezvous_client as rv

    server = parse_endpoint(args.server, SERVER_PORT)
    stun = (server[0], 3478)
    behavior = await discover_behavior(stun)

    def emit_line(d: dict[str, Any]) -> None:
        print(json.dumps(d, default=str), flush=True)

    emit_line({"event": "behavior", **{k: behavior.to_dict()[k] for k in
                                       ("mapping", "filtering", "allocation", "delta", "classic")}})
    for i in range(args.trials):
        marks: dict[str, Any] = {}

        def on_event(phase: str, d: dict[str, Any]) -> None:
            if phase == "punch":
                marks["start"] = trio.current_time() + d["start_in"]
            elif phase == "plan":
                marks["plan"] = d

        row: dict[str, Any] = {"event": "trial", "trial": i, "ok": False}
        name = f"{args.name}-{i}"
        try:
            with trio.fail_after(args.trial_timeout):
                if args.role == "listen":
                    async with listen(server, name=name, behavior=behavior, ttl=args.ttl,
                                      on_event=on_event) as lst:
                        emit_line({"event": "ready", "trial": i})
                        async with lst.accept() as path:
                            path = _LineStream(path) if args.tcp else path
                            row.update(_connected(path, marks))
                            await path.send(b"ping %d" % i)
                            row["echo"] = (await path.receive()).decode(errors="replace")
                else:
                    while True:
                        try:
                            async with connect(server, name, behavior=behavior, ttl=args.ttl,
                                               on_event=on_event, timeout=args.trial_timeout) as path:
                                path = _LineStream(path) if args.tcp else path
                                row.update(_connected(path, marks))
                                got = await path.receive()
                                await path.send(got)
                                row["echo"] = got.decode(errors="replace")
                            break
                        except rv.UnknownPeer:
                            await trio.sleep(0.05)  # the listener has not enrolled this trial yet
            row["ok"] = row.get("echo") == f"ping {i}"
        except ConnectError as exc:
            row["reason"] = str(exc)
        except trio.TooSlowError:
            row["reason"] = f"trial timed out after {args.trial_timeout:g} s"
        except (rv.RendezvousError, OSError) as exc:
            row["reason"] = f"{type(exc).__name__}: {exc}"
        plan = marks.get("plan") or {}
        row["strategy"] = row.get("strategy") or plan.get("strategy")
        row["odds"] = plan.get("odds")
        row.setdefault("plan_reason", plan.get("reason"))
        emit_line(row)
        await trio.sleep(0.2)  # lets the peer read its close before the next trial


class _LineStream:
    """The TCP matrix's view of a punched stream: the send()/receive() of a UDP path, one message a
    line (a stream has no datagram boundaries)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self._buf = stream, b""
        self.strategy, self.rtt, self.peer_addr = stream.strategy, stream.rtt, stream.peer_addr

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data + b"\n")

    async def receive(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise OSError("the peer closed the TCP stream")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line


def _connected(path: Any, marks: dict[str, Any]) -> dict[str, Any]:
    start = marks.get("start")
    targets = (marks.get("plan") or {}).get("peer_targets") or []
    return {
        "strategy": path.strategy.value,
        "rtt_ms": round(path.rtt * 1e3, 3),
        "seconds": None if start is None else round(max(0.0, trio.current_time() - start), 4),
        # ground truth: the port the peer's NAT really used for this flow, seen on the wire
        "peer_port": path.peer_addr[1],
        "predicted": bool(targets),
        "prediction_hit": path.peer_addr[1] in targets if targets else None,
        "prediction_rank": targets.index(path.peer_addr[1]) if path.peer_addr[1] in targets else None,
    }


# --- the driver: runs in the root namespace, owns the lab --------------------------------------


def _collect(proc: subprocess.Popen, rows: list[dict[str, Any]]) -> None:
    for line in iter(proc.stdout.readline, b""):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass


def run_pair(left: str, right: str, trials: int = 3, *, trial_timeout: float = 20.0,
             background: float | None = None, tcp: bool = False) -> list[TrialResult]:
    """Bring up a lab for (left, right), run `trials` connection trials, tear it down."""
    from .lab import Lab
    from .spec import resolve

    # background traffic needs a NAT to consume ports on: a public host ("none") gets none
    rates = {side: background for side, preset in (("a", left), ("b", right))
             if background and resolve(preset) is not None}
    with Lab(left=left, right=right, background=rates or None) as lab:
        py = sys.executable
        lab.popen("server", [py, "-m", "nattrav.server_cli", "--listen", f"{lab.S1}:{SERVER_PORT}",
                             "--stun", f"{lab.S1},{lab.S2}"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 10)
        name = f"m{time.monotonic_ns() % 10**9}"
        common = ["-m", "nattrav.lab.matrix", "agent", "--server", f"{lab.S1}:{SERVER_PORT}", "--name", name,
                  "--trials", str(trials), "--trial-timeout", str(trial_timeout)] + (["--tcp"] if tcp else [])
        procs, rows = {}, {"a": [], "b": []}
        threads = []
        for node, role in (("b", "listen"), ("a", "connect")):
            ttl = lab.low_ttl_from(node)
            procs[node] = lab.popen(node, [py, *common, "--role", role, "--ttl", str(ttl)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t = threading.Thread(target=_collect, args=(procs[node], rows[node]), daemon=True)
            t.start()
            threads.append(t)
        limit = 15 + trials * (trial_timeout + 1)
        deadline = time.monotonic() + limit
        errors = {}
        for node, proc in procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode:
                errors[node] = proc.stderr.read().decode(errors="replace")[-2000:]
        for t in threads:
            t.join(timeout=2)
    return _join(left, right, trials, rows, errors)


def _join(left: str, right: str, trials: int, rows: dict[str, list], errors: dict[str, str]) -> list[TrialResult]:
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
            reason=None if ok else reason,
            extra={"prediction_a": _prediction(a), "prediction_b": _prediction(b),
                   "behavior_a": next((r for r in rows["a"] if r.get("event") == "behavior"), None),
                   "behavior_b": next((r for r in rows["b"] if r.get("event") == "behavior"), None)},
        ))
    return out


def _prediction(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("predicted"):
        return None
    return {"hit": row.get("prediction_hit"), "rank": row.get("prediction_rank"), "port": row.get("peer_port")}


def _wait_tcp(lab: Any, ip: str, port: int, deadline: float) -> None:
    probe = f"import socket\nsocket.create_connection(('{ip}', {port}), timeout=0.5).close()\n"
    while time.monotonic() < deadline:
        if lab.run("a", [sys.executable, "-c", probe], timeout=5).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the rendezvous server {ip}:{port} did not come up")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nattrav.lab.matrix")
    sub = p.add_subparsers(dest="cmd", required=True)
    ag = sub.add_parser("agent", help="(inside a lab host) run trials as one side")
    ag.add_argument("--role", choices=("listen", "connect"), required=True)
    ag.add_argument("--server", required=True)
    ag.add_argument("--name", required=True)
    ag.add_argument("--trials", type=int, default=3)
    ag.add_argument("--trial-timeout", type=float, default=20.0)
    ag.add_argument("--ttl", type=int, default=2)
    ag.add_argument("--tcp", action="store_true", help="TCP traversal (connect_tcp/listen_tcp)")
    pair = sub.add_parser("pair", help="run trials for one ordered pair of presets")
    pair.add_argument("left")
    pair.add_argument("right")
    pair.add_argument("--trials", type=int, default=3)
    pair.add_argument("--tcp", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "agent":
        trio.run(_agent, args)
        return 0
    for r in run_pair(args.left, args.right, args.trials, tcp=args.tcp):
        print(json.dumps(r.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
