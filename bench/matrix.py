"""The connection matrix as a measurement: many trials per case, written as a markdown table and JSON.

A case is a pair of lab NATs (left in front of peer a, right in front of peer b, or `same-NAT`: both
peers behind the left one) over a shape (delay/jitter/loss on each access link, routers between the
NATs). NAT names take the lab's grammar, so layers, pools and flow caps are just names:
`port-restricted+cgn` (a home NAT behind a carrier-grade NAT), `symmetric-seq,public_ips=4,
pooling=arbitrary`, `symmetric-random,max_flows=4096`.

    .venv/bin/python bench/matrix.py                       # all 64 preset pairs, 50 trials, flat
    .venv/bin/python bench/matrix.py --realism --trials 10 # the new axes (layers, pools, caps,
                                                           #   same-NAT, TCP≠UDP) over flat and wan50
    .venv/bin/python bench/matrix.py --pairs 'port-restricted+cgn:symmetric-seq' --shapes flat wan50
    .venv/bin/python bench/matrix.py --same-nat symmetric-seq port-restricted
    .venv/bin/python bench/matrix.py --realism --only same-NAT --trials 8 --out bench/results/matrix-same-nat
    .venv/bin/python bench/matrix.py --tcp --trials 10      # TCP traversal -> bench/results/matrix-tcp.*
    .venv/bin/python bench/matrix.py --server one-address two-host --trials 5
    .venv/bin/python bench/matrix.py --relay --server one-address --trials 3   # the ladder ends at coturn
                                                           # the same matrix with the servers on one IP
                                                           #   (a cloud VM) and on two hosts of one IP each
    .venv/bin/python bench/matrix.py --cold --trials 5      # cold/warm time-to-connect, nattrav vs ICE
    .venv/bin/python bench/matrix.py --cold --realism --trials 5   # the same over the new axes, flat + wan50
    .venv/bin/python bench/matrix.py --cold --product-src ../old/src --out bench/results/cold-udp-before
                                                           # today's numbers: an older tree's product

Per case: success rate with its Wilson 95 % interval, the planner's stated odds (median over trials)
and whether they fall inside that interval, the strategy, median and 95th-percentile time from the
agreed start to the authenticated path, and the predictor's hit rate. The agents are given only
what a user would type (the server address): no TTL, nothing the lab knows. Needs root (the lab).

With --cold (bench/cold.py) every trial is a fresh connecting process, timed from its start to the
authenticated path: `nattrav-fast -d` with an empty behaviour cache (cold), again with the cache it
just wrote (warm), and a plain ICE agent (bench/ice_agent.py, aioice: `pip install -e '.[bench]'`)
through the same servers, interleaved in the same lab. Per case and kind: success rate with its
Wilson interval, median and p95 seconds; then per strategy and shape, pooled over the cases, next to
ICE on the cases both connect and, with --compare, an older run's numbers (today's, before a change).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import pathlib
import sys
import time

from nattrav.lab.matrix import (MATRIX_PRESETS, SAME_NAT, SERVER_LAYOUTS, calibration, expectation, run_pair, summarise,
                                tcp_expectation)
from nattrav.lab.registry import install_hooks

# The new axes, each case (left, right, tcp): layers (a home NAT behind a CGN, one pair per UDP
# strategy; three layers; a CGN of another kind), address pools, flow caps, same-NAT peers and a
# NAT whose cone applies to UDP only, tried over TCP.
REALISM = [
    ("port-restricted+cgn", "none", False),                  # direct
    ("port-restricted+cgn", "port-restricted", False),       # simultaneous
    ("restricted-cone", "symmetric-seq+cgn", False),         # address-open
    ("port-restricted+cgn", "symmetric-seq", False),         # predicted
    ("port-restricted+cgn", "symmetric-random", False),      # birthday
    ("symmetric-random+cgn", "symmetric-seq", False),        # random-sequential
    ("symmetric-random+cgn", "symmetric-random", False),     # best effort (infeasible)
    ("full-cone+symmetric-seq+cgn", "port-restricted", False),  # three layers
    ("port-restricted+cgn-random", "full-cone", False),      # a random CGN behind a home cone
    ("symmetric-seq,public_ips=4", "port-restricted", False),                 # paired pool
    ("symmetric-seq,public_ips=4,pooling=arbitrary", "port-restricted", False),  # arbitrary pool
    ("port-restricted,public_ips=4,pooling=arbitrary", "symmetric-seq", False),
    ("symmetric-random", "port-restricted,max_flows=4096", False),           # birthday into a small table
    ("symmetric-random,max_flows=4096", "symmetric-seq", False),             # random-sequential, small table
    ("symmetric-seq", SAME_NAT, False),                       # no hairpinning
    ("port-restricted", SAME_NAT, False),                     # hairpinning
    ("symmetric-random", SAME_NAT, False),
    ("symmetric-seq", SAME_NAT, True),                        # the same three over TCP
    ("port-restricted", SAME_NAT, True),
    ("symmetric-random", SAME_NAT, True),
    ("udp-full-cone", "symmetric-random", True),              # UDP-only cone, over TCP
    ("udp-restricted-cone", "symmetric-seq-2", True),
]
REALISM_SHAPES = ("flat", "wan50")


def _row_for_error(left: str, right: str, shape: str, tcp: bool, exc: Exception, server: str = "two-address") -> dict:
    return {"left": left, "right": right, "shape": shape, "tcp": tcp, "server": server,
            "expect": (tcp_expectation if tcp else expectation)(left, right), "trials": 0, "connected": 0,
            "success": 0.0, "wilson": [0.0, 1.0], "odds": None, "odds_floor": False, "odds_agree": None, "strategies": [],
            "median_s": None, "p95_s": None, "predictions": 0, "prediction_hits": 0, "median_rank": None,
            "failures": [repr(exc)[:1000]]}


def _pct(x: float | None) -> str:
    # the digits that matter: 99.999% and 100% must not both print as 1.000
    return "—" if x is None else f"{100 * x:.6g}%"


def _band(b: dict) -> str:
    """A calibration group's name: its band of stated odds, or the plans whose odds were a floor."""
    return "at least (LAN not counted)" if b.get("floor") else f"{100 * b['band'][0]:g}–{100 * b['band'][1]:g}%"


