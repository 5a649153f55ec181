"""CPU of a warm `nattrav-fast -d` connect in the NAT lab, and its time to identity/connected/secure,
for this tree and (alternating, same lab, same minute) another source tree: CPU, not wall time, is
what a loaded 2-core machine measures fairly.

    .venv/bin/python bench/warm_cpu.py --trials 8 --product-src /tmp/main-src     # main beside us
    .venv/bin/python bench/warm_cpu.py --trials 3 --profile /tmp/prof              # cProfile dumps

One lab (a port-restricted pair over the flat shape, no background traffic), the lab's plain server.
Each trial is what bench/cold.py's secure trial does: a listening `nattrav-fast -n NAME` enrolls, then
a connecting `nattrav-fast -d NAME` starts; the connecting process's behaviour cache was written by a
cold run first, so every timed run is warm. Per process: user+sys CPU from wait4 (the whole run, QUIC
close included) and, read from /proc when its "secure" line arrives, CPU up to the secure path; the
listener's CPU from its "enrolled" line to its exit (its per-connect share: what a long-running
listener pays per peer). Needs root (the lab).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold import _Lines  # noqa: E402  (the JSON-lines reader of the cold bench)

from nattrav.lab.agent import SERVER_PORT  # noqa: E402
from nattrav.lab.matrix import wait_tcp  # noqa: E402

EVENTS = ("identity", "behavior-cached", "rendezvous", "connected", "secure")
ALL_EVENTS = bool(os.environ.get("WARM_CPU_ALL_EVENTS"))


# main() under cProfile, imports included (the command's entry() would leave before the dump)
_PROFILED = ("import cProfile, sys; sys.argv[0] = 'nattrav-fast'; "
             "cProfile.run('from nattrav.cli.fast import main; main()', {!r})")


def _cpu_of(pid: int) -> float | None:
    """user+sys seconds of a live process, dead threads included, to the nanosecond: the process's
    CPU clock (clock_getcpuclockid: CPUCLOCK_SCHED of the whole thread group, ~pid << 3 | 2)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return None


