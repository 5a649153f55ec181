"""Cold time-to-connect in the NAT lab: a fresh process per trial on the connecting side, timed from
its start to the authenticated path, nattrav beside a plain ICE agent (bench/ice_agent.py).

One lab per case (left NAT in front of host a, right NAT in front of host b, or both peers behind the
left NAT), our servers, background traffic on each NAT. Two long-lived listeners wait in the
listening host: the matrix agent (nattrav.lab.agent, the product's listen()) and the ICE agent. Per
trial, in turn:

- nattrav cold: the connecting host's behaviour cache is emptied, then `nattrav-fast --json -s SERVER
  -d PEER` starts; its time is from the Popen call to its "connected" line (the authenticated
  handshake is done) -- discovery, rendezvous, start margin, punch, all included;
- nattrav warm: the same command again, the cache now holding what the cold run measured;
- ICE: `bench/ice_agent.py --role connect` starts; its time is from the Popen call to its
  "connected" line (ICE's checks, authenticated with the peer's password, chose a pair).

A trial succeeds when, beyond that line, one message went to the listener and came back. The
processes get only what a user would type: the server's address and the peer's name.
`product_src` runs the product from another source tree (PYTHONPATH): today's numbers from an older
commit, measured by the same driver in the same kind of lab (that tree has no cache: no warm runs).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nattrav.lab import registry
from nattrav.lab.agent import SERVER_PORT
from nattrav.lab.matrix import SAME_NAT, wait_tcp

ICE_AGENT = str(Path(__file__).resolve().parent / "ice_agent.py")
KINDS = ("cold", "warm", "ice")


@dataclass
class ColdTrial:
    kind: str  # cold | warm | ice
    trial: int
    ok: bool
    seconds: float | None = None  # process start -> "connected" line
    strategy: str | None = None
    odds: float | None = None
    discovered: bool | None = None  # nattrav: did this run do the RFC 5780 tests (False: the cache)
    rtt_ms: float | None = None  # nattrav: the path's round trip (the handshake's)
    events: dict[str, float] = field(default_factory=dict)  # nattrav: first time of each phase, s after start
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Lines:
    """JSON lines of one pipe, read by a thread into a queue, each with its arrival time."""

    def __init__(self, pipe: Any) -> None:
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            try:
                self.q.put((time.monotonic(), json.loads(raw)))
            except ValueError:
                self.q.put((time.monotonic(), {"event": "text", "text": raw.decode(errors="replace")[:300]}))
        self.q.put((time.monotonic(), None))

    def until(self, pred, deadline: float) -> tuple[float, dict] | None:
        """The first line for which pred(line) holds, before `deadline` (None: EOF or timeout)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                at, line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if pred(line):
                return at, line


def _env(product_src: str | None) -> dict[str, str] | None:
    if product_src is None:
        return None
    return {**os.environ, "PYTHONPATH": product_src}


