"""proto/planner/tcp.py and tcp_mapping.py: classification of TCP reports and the plan both sides derive from
them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataclasses import replace

from nattrav.errors import BadReport, PlanError
from nattrav.proto.planner.tcp import ladder, plan
from nattrav.proto.planner.tcp_mapping import classify
from nattrav.proto.report import History, NatReport, TcpReport
from nattrav.proto.vocab import Filtering, TcpStrategy
from tests.reports import tcp as report


NO_NAT = report([40000, 40000, 40000], public="10.0.1.2")
FULL_CONE = report([40000] * 3, filtering="EIF")
CONE = report([40000] * 3)
SEQ = report([20010, 20011, 20012])
SEQ7 = report([20091, 20098, 20105], public="203.0.113.20", local=("10.0.2.2", 41000))
RANDOM = report([8586, 64041, 35105])


def test_classify_kinds():
    assert classify(NO_NAT).reachable
    assert classify(FULL_CONE).reachable
    assert classify(CONE).cone
    seq = classify(SEQ7)
    assert (seq.sequential, seq.delta, seq.last_port) == (True, 7, 20105)
    assert [seq.predict(k) for k in (1, 2)] == [20112, 20119]
    assert classify(RANDOM).random
    # other hosts' flows between the probes: unequal small steps, whose gcd is the NAT's step
    noisy = classify(report([20010, 20012, 20013]))
    assert (noisy.sequential, noisy.delta) == (True, 1)
    # no step clean: a foreign flow in each gap of a Δ = 2 NAT (+4, +6). The smallest step (4)
    # would put every predicted port on the wrong grid; the gcd is the NAT's
    both = classify(report([20010, 20014, 20020]))
    assert (both.sequential, both.delta, both.extra) == (True, 2, 3)
    assert [both.predict(k) for k in (1, 2)] == [20022, 20024]
    # a pool of public addresses cannot be aimed at
    pool = report([1000, 1000], public=["203.0.113.10", "203.0.113.99"])
    assert classify(pool).random


def test_predict_wraps_inside_port_range():
    m = classify(report([65533, 65534, 65535]))
    assert 1 <= m.predict(1) <= 65535


def test_predict_starts_again_at_a_learned_blocks_bottom():
    """A side that saw its TCP counter wrap names the block (api/tcp._with_block): past its top the
    NAT starts again at the bottom, so the peer's window does too (the lab's Δ = 2 block is
    20000..28190; two trials in 4,000 aimed past it before)."""
    top = report([28184, 28186, 28188], port_range=(20000, 28191))
    m = classify(top)
    assert [m.predict(k) for k in (1, 2, 3)] == [28190, 20000, 20002]
    # the same samples without a block: on past the top, as a NAT counting through 1024-65535 does
    assert [classify(report([28184, 28186, 28188])).predict(k) for k in (1, 2)] == [28190, 28192]
    # a block that does not hold the last port is no block of this counter's: ignored
    assert classify(report([28184, 28186, 28188], port_range=(20000, 28000))).predict(2) == 28192
    # the peer's plan aims at the wrapped ports
    first = plan(SEQ7, top, "first", window=3, target=None)
    assert [t[1] for t in first.targets] == [28190, 20000, 20002, 20004, 20006]
    # from a cone, then at their twins past the top too (the side's samples may have missed the
    # block's very top: proto/port_block.py), after the window. A sequential side's connect meets
    # the peer's only at the index the window pairs it with: no twins from SEQ7
    cone = plan(CONE, top, "first", window=3, target=None)
    assert [t[1] for t in cone.targets] == [28190, 20000, 20002, 28192, 28194, 19998, 19996]
    assert [m.twin(k) for k in (1, 2)] == [None, 28192]
    assert m.under((1, 2, 3)) == [19998, 19996]  # one under the bottom a wrapped flow (k = 2, 3)
    # a counter at its block's very top may wrap there or go on: a cone aims both ways, sequential
    # windows (paired by index) go on
    at_top = report([28186, 28188, 28190], port_range=(20000, 28191))
    assert classify(at_top).at_block_top and not m.at_block_top
    assert [t[1] for t in plan(CONE, at_top, "first", window=2, target=None).targets] == [20000, 20002, 28192, 28194,
                                                                                         19998, 19996]
    assert [t[1] for t in plan(SEQ7, at_top, "first", window=2, target=None).targets] == [28192, 28194, 28196]
    second = plan(top, SEQ7, "second", window=3, target=None)
    assert second.params["own_predicted"][:2] == [28190, 20000]


def test_a_cones_window_holds_a_block_whose_bottom_is_lower_than_seen():
    """Samples a few a cycle: the lowest port seen is 20010 where the NAT's block starts at 20000, and
    its highest 28188 where it ends at 28190. Whatever shift of 0..W-1 the peer's flow takes past a
    counter at 28188, one of the cone's SYNs names its port (flows 2..6 missed it before: no window
    port and no twin lies in 20000..20008)."""
    seen = report([28184, 28186, 28188], port_range=(20010, 28189))
    window = 16
    aimed = {t[1] for t in plan(CONE, seen, "first", window=window, target=None).targets}

    def nat(k: int) -> int:  # the lab's Δ = 2 counter, 20000..28190
        port = 28188 + 2 * k
        return port if port <= 28190 else 20000 + (port - 28192)

    assert [k for k in range(1, window + 1) if nat(k) not in aimed] == []
    # a sequential first side pairs its SYNs with the peer's flows by index: no twins either way
    assert all(p >= 20010 for _, p in plan(SEQ7, seen, "first", window=window, target=None).targets)


def test_simultaneous_plans_mirror_each_other():
    a = plan(SEQ, SEQ7, "first", window=1, target=None)
    b = plan(SEQ7, SEQ, "second", window=1, target=None)
    assert a.strategy is b.strategy is TcpStrategy.SIMULTANEOUS
    assert a.feasible and b.feasible
    assert a.low_ttl and not b.low_ttl
    assert not a.accept and not b.accept
    # each side aims at the port the other side's NAT will give its next flow
    assert a.targets == (("203.0.113.20", 20112),)
    assert b.targets == (("203.0.113.10", 20013),)
    assert a.params["own_predicted"] == [b.targets[0][1]]
    assert b.params["own_predicted"] == [a.targets[0][1]]


def test_window_shapes():
    # both sequential: the first side opens 2W-1 candidates, the second bets on odd indices
    fixed = {"target": None}  # W = the given window, not sized by the shift model
    assert [t[1] for t in plan(SEQ, SEQ7, "first", window=3, **fixed).targets] == [20112, 20119, 20126, 20133,
                                                                                    20140]
    assert [t[1] for t in plan(SEQ7, SEQ, "second", window=3, **fixed).targets] == [20013, 20015, 20017]
    # a cone peer: its one port, whatever the window
    assert len(plan(SEQ, CONE, "first", window=5).targets) == 1
    assert len(plan(CONE, CONE, "second", window=5).targets) == 1
    assert [t[1] for t in plan(CONE, SEQ, "second", window=3, **fixed).targets] == [20013, 20014, 20015]


def _simulate(first_report, second_report, shift_first, shift_second, window):
    """Play both plans against NATs whose other hosts took `shift` ports before the punch; return
    the (first flow, second connect) pairs whose SYNs meet (each NAT passes the other's SYN)."""
    pf = plan(first_report, second_report, "first", window=window, target=None)
    ps = plan(second_report, first_report, "second", window=window, target=None)
    return _meet(pf, ps, shift_first, shift_second)


def _meet(pf, ps, shift_first, shift_second):
    mf, ms = pf.mine, ps.mine

    def nat(m, index, shift):  # public port of the side's index-th new flow to the peer
        if not m.sequential:
            return m.last_port
        return m.predict(1 + shift if m.per_address else index + shift)  # ADM: one port per address

    first_flows = [(nat(mf, k, shift_first), dest[1]) for k, (_, dest) in enumerate(
        [(None, t) for t in pf.targets], start=1)]
    met = []
    for j, (_, port) in enumerate(ps.targets, start=1):
        src = nat(ms, j, shift_second)
        for k, (mapped, dest_port) in enumerate(first_flows, start=1):
            if mapped == port and dest_port == src:
                met.append((k, j))
    return met


@pytest.mark.parametrize("first, second", [(SEQ, SEQ7), (SEQ7, SEQ), (SEQ, CONE), (CONE, SEQ7), (CONE, CONE)])
@pytest.mark.parametrize("window", [1, 4, 8])
def test_window_covers_every_shift_it_promises(first, second, window):
    both = classify(first).sequential and classify(second).sequential
    for sf in range(window + 2):
        for ss in range(window + 2):
            covered = (sf + ss <= window - 1) if both else (
                (not classify(first).sequential or sf <= window - 1)
                and (not classify(second).sequential or ss <= window - 1))
            met = _simulate(first, second, sf, ss, window)
            if covered:
                assert met, (sf, ss)
            if not both and not covered:
                assert not met, (sf, ss)


def _adm_report(ports, public="203.0.113.30"):
    # probes to S1, S2, S1 again (as api._tcp_report makes them): an ADM NAT reuses S1's port
    dests = ["198.51.100.1", "198.51.100.2", "198.51.100.1"]
    return report(ports, public=public, local=("10.0.3.2", 42000), dests=dests)


ADM = _adm_report([30010, 30011, 30010])
ADM3 = _adm_report([31000, 31003, 31000], public="203.0.113.40")


def test_address_dependent_mapping_is_read_from_the_destinations():
    m = classify(ADM3)
    assert (m.sequential, m.per_address, m.delta, m.last_port) == (True, True, 3, 31003)
    assert "address-dependent" in m.describe() and "ADM" in m.describe()
    # the same address with ANOTHER port (APDM), or no repeated address: not ADM
    assert not classify(SEQ).per_address
    apdm = _adm_report([30010, 30011, 30012])
    assert classify(apdm).sequential and not classify(apdm).per_address
    assert classify(_adm_report([30010, 30011, 30999])).random


@pytest.mark.parametrize("first, second", [(ADM, SEQ7), (SEQ7, ADM), (ADM, ADM3), (ADM, CONE), (CONE, ADM3)])
@pytest.mark.parametrize("window", [1, 3, 6])
def test_window_with_an_address_dependent_nat_covers_exactly_what_it_promises(first, second, window):
    mf, ms = classify(first), classify(second)

    def covered(sf, ss):
        if mf.sequential and not mf.per_address:  # APDM first: the sum is bet on
            return sf + ss <= window - 1 if ms.sequential else sf <= window - 1
        ok_first = not mf.sequential or sf <= window - 1  # ADM first: its one port
        if not ms.sequential:
            return ok_first
        reach = sf + ss <= 2 * window - 2 if not ms.per_address else ss <= window - 1
        return ok_first and (reach if mf.sequential else ss <= window - 1)

    for sf in range(2 * window + 1):
        for ss in range(2 * window + 1):
            assert bool(_simulate(first, second, sf, ss, window)) == covered(sf, ss), (sf, ss)


def test_random_facing_an_address_dependent_nat_states_the_spread_odds():
    p = plan(RANDOM, ADM, "first")
    assert not p.feasible and p.strategy is TcpStrategy.NONE
    assert "address-dependent" in p.reason and "% odds" in p.reason and "symmetric random" in p.reason


RC = report([40000] * 3, filtering="ADF", public="203.0.113.50")  # restricted cone: EIM + ADF
ADM_ADF = replace(ADM, filtering=Filtering.ADF)


@pytest.mark.parametrize("role", ["first", "second"])
@pytest.mark.parametrize("other", [RANDOM, SEQ, CONE, ADM])
def test_an_address_filtering_cone_opens_to_the_peer_and_accepts(role, other):
    peer_role = "second" if role == "first" else "first"
    o, p = plan(RC, other, role), plan(other, RC, peer_role)
    assert o.strategy is p.strategy is TcpStrategy.ADDRESS_OPEN and o.feasible and p.feasible
    # the opener: one low-TTL SYN to the peer's address, then its listener accepts
    assert o.low_ttl and o.accept and len(o.targets) == 1 and o.targets[0][0] == classify(other).public_ip
    # the peer connects to the opener's one port, whatever its own NAT does with its ports
    assert not p.low_ttl and not p.accept and p.targets == (("203.0.113.50", 40000),)
    assert o.odds == p.odds == 1.0 and "ADF" in o.reason


@pytest.mark.parametrize("window", [1, 4])
def test_a_sequential_opener_is_aimed_at_within_its_window(window):
    o, p = plan(ADM_ADF, RANDOM, "second", window=window, target=None), plan(RANDOM, ADM_ADF, "first",
                                                                             window=window, target=None)
    assert o.strategy is p.strategy is TcpStrategy.ADDRESS_OPEN and o.accept and not p.accept
    m = classify(ADM_ADF)
    assert [t[1] for t in p.targets] == o.params["own_predicted"] == [m.predict(j) for j in range(1, window + 1)]
    for shift in range(window + 3):
        # the opener's one SYN to the peer's address takes the port after `shift` foreign flows
        assert (m.predict(1 + shift) in {t[1] for t in p.targets}) == (shift <= window - 1)


def test_address_open_sizes_the_window_from_the_openers_shift_only():
    sized, fixed = plan(RANDOM, ADM_ADF, "first"), plan(RANDOM, ADM_ADF, "first", target=None)
    assert len(sized.targets) > len(fixed.targets) == 8 and sized.odds >= 0.99999 > fixed.odds
    # a cone opener beats a sequential one (no window), whichever role each has
    for role in ("first", "second"):
        assert plan(RC, ADM_ADF, role).accept and not plan(ADM_ADF, RC, role).accept


def test_open_side_is_connected_to():
    a = plan(RANDOM, FULL_CONE, "first")
    b = plan(FULL_CONE, RANDOM, "second")
    assert a.strategy is b.strategy is TcpStrategy.DIRECT
    assert a.targets == (("203.0.113.10", 40000),) and not a.accept
    assert b.targets == () and b.accept
    # both open: exactly one of them connects
    x, y = plan(NO_NAT, FULL_CONE, "first"), plan(FULL_CONE, NO_NAT, "second")
    assert (bool(x.targets), bool(y.targets)) == (False, True)
    assert x.accept and not y.accept


@pytest.mark.parametrize("mine, peer, names", [
    (SEQ, RANDOM, ("symmetric sequential", "symmetric random", "UDP reaches")),
    (RANDOM, SEQ7, ("symmetric random", "symmetric sequential", "flow table")),
    (RANDOM, RANDOM, ("symmetric random", "1/(N·N)")),
])
def test_random_facing_sequential_or_random_is_infeasible_with_both_behaviours_named(mine, peer, names):
    for role in ("first", "second"):
        p = plan(mine, peer, role)
        assert not p.feasible and p.strategy is TcpStrategy.NONE and p.targets == () and p.odds == 0.0
        assert "infeasible" in p.reason and "this side:" in p.reason and "peer:" in p.reason
        assert all(n in p.reason for n in names), p.reason
        assert not p.sockets and not p.random_probes


@pytest.mark.parametrize("role", ["first", "second"])
def test_random_facing_a_cone_is_a_birthday_both_sides_size_alike(role):
    from nattrav.proto.planner.tcp import BIRTHDAY_TARGET, birthday_size

    other = "second" if role == "first" else "first"
    rnd, cone = plan(RANDOM, CONE, role), plan(CONE, RANDOM, other)
    assert rnd.strategy is cone.strategy is TcpStrategy.BIRTHDAY
    assert rnd.feasible and cone.feasible and not rnd.accept and not cone.accept
    # the random side opens its own NAT towards the cone's one port, whatever the rendezvous role
    assert rnd.low_ttl and rnd.targets == (("203.0.113.10", 40000),) and rnd.random_probes == 0
    # the cone side guesses among the random side's ports
    assert not cone.low_ttl and cone.targets == () and cone.sockets == 0
    assert cone.peer_range == (1024, 65535)
    sockets, probes, odds = birthday_size(64512)
    assert (rnd.sockets, cone.random_probes) == (sockets, probes)
    assert rnd.odds == cone.odds == odds >= BIRTHDAY_TARGET
    assert str(sockets) in rnd.reason and str(probes) in rnd.reason and "cone (EIM/APDF)" in rnd.reason


def test_birthday_odds_match_a_simulated_random_nat():
    import random

    from nattrav.proto.planner.tcp import birthday_size

    span, rng = 1000, random.Random(7)
    sockets, probes, odds = birthday_size(span, sockets=20, target=0.9)
    assert sockets == 20 and 0.9 <= odds < 0.95
    trials = 4000
    hits = 0
    for _ in range(trials):
        opened = set(rng.sample(range(span), sockets))  # the random NAT's ports for our connects
        hits += any(p in opened for p in rng.sample(range(span), probes))  # the cone's guesses
    sigma = (odds * (1 - odds) / trials) ** 0.5
    assert abs(hits / trials - odds) < 4 * sigma, (hits / trials, odds)


def test_a_small_port_block_takes_fewer_connects_and_guesses():
    small = replace(RANDOM, port_range=(40000, 40999))
    p = plan(small, CONE, "first")
    q = plan(CONE, small, "second")
    assert p.strategy is TcpStrategy.BIRTHDAY and p.sockets == 500  # half the block at most
    assert q.peer_range == (40000, 40999) and q.random_probes < 50 and q.odds == p.odds
    for bad in ([1, 2, 3], [5000, 4000], [0, 10], "1-2", [True, 9], [7, 7]):
        with pytest.raises(BadReport):
            TcpReport.from_wire({**RANDOM.to_wire(), "port_range": bad})


def test_a_malformed_peer_report_never_reaches_the_planner():
    for bad in ({"samples": "nope"}, {"samples": []}, {"local": ["x", 0]}, {"samples": [["a", 1, None, None]]},
                {"samples": [["203.0.113.10", 1, None]]}, {"window": 0}, {"filtering": "none"}, {"x": 1}):
        with pytest.raises(BadReport):
            TcpReport.from_wire({**SEQ.to_wire(), **bad})
    with pytest.raises(BadReport):
        TcpReport.from_wire({k: v for k, v in SEQ.to_wire().items() if k != "window"})  # every key, always
    with pytest.raises(ValueError):
        plan(SEQ, SEQ, "third")


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["local", "samples", "filtering", "port_range", "window", "horizon", "history", "ip",
                         "port", "t", "x"]), inner, max_size=4),
    max_leaves=20))