def _reap(p: subprocess.Popen, timeout: float) -> float | None:
    """Wait for p (killing it after `timeout`) and return its user+sys CPU from wait4."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return None
        time.sleep(0.01)


def _until(lines: _Lines, name: str, t0: float, seen: dict, deadline: float, pid: int | None = None,
           cpu: dict | None = None) -> bool:
    while True:
        got = lines.until(lambda d: True, deadline)
        if got is None:
            return False
        at, ev = got
        ev_name = ev.get("event")
        if pid is not None and cpu is not None and ev_name not in cpu:
            cpu[ev_name] = _cpu_of(pid)
            if ev_name == "secure":
                cpu["at_secure"] = cpu[ev_name]
        if ev_name == "text":
            seen.setdefault("_text", []).append(ev["text"])
            continue
        seen.setdefault(ev_name, round(at - t0, 4))
        if ev_name == "error":
            seen["error_message"] = ev.get("message")
            return False
        if ev_name == name:
            return True


def one_trial(lab, server: str, name: str, env: dict | None, keys: dict, timeout: float,
              profile: str | None, listener_profile: str | None = None, settle: float = 0.5) -> dict:
    py = sys.executable
    base = [py, "-m", "nattrav.cli.fast", "--json", "--plain", "--linger", "0.3", "--timeout", str(timeout),
            "-s", server]
    lcmd = base + ["--identity", keys["b"], "-n", name]
    if listener_profile:
        lcmd = [py, "-c", _PROFILED.format(listener_profile)] + lcmd[3:]
    lst = lab.popen("b", lcmd, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    out: dict = {}
    reader = threading.Thread(target=lambda: out.setdefault("data", lst.stdout.read()), daemon=True)
    reader.start()
    lst.stdin.close()
    lst_lines = _Lines(lst.stderr)
    row: dict = {"ok": False, "events": {}, "listener": {}}
    t_l = time.monotonic()
    if not _until(lst_lines, "enrolled", t_l, row["listener"], t_l + timeout):
        row["reason"] = f"listener did not enroll: {row['listener']}"
        _reap(lst, 2)
        return row
    time.sleep(settle)  # a long-running listener has finished starting up: what follows is per connect
    lst_cpu0 = _cpu_of(lst.pid)
    lcpu: dict = {}
    lthread = threading.Thread(target=_until, args=(lst_lines, "secure", t_l, row["listener"],
                                                    time.monotonic() + timeout + 5, lst.pid, lcpu), daemon=True)
    lthread.start()
    cmd = base + ["--identity", keys["a"], "-d", name]
    if profile and profile.endswith(".prof"):
        cmd = [py, "-c", _PROFILED.format(profile)] + cmd[3:]
    elif profile:  # -X importtime of every thread, written to `profile`
        cmd = [py, "-X", "importtime"] + cmd[1:]
    t0 = time.monotonic()
    p = lab.popen("a", cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                  start_new_session=True)
    cpu: dict = {}
    secured = _until(_Lines(p.stderr), "secure", t0, row["events"], t0 + timeout + 5, p.pid, cpu)
    msg = b"ping\n"
    try:
        p.stdin.write(msg)
        p.stdin.close()
    except OSError:
        pass
    row["cpu_s"] = _reap(p, 10)
    row["cpu_at_secure_s"] = cpu.get("at_secure")
    row["cpu_at"] = {k: round(v, 4) for k, v in cpu.items() if v is not None and k != "at_secure"}
    lthread.join(2)
    lst_total = _reap(lst, 5)
    reader.join(5)  # its output read to the end (the process has exited)
    row["listener_cpu_s"] = (lst_total - lst_cpu0) if lst_total is not None and lst_cpu0 is not None else None
    at = lcpu.get("at_secure")
    row["listener_cpu_at_secure_s"] = (at - lst_cpu0) if at is not None and lst_cpu0 is not None else None
    if profile and not profile.endswith(".prof"):
        Path(profile).write_text("".join(row["events"].pop("_text", [])))
    row["events"].pop("_text", None)
    row["listener"].pop("_text", None)
    row["ok"] = secured and out.get("data") == msg
    if not row["ok"]:
        row["reason"] = row["events"].get("error_message") or f"listener printed {out.get('data')!r}"
    return row


def _med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["ok"]]
    s = {"trials": len(rows), "ok": len(ok),
         "cpu_s": _med([r["cpu_s"] for r in ok]),
         "cpu_at_secure_s": _med([r["cpu_at_secure_s"] for r in ok]),
         "listener_cpu_s": _med([r["listener_cpu_s"] for r in ok]),
         "listener_cpu_at_secure_s": _med([r["listener_cpu_at_secure_s"] for r in ok])}
    for e in EVENTS:
        s[e] = _med([r["events"].get(e) for r in ok])
    for e in EVENTS:
        s[f"cpu@{e}"] = _med([r.get("cpu_at", {}).get(e) for r in ok])
    s["failures"] = sorted({str(r.get("reason"))[:200] for r in rows if not r["ok"]})
    return s


def _trials(args: argparse.Namespace, trees: list, results: dict, loads: list, left: str, right: str) -> None:
    from nattrav.lab import registry
    from nattrav.lab.lab import Lab

    with Lab(left=left, right=right, shape=args.shape) as lab:
        server = f"{lab.S1}:{SERVER_PORT}"
        lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", server, "--stun",
                             f"{lab.S1},{lab.S2}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
        tmp = tempfile.mkdtemp(prefix="nattrav-warmcpu-")
        keys = {h: os.path.join(tmp, f"{h}.pem") for h in ("a", "b")}
        cache = Path(registry.cache_home(lab.ns("a"))) / "nattrav" / "behavior.json"
        cache.unlink(missing_ok=True)
        tag = f"w{time.monotonic_ns() % 10**8}"
        first = one_trial(lab, server, f"{tag}-cold", None, keys, args.timeout, None)  # writes the cache, the keys
        if not first["ok"]:
            print(f"warm_cpu: the cold run failed: {first.get('reason')}", file=sys.stderr)
        for i in range(args.trials):
            order = trees if i % 2 == 0 else trees[::-1]
            for label, env in order:
                prof = None
                if env is None and args.profile:
                    prof = os.path.join(args.profile, f"warm-{i}.prof")
                elif env is None and args.importtime:
                    prof = os.path.join(args.importtime, f"warm-{i}.importtime")
                lprof = (os.path.join(args.profile_listener, f"listener-{i}.prof")
                         if env is None and args.profile_listener else None)
                row = one_trial(lab, server, f"{tag}-{i}-{len(results[label])}{label[:1]}", env, keys,
                                args.timeout, prof, lprof)
                row["trial"] = i
                results[label].append(row)
                if ALL_EVENTS:
                    print(label, sorted(row["events"].items(), key=lambda kv: kv[1] if isinstance(kv[1], float) else 0),
                          sorted(row["listener"].items(), key=lambda kv: kv[1] if isinstance(kv[1], float) else 0),
                          file=sys.stderr)
                print(f"[{i}] {label}: ok={row['ok']} cpu={row['cpu_s']} at-secure={row['cpu_at_secure_s']} "
                      f"listener={row['listener_cpu_s']}/{row['listener_cpu_at_secure_s']} "
                      + " ".join(f"{e}={row['events'].get(e)}" for e in EVENTS), file=sys.stderr, flush=True)
            loads.append(Path("/proc/loadavg").read_text().strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--pair", default="port-restricted:port-restricted")
    p.add_argument("--shape", default="flat")
    p.add_argument("--product-src", metavar="DIR", help="a baseline source tree (PYTHONPATH), run alternately")
    p.add_argument("--label", default="this tree")
    p.add_argument("--base-label", default="baseline")
    p.add_argument("--profile", metavar="DIR", help="cProfile each warm connect of this tree into DIR")
    p.add_argument("--profile-listener", metavar="DIR", help="cProfile each listener of this tree into DIR")
    p.add_argument("--importtime", metavar="DIR", help="-X importtime of each warm connect of this tree into DIR")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--json-out", metavar="FILE")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="N busy-looping processes beside the trials (a loaded machine: wall times then "
                        "follow CPU time)")
    args = p.parse_args(argv)
    left, right = args.pair.split(":", 1)
    trees = [(args.label, None)]
    if args.product_src:
        trees.append((args.base_label, {**os.environ, "PYTHONPATH": args.product_src}))
    for d in (args.profile, args.importtime, args.profile_listener):
        if d:
            os.makedirs(d, exist_ok=True)
    results: dict[str, list[dict]] = {label: [] for label, _ in trees}
    loads = [Path("/proc/loadavg").read_text().strip()]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        _trials(args, trees, results, loads, left, right)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    summary = {label: summarise(rows) for label, rows in results.items()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pair": args.pair, "shape": args.shape,
              "busy": args.busy,
              "loadavg": loads, "summary": summary, "rows": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    cols = ["cpu_s", "listener_cpu_s", "listener_cpu_at_secure_s", *EVENTS, *(f"cpu@{e}" for e in EVENTS)]
    print("| tree | ok | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for label, s in summary.items():
        print(f"| {label} | {s['ok']}/{s['trials']} | " + " | ".join(str(s[c]) for c in cols) + " |")
    print("loadavg:", " ; ".join(loads[:1] + loads[-1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
