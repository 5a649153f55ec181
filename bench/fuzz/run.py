#!/usr/bin/env python3
"""Fuzz nattrav's parsers of untrusted bytes with atheris (coverage-guided libFuzzer) and report.

    nice -n 19 .venv/bin/python bench/fuzz/run.py --target all --runs 1000000
    .venv/bin/python bench/fuzz/run.py --target rv_server --runs 20000 --json
    .venv/bin/python bench/fuzz/run.py --replay          # corpus + findings, no atheris (what CI does)
    .venv/bin/python bench/fuzz/run.py --seeds           # (re)write the seed inputs into corpus/
    .venv/bin/python bench/fuzz/run.py --merge --target stun_codec   # add coverage-adding inputs

Each target runs in its own process (one libFuzzer job, one worker), at most --jobs at a time. Per
target it prints: inputs run, exec/s, crashes (inputs that broke the contract / distinct kinds),
the slowest single parser call re-timed without instrumentation (least of 15 runs of the slowest
inputs: noise only ever adds), how many inputs stayed above the 1 ms budget, and peak RSS.
Crash reproducers go to corpus/<target>/crashes/, inputs slower than 1 ms to corpus/<target>/slow/,
both with a .txt saying what happened. Scratch output (new corpus inputs, logs) goes to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_harness as fh  # noqa: E402
import fuzz_targets  # noqa: E402

DEFAULT_OUT = Path(os.environ.get("TMPDIR", "/tmp")) / "nattrav-fuzz"
RETIME = 8  # slowest inputs re-timed per target
KEEP_SLOW = 3  # slow findings kept in the repo per target


# ---- the child: one target under atheris


def child(name: str, out: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["nattrav"]):
        target = fuzz_targets.load(name)
    crashes = out / "crashes"
    stats_path = out / "stats.json"
    state = {"started": None, "flushed": 0.0, "dirty": False}

    def flush(force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - state["flushed"] < 0.5:
            return
        state["flushed"] = now
        if state["dirty"]:
            for i, (_ns, data) in enumerate(runner.slowest):
                (out / f"slowest-{i}.bin").write_bytes(data)
            state["dirty"] = False
        stats = {"inputs": runner.inputs, "busy_s": runner.busy_ns / 1e9,
                 "wall_s": now - state["started"], "crash_inputs": runner.crash_count,
                 "crashes": {c.signature: c.count for c in runner.crashes.values()},
                 "slowest_instrumented_ms": [ns / 1e6 for ns, _ in runner.slowest],
                 "peak_rss_mb": fh._rss_mb()}
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_path)

    def on_event(kind: str, what: object) -> None:
        if kind == "crash":
            fh.save_crash(what, crashes)  # type: ignore[arg-type]
            print(f"CRASH {what.signature}", file=sys.stderr, flush=True)  # type: ignore[attr-defined]
            flush(force=True)

    runner = fh.Runner(target, keep_slowest=RETIME, on_event=on_event)
    runs = [a for a in libfuzzer_args if a.startswith("-runs=")]
    last = int(runs[-1].split("=", 1)[1]) if runs else -1
    old_one = runner.one
    kept = {"n": len(runner.slowest), "top": 0}

    def one(data: bytes) -> None:
        if state["started"] is None:
            state["started"] = time.monotonic()
        old_one(data)
        if runner.slowest and (runner.slowest[-1][0], len(runner.slowest)) != (kept["top"], kept["n"]):
            kept["top"], kept["n"] = runner.slowest[-1][0], len(runner.slowest)
            state["dirty"] = True
        if runner.inputs == last:  # libFuzzer exits right after its -runs-th input, without atexit
            flush(force=True)
        elif runner.inputs & 255 == 0 or state["dirty"]:
            flush()

    # libFuzzer re-executes argv[0] with its flags for -merge (and -jobs): make that this child again
    wrapper = out / "child.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
                       f" --child {shlex.quote(name)} --out {shlex.quote(str(out))} -- \"$@\"\n")
    wrapper.chmod(0o755)
    atheris.Setup([str(wrapper), *libfuzzer_args], one)
    atheris.Fuzz()


# ---- the parent


def _libfuzzer_stats(log: str) -> dict[str, float]:
    out = {}
    for key in ("number_of_executed_units", "average_exec_per_sec", "peak_rss_mb", "new_units_added"):
        m = re.search(rf"stat::{key}:\s+(\d+)", log)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Done (\d+) runs in (\d+) second", log)
    if m:
        out["done_runs"], out["done_s"] = float(m.group(1)), float(m.group(2))
    return out


def _seed_dir(name: str, out: Path) -> Path:
    """A copy of the repo corpus (top level only): crashes/ and slow/ are not fed back as seeds."""
    seeds = out / "seeds"
    shutil.rmtree(seeds, ignore_errors=True)
    seeds.mkdir(parents=True)
    files = fh.corpus_files(name) or fh.write_seeds(fuzz_targets.load(name), out / "generated")
    for p in files:
        shutil.copy(p, seeds / p.name)
    return seeds


def launch(name: str, runs: int, out_root: Path, rss_limit: int, seconds: int | None,
           extra: list[str]) -> tuple[subprocess.Popen, Path]:
    target = fuzz_targets.load(name)
    out = out_root / name
    for stale in ("stats.json", "fuzz.log"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "crashes", ignore_errors=True)
    for p in out.glob("slowest-*.bin"):
        p.unlink()
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    seeds = _seed_dir(name, out)
    args = [f"-runs={runs}", f"-rss_limit_mb={rss_limit}", f"-max_len={target.max_len}", "-timeout=10",
            f"-artifact_prefix={out}/", "-print_final_stats=1", *extra]
    if seconds:
        args.append(f"-max_total_time={seconds}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out), "--",
           *args, str(out / "corpus"), str(seeds)]
    log = open(out / "fuzz.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(out)), out


def collect(name: str, out: Path, rc: int, wall: float) -> dict:
    target = fuzz_targets.load(name)
    log = (out / "fuzz.log").read_text(errors="replace")
    lf = _libfuzzer_stats(log)
    try:
        st = json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        st = {}
    inputs = int(lf.get("number_of_executed_units") or st.get("inputs") or 0)
    rate_wall = st.get("wall_s") or wall
    exec_s = (st.get("inputs", 0) / rate_wall) if rate_wall else 0.0
    crashes = dict(st.get("crashes", {}))
    repo_crashes = fh.CORPUS / name / "crashes"
    for p in sorted((out / "crashes").glob("crash-*.bin")):
        for f in (p, p.with_suffix(".txt")):
            repo_crashes.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, repo_crashes / f.name)
    # libFuzzer's own verdicts: out of memory, a hang, a deadly signal
    for art in sorted(out.glob("*-*")):
        kind = art.name.split("-")[0]
        if kind in ("crash", "oom", "timeout", "leak", "slow") and art.is_file() and art.suffix == "":
            repo_crashes.mkdir(parents=True, exist_ok=True)
            dest = repo_crashes / f"libfuzzer-{art.name}.bin"
            shutil.copy(art, dest)
            dest.with_suffix(".txt").write_text(f"libFuzzer {kind}; log tail:\n{log[-3000:]}")
            crashes[f"libFuzzer {kind}"] = crashes.get(f"libFuzzer {kind}", 0) + 1
    slow = []
    for p in sorted(out.glob("slowest-*.bin")):
        data = p.read_bytes()
        slow.append((fh.retime(target, data), data))
    slow.sort(key=lambda x: -x[0])
    over = [(ns, d) for ns, d in slow if ns > fh.BUDGET_NS]
    keep_slow(name, target, over)
    return {
        "target": name, "inputs": inputs, "exec_per_s": round(exec_s), "exit": rc,
        "crash_inputs": st.get("crash_inputs", 0) + sum(v for k, v in crashes.items() if k.startswith("libFuzzer")),
        "crashes": crashes,
        "slowest_ms": round(slow[0][0] / 1e6, 3) if slow else None,
        "slowest_instrumented_ms": round((st.get("slowest_instrumented_ms") or [0])[0], 3),
        "over_budget": len(over),
        "peak_rss_mb": round(max(lf.get("peak_rss_mb", 0), st.get("peak_rss_mb", 0))),
        "new_units": int(lf.get("new_units_added", 0)),
        "wall_s": round(wall, 1),
    }


def keep_slow(name: str, target: fh.Target, new: list[tuple[int, bytes]]) -> None:
    """corpus/<name>/slow/ keeps the KEEP_SLOW slowest distinct inputs found so far (re-timed)."""
    slow_dir = fh.CORPUS / name / "slow"
    found = {d: ns for ns, d in new}
    for p in fh.finding_files(name, "slow"):
        d = p.read_bytes()
        found.setdefault(d, fh.retime(target, d))
    if not found:
        return
    shutil.rmtree(slow_dir, ignore_errors=True)
    slow_dir.mkdir(parents=True)
    for data, ns in sorted(found.items(), key=lambda x: -x[1])[:KEEP_SLOW]:
        path = slow_dir / f"slow-{hashlib.sha1(data).hexdigest()[:10]}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(
            f"slowest parser call {ns / 1e6:.3f} ms uninstrumented (budget {fh.BUDGET_NS / 1e6:g} ms)\n"
            f"input ({len(data)} bytes): {data.hex()}\n")


def fuzz(names: list[str], args: argparse.Namespace) -> list[dict]:
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
    results = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            proc, out = launch(name, args.runs, args.out, args.rss_limit_mb, args.seconds, args.libfuzzer)
            running[name] = (proc, out, time.monotonic())
            if not args.json:
                print(f"fuzzing {name} ({args.runs} runs) ...", file=sys.stderr, flush=True)
        time.sleep(0.2)
        for name, (proc, out, t0) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[name]
            results.append(collect(name, out, rc, time.monotonic() - t0))
    return sorted(results, key=lambda r: names.index(r["target"]))


def replay(names: list[str]) -> list[dict]:
    """Corpus, crash and slow inputs through each target, uninstrumented (no atheris needed)."""
    results = []
    for name in names:
        target = fuzz_targets.load(name)
        r = fh.Runner(target)
        t0 = time.monotonic()
        files = fh.corpus_files(name) + fh.finding_files(name, "crashes") + fh.finding_files(name, "slow")
        for p in files:
            r.one(p.read_bytes())
        wall = time.monotonic() - t0
        slow = max((fh.retime(target, d) for _, d in r.slowest), default=0)
        results.append({"target": name, "inputs": r.inputs, "exec_per_s": round(r.inputs / wall) if wall else 0,
                        "crash_inputs": r.crash_count, "crashes": {c.signature: c.count for c in r.crashes.values()},
                        "slowest_ms": round(slow / 1e6, 3), "over_budget": int(slow > fh.BUDGET_NS),
                        "peak_rss_mb": round(fh._rss_mb())})
    return results


def merge(name: str, args: argparse.Namespace) -> None:
    """Add the inputs of --out's corpus that add coverage to the repo corpus (libFuzzer -merge=1)."""
    out = args.out / name
    repo = fh.CORPUS / name
    repo.mkdir(parents=True, exist_ok=True)
    target = fuzz_targets.load(name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out), "--",
           "-merge=1", f"-max_len={target.max_len}", f"-rss_limit_mb={args.rss_limit_mb}", str(repo),
           str(out / "corpus")]
    subprocess.run(cmd, check=False, cwd=str(out))
    size = sum(p.stat().st_size for p in fh.corpus_files(name))
    print(f"{name}: {len(fh.corpus_files(name))} corpus inputs, {size / 1024:.0f} KB", file=sys.stderr)


