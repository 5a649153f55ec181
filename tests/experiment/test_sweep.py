"""Sweeps (experiment/sweep.py) and the runner's bookkeeping (experiment/runner.py) without a lab: a
stand-in trial function records what it was asked, so expansion, keys, resumption and metadata are
checked exactly."""

from __future__ import annotations

import contextlib
import json

import pytest

from nattrav.errors import UsageError
from nattrav.experiment import runner, sweep

SPEC = {"name": "t", "repeats": 2, "seed": 5,
        "axes": {"pair": [["symmetric-seq", "port-restricted"], ["none", "full-cone"]], "shape": ["flat"],
                 "background": [0, 10], "max_flows": [64, 256]}}


def test_a_sweep_expands_into_cases_of_trials_with_stable_keys():
    cases = sweep.expand(SPEC)
    assert [(c.left, c.right, c.background) for c, _ in cases] == [
        ("symmetric-seq", "port-restricted", 0.0), ("symmetric-seq", "port-restricted", 10.0),
        ("none", "full-cone", 0.0), ("none", "full-cone", 10.0)]
    trials = [t for _, ts in cases for t in ts]
    assert len(trials) == 4 * 2 * 2 and len({t.key for t in trials}) == len(trials)
    assert sorted((t.options["max_flows"], t.repeat) for t in cases[0][1]) == [(64, 0), (64, 1), (256, 0), (256, 1)]
    again = [t.key for _, ts in sweep.expand(SPEC) for t in ts]
    assert again == [t.key for t in trials]  # the same seed, the same order and keys


def test_left_and_right_axes_make_every_ordered_pair():
    cases = sweep.expand({"axes": {"left": ["none", "cgnat"], "right": ["full-cone", "none"]}})
    assert [(c.left, c.right) for c, _ in cases] == [("none", "full-cone"), ("none", "none"),
                                                     ("cgnat", "full-cone"), ("cgnat", "none")]


@pytest.mark.parametrize("spec,words", [
    ({"axes": {"colour": ["red"]}}, "unknown axes"),
    ({"axes": {"pair": [["none", "no-such-nat"]]}}, "no-such-nat"),
    ({"axes": {"shape": ["moon"]}}, "moon"),
    ({"axes": {"max_flows": []}}, "non-empty"),
    ({"axes": {"pair": [["none"]]}}, "left, right"),
    ({"axes": {}, "repeats": 0}, "repeats"),
    ({"axes": {}, "traffic": {"speed": 1}}, "traffic"),
    ({"axes": {}, "extra": 1}, "unknown sweep keys"),
    ({"axes": {}, "transport": "sctp"}, "transport"),
    ({}, "axes"),
])
def test_a_bad_spec_is_a_usage_error_that_names_the_problem(spec, words):
    with pytest.raises(UsageError, match=words):
        sweep.expand(spec)


def _fake(calls):
    @contextlib.contextmanager
    def open_case(case):
        calls.append(("up", case.left, case.right, case.background))
        yield f"lab-{case.left}"

    def trial_fn(lab, t, spec):
        calls.append(("trial", lab, t.key))
        if len([c for c in calls if c[0] == "trial"]) == 5:
            raise KeyboardInterrupt  # the operator stops the sweep half-way
        return {"ok": t.options["max_flows"] == 256, "seconds": 0.1, "strategy": "x"}

    return open_case, trial_fn


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "r.jsonl"
    calls = []
    open_case, trial_fn = _fake(calls)
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(SPEC, out, trial_fn=trial_fn, open_case=open_case, live=False)
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 4
    with out.open("a") as f:
        f.write('{"key": "cut by a cra')  # a line a crash cut short is run again, not trusted
    calls.clear()
    counts = runner.run_sweep(SPEC, out, trial_fn=lambda lab, t, s: {"ok": True}, open_case=open_case, live=False)
    assert counts == {"total": 16, "skipped": 4, "ran": 12, "ok": 12}
    lines = out.read_text().splitlines()
    assert lines[4] == '{"key": "cut by a cra'  # kept on its own line, every record after it whole
    rows = [json.loads(line) for i, line in enumerate(lines) if i != 4]
    assert sorted(r["key"] for r in rows) == sorted(t.key for _, ts in sweep.expand(SPEC) for t in ts)
    assert runner.run_sweep(SPEC, out, trial_fn=trial_fn, open_case=open_case, live=False)["ran"] == 0
    row = rows[0]
    assert row["sweep"] == "t" and set(row["case"]) == {"left", "right", "shape", "background"}
    assert row["transport"] == "udp"  # the spec's default; tables summarise TCP rows as TCP
    meta = row["meta"]
    assert meta["seed"] == 5 and meta["lab_profile"] == "flat" and meta["kernel"] and meta["cpus"] >= 1
    assert meta["commit"] is None or len(meta["commit"].split("+")[0]) == 40


def test_a_spec_file_is_toml_or_json(tmp_path):
    t = tmp_path / "s.toml"
    t.write_text('name = "x"\nrepeats = 2\n[axes]\nmax_flows = [1, 2]\n')
    assert runner.load_spec(t) == {"name": "x", "repeats": 2, "axes": {"max_flows": [1, 2]}}
    j = tmp_path / "s.json"
    j.write_text(json.dumps(SPEC))
    assert runner.load_spec(j) == SPEC
