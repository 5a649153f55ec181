"""Back-to-back connects behind a carrier-grade NAT, in the lab: with the flow wait (the default)
against `--flow-wait 0` (plan at whatever our last bursts left), interleaved in the same run and the
same tree (bench/results/flow-wait.md).

Each batch is one lab whose agents run their trials back to back; behind the CGN (budget 512,
entries held FLOW_LINGER = 30 s) a predicted pair spends the budget within a few connects. Without
the wait the next plans state a few percent and most miss; with it a connect first waits (at most
its timeout less 10 s) for the oldest entries to go. Per arm: connected (Wilson 95 %), plans stated
below 99 %, misses, trials that waited and for how long, wall seconds per trial (the price).

    .venv/bin/python bench/flow_wait.py --rounds 2 --trials 30

Needs root (the lab).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

CASES = {  # name: (left, right, shape)
    "seq-cgn:seq-flat": ("symmetric-seq+cgn", "symmetric-seq", "flat"),
    "seq-cgn:seq7": ("symmetric-seq+cgn", "symmetric-seq-7", "wan50"),
    "seq7-cgn:seq": ("symmetric-seq-7+cgn", "symmetric-seq", "wan50"),
    "seq-cgn:cgnat": ("symmetric-seq+cgn", "cgnat", "wan50"),
}
ARMS = {"wait": [], "no-wait": ["--flow-wait", "0"]}
TRIAL_TIMEOUT = 30.0  # a connect's wait is at most its timeout less api/session.CONNECT_RESERVE


def _rows(left: str, right: str, shape: str, trials: int, arm: str) -> list[dict]:
    """One batch (one lab): a dict per trial."""
    from nattrav.lab.matrix import run_pair

    t0 = time.monotonic()
    rows = run_pair(left, right, trials, shape=shape, background=5.0, trial_timeout=TRIAL_TIMEOUT,
                    agent_flags=ARMS[arm])
    wall = time.monotonic() - t0
    return [{"ok": r.ok, "odds": r.odds, "wall": wall / len(rows), "reason": r.reason,
             "waited": (r.extra.get("flow_wait_a") or 0.0) + (r.extra.get("flow_wait_b") or 0.0)} for r in rows]


def _summary(name: str, rows: list[dict]) -> str:
    from nattrav.lab.matrix import wilson

    n, k = len(rows), sum(r["ok"] for r in rows)
    lo, hi = wilson(k, n)
    low = [r for r in rows if r["odds"] is not None and r["odds"] < 0.99]
    waits = [r["waited"] for r in rows if r["waited"] > 0]
    wall = statistics.mean(r["wall"] for r in rows)
    return (f"| {name} | {k}/{n} | {100 * lo:.1f}–{100 * hi:.1f}% | {len(low)} ({sum(r['ok'] for r in low)} "
            f"connected) | {sum(not r['ok'] and r['odds'] is not None and r['odds'] >= 0.99 for r in rows)} | "
            f"{len(waits)} | {statistics.median(waits) if waits else 0:.1f} / {max(waits, default=0):.1f} | "
            f"{wall:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1, help="wait/no-wait rounds, interleaved")
    p.add_argument("--trials", type=int, default=30, help="trials a batch (one lab)")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    a = p.parse_args(argv)
    got: dict[tuple[str, str], list[dict]] = {}
    for name in a.cases:
        left, right, shape = CASES[name]
        for _ in range(a.rounds):
            for arm in ("no-wait", "wait"):
                t0 = time.time()
                rows = _rows(left, right, shape, a.trials, arm)
                got.setdefault((name, arm), []).extend(rows)
                print(f"# {time.strftime('%H:%M:%S', time.gmtime())} {name} {arm}: "
                      f"{sum(r['ok'] for r in rows)}/{len(rows)} in {time.time() - t0:.0f} s, "
                      f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    print("| case (arm) | connected | Wilson 95% | plans stated < 99% | misses of plans stated ≥ 99% "
          "| trials that waited | wait median / max s | wall s per trial |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, arm), rows in got.items():
        left, right, shape = CASES[name]
        print(_summary(f"{left} → {right}, {shape} ({arm})", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
