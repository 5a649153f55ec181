"""The CI slice of the fuzzing harness (bench/fuzz/): every target replays its corpus and a few
thousand deterministic mutants of it, uninstrumented, and must keep its parser's contract (only the
documented error escapes, no Violation). The long coverage-guided runs are bench/fuzz/run.py's;
timing is reported there, never asserted here."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FUZZ = ROOT / "bench" / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_harness as fh  # noqa: E402
import fuzz_targets  # noqa: E402

MUTANTS = 3000


def _report(crashes: dict[str, fh.Crash]) -> str:
    return "\n\n".join(f"{c.signature} ({c.count}x)\ninput: {c.data.hex()}\n{c.trace}" for c in crashes.values())


@pytest.mark.parametrize("name", fuzz_targets.NAMES)
def test_corpus_and_mutants_keep_the_parser_contract(name):
    target = fuzz_targets.load(name)
    corpus = fh.corpus_files(name)
    assert corpus, f"bench/fuzz/corpus/{name}/ is empty: run bench/fuzz/run.py --seeds"
    r = fh.run_slice(target, MUTANTS)
    assert not r.crashes, _report(r.crashes)
    assert r.inputs == len(corpus) + MUTANTS
    # every corpus input reaches the parser (a timed call), and not every input is an error
    assert r.timed_calls >= len(corpus)
    assert r.inputs - r.expected_errors > 0


def test_findings_replay():
    """corpus/*/slow/ holds inputs over the 1 ms budget (timed by run.py, never here): they must not
    crash. corpus/*/crashes/ holds reproducers of crashes in parsers owned elsewhere (each with a
    .txt): while one still crashes this test is an expected failure; once fixed, move the .bin into
    the corpus."""
    for name in fuzz_targets.NAMES:
        r = fh.Runner(fuzz_targets.load(name))
        for p in fh.finding_files(name, "slow"):
            r.one(p.read_bytes())
        assert not r.crashes, _report(r.crashes)
    still = []
    for name in fuzz_targets.NAMES:
        for p in fh.finding_files(name, "crashes"):
            r = fh.Runner(fuzz_targets.load(name))
            r.one(p.read_bytes())
            still += [f"{name}/{p.name}: {c.signature}" for c in r.crashes.values()]
    if still:
        pytest.xfail("known crashes not fixed yet:\n" + "\n".join(still))


def test_runner_fuzzes_a_target_with_atheris_and_reports(tmp_path):
    out = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--target", "punch", "--runs", "400",
                          "--out", str(tmp_path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (r,) = json.loads(out.stdout)
    assert r["target"] == "punch" and r["inputs"] == 400 and r["crash_inputs"] == 0
    assert r["exec_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["slowest_ms"] is not None
    assert (tmp_path / "punch" / "fuzz.log").read_text().count("Done 400 runs")


def test_runner_replay_and_bad_arguments():
    out = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--replay", "--target", "tcp_auth", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (r,) = json.loads(out.stdout)
    assert r["inputs"] == len(fh.corpus_files("tcp_auth")) and r["crash_inputs"] == 0
    bad = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--target", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown target 'nope'" in bad.stderr and "Traceback" not in bad.stderr