def _bound(x: float) -> str:
    # a Wilson bound with the digits that matter: 4,000 of 4,000 is 99.904–100, not 100–100
    return f"{100 * x:.5g}"


def _gist(reason: str, head: int = 160, tail: int = 320) -> str:
    """A failure reason for a table line: its start (the behaviours) and its end (the rungs tried and
    what broke); the JSON keeps it whole."""
    return reason if len(reason) <= head + tail + 5 else f"{reason[:head]} … {reason[-tail:]}"


def markdown(table: list[dict], meta: dict) -> str:
    f = (lambda x: "—" if x is None else f"{x:.3f}")  # noqa: E731
    out = [f"# nattrav matrix — {meta['trials']} trials a case, background {meta['background']} ports/s a NAT, "
           f"{meta['date']} ({meta['seconds']} s)"
           + (f", {meta['trial_gap']:g} s between trials" if meta.get("trial_gap") else ""), "",
           "Shapes: " + "; ".join(f"`{k}` {v}" for k, v in meta["shapes"].items()), "",
           "| proto | A's NAT → B's NAT | shape | server | expected | connected | Wilson 95% | planner odds | odds in "
           "interval | strategy | median s | p95 s | prediction hits |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        pred = f"{t['prediction_hits']}/{t['predictions']}" if t["predictions"] else "—"
        agree = {True: "yes", False: "**no**", None: "—"}[t["odds_agree"]]
        lo, hi = t["wilson"]
        out.append(f"| {'TCP' if t.get('tcp') else 'UDP'} | {t['left']} → {t['right']} | {t['shape']} | "
                   f"{t.get('server', 'two-address')} | {t['expect']} | "
                   f"{t['connected']}/{t['trials']} ({100 * t['success']:.0f}%) | {_bound(lo)}–{_bound(hi)}% | "
                   f"{'≥ ' if t.get('odds_floor') else ''}{_pct(t['odds'])} | {agree} | {', '.join(t['strategies'])} | {f(t['median_s'])} | "
                   f"{f(t['p95_s'])} | {pred} |")
    # a lab that never came up ran 0 trials: its error is said too, or the run silently shrinks
    failing = [t for t in table if (t["expect"] == "feasible" and t["connected"] < t["trials"]) or not t["trials"]]
    agains = [t for t in table if t.get("again")]
    out += ["", "## Trials whose first punch failed at high odds and that went a second round", ""]
    out += [f"- {'TCP' if t.get('tcp') else 'UDP'} {t['left']} → {t['right']} ({t['shape']}, {t.get('server')}): "
            f"{t['again']} of {t['trials']}, {t['again_connected']} of them connected"
            + "".join(f"\n  - trial {i} ({'connected' if ok else 'failed'}): A: {a or '—'}; B: {b or '—'}"
                      for i, ok, a, b in t.get("again_found", []))
            for t in agains] or ["- none"]
    out += ["", "## Feasible cases that did not always connect", ""]
    out += [f"- {'TCP' if t.get('tcp') else 'UDP'} {t['left']} → {t['right']} ({t['shape']}, {t.get('server')}): "
            f"{t['connected']}/{t['trials']}; {_gist(t['failures'][0]) if t['failures'] else ''}" for t in failing] or ["- none"]
    wrong = [t for t in table if t["odds_agree"] is False]
    bands = calibration([t for t in table if t["expect"] == "feasible"])
    if bands:
        out += ["", "## Feasible cases' trials by the odds their plans stated", "",
                "| stated odds | trials | connected | expected (sum of odds) | Wilson 95% | mean stated | agree |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {_band(b)} | "
                f"{b['trials']} | {b['connected']} | {b['expected']:g} | "
                f"{_bound(b['wilson'][0])}–{_bound(b['wilson'][1])}% | {_pct(b['mean_odds'])} | "
                f"{'yes' if b['agree'] else '**no**'} |" for b in bands]
    out += ["", "## Stated odds outside the measured interval", ""]
    out += [f"- {t['left']} → {t['right']} ({t['shape']}, {t.get('server')}): stated {'≥ ' if t.get('odds_floor') else ''}"
            f"{_pct(t['odds'])}, measured "
            f"{t['connected']}/{t['trials']} (Wilson {_bound(t['wilson'][0])}–{_bound(t['wilson'][1])}%)"
            for t in wrong] or ["- none"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    install_hooks()  # the labs come up in worker threads: SIGTERM's cleanup is set from this one
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--background", type=float, default=5.0, help="ports/s consumed by a helper host behind each NAT")
    p.add_argument("--pairs", nargs="*", help="LEFT:RIGHT pairs (default: every ordered pair of the presets)")
    p.add_argument("--same-nat", nargs="*", default=[], metavar="NAT", help="also: two peers behind one NAT")
    p.add_argument("--shapes", nargs="*", default=None, help="lab shapes to run every case over (default flat)")
    p.add_argument("--realism", action="store_true", help="the new axes: layers, pools, flow caps, same-NAT, "
                   "TCP through UDP-only cones, over the shapes flat and wan50")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (each its own lab)")
    p.add_argument("--trial-timeout", type=float, default=15.0)
    p.add_argument("--trial-gap", type=float, default=0.0, metavar="S",
                   help="seconds between a case's trials (default 0: back to back, so a birthday meets "
                        "the flow budget its predecessors left; 31 gives each trial a fresh one)")
    p.add_argument("--out", help="path prefix for .md and .json (default bench/results/matrix-udp, "
                   "-tcp with --tcp, matrix-realism with --realism)")
    p.add_argument("--tcp", action="store_true", help="TCP traversal (low-TTL SYN, simultaneous open)")
    p.add_argument("--server", nargs="+", choices=SERVER_LAYOUTS, default=["two-address"], metavar="LAYOUT",
                   help=f"how our servers are deployed, each case run once per layout: {', '.join(SERVER_LAYOUTS)} "
                   "(default two-address)")
    p.add_argument("--relay", action="store_true", help="a coturn beside the servers, and nattrav-server "
                   "--turn: pairs that cannot punch (or whose punch fails) end at the relay")
    p.add_argument("--only", metavar="TEXT", help="keep only the cases whose 'LEFT RIGHT' contains TEXT "
                   "(e.g. same-NAT)")
    p.add_argument("--cold", action="store_true", help="cold and warm time-to-connect of a fresh nattrav-fast "
                   "process per trial, beside a plain ICE agent (bench/cold.py)")
    p.add_argument("--kinds", nargs="*", default=None, metavar="KIND",
                   help="with --cold: which of cold, warm, ice (default all three)")
    p.add_argument("--product-src", metavar="DIR", help="with --cold: run the product from this source tree "
                   "(PYTHONPATH), e.g. an older commit's src/ for today's numbers (nattrav cold only)")
    p.add_argument("--compare", metavar="JSON", help="with --cold: an earlier --cold run's .json, shown per "
                   "strategy beside this one (e.g. the --product-src run of the commit before)")
    p.add_argument("--ice-timeout", type=float, default=8.0, help="with --cold: an ICE trial's limit")
    p.add_argument("--secure", action="store_true", help="with --cold: nattrav's default path (QUIC, both keys "
                   "verified) timed to its handshake's end, instead of the raw punched path")
    args = p.parse_args(argv)
    from nattrav.lab import LabError
    from nattrav.lab.presets import resolve
    from nattrav.lab.shape import resolve_shape

    if args.realism:
        cases = list(REALISM)
        shapes = args.shapes or list(REALISM_SHAPES)
        default_out = "bench/results/matrix-realism"
    else:
        bad = [x for x in args.pairs or [] if x.count(":") != 1]
        if bad:
            print(f"matrix: --pairs takes LEFT:RIGHT, got {' '.join(bad)}", file=sys.stderr)
            return 2
        pairs = [tuple(x.split(":", 1)) for x in args.pairs] if args.pairs else list(
            itertools.product(MATRIX_PRESETS, repeat=2))
        cases = [(left, right, args.tcp) for left, right in pairs] + [(n, SAME_NAT, args.tcp) for n in args.same_nat]
        shapes = args.shapes or ["flat"]
        default_out = "bench/results/matrix-tcp" if args.tcp else "bench/results/matrix-udp"
    if args.only:
        cases = [c for c in cases if args.only in f"{c[0]} {c[1]}"]
        if not cases:
            print(f"matrix: no case matches --only {args.only!r}", file=sys.stderr)
            return 2
    try:  # bad names: one line, before any lab comes up
        for left, right, _ in cases:
            resolve(left)
            if right != SAME_NAT:
                resolve(right)
        shape_info = {s: resolve_shape(s).describe() for s in shapes}
    except LabError as exc:
        print(f"matrix: {exc}", file=sys.stderr)
        return 2
    if args.cold:
        if args.tcp or any(tcp for _, _, tcp in cases):
            cases = [c for c in cases if not c[2]]  # nattrav-fast's UDP path against ICE's: UDP only
        default_out = default_out.replace("matrix-", "cold-")
    out = pathlib.Path(args.out or default_out)
    if args.cold:
        return _main_cold(args, cases, shapes, shape_info, out)
    runs = [(left, right, tcp, shape, layout) for left, right, tcp in cases for shape in shapes
            for layout in args.server]
    t0 = time.monotonic()
    table = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_pair, left, right, args.trials, trial_timeout=args.trial_timeout,
                               background=args.background or None, tcp=tcp, shape=shape, server_layout=layout,
                               relay=args.relay, gap=args.trial_gap): run
                   for run in runs for left, right, tcp, shape, layout in [run]}
        for fut in concurrent.futures.as_completed(futures):
            left, right, tcp, shape, layout = futures[fut]
            try:
                row = {**summarise(fut.result(), tcp=tcp), "tcp": tcp}
            except Exception as exc:  # one broken case must not lose the others' numbers
                row = _row_for_error(left, right, shape, tcp, exc, layout)
            table.append(row)
            print(f"[{len(table)}/{len(runs)} {time.monotonic() - t0:.0f}s] {'TCP' if tcp else 'UDP'} {left} -> "
                  f"{right} @{shape} ({layout}): {row['connected']}/{row['trials']} {row['strategies']} "
                  f"median {row['median_s']}" + ("" if row["trials"] else f" -- {row['failures'][0]}"),
                  file=sys.stderr, flush=True)
            if len(table) < len(runs):
                # the cases done so far, kept as they finish: a long run cut short keeps them
                _write_json(out, table, runs, _meta(args, t0, shape_info, partial=True))
    meta = _meta(args, t0, shape_info)
    table = _write_json(out, table, runs, meta)
    md = markdown(table, meta)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _meta(args: argparse.Namespace, t0: float, shape_info: dict, partial: bool = False) -> dict:
    return {"trials": args.trials, "background": args.background, "tcp": args.tcp, "server": args.server,
            "relay": args.relay, "trial_gap": args.trial_gap,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.monotonic() - t0),
            "shapes": {name: _shape_words(info) for name, info in shape_info.items()},
            **({"partial": True} if partial else {})}


