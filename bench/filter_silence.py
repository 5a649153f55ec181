"""How late a filtering test's answer can come, and whether discovery's silence rule waits for it.

In the NAT lab, node "a" behind `--nat` (default full-cone: both change answers come; restricted-cone:
the change-port one) runs discover() `--runs` times against our STUN server (`--layout` rfc5780 or
two-host), with the silence opened to 0.5 s so that every answer is seen. For each run it records test
I's RTT, when each filtering answer came (after the test's first and last request) and when the tests
after test I were all answered; then it replays every run through silence rules: an answer counts if
it came within the rule's silence after the test's last request, or before the tests after test I
were answered (discover() never gives the filtering tests up earlier). A rule's "misses" are runs that
would have read a filter that is not there (the cautious side: EIF as ADF/APDF). The old schedule
(35 ms after a request sent once test I had answered) is replayed as 35 ms after the first request.

Load the machine yourself to see the tail (e.g. a few `python3 -c "while True: pass"`); the load
average is printed. Needs root (the lab). bench/results/cold-discovery.md has the numbers.

    .venv/bin/python bench/filter_silence.py --runs 300 --layout two-host
    .venv/bin/python bench/filter_silence.py --nat restricted-cone --json > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CLIENT = r'''
import json, sys
import trio
import nattrav.io.stun_discover as sd

sd.MIN_SILENCE = 0.5  # see every answer, however late
rec = []
feed = sd.FilterTest._feed

def _feed(self):
    was = self.done.is_set()
    feed(self)
    if not was and self.done.is_set() and self.tx.result is not None:
        rec.append(("ans", self.tx.result.received_at, self.last_sent, self.tx._started_at))

sd.FilterTest._feed = _feed
binding, run_transactions = sd.binding, sd.run_transactions

async def _binding(*a, **k):
    r = await binding(*a, **k)
    rec.append(("t1", r.rtt, r.received_at))
    return r

async def _run_transactions(jobs, **k):
    r = await run_transactions(jobs, **k)
    rec.append(("after", trio.current_time()))
    return r

sd.binding, sd.run_transactions = _binding, _run_transactions

async def main():
    out = []
    for _ in range(int(sys.argv[2])):
        rec.clear()
        b = await sd.discover((sys.argv[1], 3478), hairpin=False)
        t1 = next(r for r in rec if r[0] == "t1")
        after = next(r for r in rec if r[0] == "after")
        out.append({"rtt1": t1[1], "after_done": after[1] - t1[2] + t1[1], "filtering": str(b.filtering),
                    "answers": [{"after_last": r[1] - r[2], "after_first": r[1] - r[3]}
                                for r in rec if r[0] == "ans"]})
        await trio.sleep(0.02)
    print(json.dumps(out))

trio.run(main)
'''

RULES = {  # name: (slack s, floor s)
    "1.5 RTT + 10 ms, >= 15 ms (discover's)": (0.010, 0.015),
    "1.5 RTT + 15 ms, >= 20 ms": (0.015, 0.020),
    "1.5 RTT + 20 ms, >= 30 ms": (0.020, 0.030),
}
OLD_WINDOW = 0.035


def answered_in_time(run: dict, slack: float, floor: float) -> bool:
    silence = max(floor, 1.5 * run["rtt1"] + slack)
    return all(a["after_last"] <= silence or a["after_first"] <= run["after_done"] for a in run["answers"])


def quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def summary(runs: list[dict]) -> dict:
    late = [a["after_last"] for r in runs for a in r["answers"]]
    excess = [a["after_last"] - 1.5 * r["rtt1"] for r in runs for a in r["answers"]]
    return {
        "runs": len(runs),
        "answers": len(late),
        "filtering": sorted({r["filtering"] for r in runs}),
        "rtt1_ms": {"p50": quantile([r["rtt1"] * 1e3 for r in runs], 0.5), "max": max(r["rtt1"] for r in runs) * 1e3},
        "answer_after_last_ms": {"p50": quantile(late, 0.5) * 1e3, "p99": quantile(late, 0.99) * 1e3,
                                 "max": max(late, default=0.0) * 1e3},
        "excess_over_1.5rtt_ms": {"p99": quantile(excess, 0.99) * 1e3, "max": max(excess, default=0.0) * 1e3},
        "misses": {**{name: sum(not answered_in_time(r, s, f) for r in runs) for name, (s, f) in RULES.items()},
                   "old schedule (35 ms)": sum(any(a["after_first"] > OLD_WINDOW for a in r["answers"]) for r in runs)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nat", default="full-cone", help="the lab preset in front of node a (default full-cone)")
    p.add_argument("--layout", default="rfc5780", choices=["rfc5780", "two-host"],
                   help="STUN server layout (default rfc5780)")
    p.add_argument("--runs", type=int, default=200, help="discover() runs (default 200)")
    p.add_argument("--json", action="store_true", help="print the runs and the summary as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if os.geteuid() != 0:
        p.error("the NAT lab needs root")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nattrav.lab.lab import Lab
    from tests.stun.labkit import stun_servers

    load_before = os.getloadavg()[0]
    lab = Lab(left=args.nat, right="port-restricted", second_server=args.layout == "two-host").up()
    try:
        with stun_servers(lab, args.layout) as server:
            r = lab.run("a", [sys.executable, "-c", CLIENT, server[0], str(args.runs)], timeout=60 + args.runs)
    finally:
        lab.down()
    if r.returncode != 0:
        print(f"the client in the lab failed ({r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
        return 1
    runs = json.loads(r.stdout)
    out = {"nat": args.nat, "layout": args.layout, "load": [load_before, os.getloadavg()[0]], **summary(runs)}
    if args.json:
        print(json.dumps({**out, "per_run": runs}))
    else:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