def test_any_untrusted_report_raises_only_badreport(data):
    # alone, and over a valid report (so that most fields but the changed ones pass)
    for candidate in (data, {**SEQ.to_wire(), **data} if isinstance(data, dict) else data):
        try:
            m = classify(TcpReport.from_wire(candidate))
        except BadReport:
            continue
        assert [m.reachable, m.cone, m.sequential, m.random].count(True) == 1


def test_agreed_window_is_the_larger_published_one_clamped():
    from nattrav.proto.planner.tcp import DEFAULT_WINDOW, agreed_window
    from nattrav.proto.report import MAX_WINDOW

    assert agreed_window(replace(SEQ, window=3), replace(SEQ, window=12)) == 12
    assert agreed_window(replace(SEQ, window=3), SEQ) == DEFAULT_WINDOW
    assert agreed_window(replace(SEQ, window=2), replace(SEQ, window=10**9)) == MAX_WINDOW  # ours, unchecked
    for bad in (10**9, True, "8"):  # a peer's is checked
        with pytest.raises(BadReport):
            TcpReport.from_wire({**SEQ.to_wire(), "window": bad})
    # both sides derive mirrored plans from it
    w = agreed_window(replace(SEQ, window=2), replace(SEQ7, window=5))
    a, b = plan(SEQ, SEQ7, "first", window=w), plan(SEQ7, SEQ, "second", window=w)
    assert [t[1] for t in b.targets] == a.params["own_predicted"]
    assert [t[1] for t in a.targets] == b.params["own_predicted"]


