"""proto/planner/budget.py: the flow budget a side publishes -- smaller behind a carrier-grade NAT,
less what our own recent bursts still hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nattrav.proto.hops import DEFAULT_HOPS, read_trace
from nattrav.proto.planner.budget import (CGN_FLOW_BUDGET, DEFAULT_FLOW_BUDGET, FLOW_LINGER, FLOW_TABLE_CAP,
                                          FlowLedger, behind_cgn, budget_left, default_flow_budget)

HOME = read_trace({1: "192.168.1.1", 2: "203.0.113.1"}, server_ttl=3, max_ttl=8)
HOME_IN_CGN = read_trace({1: "192.168.1.1", 2: "100.64.1.1", 3: "203.0.113.1"}, server_ttl=4, max_ttl=8)


def test_the_default_budget_knows_a_carrier_grade_nat():
    assert default_flow_budget(HOME) == DEFAULT_FLOW_BUDGET
    assert default_flow_budget(DEFAULT_HOPS) == DEFAULT_FLOW_BUDGET  # nothing traced: a home router
    assert default_flow_budget(HOME_IN_CGN) == CGN_FLOW_BUDGET < DEFAULT_FLOW_BUDGET
    # a host straight on the carrier's network (a phone) has a shared-space address of its own
    assert behind_cgn(DEFAULT_HOPS, ["100.80.3.4"]) and not behind_cgn(DEFAULT_HOPS, ["10.0.1.2", "junk"])
    assert default_flow_budget(HOME, ["100.80.3.4"]) == CGN_FLOW_BUDGET


def test_the_ledger_subtracts_bursts_until_the_nat_lets_them_go():
    ledger = FlowLedger()
    assert ledger.held("10.0.1.2", 0.0) == 0
    ledger.record("10.0.1.2", 470, until=0.0 + FLOW_LINGER)
    ledger.record("10.0.1.2", 30, until=10.0 + FLOW_LINGER)
    ledger.record("10.0.9.9", 1000, until=FLOW_LINGER)  # another network's NATs are not ours
    assert ledger.held("10.0.1.2", 5.0) == 500
    assert budget_left(CGN_FLOW_BUDGET, ledger.held("10.0.1.2", 5.0)) == 12
    # the first burst's entries expire FLOW_LINGER after it; the second's later
    assert ledger.held("10.0.1.2", FLOW_LINGER) == 30
    assert ledger.held("10.0.1.2", 10.0 + FLOW_LINGER) == 0
    assert ledger.bursts.keys() == {"10.0.9.9"}  # expired ones are dropped, not kept forever


def test_a_burst_is_held_to_its_bound_until_settled():
    # recorded when planned, with the latest its last packet may leave; settled when the punch ends
    ledger = FlowLedger()
    burst = ledger.record("ip", 600, until=4.3 + FLOW_LINGER)
    ledger.settle(burst, 0.7 + FLOW_LINGER)
    assert ledger.held("ip", 0.7 + FLOW_LINGER - 0.01) == 600
    assert ledger.held("ip", 0.7 + FLOW_LINGER) == 0


@given(st.integers(1, FLOW_TABLE_CAP), st.integers(-5, 2 * FLOW_TABLE_CAP))
def test_what_is_left_is_always_a_budget_the_schema_takes(budget, held):
    left = budget_left(budget, held)
    assert 1 <= left <= FLOW_TABLE_CAP
    assert left == max(1, budget - max(0, held))
