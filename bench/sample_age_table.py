"""Tabulate bench/pair_trials.py rows by tag, case and --accept-delay: connected against what the stated
odds expect (their sum, and the trials stated at >= 99 %), the horizons both sides planned with, the
window each side aimed at and where the peer's port sat in it.

    .venv/bin/python bench/sample_age_table.py bench/results/sample-age.jsonl
"""

from __future__ import annotations

import collections
import json
import statistics
import sys


def _params(row: dict, side: str) -> dict:
    return ((row["extra"].get(f"diag_{side}") or {}).get("params")) or {}


def _med(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):g}" if xs else "—"


def _span(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return f"{min(xs):g}–{max(xs):g}" if xs else "—"


def _events(row: dict, side: str) -> list:
    return (row["extra"].get(f"diag_{side}") or {}).get("events") or []


def _connect_time(row: dict) -> float | None:
    """The initiator's connect (its last rendezvous-connect) to its connected path, seconds."""
    ev = _events(row, "a")
    starts = [t for name, t, _ in ev if name == "rendezvous-connect"]
    ends = [t for name, t, _ in ev if name == "connected"]
    return round((ends[-1] - starts[-1]) / 1000, 3) if starts and ends else None


def _resampled(row: dict) -> bool:
    """The server asked the initiator for fresh samples (rendezvous/held.py)."""
    return any(name == "resample" for name, _, _ in _events(row, "a"))


def main(path: str) -> int:
    from nattrav.lab.matrix import wilson

    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in rows:
        groups[(r["left"], r["right"], r.get("accept_delay", 0.0), r["tag"])].append(r)
    print("| case | accept delay | tag | connected | Wilson 95% | expected (Σ stated odds) | stated ≥ 99 %: connected | "
          "horizons a, b (median, s) | window at a's NAT (median; range) | rank of a's port there (median; max) | "
          "window at b's NAT (median) | rank of b's port (median; max) | initiator re-sampled | "
          "a: connect → connected (median; max, s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (left, right, delay, tag), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2],
                                                                                  kv[0][3] != "before")):
        ok = sum(r["ok"] for r in rs)
        lo, hi = wilson(ok, len(rs))
        odds = [r["odds"] for r in rs if r["odds"] is not None]
        hz = [_params(r, "a").get("horizons") for r in rs]
        ha, hb = [h[0] for h in hz if h], [h[1] for h in hz if h]
        at_a = [_params(r, "b").get("local_targets") for r in rs]  # b aims at a's NAT
        at_b = [_params(r, "a").get("local_targets") for r in rs]
        rank_a = [(r["extra"].get("prediction_b") or {}).get("rank") for r in rs]
        rank_b = [(r["extra"].get("prediction_a") or {}).get("rank") for r in rs]
        sure = [r for r in rs if (r["odds"] or 0) >= 0.99]
        ct = [_connect_time(r) for r in rs if r["ok"]]
        print(f"| {left} → {right} | {delay:g} s | {tag} | {ok}/{len(rs)} | {lo:.1%}–{hi:.1%} | "
              f"{sum(odds):.1f} | {sum(r['ok'] for r in sure)}/{len(sure)} | "
              f"{_med(ha)}, {_med(hb)} | {_med(at_a)}; {_span(at_a)} | "
              f"{_med(rank_a)}; {max([x for x in rank_a if x is not None], default='—')} | {_med(at_b)} | "
              f"{_med(rank_b)}; {max([x for x in rank_b if x is not None], default='—')} | "
              f"{sum(_resampled(r) for r in rs)}/{len(rs)} | {_med(ct)}; {max([x for x in ct if x is not None], default='—')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
