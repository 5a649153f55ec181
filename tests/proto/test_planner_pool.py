"""The UDP planner against a NAT that draws each new mapping's address from a pool ("arbitrary"
pooling, RFC 4787 §4.1) while its ports stay sequential: the peer aims at every address of the pool
the server saw, the odds count the chance the new mapping leaves from one of them (planner/pool.py),
and nothing is ever aimed at an address only the peer's report names. Pure: no sockets."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.proto.planner.pool import reach
from nattrav.proto.planner.udp import GRID_REACH, WINDOW_MARGIN, plan
from nattrav.proto.rendezvous.beacon import fold_sample
from nattrav.proto.report import PORT_RANGE, NatReport, Sample, counter_sample
from nattrav.proto.vocab import Strategy
from tests.reports import udp

POOL = ["203.0.113.11", "203.0.113.12", "203.0.113.13", "203.0.113.10"]  # as the server saw them
CONE = udp("EIM", "APDF", [5000], ip="198.51.100.20")
RESTRICTED = udp("EIM", "ADF", [5000], ip="198.51.100.20")
SEQ = udp("APDM", "APDF", [6000, 6001], ip="198.51.100.30", allocation="sequential", delta=1)


def pooled(draws: int | None = 35, pool: int = 4, ip: str = "203.0.113.10") -> NatReport:
    """A symmetric NAT with a sequential counter whose flows showed `pool` addresses in `draws`."""
    return replace(udp("APDM", "APDF", [20015, 20016], ip=ip, allocation="sequential", delta=1),
                   pool=pool, pool_draws=draws)


def aimed(p) -> set[str]:
    """Every address our side's parts send to."""
    return {ip for a in p.attempts for ip in (a.local.peer_ip, *a.local.also) if a.local.packets}


def test_the_opener_aims_its_window_at_every_address_of_the_pool_the_server_saw():
    for role in ("first", "second"):
        p = plan(CONE, pooled(), role, peer_ip="203.0.113.11", peer_udp=POOL)
        assert p.feasible and p.strategy is Strategy.PREDICTED, p.reason
        ours = p.primary.local
        # the cone opens (low TTL) towards the pooled side's predicted ports, on every address
        assert ours.opens and {ours.peer_ip, *ours.also} == set(POOL) and len(ours.also) == 3
        assert ours.packets == 4 * len(ours.targets) and ours.targets[0] == 20017
        assert p.params["address_pool_aimed"] == {"remote": 4}
        assert "every address the server saw is aimed at" in p.reason and "35 fresh flows" in p.reason
        # the odds: the window's, times the chance the new mapping leaves from one of the four; the
        # window aims that much higher, so the plan still reaches the target (a window aims at
        # 1 - (1 - target) / WINDOW_MARGIN: the target whose window aims at that over the reach)
        # (or at that alone, where over the reach it is past what a window covers: GRID_REACH)
        goal = (1 - (1 - 0.999) / WINDOW_MARGIN) / reach(4, 4, 35)
        aim = goal if goal <= GRID_REACH else 1 - (1 - 0.999) / WINDOW_MARGIN
        window = plan(CONE, replace(pooled(), pool=1, pool_draws=None), role, peer_ip="203.0.113.10",
                      target=1 - WINDOW_MARGIN * (1 - aim))
        assert abs(p.odds - window.odds * reach(4, 4, 35)) < 1e-9 and p.odds >= 0.999
        assert p.primary.local.targets == window.primary.local.targets
        # the pooled side plans the same, mirrored: it talks to the cone's one mapping
        mirror = plan(pooled(), CONE, "second" if role == "first" else "first", peer_ip="198.51.100.20",
                      own_udp=POOL)
        assert mirror.odds == p.odds and mirror.primary.remote.packets == ours.packets
        assert mirror.primary.local.targets == (5000,) and not mirror.primary.local.also