def table(results: list[dict]) -> str:
    head = f"{'target':16} {'inputs':>9} {'exec/s':>7} {'crashes':>12} {'slowest ms':>10} {'>1ms':>5} {'RSS MB':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        crashes = f"{r['crash_inputs']} ({len(r['crashes'])})"
        slow = "-" if r["slowest_ms"] is None else f"{r['slowest_ms']:.3f}"
        lines.append(f"{r['target']:16} {r['inputs']:>9} {r['exec_per_s']:>7} "
                     f"{crashes:>12} {slow:>10} {r['over_budget']:>5} {r['peak_rss_mb']:>6}")
        for sig, n in r["crashes"].items():
            lines.append(f"    {n} x {sig}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        sep = argv.index("--")
        child(argv[1], Path(argv[argv.index("--out") + 1]), argv[sep + 1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="all", help=f"one of {', '.join(fuzz_targets.NAMES)}, or all")
    ap.add_argument("--runs", type=int, default=100_000, help="inputs per target (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, help="stop each target after this long (-max_total_time)")
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time (one process each)")
    ap.add_argument("--rss-limit-mb", type=int, default=1024, help="libFuzzer -rss_limit_mb per target")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"scratch directory (default {DEFAULT_OUT})")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--replay", action="store_true", help="replay corpus and findings without atheris")
    mode.add_argument("--seeds", action="store_true", help="write each target's seed inputs into corpus/")
    mode.add_argument("--merge", action="store_true", help="merge --out's new inputs into corpus/ (coverage only)")
    ap.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = ap.parse_args(argv)
    if args.target == "all":
        names = list(fuzz_targets.NAMES)
    elif args.target in fuzz_targets.NAMES:
        names = [args.target]
    else:
        ap.error(f"unknown target {args.target!r}; targets: {', '.join(fuzz_targets.NAMES)}, all")
    if args.runs < 1 or args.jobs < 1:
        ap.error("--runs and --jobs must be at least 1")
    args.out = args.out.resolve()
    if args.seeds:
        for name in names:
            paths = fh.write_seeds(fuzz_targets.load(name))
            print(f"{name}: {len(paths)} seeds in {fh.CORPUS / name}")
        return 0
    if args.merge:
        for name in names:
            merge(name, args)
        return 0
    if not args.replay:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install atheris); --replay works without it", file=sys.stderr)
            return 2
    results = replay(names) if args.replay else fuzz(names, args)
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 1 if any(r["crash_inputs"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
