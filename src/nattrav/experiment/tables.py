"""A markdown table per lab case from recorded trials (the runner's JSON lines), summarised by the
matrix's own summarise(): success with its Wilson interval, the planner's stated odds and whether
they fall inside it, strategies, time to connect, prediction hits."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..lab.matrix import TrialResult, summarise


def case_rows(rows: list[dict[str, Any]]) -> dict[tuple, list[TrialResult]]:
    """The records as the matrix's TrialResults, by (left, right, shape, background, options)."""
    out: dict[tuple, list[TrialResult]] = defaultdict(list)
    for r in rows:
        if "case" not in r or "result" not in r:
            continue
        c, res = r["case"], r["result"]
        pred = res.get("prediction") or {}
        key = (c["left"], c["right"], c["shape"], c["background"], tuple(sorted(r.get("options", {}).items())),
               r.get("transport", "udp"))
        out[key].append(TrialResult(c["left"], c["right"], r.get("repeat", 0), bool(res.get("ok")),
                                    strategy=res.get("strategy"), seconds=res.get("seconds"),
                                    rtt_ms=res.get("rtt_ms"), odds=res.get("odds"),
                                    odds_floor=bool(res.get("odds_floor")), reason=res.get("reason"),
                                    shape=c["shape"], extra={"prediction_a": pred.get("a"), "prediction_b": pred.get("b")}))
    return dict(out)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.4g}%"


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "",
             "| A's NAT → B's NAT | shape | bg | options | expected | connected [Wilson 95 %] | planner odds | "
             "odds inside? | strategy | median s | p95 s | prediction hits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (left, right, shape, bg, opts, transport), trials in case_rows(rows).items():
        s = summarise(trials, tcp=transport == "tcp")
        lo, hi = s["wilson"]
        lines.append(
            f"| {left} → {right} | {shape} | {bg:g} | {' '.join(f'{k}={v}' for k, v in opts) or '—'} | {s['expect']} | "
            f"{s['connected']}/{s['trials']} [{lo:.2f}–{hi:.2f}] | {'≥ ' if s['odds_floor'] else ''}{_pct(s['odds'])} | "
            f"{'—' if s['odds_agree'] is None else ('yes' if s['odds_agree'] else '**no**')} | "
            f"{', '.join(s['strategies'])} | {_secs(s['median_s'])} | {_secs(s['p95_s'])} | "
            f"{s['prediction_hits']}/{s['predictions']} |")
    return "\n".join(lines) + "\n"
