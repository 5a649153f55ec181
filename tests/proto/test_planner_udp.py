"""Strategy planning for every pair of NAT classes: the cheapest strategy, its size, its odds."""

import itertools
import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import BadReport, PlanError
from nattrav.proto.nat_behavior import BindingSample
from nattrav.proto.planner.odds import FLOW_TABLE_CAP, birthday_miss, needed, probes_for, simulate
from nattrav.proto.planner.side import side_from_report
from nattrav.proto.planner.strategies import STRATEGIES
from nattrav.proto.planner.udp import DEFAULT_FLOW_BUDGET, plan
from nattrav.proto.report import NatReport, samples_from_bindings
from nattrav.proto.vocab import Allocation, Filtering, Mapping, Strategy
from tests.reports import udp, wire

# One report per NAT class, shaped like the lab presets (samples: one socket to S1 then S2).
_CLASSES = {
    "none": dict(nat=False, mapping="EIM", filtering="EIF", ports=[40000, 40000]),
    "full-cone": dict(mapping="EIM", filtering="EIF", ports=[40000, 40000]),
    "restricted-cone": dict(mapping="EIM", filtering="ADF", ports=[40000, 40000]),
    "port-restricted": dict(mapping="EIM", filtering="APDF", ports=[40000, 40000]),
    "symmetric-seq": dict(mapping="APDM", filtering="APDF", allocation="sequential", delta=1,
                          ports=[20000, 20001], times=[0.0, 0.01]),
    # Δ > 1 from one gap is in doubt (predict.delta_posterior): discovery's many gaps settled it
    "symmetric-seq-2": dict(mapping="APDM", filtering="APDF", allocation="sequential", delta=2,
                            ports=[20000, 20002], times=[0.0, 0.01], delta_doubt=0.0),
    "symmetric-seq-7": dict(mapping="APDM", filtering="APDF", allocation="sequential", delta=7,
                            ports=[20000, 20007], times=[0.0, 0.01], delta_doubt=0.0),
    "adm": dict(mapping="ADM", filtering="APDF", allocation="sequential", delta=1,
                ports=[20000, 20001], times=[0.0, 0.01]),
    "symmetric-random": dict(mapping="APDM", filtering="APDF", allocation="random", ports=[31234, 5001]),
}
CLASSES = {name: udp(ip=f"203.0.113.{10 + i}", **kw) for i, (name, kw) in enumerate(_CLASSES.items())}

EXPECTED = {
    # (first, second) class kinds -> strategy; "cone" = EIM with APDF, "rcone" = EIM with ADF
    ("reach", "*"): Strategy.DIRECT,
    ("rcone", "cone"): Strategy.SIMULTANEOUS,
    ("rcone", "rcone"): Strategy.SIMULTANEOUS,
    ("cone", "cone"): Strategy.SIMULTANEOUS,
    ("rcone", "seq"): Strategy.ADDRESS_OPEN,
    ("rcone", "random"): Strategy.ADDRESS_OPEN,
    ("cone", "seq"): Strategy.PREDICTED,
    ("seq", "seq"): Strategy.PREDICTED,
    ("cone", "random"): Strategy.BIRTHDAY,
    ("seq", "random"): Strategy.RANDOM_SEQUENTIAL,
    ("random", "random"): Strategy.BEST_EFFORT,
}
KIND = {"none": "reach", "full-cone": "reach", "restricted-cone": "rcone", "port-restricted": "cone",
        "symmetric-seq": "seq", "symmetric-seq-2": "seq", "symmetric-seq-7": "seq", "adm": "seq",
        "symmetric-random": "random"}


def expected(a: str, b: str) -> Strategy:
    ka, kb = KIND[a], KIND[b]
    if "reach" in (ka, kb):
        return Strategy.DIRECT
    return EXPECTED.get((ka, kb)) or EXPECTED[(kb, ka)]


PAIRS = list(itertools.product(CLASSES, CLASSES))


