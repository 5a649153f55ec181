"""Regenerate every recorded figure and per-trial table in bench/results/ from its JSON lines (no
trial is re-run): the UDP matrix heat maps, birthday success vs probes, prediction vs background,
punched vs direct goodput; PNG and SVG in bench/results/plots/.

    .venv/bin/python bench/plots.py
"""

from __future__ import annotations

import pathlib
import sys

from nattrav.experiment import plots, tables

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
FIGURES = (
    ("matrix-udp-trials.jsonl", plots.matrix_heatmaps, "matrix",
     "nattrav UDP matrix, per trial — background 5 new flows/s a NAT"),
    ("birthday-trials.jsonl", plots.success_vs_probes, "success-vs-probes",
     "birthday strategy: symmetric-random ↔ port-restricted, flow budget swept"),
    ("predictor-trials.jsonl", plots.hit_rate_vs_background, "hit-rate-vs-background",
     "port prediction against background traffic"),
    ("perf-punched-vs-direct.jsonl", plots.punched_vs_direct, "punched-vs-direct", None),
)


def main() -> int:
    out = RESULTS / "plots"
    for src, draw, name, title in FIGURES:
        path = RESULTS / src
        if not path.exists():
            print(f"skipped {src}: not recorded", file=sys.stderr)
            continue
        rows = plots.load(path)
        for written in draw(rows, out, name):
            print(written.relative_to(RESULTS.parent.parent))
        if title is not None:
            md = path.with_suffix(".md")
            md.write_text(tables.markdown(rows, title))
            print(md.relative_to(RESULTS.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