def run_cold_case(left: str, right: str, trials: int, *, shape: Any = None, trial_timeout: float = 15.0,
                  ice_timeout: float = 8.0, background: float | None = 5.0, kinds: tuple[str, ...] = KINDS,
                  product_src: str | None = None, secure: bool = False) -> list[ColdTrial]:
    """Bring up a lab for (left, right) over `shape`, run `trials` trials of each kind, tear it down.
    `ice_timeout`: an ICE trial's own limit (when ICE connects it does so within two seconds even
    over wan50; its failures would otherwise cost the whole trial timeout). `secure`: nattrav's
    default path, QUIC authenticated by both identity keys, timed to its "secure" line; the listener
    is then a `nattrav-fast` of its own per trial (the matrix agent listens on the raw path)."""
    from nattrav.lab.lab import Lab
    from nattrav.lab.spec import resolve

    same = right == SAME_NAT
    hosts = {"connect": "a", "listen": "a2" if same else "b"}
    rates = {side: background for side, preset in (("a", left), ("b", "none" if same else right))
             if background and resolve(preset) is not None}
    env = _env(product_src)
    out: list[ColdTrial] = []
    with Lab(left=left, right="none" if same else right, background=rates or None, shape=shape,
             hosts_per_nat=2 if same else 1) as lab:
        py = sys.executable
        server = f"{lab.S1}:{SERVER_PORT}"
        lab.popen("server", [py, "-m", "nattrav.cli.server", "--listen", server, "--stun", f"{lab.S1},{lab.S2}"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
        tag = f"c{time.monotonic_ns() % 10**9}"
        nat_kinds = [k for k in kinds if k != "ice"]
        wait = len(kinds) * (trial_timeout + 15)  # a listener idles while the other kinds' trials run
        # (an older tree's agent has no --wait: run it with one kind only)
        waiting = ["--wait", str(wait)] if product_src is None else []
        listeners: dict[str, _Lines] = {}
        if nat_kinds and not secure:
            p = lab.popen(hosts["listen"], [py, "-m", "nattrav.lab.agent", "--role", "listen", "--server", server,
                                            "--name", tag, "--trials", str(trials * len(nat_kinds)),
                                            "--trial-timeout", str(trial_timeout)] + waiting,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            listeners["nattrav"] = _Lines(p.stdout)
        if "ice" in kinds:
            p = lab.popen(hosts["listen"], [py, ICE_AGENT, "--role", "listen", "--server", server, "--name",
                                            f"{tag}i", "--trials", str(trials), "--trial-timeout",
                                            str(ice_timeout), "--wait", str(wait)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            listeners["ice"] = _Lines(p.stdout)
        cache_file = Path(registry.cache_home(lab.ns(hosts["connect"]))) / "nattrav" / "behavior.json"
        for i in range(trials):
            for n, kind in enumerate(nat_kinds):
                if kind == "cold":
                    cache_file.unlink(missing_ok=True)
                if secure:
                    out.append(_secure_trial(lab, hosts, server, f"{tag}-{i * len(nat_kinds) + n}", i, kind,
                                             trial_timeout, env))
                    continue
                out.append(_nattrav_trial(lab, hosts["connect"], server, f"{tag}-{i * len(nat_kinds) + n}",
                                          i * len(nat_kinds) + n, i, kind, listeners["nattrav"], trial_timeout, env))
            if "ice" in kinds:
                out.append(_ice_trial(lab, hosts["connect"], server, f"{tag}i", i, listeners["ice"], ice_timeout,
                                      env))
    return out


def _wait_ready(listener: _Lines, trial: int, timeout: float) -> bool:
    got = listener.until(lambda d: d.get("event") == "ready" and d.get("trial") == trial,
                         time.monotonic() + timeout)
    return got is not None


def _listener_row(listener: _Lines, trial: int, timeout: float) -> dict:
    got = listener.until(lambda d: d.get("event") == "trial" and d.get("trial") == trial,
                         time.monotonic() + timeout)
    return got[1] if got else {"ok": False, "reason": "the listener reported nothing"}


def _finish(p: subprocess.Popen, timeout: float) -> None:
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _nattrav_trial(lab: Any, host: str, server: str, peer: str, listener_trial: int, trial: int, kind: str,
                   listener: _Lines, timeout: float, env: dict | None) -> ColdTrial:
    row = ColdTrial(kind, trial, False)
    if not _wait_ready(listener, listener_trial, timeout + 5):
        row.reason = "the nattrav listener was not ready"
        return row
    t0 = time.monotonic()
    # the lab's server is plain, the matrix agent listens on the raw path (it measures traversal); the
    # initiator's identity key lives beside the trial, not in $HOME
    key = os.path.join(tempfile.gettempdir(), f"nattrav-cold-{host}.pem")
    p = lab.popen(host, [sys.executable, "-m", "nattrav.cli.fast", "--json", "--linger", "0.3", "--timeout",
                         str(timeout), "--plain", "--raw", "--identity", key, "-s", server, "-d", peer],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    events = _Lines(p.stderr)

    def echo() -> None:  # what the listener sends goes back to it: the path carries data both ways
        while data := p.stdout.read1(4096):
            try:
                p.stdin.write(data)
                p.stdin.flush()
            except (OSError, ValueError):  # stdin closed: the trial is over
                return

    threading.Thread(target=echo, daemon=True).start()
    deadline = t0 + timeout + 5
    seen: dict[str, float] = {}
    connected = error = None
    while True:
        got = events.until(lambda d: True, deadline)
        if got is None:
            break
        at, ev = got
        name = ev.get("event")
        seen.setdefault(name, round(at - t0, 4))
        if name == "plan":
            row.strategy, row.odds = ev.get("strategy"), ev.get("odds")
        elif name == "connected":
            connected = at
            row.strategy = ev.get("strategy") or row.strategy
            row.rtt_ms = ev.get("rtt_ms")
            break
        elif name == "error":
            error = ev.get("message")
            break
    answer = _listener_row(listener, listener_trial, timeout + 5) if connected is not None else {}
    try:
        p.stdin.close()  # nattrav-fast lingers --linger s, then exits
    except OSError:
        pass
    _finish(p, 10)
    if connected is None:
        answer = _listener_row(listener, listener_trial, 5)
    row.events = seen
    row.discovered = "discovery" in seen
    row.ok = connected is not None and bool(answer.get("ok"))
    row.seconds = round(connected - t0, 4) if connected is not None else None
    if not row.ok:
        row.reason = error or answer.get("reason") or ("no connected line" if connected is None
                                                       else "the message did not come back")
    return row


def _read_events(lines: _Lines, row: ColdTrial, t0: float, deadline: float, done: str) -> float | None:
    """Note the first time of each progress event in row.events until `done` (its arrival time
    returned) or an error (row.reason)."""
    while True:
        got = lines.until(lambda d: True, deadline)
        if got is None:
            return None
        at, ev = got
        name = ev.get("event")
        row.events.setdefault(name, round(at - t0, 4))
        if name == "plan":
            row.strategy, row.odds = ev.get("strategy"), ev.get("odds")
        elif name == "connected":
            row.strategy = ev.get("strategy") or row.strategy
            row.rtt_ms = ev.get("rtt_ms")
        elif name == "error":
            row.reason = ev.get("message")
            return None
        if name == done:
            return at


def _secure_trial(lab: Any, hosts: dict[str, str], server: str, name: str, trial: int, kind: str,
                  timeout: float, env: dict | None) -> ColdTrial:
    """One trial over the default (QUIC) path: a listening nattrav-fast enrolls under `name`, then the
    connecting one starts (the clock with it) and is timed to its "secure" line: the QUIC handshake
    is done and the peer's key verified. It sends a line the listener must print."""
    row = ColdTrial(kind, trial, False)
    keys = {h: os.path.join(tempfile.gettempdir(), f"nattrav-cold-{h}.pem") for h in hosts.values()}
    base = [sys.executable, "-m", "nattrav.cli.fast", "--json", "--plain", "--linger", "0.3", "--timeout",
            str(timeout), "-s", server]
    lst = lab.popen(hosts["listen"], base + ["--identity", keys[hosts["listen"]], "-n", name],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    got: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: got.setdefault("out", lst.stdout.read()), daemon=True)
    reader.start()
    lst.stdin.close()
    t_l = time.monotonic()
    lst_lines = _Lines(lst.stderr)
    if _read_events(lst_lines, ColdTrial(kind, trial, False), t_l, t_l + timeout, "enrolled") is None:
        row.reason = "the secure listener did not enroll"
        _finish(lst, 2)
        return row
    t0 = time.monotonic()
    p = lab.popen(hosts["connect"], base + ["--identity", keys[hosts["connect"]], "-d", name],
                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    secured = _read_events(_Lines(p.stderr), row, t0, t0 + timeout + 5, "secure")
    listener = ColdTrial(kind, trial, False)
    _read_events(lst_lines, listener, t0, time.monotonic() + 2, "secure")
    row.events.update({f"listener:{k}": v for k, v in listener.events.items()})  # the other side's phases
    if row.rtt_ms is None:  # the QUIC client takes the first answered HELLO: the listener measured the RTT
        row.rtt_ms = listener.rtt_ms
    message = b"ping %d\n" % trial
    try:
        p.stdin.write(message)
        p.stdin.close()
    except OSError:
        pass
    _finish(p, 10)
    _finish(lst, 5)
    reader.join(5)  # the listener has exited; its output is read to the end once this thread is done
    row.discovered = "discovery" in row.events
    row.seconds = round(secured - t0, 4) if secured is not None else None
    row.ok = secured is not None and got.get("out") == message
    if not row.ok and row.reason is None:
        row.reason = "no secure line" if secured is None else f"the listener printed {got.get('out')!r}"
    return row


def _ice_trial(lab: Any, host: str, server: str, name: str, trial: int, listener: _Lines, timeout: float,
               env: dict | None) -> ColdTrial:
    row = ColdTrial("ice", trial, False, strategy="ice")
    if not _wait_ready(listener, trial, timeout + 5):
        row.reason = "the ICE listener was not ready"
        return row
    t0 = time.monotonic()
    p = lab.popen(host, [sys.executable, ICE_AGENT, "--role", "connect", "--server", server, "--name", name,
                         "--first", str(trial), "--trials", "1", "--trial-timeout", str(timeout)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines = _Lines(p.stdout)
    connected, mine = None, {}
    while True:
        got = lines.until(lambda d: d.get("event") in ("connected", "trial"), t0 + timeout + 5)
        if got is None:
            break
        at, ev = got
        if ev["event"] == "connected":
            connected = at
        else:
            mine = ev
            break
    _finish(p, 10)
    answer = _listener_row(listener, trial, timeout + 5)
    row.ok = connected is not None and bool(mine.get("ok")) and bool(answer.get("ok"))
    row.seconds = round(connected - t0, 4) if connected is not None else None
    if mine.get("pair"):
        row.strategy = f"ice:{mine['pair']}"
    if not row.ok:
        row.reason = mine.get("reason") or answer.get("reason") or "no connected line"
    return row




def summarise_cold(left: str, right: str, shape: str, rows: list[ColdTrial]) -> dict[str, Any]:
    """Per kind: trials, connected, Wilson 95 % interval, median and p95 seconds, strategies."""
    import statistics

    from nattrav.lab.matrix import percentile, wilson

    out: dict[str, Any] = {"left": left, "right": right, "shape": shape, "kinds": {}}
    for kind in KINDS:
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        ok = [r for r in mine if r.ok]
        secs = [r.seconds for r in ok if r.seconds is not None]
        lo, hi = wilson(len(ok), len(mine))
        out["kinds"][kind] = {
            "trials": len(mine), "connected": len(ok), "wilson": [round(lo, 4), round(hi, 4)],
            "median_s": statistics.median(secs) if secs else None, "p95_s": percentile(secs, 0.95),
            "strategies": sorted({r.strategy for r in ok if r.strategy}),
            "odds": statistics.median(o) if (o := [r.odds for r in mine if r.odds is not None]) else None,
            "discovered": sum(1 for r in mine if r.discovered), "seconds": secs,
            "rtt_ms": statistics.median(rt) if (rt := [r.rtt_ms for r in ok if r.rtt_ms is not None]) else None,
            "by_strategy": {st: [r.seconds for r in ok if r.strategy == st and r.seconds is not None]
                            for st in sorted({r.strategy for r in ok if r.strategy})},
            "failures": sorted({(r.reason or "")[:160] for r in mine if not r.ok})[:3],
            "events": [r.events for r in ok],  # per connected trial: each phase's first time, s after start
        }
    return out


# The phases of one connect in order (nattrav-fast --json's events; "listener:" ones are the
# listening side's, on the same clock): the timeline table shows each one's median time.
PHASES = ("identity", "discovery", "behavior-cached", "hops", "discovery-done", "mapping", "rendezvous",
          "listener:offer", "listener:mapping", "plan", "listener:plan", "attempt", "listener:attempt", "hello",
          "listener:established", "established", "connected", "listener:secure", "secure")


def timeline(table: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """(shape, kind) -> phase -> median first time (s after process start), pooled over the cases."""
    import statistics

    pooled: dict[tuple[str, str], dict[str, list[float]]] = {}
    for t in table:
        for kind, v in t.get("kinds", {}).items():
            for events in v.get("events", []):
                if not events:  # ICE's trials report no phases
                    continue
                into = pooled.setdefault((t["shape"], kind), {})
                for phase, at in events.items():
                    into.setdefault(phase, []).append(at)
    return {key: {p: round(statistics.median(phases[p]), 3) for p in PHASES if p in phases}
            for key, phases in pooled.items()}


__all__ = ["KINDS", "PHASES", "ColdTrial", "run_cold_case", "summarise_cold", "timeline"]