def test_an_address_only_the_report_names_is_never_aimed_at():
    # the report names 192.0.2.50 (a victim's?) and the TCP connection came from .9: the server saw
    # the punch socket's flows on two addresses only, and only those get packets
    liar = pooled(ip="192.0.2.50")
    p = plan(CONE, liar, "first", peer_ip="203.0.113.9", peer_udp=["203.0.113.11", "203.0.113.12"])
    assert aimed(p) == {"203.0.113.11", "203.0.113.12"}
    assert p.params["reported_peer_ip"] == "192.0.2.50"
    # its claim of a pool of 4 is its own side's problem: two aimed at of four seen
    honest = plan(CONE, pooled(), "first", peer_ip="203.0.113.9", peer_udp=["203.0.113.11", "203.0.113.12"])
    assert p.odds == honest.odds and not p.feasible


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["192.0.2.50", "203.0.113.10", "203.0.113.99"]),
       st.lists(st.sampled_from(POOL + ["203.0.113.99"]), max_size=6),
       st.integers(1, 8), st.one_of(st.none(), st.integers(1, 64)), st.sampled_from(["first", "second"]))
def test_whatever_a_report_claims_packets_go_only_where_the_server_saw_the_peer(claimed, seen, pool, draws, role):
    peer = pooled(draws=draws, pool=pool, ip=claimed)
    for me in (CONE, RESTRICTED, SEQ):
        p = plan(me, peer, role, peer_ip="203.0.113.9", peer_udp=seen)
        assert aimed(p) <= {"203.0.113.9", *seen}, (p.strategy, aimed(p))


def test_the_odds_count_only_the_addresses_aimed_at_and_hold_against_a_simulated_pool():
    # the side's own flows showed 4 addresses, the server vouched for 2 of them: half the new
    # mappings leave from an address nobody aims at
    p = plan(CONE, pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL[:2])
    assert {p.primary.local.peer_ip, *p.primary.local.also} == set(POOL[:2])
    assert not p.feasible and 0.45 < p.odds < 0.5 and "infeasible without a relay" in p.reason
    # a pool of 4 drawn uniformly: how often does the next mapping leave from an aimed address?
    rng = random.Random(7)
    trials = 20000
    hits = sum(rng.choice(POOL) in {p.primary.local.peer_ip, *p.primary.local.also} for _ in range(trials))
    assert abs(hits / trials - reach(2, 4, 35)) < 0.02


def test_weak_evidence_of_the_pools_size_gives_low_odds():
    # an older peer says nothing of its draws: four addresses in (at least) four flows say little
    # about how many more there are
    p = plan(CONE, pooled(draws=None), "first", peer_ip="203.0.113.11", peer_udp=POOL)
    assert not p.feasible and p.odds < 0.1 and "4 addresses in 4 fresh flows" in p.reason
    assert "a relay (TURN) is needed" in p.failure_message()
    assert "the plan aimed at the 4 the server saw" in p.failure_message()


def test_the_window_is_sized_to_the_openers_budget_over_the_addresses():
    for budget in (8, 16, 40):
        p = plan(CONE, pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL, flow_budget=budget)
        assert p.primary.local.flows <= budget, (budget, p.primary.local.flows)
        assert p.primary.local.flows == 4 * len(p.primary.local.targets)


def test_a_side_whose_every_new_destination_takes_a_port_does_not_spread():
    # a symmetric NAT aiming at four addresses would open four mappings per port and move its own
    # predicted ports: it aims at one address, one chance in the pool's size
    p = plan(SEQ, pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL)
    assert not any(a.local.also or a.remote.also for a in p.attempts)
    assert not p.feasible and p.odds <= reach(1, 4, 35) + 1e-9
    assert "at most 1 chance in 4" in p.reason


def test_both_sides_scattered_stays_infeasible():
    p = plan(pooled(ip="198.51.100.30"), pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL,
             own_udp=["198.51.100.30", "198.51.100.31"])
    assert not p.feasible and p.odds < 0.3 and "relay" in p.reason


def test_an_address_restricted_cone_opens_its_filter_to_every_address_of_the_pool():
    p = plan(RESTRICTED, pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL)
    assert p.feasible and p.strategy is Strategy.ADDRESS_OPEN
    assert {p.primary.local.peer_ip, *p.primary.local.also} == set(POOL) and p.primary.local.packets == 4
    assert abs(p.odds - reach(4, 4, 35)) < 1e-12