LAB_BUDGET = int(FLOW_TABLE_CAP * 0.9)  # the lab machine's whole flow table, less a margin


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}~{b}" for a, b in PAIRS])
def test_every_pair_gets_the_cheapest_strategy_and_both_sides_agree(a, b):
    # with the lab's whole flow table to spend (the default budget is a home router's: see below)
    p1 = plan(CLASSES[a], CLASSES[b], "first", flow_budget=LAB_BUDGET)
    p2 = plan(CLASSES[b], CLASSES[a], "second", flow_budget=LAB_BUDGET)
    assert p1.strategy is expected(a, b)
    # Both peers compute the same plan, mirrored: what I do is what the peer expects me to do.
    assert p2.strategy is p1.strategy and p2.odds == p1.odds
    assert [x.strategy for x in p1.attempts] == [x.strategy for x in p2.attempts]
    for x, y in zip(p1.attempts, p2.attempts):
        assert x.local == y.remote and x.remote == y.local
    prim = p1.primary
    # Exactly one side opens with a low TTL first in every strategy but best-effort's symmetric guess.
    assert prim.local.opens != prim.remote.opens
    assert p1.feasible == (p1.strategy is not Strategy.BEST_EFFORT)
    if p1.feasible:
        assert p1.odds >= 0.97
        if p1.strategy not in (Strategy.RANDOM_SEQUENTIAL,):
            assert p1.odds >= 0.999
    # Every port a side sends to is a real port.
    for part in (prim.local, prim.remote):
        assert all(1 <= port <= 65535 for port in part.targets)
        assert part.flows <= FLOW_TABLE_CAP
    # The reason uses RFC 4787 words for both NATs.
    assert "mapping" in p1.reason and "filtering" in p1.reason
    assert p1.timeout > 0


@pytest.mark.parametrize("a,b", [("symmetric-seq", "port-restricted"), ("symmetric-random", "symmetric-seq"),
                                 ("symmetric-random", "symmetric-random"), ("none", "full-cone")])
def test_summary_is_json_safe_and_complete(a, b):
    import json

    p = plan(CLASSES[a], CLASSES[b], "first")
    s = json.loads(json.dumps(p.summary()))
    assert s["strategy"] == p.strategy.value and s["odds"] == p.odds and s["reason"] == p.reason
    assert s["attempts"][0]["local"]["packets"] == p.primary.local.packets
    assert s["local"]["behaviour"] == p.local.describe()


def test_cheap_strategies_cost_one_or_two_packets():
    for a, b in [("full-cone", "symmetric-random"), ("port-restricted", "port-restricted"),
                 ("restricted-cone", "symmetric-seq")]:
        p = plan(CLASSES[a], CLASSES[b], "first")
        assert p.primary.local.packets == 1 and p.primary.remote.packets == 1


def test_cone_and_sequential_window_is_on_the_cone_side_with_low_ttl():
    p = plan(CLASSES["port-restricted"], CLASSES["symmetric-seq"], "first")
    me, peer = p.primary.local, p.primary.remote
    # the paper's order: the cone side sends low-TTL packets to the predicted ports, the sequential
    # side answers with a normal TTL to the cone's one known endpoint (no unsolicited packet at all)
    assert me.opens and not peer.opens
    assert me.targets[:3] == (20002, 20003, 20004)
    assert peer.targets == (40000,)
    assert p.local.prediction.covered == 1.0


def test_step_seven_targets_move_by_seven():
    p = plan(CLASSES["port-restricted"], CLASSES["symmetric-seq-7"], "first")
    t = p.primary.local.targets
    assert t[0] == 20014 and all((x - 20007) % 7 == 0 for x in t)


def test_sequential_pair_uses_giant_step_two():
    p = plan(CLASSES["symmetric-seq"], CLASSES["symmetric-seq"], "first")
    opener = p.primary.local if p.primary.local.opens else p.primary.remote
    other = p.primary.remote if p.primary.local.opens else p.primary.local
    assert list(opener.targets[:4]) == [20002, 20003, 20004, 20005]  # baby steps over its peer
    assert list(other.targets[:4]) == [20002, 20004, 20006, 20008]  # giant steps of 2Δ


