"""The burst benchmark still runs (a short slice of it), makes its namespaces and removes them."""

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_burst_ratios_quick_slice_runs_and_cleans_up(root_or_ci, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "burst_ratios.py"), "--quick", "--only", "15",
         "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Python/C (goal >= 1.5)" in out.stdout and "pacing 10000 pps" in out.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["open_c_ms"] > 0 and 0 <= r["pacing_10000_c_error_pct"] < 50  # a smoke run, not a verdict
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert r["netns_prefix"].startswith("nt-bench-") and r["netns_prefix"] not in left
