"""Pictures of recorded experiments, from the JSON lines only (nothing is re-run): the NAT matrix as
heat maps of success rate and time to connect, success rate against the number of probes beside the
birthday-paradox curve, the predictor's hit rate against background traffic beside the planner's
stated odds, and goodput/RTT of punched against direct paths. Rates carry Wilson 95 % intervals.
Each figure is written as PNG and SVG. Needs matplotlib (pip install 'nattrav[experiment]')."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..lab.matrix import wilson
from ..proto.planner.odds import birthday_miss
from ..proto.report import PORT_RANGE


def load(*paths: str | os.PathLike) -> list[dict[str, Any]]:
    """Every JSON object of the files' lines (a line that does not parse is skipped)."""
    rows = []
    for p in paths:
        with open(p) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    rows.append(d)
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "svg"):
        p = out_dir / f"{name}.{ext}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        written.append(p)
    _plt().close(fig)
    return written


def _trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "case" in r and "result" in r]


def _rate(oks: list[bool]) -> tuple[float, float, float]:
    k, n = sum(oks), len(oks)
    lo, hi = wilson(k, n)
    return (k / n if n else 0.0), lo, hi


def matrix_heatmaps(rows: list[dict[str, Any]], out_dir: Path, name: str = "matrix") -> list[Path]:
    """Two heat maps over (left NAT, right NAT): success rate (cell text: k/n and the Wilson
    interval) and median time to connect."""
    plt = _plt()
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in _trials(rows):
        cells[(r["case"]["left"], r["case"]["right"])].append(r["result"])
    if not cells:
        return []
    order = list(dict.fromkeys([k[0] for k in cells] + [k[1] for k in cells]))
    n = len(order)
    written = []
    for metric in ("success", "seconds"):
        fig, ax = plt.subplots(figsize=(1.3 * n + 2.5, 1.0 * n + 1.8))
        grid = [[float("nan")] * n for _ in range(n)]
        texts = []
        for (left, right), res in cells.items():
            i, j = order.index(left), order.index(right)
            if metric == "success":
                rate, lo, hi = _rate([bool(x.get("ok")) for x in res])
                grid[i][j] = rate
                text = f"{sum(bool(x.get('ok')) for x in res)}/{len(res)}\n[{lo:.2f}–{hi:.2f}]"
            else:
                secs = [x["seconds"] for x in res if x.get("ok") and x.get("seconds") is not None]
                grid[i][j] = statistics.median(secs) if secs else float("nan")
                text = f"{grid[i][j] * 1e3:.0f} ms" if secs else "—"
            texts.append((i, j, text))
        if metric == "success":
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1)
        else:
            from matplotlib.colors import LogNorm  # from tens of ms (one packet) to seconds (bursts)

            im = ax.imshow(grid, cmap="viridis_r", norm=LogNorm())
        for i, j, text in texts:
            # white on the dark ends of each colour map
            v = grid[i][j]
            dark = (v > 0.85 or v < 0.15) if metric == "success" else v > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(n), order, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), order, fontsize=8)
        ax.set_xlabel("B's NAT (listens)")
        ax.set_ylabel("A's NAT (connects)")
        title = ("success rate (cell: connected/trials, Wilson 95 %)" if metric == "success"
                 else "median time to connect, agreed start → authenticated path")
        transports = {r.get("transport", "udp") for r in _trials(rows)}
        title = f"{transports.pop().upper()}: {title}" if len(transports) == 1 else title
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8, label="success rate" if metric == "success" else "seconds")
        written += _save(fig, out_dir, f"{name}-{metric}")
    return written


def _by(rows: list[dict[str, Any]], key: Any) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        k = key(r)
        if k is not None:
            out[k].append(r)
    return dict(sorted(out.items()))


def _errorbar(ax: Any, xs: list, groups: list[list[bool]], **kw: Any) -> None:
    rates = [_rate(g) for g in groups]
    ax.errorbar(xs, [r for r, _, _ in rates], yerr=[[max(0.0, r - lo) for r, lo, _ in rates], [max(0.0, hi - r) for r, _, hi in rates]],
                fmt="o", capsize=4, **kw)


