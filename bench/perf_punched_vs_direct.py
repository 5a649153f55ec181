"""Goodput over a punched UDP path against a direct path at the same rate, in the same run (issue 17).

Two labs are up side by side with the same shape: one with the NAT pair (hosts a and b punch through
our servers, then nattrav-perf's UDP load runs over the punched path as authenticated DATA frames),
one whose hosts have no NAT (the same load over plain sockets: the direct path; its hosts are one
router apart, the NAT pair's three). A third kind, raw, punches too but sends plain datagrams over
the punched socket to the peer's mapping: the same hops and NAT as punched without nattrav's framing,
so punched/raw is what nattrav itself costs. Measurements alternate, `--repeats` times per rate; the
ratios are of the receivers' goodput. Goal: punched >= 0.9 x direct at every rate.

    .venv/bin/python bench/perf_punched_vs_direct.py --rates 20M,100M --time 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from nattrav.experiment.runner import run_metadata
from nattrav.experiment.trial import Case, direct_trial, open_case, punched_trial

GOAL = 0.9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--left", default="symmetric-seq")
    p.add_argument("--right", default="port-restricted")
    p.add_argument("--shape", default="flat")
    p.add_argument("--rates", default="20M,100M", help="comma-separated payload rates (bits/s)")
    p.add_argument("--size", type=int, default=1200)
    p.add_argument("--time", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tcp", action="store_true", help="also TCP bulk (punched TCP stream vs a plain connection)")
    p.add_argument("--out", default="bench/results/perf-punched-vs-direct.jsonl")
    args = p.parse_args(argv)
    meta = run_metadata(seed=0, profile=args.shape)
    rows = []
    with open_case(Case(args.left, args.right, args.shape)) as nat_lab, \
            open_case(Case("none", "none", args.shape), server=False) as open_lab:
        loads = [(rate, {"rate": rate, "size": args.size, "time": args.time, "interval": 1.0})
                 for rate in args.rates.split(",")]
        loads += [("tcp", {"tcp": True, "time": args.time})] if args.tcp else []
        for rate, load in loads:
            for rep in range(args.repeats):
                kinds = ["direct", "punched"] + ([] if load.get("tcp") else ["raw"])
                for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
                    if kind == "direct":
                        r = direct_trial(open_lab, load)
                    else:
                        r = punched_trial(nat_lab, f"perf{time.monotonic_ns() % 10**9}", {},
                                          {**load, "raw": kind == "raw"})
                    rx = ((r.get("traffic") or {}).get("receiver") or {})
                    row = {"kind": kind, "rate": rate, "repeat": rep, "ok": r["ok"], "pair": [args.left, args.right],
                           "shape": args.shape, "goodput_bps": rx.get("goodput_bps"), "loss": rx.get("loss"),
                           "owd_ms": rx.get("owd_ms"), "rtt_ms": (r.get("traffic") or {}).get("rtt_ms"),
                           "strategy": r.get("strategy"), "reason": r.get("reason"), "meta": meta,
                           "loadavg_1min": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print(json.dumps({k: row[k] for k in ("kind", "rate", "repeat", "goodput_bps", "loss")}),
                          file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    worst = None
    print(f"{'rate':>6} {'direct Mbit/s':>14} {'raw Mbit/s':>11} {'punched Mbit/s':>15} {'p/direct':>8} "
          f"{'p/raw':>6} {'loss d/r/p':>20} {'owd p50 d/p ms':>16} {'rtt p50 d/p ms':>16}")
    for rate in args.rates.split(",") + (["tcp"] if args.tcp else []):
        def med(kind: str, key: str, sub: str | None = None) -> float | None:
            vals = [(r[key] or {}).get(sub) if sub else r[key] for r in rows if r["rate"] == rate and r["kind"] == kind]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None
        d, pu, raw = med("direct", "goodput_bps"), med("punched", "goodput_bps"), med("raw", "goodput_bps")
        ratio = pu / d if d and pu else None
        own = pu / raw if raw and pu else None
        worst = ratio if worst is None or (ratio is not None and ratio < worst) else worst
        nan = float("nan")
        print(f"{rate:>6} {d / 1e6 if d else nan:14.3f} {raw / 1e6 if raw else nan:11.3f} {pu / 1e6 if pu else nan:15.3f} "
              f"{ratio if ratio else nan:8.3f} {own if own else nan:6.3f} "
              f"{med('direct', 'loss') or 0:6.4f}/{med('raw', 'loss') or 0:6.4f}/{med('punched', 'loss') or 0:6.4f} "
              f"{med('direct', 'owd_ms', 'p50') or 0:7.3f}/{med('punched', 'owd_ms', 'p50') or 0:7.3f} "
              f"{med('direct', 'rtt_ms', 'p50') or 0:7.3f}/{med('punched', 'rtt_ms', 'p50') or 0:7.3f}")
    verdict = "meets" if worst is not None and worst >= GOAL else "misses"
    seen_load = [r["loadavg_1min"] for r in rows]
    print(f"1-minute load average during the run: {min(seen_load)}..{max(seen_load)} on {os.cpu_count()} CPUs")
    print(f"punched/direct goodput, worst row: {worst if worst is None else round(worst, 3)} ({verdict} the goal >= {GOAL})")
    print("direct: a lab without NATs (1 forwarding hop); raw: plain datagrams over the punched 5-tuple (the same 3 "
          "hops and NAT mappings as punched, without nattrav's framing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
