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


def _birthday(left, right, trials, connected, odds):
    return {**_case(left, right, trials, connected), "strategies": ["birthday"], "odds_median": odds}


def test_cases_a_birthday_connects_are_checked_against_their_stated_odds_at_a_fresh_budget(tmp_path, capsys):
    proven = _proven()
    broad = _write(tmp_path, "broad.json", [_case(x, "r", 6, 6) for x in "abcd"])
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps({"meta": {"date": "d", "trial_gap": 31.0}, "cases": [
        _birthday("a", "r", 180, 180, 0.99973),   # agrees, past the bar
        _birthday("b", "r", 180, 177, 0.98336),   # agrees, capped under the bar by the budgets
        _birthday("c", "r", 180, 160, 0.99973),   # 20 misses at 99.97 % stated: the odds are wrong
    ]}))
    # back to back, each trial meets what its predecessors left: not a check of the plans' odds
    spent = tmp_path / "spent.json"
    spent.write_text(json.dumps({"meta": {"date": "d", "trial_gap": 0.0},
                                 "cases": [_birthday("d", "r", 180, 180, 0.99973)]}))
    assert proven.main([broad, str(fresh), str(spent), "--universe", broad]) == 0
    out = capsys.readouterr().out
    assert "| UDP a → r @flat | 180/180 | 97.91–100% | 99.973% | 0.05 | fresh.json (d) |" in out
    assert "| UDP b → r @flat | 177/180 | " in out
    assert "2 of the others connect by chance" in out and "1 state >= 99.9 %" in out and "1 less" in out
    assert "Misses expected 3.04, seen 3." in out
    # the wrong odds and the back-to-back run stay to do
    assert "Not yet (2):" in out and "- UDP c → r @flat: best run 160/180" in out
    assert "- UDP d → r @flat: best run 180/180" in out
