"""Plots from recorded JSON lines only (experiment/plots.py): synthetic records in the runner's and the
perf bench's formats give every figure as PNG and SVG; records without the data give none."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")  # the 'experiment' extra; .ci/install installs it, so CI runs this

from nattrav.cli import experiment as cli  # noqa: E402
from nattrav.experiment import plots  # noqa: E402


def _trial(left, right, ok, *, bg=0.0, secs=0.05, strategy="predicted", odds=0.99, probes=None, hit=None, flows=64):
    plan = {"local_sockets": 64, "remote_sockets": 1, "local_random_probes": 0,
            "remote_random_probes": probes if probes is not None else 0}
    return {"key": f"{left}{right}{ok}{bg}{probes}{secs}{flows}", "case": {"left": left, "right": right, "shape": "flat",
                                                                          "background": bg},
            "options": {"max_flows": flows}, "repeat": 0,
            "result": {"ok": ok, "seconds": secs if ok else None, "strategy": strategy, "odds": odds, "plan": plan,
                       "prediction": {"a": None if hit is None else {"hit": hit, "rank": 0}, "b": None}}}


def _rows():
    rows = [_trial(a, b, ok, secs=s) for a in ("none", "symmetric-seq") for b in ("none", "port-restricted")
            for ok, s in ((True, 0.03), (True, 0.05), (False, 0))]
    rows += [_trial("symmetric-random", "port-restricted", i < k, strategy="birthday", probes=p, odds=k / 4)
             for p, k in ((16, 1), (64, 2), (256, 4)) for i in range(4)]
    rows += [_trial("symmetric-seq", "port-restricted", True, bg=bg, hit=i < k, secs=0.01 * i)
             for bg, k in ((0, 4), (100, 3), (800, 1)) for i in range(4)]
    rows += [{"kind": kind, "rate": rate, "repeat": r, "goodput_bps": g * (1 - 0.01 * r), "rtt_ms": {"p50": 0.3}}
             for kind, g in (("direct", 20e6), ("punched", 19.5e6)) for rate in ("20M",) for r in range(3)]
    return rows


def test_every_figure_is_drawn_from_the_records(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _rows()) + "\nnot json\n")
    rows = plots.load(src)
    written = plots.all_plots(rows, tmp_path / "out")
    names = sorted(p.name for p in written)
    for stem in ("matrix-success", "matrix-seconds", "success-vs-probes", "hit-rate-vs-background",
                 "punched-vs-direct"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names
    for p in written:
        head = p.read_bytes()[:64]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in p.read_bytes()[:2048]
    two = plots.two_params(rows, tmp_path / "out", "max_flows", "background", "two")
    assert [p.suffix for p in two] == [".png", ".svg"]


def test_records_without_the_data_give_no_figure(tmp_path):
    assert plots.all_plots([{"kind": "direct"}, {"unrelated": 1}], tmp_path) == []


def test_the_plot_command_writes_the_figures_and_names_them(tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _rows()))
    assert cli.main(["plot", str(src), "--out-dir", str(tmp_path / "o"), "--x", "max_flows",
                     "--series", "background"]) == 0
    out = capsys.readouterr().out.split()
    assert any(p.endswith("matrix-success.png") for p in out) and any(p.endswith("max_flows-by-background.svg") for p in out)


def test_the_plot_command_says_what_is_wrong_without_a_traceback(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path), "--x", "a"]) == 2


def test_the_run_command_refuses_a_bad_spec(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text("[axes]\ncolour = ['red']\n")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown axes" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o.jsonl")]) == 2


def test_the_table_summarises_each_case_with_its_interval(tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _rows()))
    assert cli.main(["table", str(src), "--title", "T"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# T\n")
    # none -> none: 2 of 3 connected; the planner said 99 %, outside the interval [0.21, 0.94]
    row = next(line for line in out.splitlines() if line.startswith("| none → none |"))
    assert "2/3 [0.21–0.94]" in row and "| 99% | **no** |" in row and "0.040" in row