def test_at_the_top_of_a_published_block_sequential_pairs_go_on_and_a_cone_aims_both_ways():
    # the peer published the block (20027, 24047) and its counter is at that top: the NAT may wrap
    # there or go on (a lab CGN went on to 24095)
    a = udp("APDM", "APDF", [22362, 22363], ip="203.0.113.10", allocation="sequential", delta=1,
            times=[0.0, 0.01])
    b = udp("APDM", "APDF", [24046, 24047], ip="203.0.113.20", allocation="sequential", delta=1,
            times=[0.0, 0.01], port_range=(20027, 24047))

    def at_b(p):
        return [t for x in (p.primary.local, p.primary.remote) if x.peer_ip == "203.0.113.20" for t in x.targets]

    # both count: the windows pair flows by index, so they go on past the top (no twin can be aimed)
    for role, mine, peer in (("first", a, b), ("second", b, a)):
        targets = at_b(plan(mine, peer, role))
        assert targets[0] == 24048 and all(t > 24047 for t in targets)
    # below the top, the block holds: the window wraps at it
    below = replace(b, samples=b.samples[:1], public=("203.0.113.20", 24046))
    assert min(at_b(plan(a, below, "first"))) < 20100
    # a cone's one flow meets the peer's window wherever it is: the wrapped ports, then their twins
    cone = at_b(plan(CLASSES["port-restricted"], b, "first"))
    assert cone[0] == 20027 and 24048 in cone and cone.index(24048) > cone.index(20027)


@pytest.mark.parametrize("op,ot", list(itertools.product(
    ["symmetric-seq", "symmetric-seq-2", "adm", "port-restricted", "restricted-cone"],
    ["symmetric-seq", "symmetric-seq-7", "adm", "port-restricted"])))
def test_closed_form_needs_match_brute_force(op, ot):
    opener, other = side_from_report(CLASSES[op]), side_from_report(CLASSES[ot])
    for u, v in itertools.product(range(7), range(7)):
        n_open, n_other = needed(opener, other, u, v)
        assert simulate(opener, other, n_open, n_other, u, v)
        # and they are the least: one probe fewer on either side misses
        if n_open > 1:
            assert not simulate(opener, other, n_open - 1, n_other, u, v)
        if n_other > 1:
            assert not simulate(opener, other, n_open, n_other - 1, u, v)


@pytest.mark.parametrize("a,b", [("port-restricted", "symmetric-seq"), ("symmetric-seq", "symmetric-seq"),
                                 ("symmetric-seq-7", "adm"), ("adm", "symmetric-seq-2")])
def test_predicted_plan_works_in_a_simulated_pair_of_nats_at_the_stated_odds(a, b):
    """Draw each NAT's background allocations from its predicted distribution, play the plan's
    exact packets through two model NATs, count connections."""
    p = plan(CLASSES[a], CLASSES[b], "first")
    first, second = p.local, p.remote
    prim = p.primary
    rng = random.Random(7)
    trials, ok = 3000, 0
    for _ in range(trials):
        u = _draw(rng, first.prediction.noise) if first.sequential else 0
        v = _draw(rng, second.prediction.noise) if second.sequential else 0
        fa = _flows(first, u, prim.local.targets)
        fb = _flows(second, v, prim.remote.targets)
        opener_flows, other_flows = (fa, fb) if prim.local.opens else (fb, fa)
        ok += any((dst, src) in opener_flows for src, dst in other_flows)
    assert ok / trials >= p.odds - 0.01


def _draw(rng, pmf):
    x, acc = rng.random(), 0.0
    for n, q in enumerate(pmf):
        acc += q
        if x < acc:
            return n
    return len(pmf)


def _flows(side, noise, dests):
    out, seen = set(), {}
    for d in dests:
        if d not in seen:
            if side.fixed:
                seen[d] = side.port
            elif side.consumes:
                seen[d] = side.next_port(noise + len(seen))
            else:
                seen[d] = side.next_port(noise)
        out.add((seen[d], d))
    return out