def _stated_odds(groups: dict[Any, list[dict[str, Any]]]) -> list[float]:
    """The planner's odds (median over a group's trials) for each group."""
    return [statistics.median([r["result"]["odds"] for r in g if r["result"].get("odds") is not None] or [0])
            for g in groups.values()]


def _rate_figure(fig: Any, ax: Any, out_dir: Path, name: str, xlabel: str, ylabel: str, title: str,
                 legend: str) -> list[Path]:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8, loc=legend)
    ax.set_title(title, fontsize=10)
    return _save(fig, out_dir, name)


def success_vs_probes(rows: list[dict[str, Any]], out_dir: Path, name: str = "success-vs-probes") -> list[Path]:
    """Birthday trials: measured success rate against the expected number of meetings λ = s·p/N (s
    mappings opened, p random probes, N ports), beside the birthday-paradox curve 1 - e^-λ and the
    planner's exact odds for those counts (without replacement)."""
    plt = _plt()
    trials = [r for r in _trials(rows) if r["result"].get("strategy") == "birthday" and r["result"].get("plan")]
    span = PORT_RANGE[1] - PORT_RANGE[0] + 1

    def counts(r: dict[str, Any]) -> tuple[int, int]:
        p = r["result"]["plan"]
        probes = max(p.get("local_random_probes") or 0, p.get("remote_random_probes") or 0)
        opened = p["local_sockets"] if (p.get("local_random_probes") or 0) == 0 else p["remote_sockets"]
        return int(opened or 1), int(probes)

    groups = _by(trials, counts)
    if not groups:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [s * p / span for s, p in groups]
    _errorbar(ax, xs, [[bool(r["result"].get("ok")) for r in g] for g in groups.values()],
              label="measured (Wilson 95 %)", color="C0")
    ax.plot(xs, [1 - birthday_miss(span, s, p) for s, p in groups], "x", color="C3", markersize=9,
            label="planner's odds for those counts")
    for x, (s, p) in zip(xs, groups):
        ax.annotate(f"{s}×{p}", (x, 0), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    top = max(xs) * 1.2
    grid = [top * i / 300 for i in range(301)]
    ax.plot(grid, [1 - math.exp(-x) for x in grid], "-", color="C1", alpha=0.7, label="birthday curve 1 − e^−λ")
    ax.set_xscale("symlog", linthresh=0.01)
    return _rate_figure(fig, ax, out_dir, name, f"λ = mappings opened × probes / {span} ports", "success rate",
                        "birthday strategy: success vs probes", "upper left")


def hit_rate_vs_background(rows: list[dict[str, Any]], out_dir: Path, name: str = "hit-rate-vs-background") -> list[Path]:
    """Trials the planner gave to port prediction, per NAT pair, against the NATs' background
    traffic: the success rate (Wilson 95 %) beside the planner's stated odds (the model), and the
    predictor's hit rate on the connected ones (the peer's real port among the predicted ports)."""
    plt = _plt()
    trials = [r for r in _trials(rows) if r["result"].get("strategy") == "predicted"]
    pairs = _by(trials, lambda r: f"{r['case']['left']}↔{r['case']['right']}")
    if not pairs:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for n, (pair, group) in enumerate(pairs.items()):
        groups = _by(group, lambda r: r["case"]["background"])
        xs = [x * (1 + 0.06 * n) + 0.4 * n for x in groups]  # pairs side by side, not on top of each other
        _errorbar(ax, xs, [[bool(r["result"].get("ok")) for r in g] for g in groups.values()],
                  label=f"{pair}: connected", color=f"C{n}")
        ax.plot(xs, _stated_odds(groups), "s--", color=f"C{n}", alpha=0.6, label=f"{pair}: stated odds")
        hits = [[bool(p["hit"]) for r in g for p in (r["result"].get("prediction") or {}).values() if p]
                for g in groups.values()]
        ax.plot(xs, [sum(h) / len(h) if h else float("nan") for h in hits], "^", color=f"C{n}", alpha=0.5,
                label=f"{pair}: prediction hits (connected)")
    ax.set_xscale("symlog", linthresh=10)
    return _rate_figure(fig, ax, out_dir, name, "background: other hosts' new flows per second behind each NAT",
                        "rate", "port prediction vs background traffic (trials planned as 'predicted')",
                        "lower left")


def two_params(rows: list[dict[str, Any]], out_dir: Path, x: str, series: str,
               name: str = "sweep") -> list[Path]:
    """Success rate (Wilson) and median time to connect against option `x`, one line per value of
    option (or case field) `series`."""
    plt = _plt()
    trials = _trials(rows)

    def get(r: dict[str, Any], k: str) -> Any:
        return r["options"].get(k, r["case"].get(k))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, (s, group) in enumerate(_by(trials, lambda r: get(r, series)).items()):
        by_x = _by(group, lambda r: get(r, x))
        xs = list(by_x)
        _errorbar(a1, xs, [[bool(r["result"].get("ok")) for r in g] for g in by_x.values()],
                  label=f"{series}={s}", color=f"C{n}")
        secs = [statistics.median([r["result"]["seconds"] for r in g if r["result"].get("seconds") is not None] or [float("nan")])
                for g in by_x.values()]
        a2.plot(xs, secs, "o-", color=f"C{n}", label=f"{series}={s}")
    values = [get(r, x) for r in trials if isinstance(get(r, x), (int, float))]
    for ax, lab in ((a1, "success rate"), (a2, "median seconds to connect")):
        ax.set_xlabel(x)
        if values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")  # budgets and rates are swept in powers
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    a1.set_ylim(-0.05, 1.05)
    return _save(fig, out_dir, name)


def punched_vs_direct(rows: list[dict[str, Any]], out_dir: Path, name: str = "punched-vs-direct") -> list[Path]:
    """Goodput and RTT, punched against direct, per offered rate (rows of bench/perf_punched_vs_direct.py)."""
    plt = _plt()
    rows = [r for r in rows if r.get("kind") in ("direct", "punched") and r.get("goodput_bps")]
    if not rows:
        return []
    rates = list(dict.fromkeys(r["rate"] for r in rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for n, kind in enumerate(("direct", "punched")):
        good = [[r["goodput_bps"] / 1e6 for r in rows if r["rate"] == rate and r["kind"] == kind] for rate in rates]
        rtt = [[(r.get("rtt_ms") or {}).get("p50") for r in rows if r["rate"] == rate and r["kind"] == kind] for rate in rates]
        xs = [i + (n - 0.5) * width for i in range(len(rates))]
        med = [statistics.median(g) if g else 0 for g in good]
        a1.bar(xs, med, width, label=kind, color=f"C{n}",
               yerr=[[m - min(g) if g else 0 for m, g in zip(med, good)], [max(g) - m if g else 0 for m, g in zip(med, good)]],
               capsize=3)
        rmed = [statistics.median([v for v in g if v is not None] or [0]) for g in rtt]
        a2.bar(xs, rmed, width, label=kind, color=f"C{n}")
    for ax, lab in ((a1, "goodput, Mbit/s (median, min–max)"), (a2, "RTT median, ms")):
        ax.set_xticks(range(len(rates)), [f"UDP {r}bit/s" if r != "tcp" else "TCP bulk" for r in rates], fontsize=8)
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    a1.set_yscale("log")  # offered rates and TCP bulk span orders of magnitude
    a1.set_title("goodput: punched path vs direct path, same lab shape, taking turns in each run", fontsize=9)
    return _save(fig, out_dir, name)


def all_plots(rows: list[dict[str, Any]], out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Every figure the rows have data for."""
    out = Path(out_dir)
    written = []
    written += matrix_heatmaps(rows, out, prefix + "matrix")
    written += success_vs_probes(rows, out, prefix + "success-vs-probes")
    written += hit_rate_vs_background(rows, out, prefix + "hit-rate-vs-background")
    written += punched_vs_direct(rows, out, prefix + "punched-vs-direct")
    return written
