"""A symmetric NAT with an arbitrary address pool on either side of a UDP pair, in the lab: how often
the plans knew the pool, and whether the stated odds hold, for this tree against an older one,
interleaved in the same run (bench/results/pool-listener.md).

Each trial's plan is sorted by what it knew of the pooled side: the pool surveyed (its reason names
"k addresses in m fresh flows"), seen in part (2 addresses and no survey: odds below 50 %), or
hidden (its flows all left from one address: the plan aims at one address of the pool with
99.9 % odds). `--before-src` runs the same cases with another tree's product (PYTHONPATH: the
driver, the servers and the agents all import it; its built _core must be in place).

    .venv/bin/python bench/pool_listener.py --before-src /tmp/old/src --rounds 2

Needs root (the lab). One lab per batch, its agents run the batch's trials back to back (a
port-restricted opener's flow budget shrinks over ~25 back-to-back pooled trials: keep batches
at 16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

POOLED = "symmetric-seq,public_ips=4,pooling=arbitrary"
CASES = {  # name: (left = the asking side, right = the listener, shapes, batches per round)
    "listen": ("port-restricted", POOLED, ("flat", "wan50"), (4, 2)),
    "ask": (POOLED, "port-restricted", ("flat", "wan50"), (1, 1)),
    "plain": ("port-restricted", "symmetric-seq", ("flat", "wan50"), (1, 1)),
}
SURVEYED = re.compile(r"\((\d+) addresses in (\d+) fresh flows\)")


def _rows(left: str, right: str, shape: str, trials: int, batches: int) -> None:
    """One JSON line per trial on stdout (run under either tree)."""
    from nattrav.lab.matrix import run_pair

    pooled = "a" if "pooling" in left else "b"
    for _ in range(batches):
        for r in run_pair(left, right, trials, shape=shape, background=5.0, trial_timeout=15.0):
            events = (r.extra.get(f"diag_{pooled}") or {}).get("events") or []
            survey = next((e[2] for e in events if e[0] == "pool-survey"), None)
            m = SURVEYED.search(r.extra.get("plan_reason_a") or "")
            print(json.dumps({"ok": r.ok, "s": r.seconds, "odds": r.odds, "surveyed": bool(m),
                              "survey": survey, "reason": r.reason}), flush=True)


def _summary(name: str, rows: list[dict], pooled: bool) -> str:
    from nattrav.lab.matrix import wilson

    n, k = len(rows), sum(r["ok"] for r in rows)
    lo, hi = wilson(k, n)
    odds = [r["odds"] for r in rows if r["odds"] is not None]
    mean = sum(odds) / len(odds) if odds else float("nan")
    surveyed = sum(r["surveyed"] for r in rows)
    part = sum(not r["surveyed"] and r["odds"] is not None and r["odds"] < 0.5 for r in rows)
    by_discovery = sum(1 for r in rows if r["survey"] and len(r["survey"].get("flows") or []) == 1)
    times = sorted(r["s"] for r in rows if r["ok"] and r["s"] is not None)
    med = f"{statistics.median(times):.4f}" if times else "—"
    p95 = f"{times[max(0, math.ceil(0.95 * len(times)) - 1)]:.4f}" if times else "—"
    evidence = f"{surveyed} / {part} / {n - surveyed - part}" if pooled else "—"
    called = str(by_discovery) if pooled and any(r["survey"] for r in rows) else "—"
    return (f"| {name} | {k}/{n} ({100 * k / n:.1f}%) | {100 * lo:.1f}–{100 * hi:.1f}% | {100 * mean:.2f}% | "
            f"{'yes' if lo <= mean <= hi else '**no**'} | {evidence} | {called} | {med} | {p95} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-src", default=None, help="an older tree's src/ (its product is 'before')")
    p.add_argument("--rounds", type=int, default=1, help="before/after rounds, interleaved")
    p.add_argument("--trials", type=int, default=16, help="trials a batch (one lab)")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--rows", nargs=5, help=argparse.SUPPRESS)  # internal: left right shape trials batches
    a = p.parse_args(argv)
    if a.rows:
        left, right, shape, trials, batches = a.rows
        _rows(left, right, shape, int(trials), int(batches))
        return 0
    trees = [("before", a.before_src)] if a.before_src else []
    trees.append(("after", None))
    got: dict[tuple[str, str, str], list[dict]] = {}
    for name in a.cases:
        left, right, shapes, batches = CASES[name]
        for shape, b in zip(shapes, batches):
            for _ in range(a.rounds):
                for tree, src in trees:
                    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
                    t0 = time.time()
                    out = subprocess.run([sys.executable, __file__, "--rows", left, right, shape, str(a.trials),
                                          str(b)], env=env, capture_output=True, text=True, check=True).stdout
                    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
                    got.setdefault((name, shape, tree), []).extend(rows)
                    print(f"# {time.strftime('%H:%M:%S', time.gmtime())} {name} {shape} {tree}: "
                          f"{sum(r['ok'] for r in rows)}/{len(rows)} in {time.time() - t0:.0f} s, "
                          f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    print("| case (shape, tree) | connected | Wilson 95% | mean stated odds | odds in interval "
          "| pool surveyed / seen in part / hidden | survey called by discovery's flows only | median s | p95 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, shape, tree), rows in got.items():
        left, right = CASES[name][:2]
        print(_summary(f"{left} → {right} ({shape}, {tree})", rows, name != "plain"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
