#!/usr/bin/env python3
"""Where a burst's time goes (issue 17's "burst core at the floor"): the 1024x1 burst of
bench/burst_ratios.py (1024 sockets, one packet each) split into its stages, against the bare C loop,
all in one run.

    sudo .venv/bin/python bench/burst_breakdown.py [--reps 60]

Per fire (median over reps): command -> the worker's first packet handed to the kernel (coordinator
packing, the pipe, the worker's wake-up and unpacking, the C call's set-up), first -> last packet (the
send loop itself), last packet -> the coordinator has the reply (the stats back over the pipe). Then
the same burst with a low TTL (IP_TTL ancillary data on each packet: sendmsg instead of sendto), a
1-packet burst (the fixed cost of one fire: IPC and scheduling with nothing to send), and 2 workers."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from array import array

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from burst_ratios import PAYLOAD, bare, build_bare  # noqa: E402

from nattrav.core import Burst  # noqa: E402
from nattrav.workers import open_coordinator  # noqa: E402
from nattrav.workers.netns import enter_named, sink_pair  # noqa: E402


async def stages(workers: int, plan, count: int, src_ip: str, reps: int) -> dict:
    async with open_coordinator(workers, pin=True) as coord:
        await coord.open_sockets(count, src_ip)
        await coord.fire(plan)  # warm
        rows = []
        for _ in range(reps):
            t0 = time.monotonic_ns()
            await coord.fire(plan)
            t1 = time.monotonic_ns()
            st = coord.last_fire
            rows.append({"to_first_ms": (st.last_ns - t0) / 1e6 - st.send_span_s * 1e3,
                         "send_span_ms": st.send_span_s * 1e3, "c_elapsed_ms": st.elapsed_s * 1e3,
                         "reply_ms": (t1 - st.last_ns) / 1e6, "total_ms": (t1 - t0) / 1e6,
                         "syscalls": st.syscalls})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("burst_breakdown: needs root (network namespaces)", file=sys.stderr)
        return 2
    r: dict = {}
    with tempfile.TemporaryDirectory() as tmp, sink_pair(f"nt-bd-{os.getpid()}") as net:
        exe = build_bare(tmp)
        enter_named(net["src"])
        src, dst = net["src_ip"], net["sink_ip"]
        plain = Burst(range(1024), dst, array("H", [9000]) * 1024, PAYLOAD).pack()
        low = Burst(range(1024), dst, array("H", [9000]) * 1024, PAYLOAD, ttl=2).pack()
        one = Burst([0], dst, array("H", [9000]), PAYLOAD).pack()
        r["bare_1024x1_ms"] = bare(exe, "send", 1024, 1, src, dst, 9000, "mmsg", args.reps + 1)["median_ns"] / 1e6
        for name, plan, w in (("1w", plain, 1), ("1w_ttl", low, 1), ("1w_1packet", one, 1), ("2w", plain, 2)):
            r[name] = trio.run(stages, w, plan, 1024, src, args.reps)
    b = r["bare_1024x1_ms"]
    print(f"bare C, 1024 sockets x 1 packet: {b:.3f} ms")
    print(f"{'':14} {'cmd->1st pkt':>12} {'send span':>10} {'C elapsed':>10} {'last->reply':>12} {'total':>8} {'bare/total':>10}")
    for name in ("1w", "1w_ttl", "1w_1packet", "2w"):
        s = r[name]
        print(f"{name:14} {s['to_first_ms']:12.3f} {s['send_span_ms']:10.3f} {s['c_elapsed_ms']:10.3f} "
              f"{s['reply_ms']:12.3f} {s['total_ms']:8.3f} {b / s['total_ms']:10.2f}")
    # the TTL travels in each packet's control message, so its cost is inside the send loop
    ttl_cost = r["1w_ttl"]["c_elapsed_ms"] - r["1w"]["c_elapsed_ms"]
    print(f"low TTL on 1024 sockets (IP_TTL control message, inside the send loop): {ttl_cost:+.3f} ms "
          f"({ttl_cost * 1e3 / 1024:+.2f} us a packet)")
    print(f"fixed cost of one fire (1 packet): {r['1w_1packet']['total_ms']:.3f} ms; "
          f"1 worker's send loop / bare: {r['1w']['c_elapsed_ms'] / b:.2f}; 2 workers / 1: "
          f"{r['1w']['total_ms'] / r['2w']['total_ms']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
