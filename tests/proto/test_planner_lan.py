"""Host (LAN) candidates in both planners: the "same network" rule, the mirrored decision, the bound."""

from dataclasses import replace

import pytest

from nattrav.proto.planner import tcp as tcp_planner
from nattrav.proto.planner.lan import LAN_HEAD_START, LAN_INTERVAL, LAN_ROUNDS, aimable, lan_targets, same_network
from nattrav.proto.planner.udp import plan
from nattrav.proto.report import NatReport
from nattrav.proto.vocab import Strategy, TcpStrategy
from tests.reports import tcp, udp

PUBLIC = "203.0.113.10"  # the one address the rendezvous server saw both peers at
OTHER = "203.0.113.20"
HOST_A = [("10.0.1.2", 40000), ("192.168.5.2", 40000)]
HOST_B = [("10.0.1.3", 41000)]

SEQ = dict(mapping="APDM", filtering="APDF", allocation="sequential", delta=1, times=[0.0, 0.01])
PRESETS = {
    "full-cone": dict(mapping="EIM", filtering="EIF", ports=[40000, 40000]),
    "port-restricted": dict(mapping="EIM", filtering="APDF", ports=[40000, 40000]),
    "restricted-cone": dict(mapping="EIM", filtering="ADF", ports=[40000, 40000]),
    "symmetric-seq": dict(SEQ, ports=[20000, 20001]),
    "symmetric-random": dict(mapping="APDM", filtering="APDF", allocation="random", ports=[31234, 5001]),
}


def pair(preset, host_a=HOST_A, host_b=HOST_B):
    kw = dict(PRESETS[preset])
    ports = kw.pop("ports")
    a = udp(ports=ports, host=host_a, **kw)
    b = udp(ports=[p + 7 for p in ports], host=host_b, **kw)
    return a, b


def both(a: NatReport, b: NatReport, ip_a=PUBLIC, ip_b=PUBLIC):
    """Each side's plan from its own view: peer_ip is where the server saw the peer, own_ip us."""
    return (plan(a, b, "first", peer_ip=ip_b, own_ip=ip_a),
            plan(b, a, "second", peer_ip=ip_a, own_ip=ip_b))


def lan(p):
    return [x for x in p.attempts if x.strategy is Strategy.LAN]


def planned(p):
    """The planned attempts as they would be without the LAN's head start."""
    return [replace(x, delay=round(x.delay - LAN_HEAD_START, 9)) for x in p.attempts if x.strategy is not Strategy.LAN]


def test_same_network_is_one_observed_address_and_never_loopback():
    assert same_network(PUBLIC, PUBLIC) and same_network("100.64.3.9", "100.64.3.9")
    assert not same_network(PUBLIC, OTHER)
    assert not same_network("127.0.0.1", "127.0.0.1")  # server and both peers on one host
    assert not same_network(None, PUBLIC) and not same_network(PUBLIC, None)
    assert not same_network("garbage", "garbage")
    assert same_network("2001:db8::1", "2001:db8:0::1")  # one address, however written


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_both_sides_decide_alike_and_mirror_each_other(preset):
    a, b = pair(preset)
    pa, pb = both(a, b)
    la, lb = lan(pa), lan(pb)
    assert la and len(la) == len(lb)
    # A aims at B's candidates, B at A's: each plan's remote parts are the other's local parts
    assert {(x.local.peer_ip, x.local.targets) for x in la if x.local.targets} == {(ip, (p,)) for ip, p in HOST_B}
    assert {(x.local.peer_ip, x.local.targets) for x in lb if x.local.targets} == {(ip, (p,)) for ip, p in HOST_A}
    assert [(x.local, x.remote) for x in la] == [(x.remote, x.local) for x in lb]
    # the planned strategy is untouched and stays the primary one, on both sides a head start later
    plain_a = plan(a, b, "first", peer_ip=PUBLIC)
    assert pa.strategy is plain_a.strategy and pa.primary.strategy is plain_a.primary.strategy
    assert planned(pa) == list(plain_a.attempts)
    assert all(x.delay >= LAN_HEAD_START for x in pa.attempts if x.strategy is not Strategy.LAN)
    assert pa.odds == plain_a.odds and pa.feasible == plain_a.feasible
    # the LAN attempts' chance is not counted: the odds are a floor, and the summary says so
    assert pa.odds_floor and pa.summary()["odds_floor"] and not plain_a.odds_floor
    assert pa.params["lan_targets"] == [list(h) for h in HOST_B]
    assert "LAN address(es) 10.0.1.3:41000 did not answer" in pa.failure_message()


