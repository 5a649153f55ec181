"""NATs with an address pool (RFC 4787 §4.1), UDP, in the lab: each pair's success rate with the
server observing punch sockets (today) against the same server started with --no-observe (the
baseline: peers aimed at the TCP connection's address only), interleaved in the same run, with
Wilson 95 % intervals. Needs root (the lab).

    .venv/bin/python bench/bench_pools.py --trials 10 --out bench/results/pools.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

from nattrav.lab.matrix import run_pair, wilson

PAIRS = [
    ("full-cone,public_ips=3,pooling=arbitrary", "port-restricted"),
    ("full-cone,public_ips=3,pooling=arbitrary", "symmetric-seq"),
    ("port-restricted,public_ips=3,pooling=arbitrary", "port-restricted"),
    ("port-restricted,public_ips=3,pooling=arbitrary", "symmetric-seq"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="trials per pair and variant (default 10)")
    ap.add_argument("--chunk", type=int, default=5, help="trials per lab, variants alternating (default 5)")
    ap.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_pools: the lab needs root", file=sys.stderr)
        return 2
    load0 = open("/proc/loadavg").read().split()[:3]
    rows = []
    for left, right in PAIRS:
        got = {"observed": [], "baseline": []}
        while len(got["baseline"]) < args.trials:
            n = min(args.chunk, args.trials - len(got["baseline"]))
            for variant, flags in (("observed", []), ("baseline", ["--no-observe"])):
                got[variant] += run_pair(left, right, n, trial_timeout=15, server_flags=flags)
        line = [f"`{left}` ↔ `{right}`"]
        for variant in ("observed", "baseline"):
            ok = sum(r.ok for r in got[variant])
            lo, hi = wilson(ok, len(got[variant]))
            strategies = sorted({r.strategy for r in got[variant] if r.ok and r.strategy})
            line.append(f"{ok}/{len(got[variant])} [{lo:.2f}, {hi:.2f}] {','.join(strategies)}")
        rows.append(line)
        print(" | ".join(line), flush=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    table = ["| pair | observed (today): ok [Wilson 95 %] strategy | --no-observe (baseline) |",
             "|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join([
        "# Address pools (RFC 4787 §4.1): UDP success with and without the punch socket's observation", "",
        f"`.venv/bin/python bench/bench_pools.py --trials {args.trials}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average before {' '.join(load0)}, after {' '.join(load1)} (2 cores shared with other jobs).",
        "The baseline is the same build with `nattrav-server --no-observe`, interleaved in the same run.", "",
        *table, ""])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
