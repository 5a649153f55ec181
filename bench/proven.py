"""Which feasible cases are shown at the reliability bar (issue 13: >= 99.9 % of trials), and which
are not yet, from the matrix runs' JSON in bench/results.

A case is at the bar when one run's trials of it (summed over that run's labs: a run may split one
pair over several labs, `--pairs A:B A:B --jobs 2`) have a Wilson 95 % lower bound >= the bar: at
99.9 % that takes ~3,800 trials without a miss. Runs are never pooled with each other (each ran its
own tree). The universe of cases to show comes from the broad matrices (every feasible case they
ran, per shape and protocol):

Cases a birthday connects (a random-port NAT against a fixed one) connect by chance, at odds the two
sides' flow budgets bound (1 - C(N-s, p)/C(N, p)): at the default budgets 99.97 % against a CGN side,
98.3 % with two. No run can show a true 99.97 % at a 99.9 % lower bound short of ~20,000 trials, each
needing a fresh budget (30 s apart). For them the second list checks what a run can check: a run whose
trials were FLOW_LINGER apart (`--trial-gap 31`: each trial a user's first connect) agrees with the odds
the plans stated (those inside the run's Wilson interval), and whether those odds reach the bar.

    .venv/bin/python bench/proven.py
    .venv/bin/python bench/proven.py --bar 0.999 --universe bench/results/matrix-cgn.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from nattrav.lab.matrix import wilson
from nattrav.proto.planner.budget import FLOW_LINGER

DEFAULT_UNIVERSE = ("bench/results/matrix-cgn.json", "bench/results/matrix-cgn-wan50.json",
                    "bench/results/matrix-realism-w6.json")

Key = tuple[str, str, str, str, str]  # proto, left, right, shape, server


def key(case: dict) -> Key:
    return ("TCP" if case.get("tcp") else "UDP", case["left"], case["right"], case["shape"],
            case.get("server", "two-address"))


def load(path: str) -> tuple[dict, list[dict]] | None:
    """A matrix run's (meta, cases), or None for anything else (other benches' JSON)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        return None
    return data.get("meta", {}), [c for c in data["cases"] if isinstance(c, dict) and "left" in c]


def runs(paths: Iterable[str], keep: Callable[[dict, dict], bool] = lambda meta, case: True) -> list[dict]:
    """One row per case and run, over the lab rows `keep(meta, case)` takes: trials and connections
    summed over the run's labs of that case, the lowest odds its labs' plans stated (median per lab)
    and the misses those odds expect (1.0 and 0.0 where a lab row states none)."""
    out = []
    for path in paths:
        loaded = load(path)
        if loaded is None:
            continue
        meta, cases = loaded
        summed: dict[Key, dict] = {}
        for c in cases:
            if not keep(meta, c):
                continue
            n = summed.setdefault(key(c), {"trials": 0, "connected": 0, "labs": 0, "odds": 1.0, "expected": 0.0})
            trials = int(c.get("trials", 0))
            n["trials"] += trials
            n["connected"] += int(c.get("connected", 0))
            n["labs"] += 1
            if isinstance(odds := c.get("odds_median"), (int, float)):
                n["odds"] = min(n["odds"], float(odds))
                n["expected"] += trials * (1 - float(odds))
        for k, n in summed.items():
            out.append({"key": k, **n, "wilson": wilson(n["connected"], n["trials"]),
                        "file": Path(path).name, "date": meta.get("date", "?")})
    return out


def _fresh_birthday(meta: dict, case: dict) -> bool:
    """A lab row every trial of which was a birthday that met a fresh flow budget (the run's trials
    FLOW_LINGER apart), with the odds its plans stated."""
    return (float(meta.get("trial_gap") or 0) >= FLOW_LINGER and case.get("strategies") == ["birthday"]
            and isinstance(case.get("odds_median"), (int, float)))


def chance_runs(paths: Iterable[str]) -> list[dict]:
    """runs() of the cases a birthday connected at a fresh budget, each saying whether its stated
    odds lie inside its Wilson interval."""
    return [{**r, "agree": r["wilson"][0] <= r["odds"] <= r["wilson"][1]} for r in runs(paths, _fresh_birthday)]


