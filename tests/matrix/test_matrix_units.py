"""The matrix's pure parts: expectations from the lab's descriptions for the new axes, the Wilson
interval, and the summary that sets the planner's odds against the measured rate. No root."""

from dataclasses import replace

import pytest

from nattrav.lab.matrix import (MISSED_KEPT, SAME_NAT, TrialResult, _kind, calibration, expectation, summarise,
                                tcp_expectation, wilson)


def test_wilson_interval_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-3) and hi == 1.0
    lo, hi = wilson(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_bounds_are_exact_at_all_or_none():
    # 6/6 summed to 0.9999999999999999, so stated odds of 100% read as outside the measured interval
    for n in range(1, 200):
        assert wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0


def test_expectations_fold_layers_pools_and_protocols():
    # layers: what the outermost behaviour says, whatever sits inside
    assert expectation("port-restricted+cgn", "symmetric-seq") == "feasible"
    assert expectation("port-restricted+cgn-random", "symmetric-random") == "infeasible"
    assert expectation("symmetric-random+cgn-seq", "symmetric-random") == "probabilistic"
    # an arbitrary pool on a symmetric NAT names a new address per flow: as unpredictable as random
    assert expectation("symmetric-seq,public_ips=4,pooling=arbitrary", "symmetric-random") == "infeasible"
    assert expectation("symmetric-seq,public_ips=4", "symmetric-random") == "probabilistic"
    # peers behind one NAT can always meet
    assert expectation("symmetric-random", SAME_NAT) == "feasible" == tcp_expectation("symmetric-random", SAME_NAT)
    # TCP reads TCP's own behaviour: a UDP-only full cone is a port-restricted cone for TCP
    assert _kind("udp-full-cone") == "open" and _kind("udp-full-cone", "tcp") == "cone"
    assert tcp_expectation("udp-full-cone", "symmetric-random") == "feasible"  # the birthday, not direct
    assert tcp_expectation("udp-restricted-cone", "symmetric-random") == "feasible"  # TCP APDF: birthday too
    assert tcp_expectation("port-restricted,tcp_allocation=sequential,tcp_mapping=APDM", "symmetric-random") \
        == "infeasible"
    # the presets keep the expectations the recorded matrices used
    assert expectation("symmetric-random", "symmetric-seq") == "probabilistic"
    assert expectation("cgnat", "symmetric-random") == "feasible"


def _row(ok, odds, seconds=None, shape="wan50"):
    return TrialResult("port-restricted", "symmetric-seq", 0, ok, strategy="predicted", seconds=seconds, odds=odds, shape=shape,
                       reason=None if ok else "no path")


def test_summary_sets_stated_odds_against_the_measured_rate():
    rows = [_row(True, 0.95, 0.2), _row(True, 0.95, 0.4), _row(False, 0.95)] + [_row(True, 0.95, 0.3)] * 7
    s = summarise(rows)
    assert s["shape"] == "wan50" and s["connected"] == 9 and s["trials"] == 10
    assert s["median_s"] == 0.3 and s["p95_s"] == 0.4
    assert s["wilson"][0] < 0.9 < s["wilson"][1] and s["odds_agree"] is True
    bad = summarise([_row(False, 0.999)] * 10)
    assert bad["odds_agree"] is False and bad["failures"] == ["no path"]


def test_a_case_counts_its_second_rounds_and_keeps_what_they_found():
    found = ["mapping", 1.0, None], ["again-found", 2.0, {"found": "the peer's NAT started its ports again lower"}]
    again = replace(_row(True, 0.9999, 3.4), trial=5,
                    extra={"again": 1, "diag_a": {"events": list(found)}, "diag_b": {"events": []}})
    s = summarise([_row(True, 0.9999, 0.01)] * 9 + [again])
    assert s["again"] == 1 and s["again_connected"] == 1
    assert s["again_found"] == [[5, True, "the peer's NAT started its ports again lower", None]]
    assert summarise([_row(True, 0.9999, 0.01)] * 3)["again"] == 0


def test_a_case_keeps_its_missed_trials_evidence():
    diag = {"events": [["plan", 1.0, {"targets": 12}]], "params": {"flow_budget": 1}}
    miss = replace(_row(False, 0.78), trial=7, extra={"again": 0, "reason_a": "no path", "reason_b": None,
                                                      "diag_a": diag, "diag_b": None})
    s = summarise([_row(True, 0.9999, 0.01)] * 5 + [miss])
    assert s["missed"] == [{"trial": 7, "odds": 0.78, "strategy": "predicted", "again": 0, "reason_a": "no path",
                            "reason_b": None, "diag_a": diag, "diag_b": None}]
    assert summarise([_row(True, 0.9999, 0.01)] * 3)["missed"] == []
    many = summarise([replace(miss, trial=i) for i in range(MISSED_KEPT + 5)])
    assert [m["trial"] for m in many["missed"]] == list(range(MISSED_KEPT))  # bounded: the first ones


def test_a_case_keeps_each_trials_burst_beside_its_outcome():
    # the big burst before a streak of low odds is a connected trial: its size must be kept too
    wide = replace(_row(True, 0.9999, 0.01), trial=0, extra={"diag_a": {"events": [], "params": {
        "local_packets": 424, "remote_packets": 3, "flow_budget": 512, "remote_flow_budget": 400}}})
    spent = replace(_row(False, 0.05), trial=1, extra={"diag_a": {"events": [], "params": {
        "local_packets": 1, "remote_packets": 1, "flow_budget": 88, "remote_flow_budget": 1}}})
    bare = replace(_row(True, 0.9999, 0.01), trial=2, extra={})
    s = summarise([wide, spent, bare])
    assert s["bursts"] == [[424, 3, 512, 400], [1, 1, 88, 1], None]
    assert len(s["bursts"]) == len(s["runs"])


def test_the_stated_odds_of_a_case_are_the_mean_of_its_trials():
    # two plans at 99.9 % among six at 0.2 %: 2 connections expected in 8, which 2/8 agrees with
    rows = [_row(True, 0.999)] * 2 + [_row(False, 0.002)] * 6
    s = summarise(rows)
    assert s["odds"] == pytest.approx((2 * 0.999 + 6 * 0.002) / 8) and s["odds_median"] == 0.002
    assert s["odds_agree"] is True


def test_a_floor_of_odds_agrees_with_any_rate_at_or_above_it():
    # LAN attempts race the plan uncounted: 0.4% stated as a floor, 8/8 measured, agree
    lan = [replace(_row(True, 0.004, 0.01), odds_floor=True)] * 8
    s = summarise(lan)
    assert s["odds_floor"] and s["odds_agree"] is True
    # the same numbers as an estimate disagree; a floor above the whole interval disagrees too
    assert summarise([_row(True, 0.004, 0.01)] * 8)["odds_agree"] is False
    assert summarise([replace(_row(False, 0.999), odds_floor=True)] * 10)["odds_agree"] is False


def test_only_a_later_trial_that_its_plan_said_was_out_of_budget_may_fail():
    from nattrav.lab.matrix import TrialResult
    from tests.matrix.budget import unexplained_failures

    budget = "birthday had 5.39% odds at the flow budgets the sides published: local 42, remote 85 new flows"
    ok = TrialResult("a", "b", 0, True, "birthday", 0.7, odds=0.999)
    short = TrialResult("a", "b", 1, False, odds=0.0539, reason="no path: ...; " + budget)
    assert unexplained_failures([ok, short]) == []
    # the first trial has its whole budget; a failure at high odds, or without the budgets named, is one
    first = TrialResult("a", "b", 0, False, odds=0.0539, reason=budget)
    lying = TrialResult("a", "b", 1, False, odds=0.9991, reason=budget)
    other = TrialResult("a", "b", 1, False, odds=0.01, reason="ServerUnreachable: cannot reach rendezvous server")
    assert unexplained_failures([first, short]) == [first]
    assert unexplained_failures([ok, lying, other]) == [lying, other]


def test_calibration_bins_each_trial_by_the_odds_its_plan_stated():
    # one case whose first 15 plans stated 100 % and connected, then a spent budget: 54 % stated, 4 of 5
    case = summarise([_row(True, 1.0)] * 15 + [_row(True, 0.54)] * 4 + [_row(False, 0.54)])
    assert case["runs"][0] == [1, 1.0] and case["runs"][-1] == [0, 0.54]
    other = summarise([_row(True, 0.9992)] * 3 + [_row(False, None)])  # no plan: not counted
    bands = {tuple(b["band"]): b for b in calibration([case, other])}
    top = bands[(0.999, 1.0)]
    assert (top["trials"], top["connected"]) == (18, 18) and top["agree"] is True
    mid = bands[(0.5, 0.9)]
    assert (mid["trials"], mid["connected"], mid["expected"]) == (5, 4, 2.7)
    assert mid["wilson"][0] < 0.54 < 0.8 < mid["wilson"][1] and mid["agree"] is True
    assert set(bands) == {(0.999, 1.0), (0.5, 0.9)}
    # 20 of 20 at 54 % stated: the odds were too low for that band
    (low,) = calibration([summarise([_row(True, 0.54)] * 20)])
    assert low["connected"] == 20 and low["agree"] is False


def test_floor_odds_are_calibrated_as_floors():
    # same-NAT peers: the plan states the punch's odds, "at least": the LAN attempts' chance is not
    # counted. 40 of 40 at a stated floor of 3 % agree; they are not a 0-50 % band that "missed" low
    floors = [replace(_row(True, 0.03), odds_floor=True)] * 40
    case = summarise(floors + [_row(True, 0.9995)] * 5)
    assert case["runs"][0] == [1, 0.03, 1] and case["runs"][-1] == [1, 0.9995]
    bands = calibration([case])
    assert [(b["band"], b["floor"], b["trials"]) for b in bands] == [([0.999, 1.0], False, 5), ([0.0, 1.0], True, 40)]
    assert bands[1]["agree"] is True
    # a floor the lab did not reach disagrees
    (low,) = calibration([summarise([replace(_row(False, 0.9), odds_floor=True)] * 20)])
    assert low["floor"] and low["agree"] is False


def test_the_markdown_keeps_the_digits_of_a_wilson_bound():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "matrix.py"
    spec = importlib.util.spec_from_file_location("bench_matrix", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    markdown = bench.markdown
    case = {**summarise([_row(True, 0.9999)] * 4000), "left": "a", "right": "b", "shape": "flat", "tcp": False,
            "expect": "feasible"}
    text = markdown([case], {"trials": 4000, "background": 5.0, "date": "now", "seconds": 1, "shapes": {"flat": "x"}})
    row = next(line for line in text.splitlines() if line.startswith("| UDP | a → b |"))
    assert "| 99.904–100% |" in row and "100–100%" not in text


def test_wait_tcp_takes_a_slow_probe_for_no_answer_yet():
    """Under load a probe's Python may outlast its timeout: the wait goes on until its deadline."""
    import subprocess
    import time

    from nattrav.lab.errors import LabError
    from nattrav.lab.matrix import wait_tcp

    class SlowLab:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def run(self, node, argv, timeout):
            self.calls += 1
            answer = self.answers.pop(0)
            if answer is None:
                raise subprocess.TimeoutExpired(argv, timeout)
            return subprocess.CompletedProcess(argv, answer)

    lab = SlowLab([None, None, 0])
    wait_tcp(lab, "198.51.100.1", 7000, time.monotonic() + 30)
    assert lab.calls == 3
    with pytest.raises(LabError):
        wait_tcp(SlowLab([1] * 1000), "198.51.100.1", 7000, time.monotonic() + 0.3)
