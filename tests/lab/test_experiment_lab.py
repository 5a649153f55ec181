"""Issue 17 in the NAT lab: the example experiment (examples/experiment.py --small) embeds the API,
sweeps max_flows x background, records its JSON lines and plots; rerun, it finds every trial
recorded. And the traffic measurement runs over a punched path and over a direct one."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _example(out: pathlib.Path) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "experiment.py"), "--small", "--out-dir", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_example_sweeps_two_parameters_and_plots_them(need_lab, tmp_path):
    pytest.importorskip("matplotlib")
    summary = _example(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert summary["ran"] == len(rows) == 4
    points = sorted((r["options"]["max_flows"], r["case"]["background"]) for r in rows)
    assert points == [(32, 0.0), (32, 50.0), (1024, 0.0), (1024, 50.0)]
    quiet = [r["result"] for r in rows if r["case"]["background"] == 0]
    assert all(r["ok"] and r["strategy"] == "predicted" for r in quiet), quiet  # nothing moves the ports
    for r in (r["result"] for r in rows if r["result"]["ok"]):
        assert r["goodput_bps"] > 0 and r["loss"] is not None and r["loss"] <= 0.1 and r["seconds"] >= 0
    assert all(r["meta"]["sweep"] == "flows-x-background" and r["meta"]["kernel"] for r in rows)
    for ext in ("png", "svg"):
        assert (tmp_path / f"flows-x-background.{ext}").stat().st_size > 1000
    again = _example(tmp_path)
    assert (again["ran"], again["skipped"]) == (0, 4)


def test_traffic_over_a_punched_path_and_a_direct_one(need_lab):
    from nattrav.experiment.trial import Case, direct_trial, open_case, punched_trial

    load = {"rate": "5M", "size": 1000, "time": 1, "interval": 0.5}
    with open_case(Case("symmetric-seq", "port-restricted")) as lab:
        p = punched_trial(lab, "perf-test", {"max_flows": 256}, load)
    with open_case(Case("none", "none"), server=False) as lab:
        d = direct_trial(lab, load)
    assert p["ok"], p["reason"]
    assert d["ok"], d["reason"]
    for res in (p["traffic"], d["traffic"]):
        rx, tx = res["receiver"], res["sender"]
        assert tx["sent"] == tx["planned"] == 625
        assert rx["sent"] == tx["sent"] and rx["received"] >= 0.9 * tx["sent"]
        assert rx["owd_ms"]["p0"] >= 0 and res["rtt_samples"] >= 1
    assert p["traffic"]["path"] == "punched" and d["traffic"]["path"] == "direct"
    # both ends of the punched path counted the probes as DATA frames
    assert p["path"]["a"]["datagrams_sent"] >= 625 and p["path"]["b"]["datagrams_received"] >= 0.9 * 625
    assert p["plan"]["flow_budget"] == 256  # the option reached the planner