# --- the window sized from each sequential NAT's shift (proto/predict.py's noise model) ------------

def _quiet_seq(public="203.0.113.10", **kw):
    """A sequential NAT watched for 10 s without a foreign flow: its rate is known to be low."""
    return report([20010, 20011, 20012], public=public, times=[0.0, 5.0, 10.0], **kw)


def _busy_seq(foreign, public="203.0.113.20"):
    """The same 10 s, with `foreign` flows of other hosts between the second and third probe."""
    return report([20010, 20011, 20012 + foreign], public=public, times=[0.0, 5.0, 10.0])


@pytest.mark.parametrize("peer", [CONE, _quiet_seq("203.0.113.30")])
def test_window_grows_with_a_busier_nat(peer):
    from nattrav.proto.planner.tcp import DEFAULT_WINDOW, WINDOW_TARGET

    windows = []
    # foreign flows seen in 10 s between our probes, and a NAT seen taking 60 a second for 10 s
    for busy in (_busy_seq(0), _busy_seq(10), _busy_seq(30), _busy_seq(60),
                 replace(_busy_seq(0), history=History(600, 10.0))):
        p = plan(busy, peer, "first")
        assert p.strategy is TcpStrategy.SIMULTANEOUS and p.odds >= WINDOW_TARGET
        assert f"window {p.params['window']} " in p.reason and "odds 99.99" in p.reason, p.reason
        windows.append(p.params["window"])
    assert windows[0] == DEFAULT_WINDOW  # a quiet NAT needs no more than the published floor
    assert windows == sorted(set(windows)) and windows[-1] > 5 * DEFAULT_WINDOW, windows


