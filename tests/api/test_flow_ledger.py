"""The flow ledger as the API keeps it: what a side publishes (NatReport.flows) is its budget less
its recent bursts, in this process (api/udp.py's LEDGER) and across processes (the behaviour cache
file), and the plan's odds are stated at the budget left."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from nattrav.api import udp as api_udp
from nattrav.api.behavior_cache import MAX_BURSTS, BehaviorCache, Key
from nattrav.api.endpoint import CacheUse
from nattrav.api.udp import Endpoint, UdpTransport, burst_flows
from nattrav.proto.nat_behavior import NatBehavior
from nattrav.proto.planner.budget import CGN_FLOW_BUDGET, DEFAULT_FLOW_BUDGET, FLOW_LINGER, FlowLedger
from nattrav.proto.planner.udp import plan
from nattrav.proto.report import NatReport
from nattrav.proto.vocab import Filtering, Mapping, Strategy
from tests.reports import udp

STUN = ("198.51.100.1", 3478)
CONE = udp("EIM", "APDF", [40000, 40000], ip="203.0.113.20")
RANDOM = udp("APDM", "APDF", [31234, 5001], ip="203.0.113.30", allocation="random")


@pytest.fixture(autouse=True)
def ledger(monkeypatch) -> FlowLedger:
    fresh = FlowLedger()
    monkeypatch.setattr(api_udp, "LEDGER", fresh)
    return fresh


def endpoint(report: NatReport, budget: int, local_ip: str = "10.0.1.2", cached: CacheUse | None = None) -> Endpoint:
    behavior = NatBehavior(mapping=report.mapping, filtering=report.filtering, local=(local_ip, 40000))
    return Endpoint(None, behavior, report, cached=cached, budget=budget, local_ip=local_ip)


def test_back_to_back_sessions_publish_what_the_nats_still_have_free(ledger):
    # a cone behind a carrier-grade NAT (512) meets a random NAT: the first birthday spends all 512
    # of its flows; the next session within FLOW_LINGER publishes only what is left (the floor of 1),
    # and its plan says the odds at that budget instead of promising 99.9% and filling the
    # subscriber's table
    ep = endpoint(CONE, CGN_FLOW_BUDGET)
    events = []
    first = plan(ep.publish_flows(lambda phase, d: events.append((phase, d))), RANDOM, "first")
    assert ep.report.flows == CGN_FLOW_BUDGET and first.odds >= 0.999
    assert events == [("flow-budget", {"flows": 512, "budget": 512, "held": 0, "cgn": False})]
    spent = burst_flows(first)
    assert spent == CGN_FLOW_BUDGET
    now = time.monotonic()
    ledger.record(ep.local_ip, spent, now + FLOW_LINGER)
    second = plan(ep.publish_flows(), RANDOM, "first")
    assert ep.report.flows == 1
    assert second.primary.local.random_probes <= 1
    assert second.odds < 0.999 and f"{second.odds:.4%}" in second.reason
    # once the NAT has let those entries go, the whole budget is back
    ledger.settle(ledger.bursts[ep.local_ip][0], now - 1)
    assert ep.publish_flows().flows == CGN_FLOW_BUDGET


def test_the_ledger_is_per_network():
    ep_a, ep_b = endpoint(CONE, 1024, "10.0.1.2"), endpoint(CONE, 1024, "10.0.2.2")
    api_udp.LEDGER.record("10.0.1.2", 1000, time.monotonic() + FLOW_LINGER)
    assert ep_a.publish_flows().flows == 24 and ep_b.publish_flows().flows == 1024


def test_bursts_of_other_processes_come_from_the_cache_file(tmp_path):
    path = tmp_path / "behavior.json"
    other, ours = BehaviorCache(path), BehaviorCache(path)
    assert other.record_flows("10.0.1.2", 300, time.time() + FLOW_LINGER)
    assert other.record_flows("10.0.1.2", 50, time.time() - 1)  # already let go
    use = CacheUse(ours, Key.of("10.0.1.2", "203.0.113.20", STUN))
    assert endpoint(CONE, 1024, cached=use).publish_flows().flows == 724
    # the larger of the two accounts: this process's bursts are in the file too once written
    api_udp.LEDGER.record("10.0.1.2", 500, time.monotonic() + FLOW_LINGER)
    assert endpoint(CONE, 1024, cached=use).publish_flows().flows == 524
    # without the cache (--no-cache), this process's own bursts only
    assert endpoint(CONE, 1024).publish_flows().flows == 524


def test_the_file_keeps_bursts_beside_the_behaviours_and_checks_them(tmp_path):
    path = tmp_path / "behavior.json"
    cache = BehaviorCache(path)
    key = Key.of("10.0.1.2", "203.0.113.20", STUN)
    behavior = NatBehavior(mapping=Mapping.EIM, filtering=Filtering.APDF, nat=True, public_ip="203.0.113.20",
                           local=("10.0.1.2", 40000), server=STUN)
    assert cache.save(key, behavior, now=1000.0)
    for k in range(MAX_BURSTS + 5):
        cache.record_flows("10.0.1.2", 10, until=2000.0 + k, now=1000.0)
    assert cache.flows_held("10.0.1.2", now=1500.0) == 10 * MAX_BURSTS  # the oldest went first
    assert cache.flows_held("10.0.1.2", now=2000.0 + MAX_BURSTS + 4) == 0
    assert cache.lookup(key, now=1001.0) is not None  # bursts and behaviours live side by side
    assert cache.forget(key) and cache.flows_held("10.0.1.2", now=1500.0) == 10 * MAX_BURSTS
    # what is not [unix time, flows] under an IP literal is dropped, never an error, and spoils no
    # behaviour kept beside it
    assert cache.save(key, behavior, now=1000.0)
    doc = json.loads(path.read_text())
    doc["flows"] = {"10.0.1.2": [[1e12, 7], [1e12, -1], [1e12, True], ["x", 3], [float("inf"), 2], [1e12]],
                    "not-an-ip": [[1e12, 99]], "10.0.3.3": "junk"}
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    assert cache.flows_held("10.0.1.2") == 7 and cache.flows_held("not-an-ip") == 0
    doc["flows"] = [1, 2]
    path.write_text(json.dumps(doc))
    assert cache.flows_held("10.0.1.2") == 0 and cache.lookup(key, now=1001.0) is not None


def test_an_explicit_budget_wins_and_a_bad_one_is_refused():
    assert UdpTransport().max_flows is None  # the default is found per side (the hop trace)
    assert UdpTransport(max_flows=4096).max_flows == 4096
    for bad in (0, 262145):
        with pytest.raises(ValueError):
            UdpTransport(max_flows=bad)


def test_lan_attempts_cost_no_flow_on_our_nats():
    cone = replace(CONE, host=(("10.0.1.2", 40000),))
    peer = replace(RANDOM, host=(("10.0.1.3", 41000),))
    p = plan(cone, peer, "first", peer_ip="203.0.113.20", own_ip="203.0.113.20")
    assert any(a.strategy is Strategy.LAN for a in p.attempts)
    assert burst_flows(p) == sum(a.local.flows for a in p.attempts if a.strategy is not Strategy.LAN)
    assert DEFAULT_FLOW_BUDGET >= burst_flows(p) > 0