def test_a_pool_that_reaches_a_full_cone_still_talks_first():
    p = plan(udp("EIM", "EIF", [6000]), pooled(), "first", peer_ip="203.0.113.11", peer_udp=POOL)
    assert p.feasible and p.strategy is Strategy.DIRECT and p.odds == 1.0


def test_reach_is_the_chance_a_new_mapping_leaves_from_an_aimed_address():
    assert reach(1, 1, 3) == 1.0 and reach(0, 1, 3) == 0.0
    assert reach(4, 4, 35) > 0.999 and abs(reach(1, 4, 35) - 0.25) < 0.001
    # more draws that showed no new address: a smaller pool is likelier
    assert reach(4, 4, 5) < reach(4, 4, 10) < reach(4, 4, 35)
    assert reach(1, 4, 35) < reach(2, 4, 35) < reach(3, 4, 35) < reach(4, 4, 35)
    # an older peer's claim of 4 draws for 4 addresses: the pool's size is wide open
    assert reach(4, 4, 0) == reach(4, 4, 4) < 0.1
    # calibrated under its prior: pools drawn from it, the estimate against the truth
    rng = random.Random(3)
    stated = happened = 0.0
    for _ in range(4000):
        n = rng.randint(2, 8)
        draws = [rng.randrange(n) for _ in range(12)]
        k = len(set(draws))
        if k < 2:
            continue
        stated += reach(k, k, 12)
        happened += rng.randrange(n) in set(draws)
    # the flat prior reaches up to 256 addresses: it never claims more than happens here
    assert stated <= happened


def test_the_survey_moves_the_counter_the_punch_socket_is_predicted_from():
    last = Sample(20016, 0.004)
    # 32 fresh sockets took 20017..20048 in some order: the counter stands at the furthest
    after = counter_sample(last, random.Random(1).sample(range(20017, 20049), 32), 1, PORT_RANGE, 0.005)
    assert after == Sample(20048, 0.005, 31)
    # lost answers: the others in between read as background, not as ours
    assert counter_sample(last, [20030, 20018, 20047], 1, PORT_RANGE, 0.005) == Sample(20047, 0.005, 2)
    # across the top of the range, on a step of 2, never before the last sample in time
    assert counter_sample(Sample(65533, 1.0), [65535, 1025], 2, PORT_RANGE, 0.5) == Sample(1025, 1.0, 1)
    # nothing on the grid, or not sequential: nothing folded
    assert counter_sample(last, [], 1, PORT_RANGE, 0.005) is None
    assert counter_sample(last, [20017, 20019], 2, PORT_RANGE, 0.005) is None
    assert counter_sample(last, [20017], None, PORT_RANGE, 0.005) is None
    assert counter_sample(last, [15000], 1, PORT_RANGE, 0.005) is None  # behind: an old mapping
    # the planner predicts from after the survey
    report = replace(pooled(), samples=pooled().samples + (after,))
    p = plan(CONE, report, "first", peer_ip="203.0.113.11", peer_udp=POOL)
    assert p.primary.local.targets[0] == 20049 and len(p.primary.local.targets) < 16


def test_a_pooled_listeners_beacon_is_folded_whatever_its_address():
    # its flow took the counter's next port on any address of the pool
    report = pooled()
    folded = fold_sample(report, ("203.0.113.13", 20050), 0.02)
    assert folded.samples[-1].port == 20050 and folded.public == ("203.0.113.10", 20050)
    # one address: another IP still says nothing (it may be another network's)
    single = replace(report, pool=1, pool_draws=None)
    assert fold_sample(single, ("203.0.113.13", 20050), 0.02) is single
    # random ports on a pool: nothing to fold either
    rnd = replace(report, allocation=type(report.allocation)("random"))
    assert fold_sample(rnd, ("203.0.113.13", 20050), 0.02) is rnd
