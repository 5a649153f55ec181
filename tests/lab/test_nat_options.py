"""NAT options beyond the presets' basics, each measured against its NatSpec: TCP behaving unlike
UDP on one box, address pools (paired / arbitrary, RFC 4787 §4.1), small flow tables and per-host
caps, and mapping lifetimes per protocol."""

import time

import pytest

from nattrav.lab import effective, resolve
from nattrav.lab.probe import PORTS, lifetime_run, measure
from nattrav.lab.probe_nat import TCP_PORTS, measure_tcp, open_flows, pool_run, tcp_lifetime_run
from nattrav.lab.pytest_support import running_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def proto_lab():
    """a: UDP full cone whose TCP stays port-restricted; b: UDP cone whose TCP is symmetric."""
    with running_lab("udp-full-cone", "port-restricted,tcp_mapping=APDM,tcp_allocation=sequential,tcp_delta=3",
                     responder=True) as lab:
        yield lab


@pytest.mark.parametrize("side", ["a", "b"])
def test_udp_and_tcp_behave_as_described_on_one_nat(proto_lab, side):
    lab = proto_lab
    udp, tcp = effective(lab.spec(side)), effective(lab.spec(side), "tcp")
    m = measure(lab, side, checks=("mapping", "filtering"))
    assert (m.mapping, m.filtering) == (udp["mapping"], udp["filtering"]), m
    t = measure_tcp(lab, side)
    assert (t["mapping"], t["filtering"]) == (tcp["mapping"], tcp["filtering"]), t
    if tcp["allocation"] == "sequential":
        ports = [x[1] for x in t["seen"]]
        assert [q - p for p, q in zip(ports, ports[1:])] == [tcp["delta"]] * 2, t
    # the point of the fixture: the two protocols really differ on this box
    assert (udp["mapping"], udp["filtering"]) != (tcp["mapping"], tcp["filtering"])


# ----- address pools ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool_lab():
    with running_lab("symmetric-seq,public_ips=4", "full-cone,public_ips=3,pooling=arbitrary", hosts_per_nat=3,
                     responder=True) as lab:
        yield lab


def test_paired_pooling_gives_each_host_one_address(pool_lab):
    lab = pool_lab
    targets = [(lab.S1, PORTS[0]), (lab.S2, PORTS[0])]
    used = set()
    for host in ("a", "a2", "a3"):
        seen = [x for obs in lab.call(host, pool_run, targets, 4) for x in obs]
        ips = {x[0] for x in seen}
        assert len(ips) == 1 and ips <= set(lab.wan_ips(host)), (host, seen)
        used |= ips
    assert used <= set(lab.wan_ips("a"))
    # still the NAT it says it is, on whichever address it picked
    m = measure(lab, "a", checks=("mapping", "allocation"))
    assert (m.mapping, m.allocation, m.delta) == ("APDM", "sequential", 1), m


def test_arbitrary_pooling_spreads_mappings_over_the_pool(pool_lab):
    lab = pool_lab
    targets = [(lab.S1, PORTS[0]), (lab.S2, PORTS[0])]
    seen = lab.call("b", pool_run, targets, 12)
    # EIM holds per inside endpoint: S1 and S2 see the same address and port of one socket ...
    assert all(s1 == s2 for s1, s2 in seen), seen
    ips = {s1[0] for s1, _ in seen}
    # ... but sockets of one host land on different addresses (all 12 on one of 3: p = 3^-11)
    assert len(ips) >= 2 and ips <= set(lab.wan_ips("b")), seen
    m = measure(lab, "b", checks=("filtering",))
    assert m.filtering == "EIF", m  # inbound finds the mapping on whichever address it is


def test_arbitrary_pooling_of_a_symmetric_nat_picks_per_flow():
    with running_lab("symmetric-random,public_ips=4,pooling=arbitrary", "none", responder=True) as lab:
        seen = lab.call("a", pool_run, [(lab.S1, PORTS[0]), (lab.S2, PORTS[0])], 6)
    ips = {x[0] for obs in seen for x in obs}
    assert len(ips) >= 2 and ips <= {f"203.0.113.{10 + k}" for k in range(4)}, seen


# ----- flow tables --------------------------------------------------------------------------------
def _passed(lab, nat: str, host: str, count: int, first_port: int) -> tuple[int, int]:
    out0, ref0 = lab.counter(nat, "wan_out_udp"), lab.counter(nat, "flows_refused")
    lab.call(host, open_flows, count, first_port)
    return lab.counter(nat, "wan_out_udp") - out0, lab.counter(nat, "flows_refused") - ref0


def _refill(lab, nat: str, host: str, count: int, first_port: int) -> int:
    """New flows that got through after the table's entries expired: never more than the cap."""
    passed = _passed(lab, nat, host, count, first_port)[0]
    return passed + _passed(lab, nat, host, count, first_port + count)[0]


def test_full_flow_table_drops_new_flows_until_mappings_expire():
    with running_lab("port-restricted,max_flows=200,udp_timeout=3", "port-restricted,flows_per_host=100,udp_timeout=3",
                     hosts_per_nat=2) as lab:
        # the whole table: a fills it, a2 finds it full too
        assert _passed(lab, "nat_a", "a", 260, 2000) == (200, 60)
        assert _passed(lab, "nat_a", "a2", 50, 4000) == (0, 50)
        # per inside address (a CGN's ports per subscriber): b's cap does not touch b2
        assert _passed(lab, "nat_b", "b", 150, 2000) == (100, 50)
        assert _passed(lab, "nat_b", "b2", 150, 4000) == (100, 50)
        time.sleep(4.5)  # the mappings expire; the kernel frees their places as new flows arrive
        # (ct count collects a few stale entries per new flow), so the table fills to its cap again;
        # on a loaded machine a few stale entries may outlast the first wave: a second fills the rest
        assert _refill(lab, "nat_a", "a2", 600, 6000) == 200
        assert _refill(lab, "nat_b", "b", 300, 6000) == 100


def test_cgn_preset_caps_ports_per_subscriber_behind_a_home_nat():
    cap = resolve("cgn-random").flows_per_host
    with running_lab("port-restricted+cgn-random", "none") as lab:
        passed, refused = _passed(lab, "cgn_a", "a", cap + 300, 2000)
    assert (passed, refused) == (cap, 300)


# ----- lifetimes per protocol -------------------------------------------------------------------------
def test_udp_and_tcp_mapping_lifetimes_are_separate():
    with running_lab("port-restricted,udp_timeout=3,tcp_timeout=6", "none", responder=True) as lab:
        udp = lab.call("a", lifetime_run, (lab.S1, PORTS[0]), [2.0, 4.5])
        tcp = lab.call("a", tcp_lifetime_run, (lab.S1, TCP_PORTS[0]), [4.5, 8.0], timeout=60)
    assert udp == {"2.0": True, "4.5": False}, udp
    assert tcp == {"4.5": True, "8.0": False}, tcp  # a UDP-short silence keeps a TCP mapping


def test_ten_second_udp_mapping():
    with running_lab("symmetric-seq,udp_timeout=10", "none", responder=True) as lab:
        got = lab.call("a", lifetime_run, (lab.S1, PORTS[0]), [8.5, 11.5], timeout=60)
    assert got == {"8.5": True, "11.5": False}, got
