"""Spans between two phases of bench/matrix.py --cold runs, a baseline's beside a change's.

    .venv/bin/python bench/phase_spans.py --base /tmp/base-r1.json /tmp/base-r2.json \\
        --after /tmp/after-r1.json /tmp/after-r2.json --span listener:offer plan

Per case and kind: the median time to `secure` (process start -> QUIC-secured path), and the median
span from the first phase to the second, over every connected trial of the given runs (pooled), for
the baseline and the change, with the change's ratio to the baseline."""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def _rows(paths: list[str]) -> dict[tuple[str, str, str], list[dict]]:
    out: dict[tuple[str, str, str], list[dict]] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for case in data["cases"]:
            for kind, v in case.get("kinds", {}).items():
                key = (f"{case['left']} -> {case['right']}", case["shape"], kind)
                out.setdefault(key, []).extend(e for e in v.get("events", []) if e)
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summary(events: list[dict], first: str, second: str) -> tuple[int, float | None, float | None]:
    secure = [e["secure"] for e in events if "secure" in e]
    spans = [e[second] - e[first] for e in events if first in e and second in e]
    return len(events), _median(secure), _median(spans)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", required=True, help="the baseline's JSON files")
    p.add_argument("--after", nargs="+", required=True, help="the change's JSON files")
    p.add_argument("--span", nargs=2, default=["listener:offer", "plan"], metavar=("FROM", "TO"))
    args = p.parse_args(argv)
    try:
        base, after = _rows(args.base), _rows(args.after)
    except (OSError, ValueError, KeyError) as exc:
        print(f"phase_spans: cannot read the runs: {exc}", file=sys.stderr)
        return 2
    first, second = args.span
    print(f"| case | shape | kind | trials base / after | secure median base / after s | ratio "
          f"| {first} -> {second} base / after s |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(set(base) | set(after)):
        nb, sb, pb = summary(base.get(key, []), first, second)
        na, sa, pa = summary(after.get(key, []), first, second)
        ratio = f"{sa / sb:.2f}" if sa and sb else "—"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {nb} / {na} | {sb} / {sa} | {ratio} | {pb} / {pa} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