def test_birthday_formula_matches_known_numbers():
    # Tailscale's figures: 256 sockets, 1024 probes ~ 98%; 2048 probes ~ 99.9% (N = 65536)
    assert 1 - birthday_miss(65536, 256, 1024) == pytest.approx(0.982, abs=0.002)
    assert 1 - birthday_miss(65536, 256, 2048) == pytest.approx(0.9997, abs=0.0003)
    # without replacement is a little better than the (1 - s/N)^p approximation
    assert birthday_miss(65536, 256, 1024) < (1 - 256 / 65536) ** 1024
    p = probes_for(64512, 256, 0.999, 100000)
    assert 1 - birthday_miss(64512, 256, p) >= 0.999 > 1 - birthday_miss(64512, 256, p - 1)


def test_birthday_plan_sizes():
    p = plan(CLASSES["symmetric-random"], CLASSES["port-restricted"], "first", flow_budget=LAB_BUDGET)
    rnd, eim = p.primary.local, p.primary.remote
    assert rnd.opens and rnd.sockets >= 256 and rnd.targets == (40000,)
    assert eim.random_probes >= 1000 and not eim.opens
    assert p.odds >= 0.999
    assert "C(N-256" in p.reason


def test_the_default_flow_budget_is_a_home_routers_and_the_birthday_fits_it():
    # 256 mappings would need ~1,740 probes (flows on the cone's NAT) for 99.9%: past a CGN
    # subscriber's 1024-2048 ports; the random side opens more mappings instead
    p = plan(CLASSES["symmetric-random"], CLASSES["port-restricted"], "first")
    rnd, eim = p.primary.local, p.primary.remote
    assert p.strategy is Strategy.BIRTHDAY and p.odds >= 0.999 and p.feasible
    assert rnd.flows <= DEFAULT_FLOW_BUDGET and eim.flows <= DEFAULT_FLOW_BUDGET
    assert rnd.sockets > 256 and p.params["flow_budget"] == DEFAULT_FLOW_BUDGET
    # a budget too small for the target is spent whole, and the odds say what it buys
    small = plan(CLASSES["symmetric-random"], CLASSES["port-restricted"], "first", flow_budget=200)
    assert small.primary.local.flows <= 200 and small.primary.remote.flows <= 200
    assert small.odds == pytest.approx(1 - birthday_miss(64512, small.primary.local.sockets,
                                                         small.primary.remote.random_probes))
    assert small.odds < 0.999
    with pytest.raises(PlanError):
        plan(CLASSES["symmetric-random"], CLASSES["port-restricted"], "first", flow_budget=0)


def test_random_sequential_at_the_default_budget_is_not_called_feasible():
    # a home router cannot hold the ~235k flows this pair needs: the plan says so with its odds and
    # how to raise the budget, instead of promising a connection
    p = plan(CLASSES["symmetric-random"], CLASSES["symmetric-seq"], "first")
    assert p.strategy is Strategy.RANDOM_SEQUENTIAL and not p.feasible and p.odds < 0.05
    assert all(part.flows <= DEFAULT_FLOW_BUDGET for part in (p.primary.local, p.primary.remote))
    assert "--max-flows" in p.reason and "relay" in p.failure_message()


def test_random_sequential_stays_under_the_flow_table_and_states_odds():
    p = plan(CLASSES["symmetric-random"], CLASSES["symmetric-seq"], "first", flow_budget=LAB_BUDGET)
    rnd, seq = p.primary.local, p.primary.remote
    assert rnd.sockets * len(rnd.targets) <= FLOW_TABLE_CAP
    assert seq.random_probes <= FLOW_TABLE_CAP
    assert rnd.sockets >= 64 and rnd.opens
    # ~1 - exp(-s·W/N) at the flow cap: about 97-98%, and the reason says so
    assert 0.95 < p.odds < 0.99
    assert f"{p.odds:.2%}" in p.reason
    expected_odds = 1 - (1 - rnd.sockets / 64512) ** (len(rnd.targets) - 1)
    assert p.odds == pytest.approx(expected_odds, abs=0.01)