def _write_json(out: pathlib.Path, table: list[dict], runs: list, meta: dict) -> list[dict]:
    """The cases in the order they were asked for, written to OUT.json; returns them so sorted."""
    order = {run: i for i, run in enumerate(runs)}
    table = sorted(table, key=lambda t: order[(t["left"], t["right"], t["tcp"], t["shape"], t["server"])])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cases": table}, indent=1))
    return table


def _main_cold(args: argparse.Namespace, cases: list, shapes: list[str], shape_info: dict,
               out: pathlib.Path) -> int:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from cold import KINDS, run_cold_case, summarise_cold

    kinds = tuple(args.kinds or (("cold",) if args.product_src else KINDS))
    if bad := [k for k in kinds if k not in KINDS]:
        print(f"matrix: unknown kind(s) {bad}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if args.product_src and not args.secure and set(kinds) - {"cold"}:
        print("matrix: --product-src runs nattrav cold only without --secure (an older tree may have no cache, its agent no --wait)",
              file=sys.stderr)
        return 2
    if "ice" in kinds:
        try:
            import aioice  # noqa: F401
        except ImportError:
            print("matrix: the ICE baseline needs aioice: pip install -e '.[bench]' (or --kinds cold warm)",
                  file=sys.stderr)
            return 2
    compare = json.loads(pathlib.Path(args.compare).read_text()) if args.compare else None
    runs = [(left, right, shape) for left, right, _ in cases for shape in shapes]
    t0 = time.monotonic()
    table = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_cold_case, left, right, args.trials, shape=shape, trial_timeout=args.trial_timeout,
                               ice_timeout=args.ice_timeout, background=args.background or None, kinds=kinds,
                               product_src=args.product_src, secure=args.secure): (left, right, shape) for left, right, shape in runs}
        for fut in concurrent.futures.as_completed(futures):
            left, right, shape = futures[fut]
            try:
                row = summarise_cold(left, right, shape, fut.result())
            except Exception as exc:  # one broken case must not lose the others' numbers
                row = {"left": left, "right": right, "shape": shape, "kinds": {}, "error": repr(exc)[:200]}
            table.append(row)
            words = " ".join(f"{k} {v['connected']}/{v['trials']} {v['median_s']}" for k, v in row["kinds"].items())
            print(f"[{len(table)}/{len(runs)} {time.monotonic() - t0:.0f}s] {left} -> {right} @{shape}: {words}",
                  file=sys.stderr, flush=True)
    order = {run: i for i, run in enumerate(runs)}
    table.sort(key=lambda t: order[(t["left"], t["right"], t["shape"])])
    meta = {"trials": args.trials, "background": args.background, "kinds": list(kinds), "secure": args.secure,
            "product_src": args.product_src, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.monotonic() - t0),
            "shapes": {name: _shape_words(info) for name, info in shape_info.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cases": table}, indent=1))
    md = cold_markdown(table, meta, compare)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _ms(secs: list[float]) -> str:
    import statistics

    from nattrav.lab.matrix import percentile

    return f"{statistics.median(secs):.2f} / {percentile(secs, 0.95):.2f}" if secs else "—"


def cold_markdown(table: list[dict], meta: dict, compare: dict | None = None) -> str:
    """The cold time-to-connect tables: per case, then per strategy and shape."""
    kinds = meta["kinds"]
    names = {"cold": "nattrav cold", "warm": "nattrav warm", "ice": "ICE (aioice)"}
    out = [f"# Time to connect — {meta['trials']} trials a case and kind, background {meta['background']} ports/s "
           f"a NAT, {meta['date']} ({meta['seconds']} s)", "",
           "Process start → authenticated path, a fresh connecting process per trial. Shapes: "
           + "; ".join(f"`{k}` {v}" for k, v in meta["shapes"].items())
           + (f". Product from {meta['product_src']}" if meta.get("product_src") else ""), "",
           "| A's NAT → B's NAT | shape | " + " | ".join(f"{names[k]}: connected (Wilson 95%) | median / p95 s"
                                                     for k in kinds) + " | nattrav strategy |",
           "|---|---|" + "---|---|" * len(kinds) + "---|"]
    for t in table:
        cells = []
        for k in kinds:
            v = t["kinds"].get(k)
            if v is None:
                cells += ["—", "—"]
                continue
            lo, hi = v["wilson"]
            cells += [f"{v['connected']}/{v['trials']} ({100 * lo:.0f}–{100 * hi:.0f}%)", _ms(v["seconds"])]
        strategies = sorted({s for k in ("cold", "warm") for s in t["kinds"].get(k, {}).get("strategies", [])})
        note = f" ({t['error']})" if t.get("error") else ""
        out.append(f"| {t['left']} → {t['right']} | {t['shape']} | " + " | ".join(cells)
                   + f" | {', '.join(strategies) or '—'}{note} |")
    out += ["", "## Per strategy (trials pooled over the cases)", "",
            "ICE: its trials on the same cases, where nattrav connected by that strategy and ICE connected too. "
            "Goals (issue 13): cold ≤ 1.0 s at zero delay, ≤ 1.0 s + 4 RTT with delay; warm ≤ 0.3 s + 3 RTT; "
            "cold no slower than ICE. RTT: the path's median round trip.", "",
            "| strategy | shape | trials | nattrav cold median / p95 s | warm median / p95 s | ICE median / p95 s | "
            "path RTT ms | cold goal | warm goal |" + (" before: cold median / p95 s |" if compare else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if compare else "")]
    for (strategy, shape), pooled in sorted(_by_strategy(table).items()):
        rtt = pooled["rtt"]
        cold, warm, ice = pooled["cold"], pooled["warm"], pooled["ice"]
        goal_cold = 1.0 + 4 * rtt / 1e3
        goal_warm = 0.3 + 3 * rtt / 1e3
        med = (lambda xs: sorted(xs)[len(xs) // 2])  # noqa: E731

        def verdict(xs: list[float], goal: float) -> str:
            return "—" if not xs else ("yes" if med(xs) <= goal else f"**no** ({goal:.2f})")

        row = (f"| {strategy} | {shape} | {len(cold)} | {_ms(cold)} | {_ms(warm)} | {_ms(ice)} | {rtt:.0f} | "
               f"{verdict(cold, goal_cold)} | {verdict(warm, goal_warm)} |")
        if compare:
            row += f" {_ms(_by_strategy(compare['cases']).get((strategy, shape), {}).get('cold', []))} |"
        out.append(row)
    if compare:
        out += ["", f"Before: {compare['meta'].get('product_src') or 'an earlier run'}, {compare['meta']['date']}."]
    out += _timeline_markdown(table)
    return "\n".join(out) + "\n"


def _timeline_markdown(table: list[dict]) -> list[str]:
    """Median time of each phase, s after the connecting process started, per shape and kind."""
    from cold import PHASES, timeline

    lines = timeline(table)
    if not lines:
        return []
    keys = sorted(lines)
    out = ["", "## Timeline (median first time of each phase, s after the connecting process started)", "",
           "`listener:` phases are the listening side's, on the same clock. Pooled over the cases.", "",
           "| phase | " + " | ".join(f"{kind} @{shape}" for shape, kind in keys) + " |",
           "|---|" + "---|" * len(keys)]
    for phase in PHASES:
        if any(phase in lines[k] for k in keys):
            out.append(f"| {phase} | " + " | ".join(f"{lines[k][phase]:.3f}" if phase in lines[k] else "—"
                                                   for k in keys) + " |")
    return out


def _by_strategy(cases: list[dict]) -> dict[tuple[str, str], dict]:
    import statistics

    pooled: dict[tuple[str, str], dict] = {}
    for t in cases:
        ks = t["kinds"]
        for kind in ("cold", "warm"):
            for strategy, secs in ks.get(kind, {}).get("by_strategy", {}).items():
                slot = pooled.setdefault((strategy, t["shape"]), {"cold": [], "warm": [], "ice": [], "rtts": []})
                slot[kind] += secs
                if kind == "cold" and ks[kind].get("rtt_ms") is not None:
                    slot["rtts"].append(ks[kind]["rtt_ms"])
        ice = ks.get("ice")
        cold_strategies = ks.get("cold", {}).get("by_strategy", {})
        if ice and ice["connected"]:
            for strategy in cold_strategies:
                pooled[(strategy, t["shape"])]["ice"] += ice["seconds"]
    for slot in pooled.values():
        slot["rtt"] = statistics.median(slot.pop("rtts")) if slot["rtts"] else 0.0
    return pooled


def _shape_words(info: dict) -> str:
    link = info.get("link_a")
    words = f"{info['routers_a']}+1+{info['routers_b']} routers between the NATs"
    if link:
        words += (f", each access link {link['delay_ms']:g} ms ±{link['jitter_ms']:g} ms ({link['distribution']}) "
                  f"one way, {link['loss_percent']:g}% loss")
    return words


if __name__ == "__main__":
    sys.exit(main())
