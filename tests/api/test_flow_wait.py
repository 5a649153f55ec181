"""api/flow_wait.py: a connect that follows its own punches within FLOW_LINGER waits (seconds, at
most its cap) until the budget holds a burst like the last one again, instead of publishing the
leftover and planning at a few percent."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

import pytest
import trio
import trio.testing

from nattrav.api import flow_wait as fw
from nattrav.api.behavior_cache import BehaviorCache, Entry, Key, trace_of
from nattrav.api.session import SessionOptions
from nattrav.api.udp import burst_flows
from nattrav.cli.events import describe
from nattrav.errors import UsageError
from nattrav.proto.hops import read_trace
from nattrav.proto.nat_behavior import NatBehavior
from nattrav.proto.planner.budget import (CGN_FLOW_BUDGET, DEFAULT_FLOW_BUDGET, FLOW_LINGER, PACE_CAP, FlowLedger,
                                          budget_left)
from nattrav.proto.planner.udp import plan
from tests.reports import udp

STUN = ("198.51.100.1", 3478)
LOCAL = "10.0.1.2"
CONE = udp("EIM", "APDF", [40000, 40000], ip="203.0.113.20")
SEQ = udp("APDM", "APDF", [31000, 31001], ip="203.0.113.30", allocation="sequential", delta=1, times=[0.0, 0.002])
IN_CGN = read_trace({1: "10.0.1.1", 2: "100.64.0.1", 3: "192.0.2.254"}, 4, 8)
AT_HOME = read_trace({1: "10.0.1.1", 2: "192.0.2.254"}, 3, 8)


def odds_at(flows: int) -> float:
    return plan(replace(CONE, flows=flows), SEQ, "first", horizon=1.0).odds


def test_back_to_back_punches_behind_a_cgn_wait_for_the_oldest_instead_of_planning_at_the_leftover():
    # a cone behind a CGN (512) punching a sequential NAT: each predicted burst opens ~130 flows held
    # 30 s; after three in a row the leftover no longer holds a fourth, whose plan then misses its target
    need = burst_flows(plan(replace(CONE, flows=CGN_FLOW_BUDGET), SEQ, "first", horizon=1.0))
    assert 100 < need < CGN_FLOW_BUDGET // 3
    ledger, now = FlowLedger(), time.monotonic()
    for ago in (28, 15, 2):  # a punch every 13 s, the last 2 s ago
        ledger.record(LOCAL, need, now + FLOW_LINGER - ago, CGN_FLOW_BUDGET)
    left = budget_left(CGN_FLOW_BUDGET, ledger.held(LOCAL, now))
    first = odds_at(CGN_FLOW_BUDGET)  # the first punch's odds (its window aims at 99.99 %)
    assert left < need and odds_at(left) < first
    wait, detail = fw.flow_wait(ledger, LOCAL)
    asked = time.monotonic()  # the wait counts from flow_wait's own clock, read in between (a loaded
    # machine can put tenths of a second between `now` and it)
    # the table holds a fourth burst in 2 s (the oldest goes), and so does the rate rule's bucket then
    # (the three came at about what the budget sustains, and the oldest one's flows no longer count)
    assert 1.9 - (asked - now) < wait <= 2.0
    assert detail == {"seconds": round(wait, 3), "held": 3 * need, "local_ip": LOCAL}
    # once it has waited, the budget holds the same burst at the same odds as the first punch's
    later = budget_left(CGN_FLOW_BUDGET, ledger.held(LOCAL, asked + wait + 0.01))
    assert later >= need and odds_at(later) == first
    # a side that may not wait (flow_wait 0) plans at the leftover, as before
    assert fw.flow_wait(ledger, LOCAL, cap=0) == (0.0, {})


def test_bursts_of_another_process_are_paced_with_the_networks_own_budget(tmp_path):
    cache = BehaviorCache(tmp_path / "behavior.json")
    key = Key.of((LOCAL, 40000), ("203.0.113.20", 40000), STUN)
    for ago in (28, 24, 18, 10, 2):
        assert cache.record_flows(LOCAL, 90, time.time() + FLOW_LINGER - ago)
    ledger = FlowLedger()
    # no entry for the network yet: its budget is not known, nothing to pace by
    assert fw.flow_wait(ledger, LOCAL, cache=cache, stun=STUN)[0] == 0.0
    # the network's kept trace shows a CGN: 512, and 450 of it held
    cache.save(key, NatBehavior(mapping=CONE.mapping, filtering=CONE.filtering, local=(LOCAL, 40000),
                                public_ip="203.0.113.20", server=STUN))
    assert cache.set_hops(key, IN_CGN)
    wait, detail = fw.flow_wait(ledger, LOCAL, cache=cache, stun=STUN)
    assert 1.9 < wait <= 2.0 and detail["held"] == 450
    # a home router's 1024 (a trace with no shared-address hop) holds a sixth burst now
    assert cache.set_hops(key, AT_HOME)
    assert fw.flow_wait(ledger, LOCAL, cache=cache, stun=STUN)[0] == 0.0
    # an explicit budget (--max-flows) wins over the trace's
    assert fw.flow_wait(ledger, LOCAL, cache=cache, stun=STUN, budget=400)[0] > 0
    # another network's bursts are not ours
    assert fw.flow_wait(ledger, "10.0.9.9", cache=cache, stun=STUN, budget=400)[0] == 0.0


def test_the_wait_sleeps_and_says_why():
    ledger = FlowLedger()
    ledger.record(LOCAL, 300, time.monotonic() + 2.0, CGN_FLOW_BUDGET)  # fired 28 s ago
    # 5 s ago: the bucket (300, the largest burst, refilled at 10 flows/s) holds 300 again 15 s from now
    ledger.record(LOCAL, 200, time.monotonic() + 25.0, CGN_FLOW_BUDGET)
    events = []

    async def main():
        t0 = trio.current_time()
        slept = await fw.wait_for_flows(ledger, lambda phase, d: events.append((phase, d)), LOCAL)
        return slept, trio.current_time() - t0

    slept, took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 14.9 < slept <= 15.0 and took == pytest.approx(slept)
    assert [phase for phase, _ in events] == ["flow-wait"] and events[0][1]["held"] == 500
    line = describe(*events[0])
    assert "waiting 15.0 s" in line and "500 entries" in line and "--flow-wait 0" in line
    # nothing held: no wait, no event
    assert trio.run(fw.wait_for_flows, FlowLedger(), lambda *a: events.append(a), LOCAL) == 0.0
    assert len(events) == 1


@pytest.mark.parametrize("bad", [-1, 31.0, float("nan"), True, "8"])
def test_a_bad_flow_wait_is_the_callers_mistake(bad):
    with pytest.raises(UsageError, match="flow_wait"):
        SessionOptions(flow_wait=bad)
    assert SessionOptions().flow_wait == PACE_CAP and SessionOptions(flow_wait=0).flow_wait == 0


def test_nattrav_fast_takes_and_checks_flow_wait():
    run = [sys.executable, "-m", "nattrav.cli.fast"]
    helptext = subprocess.run([*run, "--help"], capture_output=True, timeout=30).stdout.decode()
    assert "--flow-wait" in helptext and f"(default {PACE_CAP:g})" in " ".join(helptext.split())
    bad = subprocess.run([*run, "-s", "127.0.0.1", "--flow-wait", "40"], capture_output=True, timeout=30)
    assert bad.returncode == 2 and b"--flow-wait must be in 0..30 seconds" in bad.stderr
    assert b"Traceback" not in bad.stderr


def test_a_connect_waits_at_most_what_its_timeout_spares_and_an_accept_half():
    from nattrav.api.session import CONNECT_RESERVE, _udp

    o = SessionOptions(secure=False)
    assert _udp(None, o, None, timeout=30.0).flow_wait == min(PACE_CAP, 30.0 - CONNECT_RESERVE)
    assert _udp(None, o, None, timeout=12.0).flow_wait == 2.0
    assert _udp(None, o, None, timeout=5.0).flow_wait == 0.0  # nothing to spare: plan at what is left
    assert _udp(None, o, None).flow_wait == PACE_CAP / 2  # a listener: the initiator is held meanwhile
    assert _udp(None, SessionOptions(secure=False, flow_wait=0), None, timeout=60.0).flow_wait == 0.0


def test_the_lab_agent_keeps_a_trials_wait_in_its_row():
    from nattrav.lab.agent import marking

    async def main():
        marks, on_event = marking()
        on_event("flow-wait", {"seconds": 1.25, "held": 480, "local_ip": LOCAL})
        on_event("flow-wait", {"seconds": 0.5, "held": 420, "local_ip": LOCAL})  # an accept's, later
        return marks

    marks = trio.run(main)
    assert marks["flow_wait"] == 1.75 and [e[0] for e in marks["events"]] == ["flow-wait", "flow-wait"]


def test_a_listeners_waits_for_one_endpoint_share_one_cap(monkeypatch):
    """The accept's pace takes what the endpoint's own wait (when it was opened) left of the cap: a
    listener that waited 9 s then and 5 s more at the accept outlasted its initiator's 15 s connect."""
    from types import SimpleNamespace

    from nattrav.api import udp as api_udp

    caps = []

    async def fake_wait(ledger, emit, local_ip=None, *, cap, **kw):
        caps.append(cap)
        return cap  # as if the whole cap was slept

    monkeypatch.setattr(api_udp, "wait_for_flows", fake_wait)
    transport = api_udp.UdpTransport(flow_wait=10.0)
    ep = SimpleNamespace(waited=9.0, local_ip=LOCAL, cached=None, behavior=NatBehavior(), budget=CGN_FLOW_BUDGET)
    trio.run(transport.pace, ep, lambda *a: None)
    assert caps == [pytest.approx(1.0)] and ep.waited == pytest.approx(10.0)
    trio.run(transport.pace, ep, lambda *a: None)  # the cap is spent: no second wait
    assert len(caps) == 1
