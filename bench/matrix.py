"""The connection matrix as a measurement: many trials per ordered pair of lab NAT presets, with
background traffic on the NATs, written as a markdown table and JSON.

    .venv/bin/python bench/matrix.py                       # all pairs, 50 trials, 5 ports/s background
    .venv/bin/python bench/matrix.py --trials 10 --pairs symmetric-seq:symmetric-seq-7 cgnat:none
    .venv/bin/python bench/matrix.py --jobs 2 --out bench/results/matrix-udp
    .venv/bin/python bench/matrix.py --tcp --trials 10      # TCP traversal -> bench/results/matrix-tcp.*

Per pair: success rate (with the expectation from the lab's own descriptions), the strategy used,
median and 95th-percentile time from the agreed start to the authenticated path, and the
predictor's hit rate: how often the port the peer's NAT really used for the winning flow (seen on
the wire) was in the predicted window, and its median rank there. Needs root (the lab).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import pathlib
import statistics
import sys
import time

from nattrav.lab.matrix import MATRIX_PRESETS, expectation, run_pair, tcp_expectation


TCP = False  # set from --tcp: which expectation (UDP or TCP ground truth) the table shows


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(left: str, right: str, rows: list) -> dict:
    ok = [r for r in rows if r.ok]
    secs = [r.seconds for r in ok if r.seconds is not None]
    preds = [p for r in rows for p in (r.extra.get("prediction_a"), r.extra.get("prediction_b")) if p]
    hits = [p for p in preds if p.get("hit")]
    strategies = sorted({r.strategy for r in rows if r.strategy})
    return {
        "left": left, "right": right, "expect": (tcp_expectation if TCP else expectation)(left, right),
        "trials": len(rows),
        "connected": len(ok), "success": len(ok) / len(rows) if rows else 0.0,
        "strategies": strategies, "median_s": statistics.median(secs) if secs else None,
        "p95_s": _pct(secs, 0.95), "median_rtt_ms": statistics.median([r.rtt_ms for r in ok if r.rtt_ms])
        if ok else None,
        "predictions": len(preds), "prediction_hits": len(hits),
        "median_rank": statistics.median([p["rank"] for p in hits]) if hits else None,
        "odds": statistics.median([r.odds for r in rows if r.odds is not None]) if any(r.odds is not None for r in rows) else None,
        "failures": sorted({(r.reason or "")[:160] for r in rows if not r.ok})[:3],
    }


def _odds(x: float | None) -> str:
    # the digits that matter: 99.999% and 100% must not both print as 1.000
    return "—" if x is None else f"{100 * x:.6g}%"


def markdown(table: list[dict], meta: dict) -> str:
    out = [f"# nattrav {'TCP' if meta.get('tcp') else 'UDP'} matrix — {meta['trials']} trials a pair, background {meta['background']} ports/s "
           f"a NAT, {meta['date']}", "",
           "| A's NAT → B's NAT | expected | connected | strategy | median s | p95 s | planner odds | "
           "prediction hits |", "|---|---|---|---|---|---|---|---|"]
    for t in table:
        f = (lambda x: "—" if x is None else f"{x:.3f}")
        pred = f"{t['prediction_hits']}/{t['predictions']}" if t["predictions"] else "—"
        out.append(f"| {t['left']} → {t['right']} | {t['expect']} | {t['connected']}/{t['trials']} "
                   f"({100 * t['success']:.1f}%) | {', '.join(t['strategies'])} | {f(t['median_s'])} | "
                   f"{f(t['p95_s'])} | {_odds(t['odds'])} | {pred} |")
    feas = [t for t in table if t["expect"] == "feasible"]
    n = sum(t["trials"] for t in feas)
    c = sum(t["connected"] for t in feas)
    out += ["", f"Feasible pairs: {c}/{n} trials connected ({100 * c / n:.2f}%)." if n else ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--background", type=float, default=5.0, help="ports/s consumed by a helper host behind each NAT")
    p.add_argument("--pairs", nargs="*", help="LEFT:RIGHT pairs (default: every ordered pair)")
    p.add_argument("--jobs", type=int, default=2, help="pairs run at once (each its own lab)")
    p.add_argument("--trial-timeout", type=float, default=15.0)
    p.add_argument("--out", help="path prefix for .md and .json (default bench/results/matrix-udp, "
                   "with --tcp bench/results/matrix-tcp)")
    p.add_argument("--tcp", action="store_true", help="TCP traversal (low-TTL SYN, simultaneous open)")
    args = p.parse_args(argv)
    global TCP
    TCP = args.tcp
    args.out = args.out or ("bench/results/matrix-tcp" if args.tcp else "bench/results/matrix-udp")
    pairs = [tuple(x.split(":", 1)) for x in args.pairs] if args.pairs else list(itertools.product(MATRIX_PRESETS, repeat=2))
    t0 = time.monotonic()
    table = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_pair, l, r, args.trials, trial_timeout=args.trial_timeout,
                               background=args.background or None, tcp=args.tcp): (l, r) for l, r in pairs}
        for fut in concurrent.futures.as_completed(futures):
            l, r = futures[fut]
            try:
                row = summarise(l, r, fut.result())
            except Exception as exc:  # one broken pair must not lose the others' numbers
                row = {"left": l, "right": r, "expect": (tcp_expectation if TCP else expectation)(l, r), "trials": 0, "connected": 0,
                       "success": 0.0, "strategies": [], "median_s": None, "p95_s": None, "odds": None,
                       "predictions": 0, "prediction_hits": 0, "median_rank": None, "failures": [repr(exc)]}
            table.append(row)
            print(f"[{len(table)}/{len(pairs)} {time.monotonic() - t0:.0f}s] {l} -> {r}: "
                  f"{row['connected']}/{row['trials']} {row['strategies']} median {row['median_s']}",
                  file=sys.stderr, flush=True)
    order = {pair: i for i, pair in enumerate(pairs)}
    table.sort(key=lambda t: order[(t["left"], t["right"])])
    meta = {"trials": args.trials, "background": args.background, "tcp": args.tcp,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.monotonic() - t0)}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "pairs": table}, indent=1))
    md = markdown(table, meta)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
