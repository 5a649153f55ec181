"""Trials of ONE matrix case, every trial's row kept: the evidence behind a rare miss.

bench/matrix.py summarises a case; a miss in 1 trial of 100 needs each trial's own words (both sides'
plan reasons, the agents' timelines: lab/agent.py diagnosis()). Rows go to a JSON-lines file (one per
trial, appended, tagged with --tag), the counts and the misses to stdout.

    .venv/bin/python bench/pair_trials.py 'symmetric-seq-7+cgn' port-restricted --shape wan50 \
        --trials 40 --batches 2 --tag after --out bench/results/predicted-wan50-misses.jsonl

Needs root (the lab). One lab per batch, its agents run the batch's trials back to back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from nattrav.lab.matrix import run_pair, wilson

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("left")
    p.add_argument("right")
    p.add_argument("--shape", default="wan50")
    p.add_argument("--trials", type=int, default=40, help="trials a batch (one lab)")
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--background", type=float, default=5.0, help="new flows/s behind each NAT (matrix default)")
    p.add_argument("--trial-timeout", type=float, default=15.0)
    p.add_argument("--accept-delay", type=float, default=0.0, metavar="S",
                   help="the listener calls accept() S seconds after enrolling (a late listener)")
    p.add_argument("--tag", default="", help="written into every row (e.g. before/after)")
    p.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    a = p.parse_args(argv)
    ok = n = 0
    for batch in range(a.batches):
        t = time.monotonic()
        rows = run_pair(a.left, a.right, a.trials, shape=a.shape, background=a.background,
                        trial_timeout=a.trial_timeout, accept_delay=a.accept_delay)
        got = sum(r.ok for r in rows)
        ok, n = ok + got, n + len(rows)
        print(f"batch {batch}: {a.left} -> {a.right} @{a.shape}: {got}/{len(rows)} "
              f"({time.monotonic() - t:.0f} s)", flush=True)
        for r in rows:
            row = {"tag": a.tag, "batch": batch, "accept_delay": a.accept_delay, **r.to_dict()}
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
            if not r.ok:
                print(json.dumps(row, default=str), flush=True)
    lo, hi = wilson(ok, n)
    print(f"total {ok}/{n} = {ok / max(n, 1):.2%} (Wilson 95% {lo:.2%}-{hi:.2%})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