def universe(paths: Iterable[str]) -> set[Key]:
    """The feasible cases the broad matrices ran (birthday pairs, 'probabilistic', are not counted:
    their odds are bounded by the flow budget by design)."""
    out = set()
    for path in paths:
        loaded = load(path)
        if loaded is not None:
            out |= {key(c) for c in loaded[1] if c.get("expect") == "feasible"}
    return out


def _name(k: Key) -> str:
    proto, left, right, shape, server = k
    return f"{proto} {left} → {right} @{shape}" + ("" if server == "two-address" else f" ({server})")


def _pct(x: float) -> str:
    return f"{100 * x:.5g}"


def report(rows: list[dict], cases: set[Key], bar: float, chance: Iterable[dict] = ()) -> str:
    best: dict[Key, dict] = {}
    for r in rows:
        if r["key"] not in best or r["wilson"][0] > best[r["key"]]["wilson"][0]:
            best[r["key"]] = r
    shown = sorted((r for r in best.values() if r["wilson"][0] >= bar), key=lambda r: _name(r["key"]))
    lines = [f"# Cases at the bar: Wilson 95 % lower bound >= {_pct(bar)} % in one run", "",
             "| case | connected | Wilson 95% | labs | run |", "|---|---|---|---|---|"]
    lines += [f"| {_name(r['key'])} | {r['connected']}/{r['trials']} | {_pct(r['wilson'][0])}–{_pct(r['wilson'][1])}% "
              f"| {r['labs']} | {r['file']} ({r['date']}) |" for r in shown]
    at_bar = {r["key"] for r in shown}
    todo = sorted(cases - at_bar, key=_name)
    lines += ["", f"{len(at_bar & cases)} of the {len(cases)} feasible cases of the broad matrices are at the bar"
              f" ({len(at_bar - cases)} more shown outside them)."]
    # the largest fresh-budget run of each case a birthday connects
    by_chance: dict[Key, dict] = {}
    for r in chance:
        if r["key"] not in by_chance or r["trials"] > by_chance[r["key"]]["trials"]:
            by_chance[r["key"]] = r
    checked = sorted((by_chance[k] for k in todo if k in by_chance and by_chance[k]["agree"]),
                     key=lambda r: _name(r["key"]))
    if checked:
        reach = [r for r in checked if r["odds"] >= bar]
        lines += ["", "## Connected by chance (birthday): the stated odds against a fresh-budget run", "",
                  "| case | connected | Wilson 95% | stated odds | misses expected | run |", "|---|---|---|---|---|---|"]
        lines += [f"| {_name(r['key'])} | {r['connected']}/{r['trials']} | {_pct(r['wilson'][0])}–{_pct(r['wilson'][1])}% "
                  f"| {_pct(r['odds'])}% | {r['expected']:.2f} | {r['file']} ({r['date']}) |" for r in checked]
        lines += ["", f"{len(checked)} of the others connect by chance at the odds their plans state (inside the run's"
                  f" interval): {len(reach)} state >= {_pct(bar)} % at the default flow budgets,"
                  f" {len(checked) - len(reach)} less (the budgets cap them; --max-flows lifts them)."
                  f" Misses expected {sum(r['expected'] for r in checked):.2f},"
                  f" seen {sum(r['trials'] - r['connected'] for r in checked)}."]
        done = {r["key"] for r in checked}
        todo = [k for k in todo if k not in done]
    lines += ["", f"Not yet ({len(todo)}):", ""]
    for k in todo:
        r = best.get(k)
        seen = (f"best run {r['connected']}/{r['trials']}, lower bound {_pct(r['wilson'][0])} %"
                if r else "no run")
        lines.append(f"- {_name(k)}: {seen}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="matrix JSON files (default: bench/results/matrix-*.json)")
    p.add_argument("--bar", type=float, default=0.999, help="the success rate to show (default 0.999)")
    p.add_argument("--universe", nargs="*", default=list(DEFAULT_UNIVERSE),
                   help="the broad matrices whose feasible cases are to be shown")
    a = p.parse_args(argv)
    if not 0 < a.bar < 1:
        print(f"proven: --bar must be between 0 and 1, got {a.bar}", file=sys.stderr)
        return 2
    files = a.files or sorted(glob.glob("bench/results/matrix-*.json"))
    missing = [f for f in [*files, *a.universe] if not Path(f).is_file()]
    if missing:
        print(f"proven: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    sys.stdout.write(report(runs(files), universe(a.universe), a.bar, chance_runs(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