def test_fresh_samples_alone_say_little_so_the_window_is_wide():
    from nattrav.proto.planner.tcp import WINDOW_TARGET

    # three probes 2 ms apart: the Gamma prior (mean 6 flows/s, heavy tail) decides, for 1 s
    fresh = report([20010, 20011, 20012], times=[0.0, 0.002, 0.004])
    cone_seq = plan(CONE, fresh, "first")
    seq_seq = plan(fresh, SEQ7, "first")
    assert 100 < cone_seq.params["window"] < seq_seq.params["window"] < 256
    assert cone_seq.odds >= WINDOW_TARGET and seq_seq.odds >= WINDOW_TARGET
    # a shorter horizon (the publisher knows the punch is near) narrows it
    soon = plan(CONE, replace(fresh, horizon=0.2), "first")
    assert soon.params["window"] < cone_seq.params["window"]


def _model_pmf(m, n):
    """The shift pmf written out from the model's definition (Gamma(a, b) prior on the rate,
    Poisson(rate * horizon) shift), independently of proto/predict.py."""
    import math

    if not m.sequential:
        return [1.0] + [0.0] * (n - 1)
    (a, b), h = _gamma_posterior(m), m.horizon
    return [math.exp(math.lgamma(a + k) - math.lgamma(a) - math.lgamma(k + 1) + a * math.log(b / (b + h))
                     + k * math.log(h / (b + h))) for k in range(n)]