def test_random_pair_fails_fast_with_a_reason_naming_both_nats():
    p = plan(CLASSES["symmetric-random"], CLASSES["symmetric-random"], "second")
    assert not p.feasible and p.strategy is Strategy.BEST_EFFORT
    msg = p.failure_message()
    assert msg.count("address-and-port-dependent mapping") == 2 and "random ports" in msg
    assert "relay" in msg and "%" in msg
    assert p.odds < 0.01 and p.timeout <= 5


def test_happy_eyeballs_order_is_by_cost():
    p = plan(CLASSES["full-cone"], CLASSES["port-restricted"], "first")
    assert [a.strategy for a in p.attempts] == [Strategy.DIRECT, Strategy.SIMULTANEOUS]
    assert p.attempts[1].delay > p.attempts[0].delay
    costs = [STRATEGIES[a.strategy].cost for a in p.attempts]
    assert costs == sorted(costs)
    # a consuming NAT never races a second attempt (it would move the predicted ports)
    assert len(plan(CLASSES["port-restricted"], CLASSES["symmetric-seq"], "first").attempts) == 1


def test_nat_behavior_report_with_binding_samples():
    bindings = [BindingSample(0, ("10.0.1.2", 5000), ("198.51.100.1", 3478), ("203.0.113.10", 41000), 0.0),
                BindingSample(0, ("10.0.1.2", 5000), ("198.51.100.2", 3478), ("203.0.113.10", 41001), 0.01)]
    rep = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                    public=("203.0.113.10", 41001), samples=samples_from_bindings(bindings))
    side = side_from_report(rep)
    assert side.sequential and side.port == 41001 and side.next_port(0) == 41002


def test_misuse_and_bad_reports():
    with pytest.raises(PlanError):
        plan(CLASSES["full-cone"], CLASSES["full-cone"], "third")
    with pytest.raises(BadReport):
        plan(NatReport(mapping=Mapping.EIM), CLASSES["full-cone"], "first")  # no endpoint
    with pytest.raises(BadReport):
        NatReport.from_wire({**wire(CLASSES["full-cone"]), "mapping": "sideways"})
    with pytest.raises(BadReport):
        NatReport.from_wire({**wire(CLASSES["full-cone"]), "public": ["not-an-ip", 40000]})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["v", "mapping", "filtering", "allocation", "delta", "samples", "public", "port_range",
                     "tcp", "nat"]),
    st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.text(max_size=8),
              st.sampled_from(["EIM", "APDM", "ADF", "random", "sequential", "203.0.113.9", "none"]),
              st.lists(st.one_of(st.integers(0, 70000), st.text(max_size=3),
                                 st.lists(st.one_of(st.none(), st.integers(-1, 70000), st.floats()), max_size=3)),
                       max_size=4))),
    st.sampled_from(sorted(CLASSES)))
def test_any_peer_report_plans_or_raises_bad_report(fields, base):
    try:
        report = NatReport.from_wire({**wire(CLASSES[base]), **fields})
        p = plan(CLASSES["port-restricted"], report, "first")
    except BadReport:
        return
    assert 0.0 <= p.odds <= 1.0 and p.attempts
    assert math.isfinite(p.timeout)


@pytest.mark.parametrize("port_range", [[1000, 1000], [1000, 1010], [1000, 1511], [1024, 3071]])
def test_small_port_blocks_plan_without_error(port_range):
    """A CGNAT hands each subscriber a block of a few hundred ports: the sizes shrink to fit."""
    rnd = udp("APDM", "APDF", [port_range[0], port_range[1]], allocation="random", port_range=port_range)
    for other in ("port-restricted", "symmetric-seq", "symmetric-random"):
        p = plan(rnd, CLASSES[other], "first")
        span = port_range[1] - port_range[0] + 1
        assert 0 <= p.odds <= 1
        opener = p.primary.local
        assert opener.sockets <= max(1, span) or p.strategy is Strategy.BEST_EFFORT
        if p.strategy is Strategy.BEST_EFFORT:
            # tiny blocks make guessing on both sides feasible; big ones do not
            assert p.feasible == (p.odds >= 0.999)


