"""Tabulate bench/pair_trials.py's rows: per tag and case, the trials, how many plans read the
sequential side's samples per sample interval (untimed) or in seconds, the window each side aimed
at and the rank of the port that connected, and every miss.

    .venv/bin/python bench/pair_trials_table.py bench/results/predicted-wan50-misses.jsonl
"""

from __future__ import annotations

import collections
import json
import re
import sys

UNTIMED = re.compile(r"in \d+ sample intervals seen")


def _window(row: dict, side: str) -> int | None:
    for phase, _, d in (row["extra"].get(f"diag_{side}") or {}).get("events", []):
        if phase == "plan" and d:
            return d.get("targets")
    return None


def main(path: str) -> int:
    from nattrav.lab.matrix import wilson

    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in rows:
        groups[(r["tag"], r["left"], r["right"], r["shape"])].append(r)
    print("| tag | case | shape | connected | Wilson 95% | mean stated odds | untimed plans (ok) | "
          "window b→a (median) | rank of a's port at b: histogram |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (tag, left, right, shape), rs in groups.items():
        ok = sum(r["ok"] for r in rs)
        lo, hi = wilson(ok, len(rs))
        odds = [r["odds"] for r in rs if r["odds"] is not None]
        untimed = [r for r in rs if UNTIMED.search(r["extra"].get("plan_reason_a") or "")]
        windows = sorted(w for r in rs if (w := _window(r, "b")) is not None)
        ranks = collections.Counter((r["extra"].get("prediction_b") or {}).get("rank") for r in rs if r["ok"])
        hist = ", ".join(f"{k}:{v}" for k, v in sorted(ranks.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
        print(f"| {tag} | {left} → {right} | {shape} | {ok}/{len(rs)} | {lo:.1%}–{hi:.1%} | "
              f"{sum(odds) / max(len(odds), 1):.4%} | {len(untimed)} ({sum(r['ok'] for r in untimed)}) | "
              f"{windows[len(windows) // 2] if windows else '—'} | {hist} |")
    for r in rows:
        if not r["ok"]:
            print(f"\nMISS {r['tag']} {r['left']} → {r['right']} batch {r['batch']} trial {r['trial']}:")
            for k in ("reason_a", "reason_b", "plan_reason_a", "plan_reason_b", "prediction_a", "prediction_b"):
                print(f"  {k}: {r['extra'].get(k)}")
            for side in "ab":
                d = r["extra"].get(f"diag_{side}") or {}
                print(f"  timeline {side}: " + "; ".join(f"{p}@{t}" + (f" {json.dumps(x)}" if x else "")
                                                        for p, t, x in d.get("events", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