@pytest.mark.parametrize("first, second, window", [
    (_busy_seq(3), _quiet_seq(), 2),
    (report([20010, 20011, 20012], times=[0, 0.002, 0.004]), SEQ7, 20),
    (CONE, _busy_seq(20), 3),
    (_busy_seq(8), CONE, 2),
])
def test_odds_are_the_simulated_nats_coverage_under_the_model(first, second, window):
    """Brute force: play the two plans against NATs for every pair of shifts (the NAT simulation
    above), weigh each pair by the model's probability; and a Monte-Carlo draw of rates and shifts."""
    import math
    import random

    p = plan(first, second, "first", window=window, target=None)
    q = plan(second, first, "second", window=window, target=None)
    assert p.params["window"] == window
    mf, ms = classify(first), classify(second)
    n = 2 * window + 2  # beyond this no pair of shifts can meet (the targets stop at 2W-1)
    pf, ps = _model_pmf(mf, n), _model_pmf(ms, n)
    met = {(a, b): bool(_meet(p, q, a, b)) for a in range(n) for b in range(n) if pf[a] and ps[b]}
    exact = sum(pf[a] * ps[b] for (a, b), hit in met.items() if hit)
    assert p.odds == pytest.approx(exact, abs=1e-9)
    assert 0.05 < p.odds < 0.9999  # a window small enough that the check means something

    rng, trials, hits = random.Random(11), 20000, 0

    def draw(m):
        if not m.sequential:
            return 0
        a, b = _gamma_posterior(m)
        mu = rng.gammavariate(a, 1 / b) * m.horizon
        k, term, u = 0, math.exp(-mu), rng.random()  # Poisson by inversion
        cdf = term
        while u > cdf and k < 10**5:
            k += 1
            term *= mu / k
            cdf += term
        return k

    for _ in range(trials):
        a, b = draw(mf), draw(ms)
        hits += met.get((a, b), False)
    sigma = (p.odds * (1 - p.odds) / trials) ** 0.5
    assert abs(hits / trials - p.odds) < 4 * sigma + 1e-4, (hits / trials, p.odds)