def test_different_networks_never_aim_at_lan_addresses():
    a, b = pair("symmetric-seq")
    for ip_a, ip_b in ((PUBLIC, OTHER), (None, PUBLIC), (PUBLIC, None), ("127.0.0.1", "127.0.0.1")):
        pa, pb = both(a, b, ip_a, ip_b)
        assert not lan(pa) and not lan(pb)
        if ip_b is not None:
            assert all(x.local.peer_ip == ip_b for x in pa.attempts)  # only the observed address
    # nothing on the wire without an own address either (the default)
    assert not lan(plan(a, b, "first", peer_ip=PUBLIC))


def test_only_candidates_inside_a_network_are_aimed_at():
    # global addresses, and the observed address itself, are never LAN targets
    host_b = [("9.9.9.9", 41000), (PUBLIC, 41000), ("10.0.1.3", 41000), ("100.64.7.7", 41000),
              ("169.254.3.3", 41000)]
    a, b = pair("port-restricted", host_b=host_b)
    pa, _ = both(a, b)
    assert [x.local.peer_ip for x in lan(pa) if x.local.targets] == ["10.0.1.3", "100.64.7.7", "169.254.3.3"]
    assert not aimable("8.8.8.8", PUBLIC) and not aimable(PUBLIC, PUBLIC) and aimable("10.9.9.9", PUBLIC)


def test_no_lan_attempt_unless_both_sides_have_a_candidate_the_other_may_aim_at():
    for host_a, host_b in (([], HOST_B), (HOST_A, []), ([("9.9.9.9", 40000)], HOST_B)):
        a, b = pair("symmetric-seq", host_a, host_b)
        pa, pb = both(a, b)
        assert not lan(pa) and not lan(pb), (host_a, host_b)


def test_lan_packets_are_bounded_and_sent_at_once_at_the_normal_ttl():
    many = [(f"10.0.1.{k}", 41000) for k in range(3, 11)]  # MAX_HOSTS candidates
    a, b = pair("symmetric-seq", host_b=many)
    pa, pb = both(a, b)
    assert len(lan(pa)) == len(many)
    for x in lan(pa) + lan(pb):
        assert not x.local.opens and x.delay == 0 and x.local.delay == 0
        assert x.local.sockets == 1 and x.local.random_probes == 0 and len(x.local.targets) <= 1
        # the executor resends every interval until the timeout: LAN_ROUNDS packets a candidate
        assert x.local.interval == LAN_INTERVAL and x.timeout == LAN_ROUNDS * LAN_INTERVAL
    assert sum(x.local.packets for x in lan(pa)) == len(many)  # one per round per candidate
    # A published two candidates, B eight: B's plan has eight LAN attempts too, six of them idle
    assert sum(1 for x in lan(pb) if x.local.targets) == len(HOST_A)


def test_a_consuming_nat_keeps_its_predicted_window():
    # LAN packets never cross the NAT, so the predicted parts are the same with or without them
    a, b = pair("symmetric-seq")
    pa, _ = both(a, b)
    plain = plan(a, b, "first", peer_ip=PUBLIC)
    assert pa.strategy is Strategy.PREDICTED and planned(pa) == list(plain.attempts)


def test_tcp_plans_carry_the_peers_lan_listeners_even_when_infeasible():
    a = tcp([30000, 30500, 31000], public=PUBLIC, host=[("10.0.1.2", 42000)])
    b = tcp([50000, 47000, 52000], public=PUBLIC, host=[("10.0.1.3", 43000), ("8.8.8.8", 43000)])
    pa = tcp_planner.plan(a, b, "first", peer_ip=PUBLIC, own_ip=PUBLIC)
    pb = tcp_planner.plan(b, a, "second", peer_ip=PUBLIC, own_ip=PUBLIC)
    assert pa.strategy is TcpStrategy.NONE and not pa.feasible  # random on both sides
    assert pa.lan == (("10.0.1.3", 43000),) and pb.lan == (("10.0.1.2", 42000),)
    assert pa.to_dict()["lan"] == [["10.0.1.3", 43000]]
    assert pa.to_dict()["odds_floor"] is True  # 0% without the LAN, but the LAN may answer
    assert tcp_planner.plan(a, b, "first", peer_ip=PUBLIC).to_dict()["odds_floor"] is False
    assert not tcp_planner.plan(a, b, "first", peer_ip=OTHER, own_ip=PUBLIC).lan
    assert not tcp_planner.plan(a, b, "first", peer_ip=PUBLIC).lan
    assert not tcp_planner.plan(a, replace(b, host=()), "first", peer_ip=PUBLIC, own_ip=PUBLIC).lan
    assert not tcp_planner.plan(replace(a, host=()), b, "first", peer_ip=PUBLIC, own_ip=PUBLIC).lan


def test_lan_targets_is_the_one_rule_for_both_transports():
    assert lan_targets(PUBLIC, HOST_A, PUBLIC, HOST_B) == tuple(HOST_B)
    assert lan_targets(PUBLIC, HOST_B, PUBLIC, HOST_A) == tuple(HOST_A)
    assert lan_targets(PUBLIC, HOST_A, OTHER, HOST_B) == ()