def test_every_part_aims_at_the_observed_peer_address_not_the_reported_one():
    # a port-restricted cone facing a "random" report that names a third party's address
    mine = CLASSES["port-restricted"]
    theirs = replace(CLASSES["symmetric-random"], public=("192.0.2.99", 5001))
    for role in ("first", "second"):
        p = plan(mine, theirs, role, peer_ip="203.0.113.77")
        assert p.remote.ip == "203.0.113.77" and p.params["reported_peer_ip"] == "192.0.2.99"
        for a in p.attempts:
            assert a.local.peer_ip == "203.0.113.77"
    same = plan(mine, replace(theirs, public=("203.0.113.77", 5001)), "first", peer_ip="203.0.113.77")
    assert "reported_peer_ip" not in same.params


def test_unknown_is_not_worst():
    # a single-address STUN server: one sample, no mapping word (issue 13: two port-restricted cones
    # behind it were refused with "best-effort had 0.40% odds")
    a = udp(None, "APDF", [40000], ip="203.0.113.10")
    b = udp(None, "APDF", [41000], ip="203.0.113.20")
    p1, p2 = plan(a, b, "first"), plan(b, a, "second")
    assert [x.strategy for x in p1.attempts][0] is Strategy.SIMULTANEOUS
    assert p1.feasible and p1.strategy is Strategy.SIMULTANEOUS
    # the worst case follows once the cheap one had its time, and both sides agree on all of it
    assert p1.attempts[-1].strategy is Strategy.BEST_EFFORT
    assert p1.attempts[-1].delay >= p1.attempts[0].delay + p1.attempts[0].timeout
    assert [(x.strategy, x.delay) for x in p1.attempts] == [(x.strategy, x.delay) for x in p2.attempts]
    for x, y in zip(p1.attempts, p2.attempts):
        assert x.local == y.remote and x.remote == y.local
    assert "unmeasured" in p1.reason and "best-effort" in p1.reason
    # one unknown side facing a measured cone: cheap first, then the birthday
    cone = udp("EIM", "APDF", [42000, 42000], ip="203.0.113.30")
    p = plan(a, cone, "first")
    assert [x.strategy for x in p.attempts] == [Strategy.SIMULTANEOUS, Strategy.BIRTHDAY]
    # a measured random NAT is not "unknown": no cheap guess for it
    rnd = udp("APDM", "APDF", [31234, 5001], ip="203.0.113.40", allocation="random")
    assert plan(rnd, cone, "first").attempts[0].strategy is Strategy.BIRTHDAY


# --- each side's own budget (NatReport.flows) ----------------------------------------------------

BUDGETS = [(1024, 512), (512, 1024), (4096, 200), (40, 4096), (1, 1024), (262144, 7)]


@pytest.mark.parametrize("flows_a,flows_b", BUDGETS)
@pytest.mark.parametrize("a,b", [("symmetric-random", "port-restricted"), ("symmetric-random", "symmetric-seq"),
                                 ("symmetric-random", "adm"), ("symmetric-seq", "symmetric-seq-2"),
                                 ("port-restricted", "symmetric-seq-7"), ("symmetric-random", "symmetric-random")])
def test_both_sides_agree_with_different_budgets_and_each_part_stays_in_its_own(a, b, flows_a, flows_b):
    # each side publishes its own budget; both derive the same plan from the two reports, mirrored
    ra, rb = replace(CLASSES[a], flows=flows_a), replace(CLASSES[b], flows=flows_b)
    p1, p2 = plan(ra, rb, "first"), plan(rb, ra, "second")
    assert p2.strategy is p1.strategy and p2.odds == p1.odds
    for x, y in zip(p1.attempts, p2.attempts):
        assert (x.strategy, x.local, x.remote) == (y.strategy, y.remote, y.local)
        assert x.local.flows <= flows_a and x.remote.flows <= flows_b
    assert (p1.params["flow_budget"], p1.params["remote_flow_budget"]) == (flows_a, flows_b)
    assert p1.summary()["remote"]["flow_budget"] == flows_b