def _gamma_posterior(m):
    """(shape, rate) of the rate's Gamma posterior: the prior plus the flows seen over the exposure."""
    from nattrav.proto.predict import PRIOR_RATE, PRIOR_WEIGHT

    return PRIOR_RATE * PRIOR_WEIGHT + m.extra, PRIOR_WEIGHT + m.exposure


@pytest.mark.parametrize("a, b", [
    (_busy_seq(7), _quiet_seq()),
    (report([20010, 20011, 20012], times=[0, 0.002, 0.004], horizon=0.4), _busy_seq(2, "203.0.113.9")),
    (replace(SEQ, history=History(30, 12.5), window=3), replace(SEQ7, window=11)),
    (CONE, _busy_seq(40)),
])
def test_both_sides_derive_the_same_window_and_odds(a, b):
    from nattrav.proto.planner.tcp import agreed_window

    for first, second in ((a, b), (b, a)):
        x = plan(first, second, "first", window=agreed_window(first, second))
        y = plan(second, first, "second", window=agreed_window(second, first))
        assert x.params["window"] == y.params["window"] and x.odds == y.odds and x.reason != ""
        assert [t[1] for t in y.targets] == x.params["own_predicted"]
        assert [t[1] for t in x.targets] == y.params["own_predicted"]


def test_window_caps_and_floors():
    from nattrav.proto.planner.tcp import WINDOW_TARGET
    from nattrav.proto.report import MAX_WINDOW

    # thousands of foreign flows a second: the cap bites and the odds say so
    frantic = replace(SEQ, history=History(200, 1.0))
    p = plan(frantic, SEQ7, "first")
    assert p.params["window"] == MAX_WINDOW and len(p.targets) == 2 * MAX_WINDOW - 1
    assert 0 < p.odds < WINDOW_TARGET and f"capped at {MAX_WINDOW}" in p.reason
    q = plan(CONE, frantic, "second")
    assert q.params["window"] == MAX_WINDOW and len(q.targets) == MAX_WINDOW and 0 < q.odds < WINDOW_TARGET
    assert plan(replace(SEQ, history=History(5000, 1.0)), SEQ7, "first").odds < 1e-6
    # a user's explicit window is a floor, even where the model would take fewer
    assert plan(_quiet_seq(), CONE, "first", window=20).params["window"] == 20
    assert plan(_quiet_seq(), CONE, "first", window=MAX_WINDOW).params["window"] == MAX_WINDOW
    with pytest.raises(ValueError):
        plan(SEQ, SEQ7, "first", window=MAX_WINDOW + 1)
    # two cones need no window: their odds are 1
    assert plan(CONE, CONE, "first").odds == 1.0


def test_old_reports_still_plan_and_new_fields_are_validated():
    untimed = replace(SEQ, samples=tuple(replace(x, t=None) for x in SEQ.samples))
    p = plan(TcpReport.from_wire(untimed.to_wire()), SEQ7, "first")
    assert p.feasible and p.odds > 0.99 and p.params["horizon"] == [1.0, 1.0]  # plan.DEFAULT_HORIZON
    for bad in ({"horizon": -1}, {"horizon": float("nan")}, {"horizon": True}, {"horizon": 1e9},
                {"horizon": "soon"}, {"history": {"extra": 1, "exposure": 2}}, {"history": [-1, 1]},
                {"history": [1, float("inf")]}, {"history": [1]}, {"history": [True, 1.0]}):
        with pytest.raises(BadReport):
            TcpReport.from_wire({**SEQ.to_wire(), **bad})
    bad_t = report([1, 2, 3], times=[0, float("nan"), 1])
    with pytest.raises(BadReport):
        TcpReport.from_wire(bad_t.to_wire())


