"""bench/proven.py: which feasible cases one run shows at the reliability bar, and which not yet."""

from __future__ import annotations

import importlib.util
import json
import pathlib


def _proven():
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "proven.py"
    spec = importlib.util.spec_from_file_location("bench_proven", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(left, right, trials, connected, *, shape="flat", tcp=False, expect="feasible"):
    return {"left": left, "right": right, "shape": shape, "tcp": tcp, "server": "two-address",
            "trials": trials, "connected": connected, "expect": expect}


def _write(tmp_path, name, cases, date="d"):
    path = tmp_path / name
    path.write_text(json.dumps({"meta": {"date": date}, "cases": cases}))
    return str(path)


def test_a_run_split_over_two_labs_counts_as_one_and_runs_are_never_pooled(tmp_path, capsys):
    proven = _proven()
    broad = _write(tmp_path, "broad.json", [_case("a", "b", 20, 20), _case("a", "c", 20, 20),
                                            _case("a", "d", 6, 3, expect="probabilistic")])
    split = _write(tmp_path, "split.json", [_case("a", "b", 2000, 2000), _case("a", "b", 2000, 2000)])
    # two runs of 2,000 each: alone neither reaches the bar, and they are not added up
    half1 = _write(tmp_path, "half1.json", [_case("a", "c", 2000, 2000)])
    half2 = _write(tmp_path, "half2.json", [_case("a", "c", 2000, 2000)])
    assert proven.main([broad, split, half1, half2, "--universe", broad]) == 0
    out = capsys.readouterr().out
    assert "| UDP a → b @flat | 4000/4000 | 99.904–100% | 2 | split.json (d) |" in out
    assert "1 of the 2 feasible cases" in out  # the birthday pair is not counted
    assert "- UDP a → c @flat: best run 2000/2000, lower bound 99.808 %" in out
    assert "a → d" not in out


def test_a_miss_keeps_a_case_under_the_bar_and_bad_input_is_one_line(tmp_path, capsys):
    proven = _proven()
    run = _write(tmp_path, "run.json", [_case("a", "b", 4000, 3999, tcp=True)])
    assert proven.main([run, "--universe", run]) == 0
    out = capsys.readouterr().out
    assert "0 of the 1 feasible cases" in out and "- TCP a → b @flat: best run 3999/4000" in out
    assert proven.main([run, "--bar", "1.5", "--universe", run]) == 2
    assert proven.main([str(tmp_path / "nope.json"), "--universe", run]) == 2
    err = capsys.readouterr().err
    assert "--bar must be between 0 and 1" in err and "no such file" in err