def test_a_birthday_aims_at_a_tenth_of_the_misses_where_the_budgets_hold_it():
    rnd, cone = CLASSES["symmetric-random"], CLASSES["port-restricted"]
    roomy = plan(rnd, replace(cone, flows=4096), "first")
    assert roomy.odds >= 0.9999 and roomy.primary.local.sockets == 256
    assert roomy.primary.remote.random_probes == probes_for(64512, 256, 0.9999, 4096)
    # behind a CGN's 512 the margin is out of reach: both budgets whole, past the target
    # (1 - C(N-1024, 512)/C(N, 512) = 99.973 %, where the fewest flows for 99.9 % were 939 x 470)
    tight = plan(rnd, replace(cone, flows=512), "first")
    assert (tight.primary.local.sockets, tight.primary.remote.random_probes) == (1024, 512)
    assert tight.odds == 1 - birthday_miss(64512, 1024, 512) and 0.9997 < tight.odds < 0.9999


def test_the_birthday_shifts_its_load_to_the_side_whose_nat_can_hold_it():
    rnd, cone = CLASSES["symmetric-random"], CLASSES["port-restricted"]
    even = plan(rnd, cone, "first").primary
    # the cone behind a carrier-grade NAT publishes 512: the random side (a home router, 1024) opens
    # more mappings so that the cone probes less, and the odds still reach the target
    # (~1 - exp(-s·p/N): 1024 sockets against 512 probes on a 64k range)
    p = plan(rnd, replace(cone, flows=512), "first")
    shifted = p.primary
    assert p.strategy is Strategy.BIRTHDAY and p.odds >= 0.999 and p.feasible
    assert shifted.remote.random_probes <= 512 < even.remote.random_probes
    assert shifted.local.sockets > even.local.sockets
    # each spends about the same share of its own budget: neither NAT is pushed harder than the other
    assert abs(shifted.local.sockets / 1024 - shifted.remote.random_probes / 512) < 0.01
    assert 1 - birthday_miss(64512, shifted.local.sockets, shifted.remote.random_probes) == p.odds
    # the mirror: a random side behind the CGN, a cone with room to spare
    q = plan(replace(rnd, flows=512), cone, "first")
    assert q.odds >= 0.999 and q.primary.local.sockets <= 512 < q.primary.remote.random_probes <= 1024


@given(st.integers(1, 8192), st.integers(1, 8192))
@settings(max_examples=60, deadline=None)
def test_birthday_odds_reach_the_target_wherever_the_two_budgets_allow_it(br, bc):
    rnd, cone = replace(CLASSES["symmetric-random"], flows=br), replace(CLASSES["port-restricted"], flows=bc)
    p = plan(rnd, cone, "first")
    s, probes = p.primary.local.sockets, p.primary.remote.random_probes
    assert s <= br and probes <= bc
    # the most both budgets allow (sockets also capped by max_sockets = 1024 descriptors)
    ceiling = 1 - birthday_miss(64512, min(br, 1024), min(bc, 64512 - min(br, 1024)))
    if ceiling >= 0.9999:
        assert p.odds >= 0.9999  # the margin a window has too, where both budgets hold it
    else:
        # short of the margin (a CGN side's 512 against 1024: 99.97 %), both budgets are spent
        # whole and the odds say what they buy
        assert p.odds == pytest.approx(ceiling) and (s, probes) == (min(br, 1024), min(bc, 64512 - min(br, 1024)))


def test_a_tiny_published_budget_costs_its_owner_odds_not_us_flows():
    # a peer that says it can spare 1 flow gets a plan within that; our own part stays within ours
    rnd, seq = CLASSES["symmetric-random"], CLASSES["symmetric-seq"]
    for ours, theirs in ((rnd, replace(seq, flows=1)), (seq, replace(rnd, flows=1))):
        p = plan(ours, theirs, "first")
        assert p.primary.remote.flows <= 1 and p.primary.local.flows <= DEFAULT_FLOW_BUDGET
        assert 0 <= p.odds < 0.05