def test_history_counts_the_flows_others_took_while_a_listener_waited():
    from nattrav.proto.planner.tcp_mapping import history

    enrolled = report([20010, 20011, 20012], times=[0, 0.002, 0.004])
    later = report([20043, 20044, 20045], times=[0, 0.002, 0.004])  # 30 foreign flows in between
    h = history(enrolled, later, 15.0)
    assert h.extra == 30 and h.exposure == pytest.approx(15.004)
    assert classify(replace(later, history=h)).extra == 30
    # a step-7 NAT counts in steps of 7; another Δ, address or a cone is not one counter
    assert history(SEQ7, report([20126, 20133, 20140], public="203.0.113.20"), 2.0).extra == 2
    assert history(SEQ, SEQ7, 1.0) is None
    assert history(SEQ, CONE, 1.0) is None
    assert history(SEQ, report([20010 + 40000, 20011 + 40000, 20012 + 40000]), 1.0) is None  # wrapped?
    # the listener's wait pins its rate down: the window shrinks to the floor
    assert plan(CONE, replace(later, history=h), "first").params["window"] < plan(CONE, later, "first").params["window"]


def test_connects_go_to_the_observed_peer_address_only():
    fake = report([40000, 40000, 40000], public="192.0.2.99", local=("192.0.2.99", 40000))
    p = plan(CONE, fake, "first", peer_ip="203.0.113.77")
    assert {ip for ip, _ in p.targets} <= {"203.0.113.77"} and p.params["reported_peer_ip"] == "192.0.2.99"
    assert p.peer.public_ip == "203.0.113.77"


@pytest.mark.parametrize("where", ["ip", "local"])
def test_a_hostname_in_a_tcp_report_is_malformed(where):
    bad = report([40000, 40000, 40000]).to_wire()
    if where == "ip":
        bad["samples"][0][0] = "victim.example"
    else:
        bad["local"][0] = "localhost"
    with pytest.raises(BadReport, match="not an IP"):
        TcpReport.from_wire(bad)


# --- the ladder: the UDP filtering word is only a hypothesis for TCP --------------------------------

RCONE = report([40000] * 3, filtering="ADF")
RSEQ = report([30010, 30012, 30014], filtering="ADF", public="203.0.113.30", local=("10.0.3.2", 42000))


def _both(a, b, **kw):
    return ladder(a, b, "first", **kw), ladder(b, a, "second", **kw)


def test_a_udp_full_cone_is_tried_direct_then_by_birthday():
    la, lb = _both(FULL_CONE, RANDOM, timeout=10.0)
    assert [r.plan.strategy for r in la] == [TcpStrategy.DIRECT, TcpStrategy.BIRTHDAY]
    assert [r.plan.strategy for r in lb] == [r.plan.strategy for r in la]
    # both sides derive the same slots, inside the punch timeout
    assert [(r.start, r.budget) for r in la] == [(r.start, r.budget) for r in lb]
    assert la[0].start == 0.0 and la[1].start >= la[0].budget and la[1].start + la[1].budget <= 10.0
    # the second rung assumes the strictest TCP filtering
    assert la[1].plan.mine.filtering is None and la[1].plan.peer.filtering is None


def test_a_udp_restricted_cone_opens_its_address_then_falls_back_to_simultaneous_open():
    la, lb = _both(RCONE, SEQ)
    assert [r.plan.strategy for r in la] == [TcpStrategy.ADDRESS_OPEN, TcpStrategy.SIMULTANEOUS]
    # the sequential side's first-rung connect went to the cone's one port, where its second-rung
    # connect goes again: the same flow, the same port, so its prediction does not move
    assert lb[1].plan.mine.last_port == classify(SEQ).last_port
    # the cone side's window aims at the sequential side's next ports
    assert la[1].plan.targets[0] == ("203.0.113.10", classify(SEQ).predict(1))


def test_a_sequential_opener_is_moved_past_the_ports_its_first_rung_took():
    la, lb = _both(RSEQ, SEQ7)
    assert [r.plan.strategy for r in la] == [TcpStrategy.ADDRESS_OPEN, TcpStrategy.SIMULTANEOUS]
    opener = classify(RSEQ)
    # its one low-TTL SYN to the peer took the next port; the second rung aims at new peer ports
    assert la[1].plan.mine.last_port == opener.predict(1)
    # and the peer connected to the opener's W candidates in the first rung: W ports further on
    w = la[0].plan.params["window"]
    assert lb[1].plan.mine.last_port == classify(SEQ7).predict(w)
    assert la[1].plan.mine.horizon > opener.horizon  # the later start is in the horizon


def test_a_ladder_states_its_strict_rungs_odds_as_a_floor():
    """The first rung leans on the UDP filtering word, which a UDP-only cone's TCP never keeps: the
    ladder promises what its strict rung alone gives, as a floor, not the first rung's 100%."""
    from nattrav.proto.planner.tcp import stated

    for la in _both(RCONE, SEQ):
        assert la[0].plan.odds == 1.0 and not la[0].plan.floor
        said = stated(la)
        assert said.odds == la[1].plan.odds < 1.0 and said.floor
        assert said.to_dict()["odds_floor"] is True and said.to_dict()["odds"] == la[1].plan.odds
        # the rest is the first rung's: what the connect does first
        assert (said.strategy, said.targets, said.reason) == (la[0].plan.strategy, la[0].plan.targets, la[0].plan.reason)
    # one rung: its own odds, an estimate
    (only,) = ladder(CONE, SEQ, "first", timeout=7.0)
    assert stated([only]) == only.plan and only.plan.to_dict()["odds_floor"] is False


