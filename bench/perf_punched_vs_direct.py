"""Goodput over a punched UDP path against a direct path at the same rate, in the same run (issue 17).

Labs are up side by side: one with the NAT pair (hosts a and b punch through our servers, then
nattrav-perf's UDP load runs over the punched path as authenticated DATA frames) and NAT-less ones
(the same load over plain sockets: the direct path). **direct**: hosts as many forwarding hops apart
as the NAT pair's (each NAT becomes a plain router: trial.hop_matched_shape), so the comparison is
of the path, not of the distance; **direct-1hop** (with --near): the flat NAT-less lab, hosts one
router apart, the baseline of the runs before. **raw** punches too but sends plain datagrams over the
punched socket to the peer's mapping: the same hops and NATs as punched without nattrav's framing,
so punched/raw is what nattrav itself costs. **punched-py** (with --python-frames): punched with
every frame built and checked one at a time in Python, as before csrc/frames.c (the baseline of the
batch path). `--sockbuf` sets every measuring socket's kernel buffers (nattrav-perf's default 4 MiB,
like iperf3 -w; 0: the kernel's ~200 KiB, as before). Kinds take turns (the order rotates every repeat),
`--repeats` times per rate; the ratios are of the receivers' goodput (medians). Goal: punched >= 0.9
x direct at every rate.

    .venv/bin/python bench/perf_punched_vs_direct.py --rates 20M,100M,300M --time 3 --repeats 3 --near
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
from contextlib import ExitStack

from nattrav.experiment.trial import Case, direct_trial, hop_matched_shape, open_case, punched_trial

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
    p.add_argument("--python-frames", action="store_true", help="also punched-py: the path's frames built and "
                   "checked one at a time in Python (the baseline before csrc/frames.c)")
    p.add_argument("--sockbuf", type=int, default=4 << 20, help="kernel buffers of the measuring sockets, bytes "
                   "(0: the kernel's default)")
    p.add_argument("--near", action="store_true", help="also direct-1hop: the NAT-less lab whose hosts are one "
                   "router apart (the baseline before hop matching)")
    p.add_argument("--out", default="bench/results/perf-punched-vs-direct.jsonl")
    args = p.parse_args(argv)
    meta = run_metadata(seed=0, profile=args.shape)
    rows = []
    case = Case(args.left, args.right, args.shape)
    with ExitStack() as stack:
        nat_lab = stack.enter_context(open_case(case))
        direct_labs = {"direct": stack.enter_context(open_case(Case("none", "none", args.shape), server=False,
                                                               shape=hop_matched_shape(case)))}
        if args.near:
            direct_labs["direct-1hop"] = stack.enter_context(open_case(Case("none", "none", args.shape), server=False))
        loads = [(rate, {"rate": rate, "size": args.size, "time": args.time, "interval": 1.0,
                         "sockbuf": args.sockbuf})
                 for rate in args.rates.split(",")]
        loads += [("tcp", {"tcp": True, "time": args.time})] if args.tcp else []
        for rate, load in loads:
            for rep in range(args.repeats):
                kinds = [*direct_labs, "punched"] + ([] if load.get("tcp") else ["raw"])
                kinds += ["punched-py"] if args.python_frames and not load.get("tcp") else []
                shift = rep % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    if kind in direct_labs:
                        r = direct_trial(direct_labs[kind], load)
                    else:
                        spec = {**load, "raw": kind == "raw"}
                        spec.update({"frames": "python"} if kind == "punched-py" else {})
                        r = punched_trial(nat_lab, f"perf{time.monotonic_ns() % 10**9}", {}, spec)
                    rx = ((r.get("traffic") or {}).get("receiver") or {})
                    row = {"kind": kind, "rate": rate, "repeat": rep, "ok": r["ok"], "pair": [args.left, args.right],
                           "shape": args.shape, "goodput_bps": rx.get("goodput_bps"), "loss": rx.get("loss"),
                           "owd_ms": rx.get("owd_ms"), "rtt_ms": (r.get("traffic") or {}).get("rtt_ms"),
                           "strategy": r.get("strategy"), "reason": r.get("reason"), "meta": meta,
                           "send_bps": ((r.get("traffic") or {}).get("sender") or {}).get("send_bps"),
                           "sockbuf": args.sockbuf, "rcvbuf": rx.get("rcvbuf"),
                           "netns_rcvbuf_drops": rx.get("netns_rcvbuf_drops"),
                           "loadavg_1min": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print(json.dumps({k: row[k] for k in ("kind", "rate", "repeat", "send_bps", "goodput_bps", "loss",
                                                          "netns_rcvbuf_drops", "loadavg_1min")}), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    worst = None
    print(f"{'rate':>6} {'direct Mbit/s':>14} {'1-hop Mbit/s':>13} {'raw Mbit/s':>11} {'punched Mbit/s':>15} "
          f"{'py Mbit/s':>10} {'p/direct':>8} {'p/1hop':>6} {'p/raw':>6} {'py/direct':>9} {'loss d/r/p/py':>27} "
          f"{'owd p50 d/p ms':>16} {'rtt p50 d/p ms':>16}")
    nan = float("nan")
    for rate in args.rates.split(",") + (["tcp"] if args.tcp else []):
        def med(kind: str, key: str, sub: str | None = None) -> float | None:
            vals = [(r[key] or {}).get(sub) if sub else r[key] for r in rows if r["rate"] == rate and r["kind"] == kind]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        def div(x: float | None, y: float | None) -> float:
            return x / y if x and y else nan
        d, near = med("direct", "goodput_bps"), med("direct-1hop", "goodput_bps")
        pu, raw, py = med("punched", "goodput_bps"), med("raw", "goodput_bps"), med("punched-py", "goodput_bps")
        ratio = pu / d if d and pu else None
        worst = ratio if worst is None or (ratio is not None and ratio < worst) else worst
        print(f"{rate:>6} {d / 1e6 if d else nan:14.3f} {near / 1e6 if near else nan:13.3f} "
              f"{raw / 1e6 if raw else nan:11.3f} {pu / 1e6 if pu else nan:15.3f} {py / 1e6 if py else nan:10.3f} "
              f"{div(pu, d):8.3f} {div(pu, near):6.3f} {div(pu, raw):6.3f} {div(py, d):9.3f} "
              f"{med('direct', 'loss') or 0:6.4f}/{med('raw', 'loss') or 0:6.4f}/{med('punched', 'loss') or 0:6.4f}"
              f"/{med('punched-py', 'loss') or 0:6.4f} "
              f"{med('direct', 'owd_ms', 'p50') or 0:7.3f}/{med('punched', 'owd_ms', 'p50') or 0:7.3f} "
              f"{med('direct', 'rtt_ms', 'p50') or 0:7.3f}/{med('punched', 'rtt_ms', 'p50') or 0:7.3f}")
    verdict = "meets" if worst is not None and worst >= GOAL else "misses"
    seen_load = [r["loadavg_1min"] for r in rows]
    print(f"1-minute load average during the run: {min(seen_load)}..{max(seen_load)} on {os.cpu_count()} CPUs; "
          f"socket buffers asked for: {args.sockbuf or 'kernel default'}")
    print(f"punched/direct goodput, worst row: {worst if worst is None else round(worst, 3)} ({verdict} the goal >= {GOAL})")
    print("direct: a lab without NATs whose hosts are as many forwarding hops apart as the NAT pair's; 1-hop: "
          "hosts one router apart; raw: plain datagrams over the punched 5-tuple (the same hops and NAT mappings "
          "as punched, without nattrav's framing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
