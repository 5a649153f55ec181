"""The cost of an honest horizon: the window a predicted plan aims at a sequential NAT, and the odds it
states, by sample age and flow budget (pure planner, no sockets).

    .venv/bin/python bench/horizon_windows.py

A sequential symmetric initiator (Δ=1) towards a port-restricted listener; the initiator's NAT seen
as the lab's wan50 trials saw it (0 or 1 foreign flow in the ~0.12 s its samples spanned), or with
6 foreign flows in 1.2 s (the lab's 5 flows/s, over a longer look). Budget: the flows the listener may spend aiming (a CGN subscriber's share is
~100–500, a home router's 1024)."""

from __future__ import annotations

import sys
import time


def udp(mapping: str, ports: list[int], times: list[float], allocation: str, delta: int,
        ip: str = "203.0.113.10"):
    from nattrav.proto.report import NatReport, Sample
    from nattrav.proto.vocab import Allocation, Filtering, Mapping

    return NatReport(mapping=Mapping(mapping), filtering=Filtering("APDF"), allocation=Allocation(allocation),
                     delta=delta, public=(ip, ports[-1]), samples=tuple(Sample(p, t) for p, t in zip(ports, times)))


def main() -> int:
    from nattrav.proto.planner.udp import plan

    prc = udp("EIM", [40000, 40000], [0.0, 0.001], "preserve", 0, ip="198.51.100.20")
    seqs = {  # what the lab's initiator saw over wan50 (plan reasons in bench/results/sample-age.jsonl)
        "0 flows in 113 ms": udp("APDM", [20000, 20001], [0.0, 0.113], "sequential", 1),
        "1 flow in 121 ms": udp("APDM", [20000, 20002], [0.0, 0.121], "sequential", 1),
        "6 flows in 1.2 s": udp("APDM", [20000, 20001, 20008], [0.0, 0.005, 1.205], "sequential", 1),
    }
    ages = (0.3, 0.6, 1.0, 1.2, 2.0, 3.4, 4.3, 8.0)
    budgets = (1024, 512, 128, 64)
    print("| NAT seen | budget | " + " | ".join(f"{a:g} s" for a in ages) + " |")
    print("|---|---|" + "---|" * len(ages))
    t = time.monotonic()
    for name, seq in seqs.items():
        for budget in budgets:
            cells = []
            for age in ages:
                p = plan(seq, prc, "first", horizons=(age, 0.3), flow_budget=budget)
                cells.append(f"{len(p.primary.remote.targets)} ({p.odds:.2%})")
            print(f"| {name} | {budget} | " + " | ".join(cells) + " |")
    print(f"\n(window ports at the initiator's NAT (stated odds); {time.monotonic() - t:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