@pytest.mark.parametrize("a,b", [(CONE, SEQ), (SEQ, SEQ7), (CONE, RANDOM), (NO_NAT, RANDOM), (RANDOM, RANDOM)])
def test_no_ladder_when_the_filtering_word_changes_nothing(a, b):
    (rung,) = ladder(a, b, "first", timeout=7.0)
    assert (rung.start, rung.budget) == (0.0, 7.0)
    assert rung.plan == plan(a, b, "first")


def test_no_fallback_that_cannot_work():
    # an ADF sequential side meets a random one only by opening its address; under the strict
    # assumption the pair is infeasible, so the one plan gets the whole time
    (rung,) = ladder(RSEQ, RANDOM, "first", timeout=9.0)
    assert rung.plan.strategy is TcpStrategy.ADDRESS_OPEN and rung.budget == 9.0


def test_the_first_rungs_slot_follows_the_published_round_trips():
    """One SYN retransmission plus twice the two round trips: at zero delay a UDP-only cone's TCP
    filter costs ~1.2 s before the strict rung, not 3; an unknown round trip keeps FIRST_RUNG."""
    from nattrav.proto.planner.tcp import FIRST_RUNG, SYN_RTO, first_rung_slot

    flat = first_rung_slot(0.001, 0.001)
    assert SYN_RTO < flat < 1.3
    assert first_rung_slot(0.11, 0.11) == pytest.approx(SYN_RTO + 0.44 + 0.2)
    assert first_rung_slot(2.0, 2.0) == FIRST_RUNG
    for bad in (None, "0.1", math.nan, -1.0, True):
        assert first_rung_slot(bad, 0.1) == FIRST_RUNG
    la, lb = _both(RCONE, SEQ, first_rung=flat)
    assert [(r.start, r.budget) for r in la] == [(r.start, r.budget) for r in lb]
    assert la[0].budget == flat and la[1].start == pytest.approx(flat + 0.3)


def _whole(tcp: TcpReport, delta: int | None, doubt: float | None) -> NatReport:
    """A side's whole report: its TCP part, with discovery's UDP Δ and the doubt it left."""
    return NatReport(delta=delta, delta_doubt=doubt, tcp=tcp)


@pytest.mark.parametrize("role", ["first", "second"])
def test_discoverys_doubt_about_a_matching_delta_weighs_into_the_odds(role):
    """Three SYNs microseconds apart cannot tell a quiet Δ from a busy divisor of it; discovery's
    gaps can, and a NAT steps alike for both protocols. A window on the wrong grid counts as a miss."""
    bare = plan(SEQ, SEQ7, role)
    whole = plan(_whole(SEQ, 1, None), _whole(SEQ7, 7, 0.01), role)
    assert whole.targets == bare.targets and whole.params == bare.params
    assert whole.odds == pytest.approx(bare.odds * 0.99, rel=1e-12)
    assert "+7 99.00000% sure" in whole.reason and "doubt not weighed" not in whole.reason
    # both sides' doubts multiply, in either role
    both = plan(_whole(SEQ7, 7, 0.02), _whole(SEQ7, 7, 0.01), role)
    assert both.odds == pytest.approx(plan(SEQ7, SEQ7, role).odds * 0.98 * 0.99, rel=1e-12)


def test_a_doubt_about_another_delta_is_not_this_ones():
    """Discovery's Δ differs from the TCP one (another counter): its doubt says nothing here, and the
    plan says the doubt is not weighed instead of stating odds as if it were."""
    bare = plan(SEQ, SEQ7, "first")
    other = plan(_whole(SEQ, 1, None), _whole(SEQ7, 2, 0.5), "first")
    assert other.odds == bare.odds and "Δ +7's doubt not weighed" in other.reason
    assert "doubt not weighed" in bare.reason  # bare TCP reports: no evidence either


def test_an_address_opener_weighs_its_own_delta_only():
    """Address-open: the peer connects to the opener's window; the other side's ports never matter."""
    bare = plan(RANDOM, ADM_ADF, "first")
    m = classify(ADM_ADF)
    whole = plan(_whole(RANDOM, None, None), _whole(ADM_ADF, m.delta, 0.001), "first")
    assert whole.strategy is TcpStrategy.ADDRESS_OPEN and whole.targets == bare.targets
    assert whole.odds == pytest.approx(bare.odds * 0.999, rel=1e-12)


def test_a_whole_report_without_a_tcp_part_is_refused():
    with pytest.raises(PlanError):
        plan(NatReport(delta=1), SEQ, "first")
    with pytest.raises(PlanError):
        ladder(SEQ, NatReport(delta=1), "first")
