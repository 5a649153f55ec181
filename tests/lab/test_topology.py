"""The wiring (Topology) is pure: addresses, names and hop counts without root."""

import pytest

from nattrav.lab import PRESETS, Lab, LabError, parse_conntrack
from nattrav.lab.topology import build_topology, nat_chain


def test_two_nat_plan_addresses():
    p = build_topology(PRESETS["symmetric-seq"], PRESETS["port-restricted"], hosts_per_nat=2)
    n = p.nodes
    assert (n["a"].ip, n["a2"].ip, n["b"].ip, n["b2"].ip) == ("10.0.1.2", "10.0.1.3", "10.0.2.2", "10.0.2.3")
    assert (n["nat_a"].wan_ip, n["nat_b"].wan_ip) == ("203.0.113.10", "203.0.113.20")
    assert n["a"].wan_ip == "203.0.113.10" and n["b2"].wan_ip == "203.0.113.20"
    assert n["server"].ips == ["198.51.100.1", "198.51.100.2"]
    assert "server2" not in n
    assert {"router", "server", "nat_a", "nat_b"} <= set(n)
    for link in p.links:
        assert len(link.a_if) <= 15 and len(link.b_if) <= 15
    # every address the topology hands out is in a documentation range or 10/8
    for a in p.addrs:
        assert a.address.startswith(("10.", "100.64.", "192.0.2.", "198.51.100.", "203.0.113."))


def test_public_host_and_second_server():
    p = build_topology(None, PRESETS["full-cone"], second_server=True)
    assert p.nodes["a"].ip == "203.0.113.10" and p.nodes["a"].wan_ip == "203.0.113.10"
    assert "nat_a" not in p.nodes
    assert p.nodes["server2"].ips == ["198.51.100.3"]
    assert nat_chain(p, "a") == [] and nat_chain(p, "b") == ["nat_b"]


def test_cgnat_has_two_layers_and_public_ip_on_the_outer():
    p = build_topology(PRESETS["cgnat"], None)
    assert nat_chain(p, "a") == ["nat_a", "cgn_a"]
    assert p.nodes["cgn_a"].wan_ip == "203.0.113.10"
    assert p.nodes["nat_a"].wan_ip == "100.64.1.2"  # RFC 6598 shared address space between the layers
    assert p.nodes["a"].wan_ip == "203.0.113.10"
    assert p.nodes["cgn_a"].spec is PRESETS["cgnat"].outer


def test_low_ttl_counts_nat_layers():
    lab = Lab("port-restricted", "cgnat")
    assert lab.low_ttl == 2 == lab.ttl_to_die_between == lab.low_ttl_from("a")
    assert lab.low_ttl_from("b") == 3
    assert lab.hops("a", "b") == 4
    assert Lab("none", "none").low_ttl == 1


def test_background_host_and_bad_arguments():
    lab = Lab("symmetric-seq", "port-restricted", background={"a": 50})
    assert "bg_a" in lab.topology.nodes and "bg_b" not in lab.topology.nodes
    with pytest.raises(LabError, match="needs a NAT"):
        Lab("none", "none", background=10)
    with pytest.raises(LabError, match="hosts_per_nat"):
        Lab(hosts_per_nat=0)
    with pytest.raises(LabError, match="no node 'c'"):
        Lab().ip("c")
    with pytest.raises(LabError, match="not up"):
        Lab().ns("a")


def test_parse_conntrack_both_directions():
    text = (
        "udp      17 29 src=10.0.1.2 dst=198.51.100.1 sport=40000 dport=7000 src=198.51.100.1 "
        "dst=203.0.113.10 sport=7000 dport=20000 mark=0 use=1\n"
        "udp      17 28 src=198.51.100.2 dst=203.0.113.10 sport=7000 dport=40001 [UNREPLIED] "
        "src=10.0.1.3 dst=198.51.100.2 sport=40001 dport=7000 mark=0 use=1\n"
        "icmp     1 29 src=10.0.1.2 dst=198.51.100.1 type=8 code=0 id=1 src=198.51.100.1 dst=203.0.113.10\n"
        "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"
    )
    m = parse_conntrack(text, lan_net="10.0.1.0/24")
    assert [(x.inside, x.outside, x.remote) for x in m] == [
        (("10.0.1.2", 40000), ("203.0.113.10", 20000), ("198.51.100.1", 7000)),
        (("10.0.1.3", 40001), ("203.0.113.10", 40001), ("198.51.100.2", 7000)),
    ]


def test_mappings_unpack_as_tuples():
    text = ("udp      17 29 src=10.0.1.2 dst=198.51.100.1 sport=1 dport=2 src=198.51.100.1 "
            "dst=203.0.113.10 sport=2 dport=3 mark=0 use=1\n")
    [(proto, inside, outside, remote)] = parse_conntrack(text, lan_net="10.0.1.0/24")
    assert (proto, inside, outside, remote) == ("udp", ("10.0.1.2", 1), ("203.0.113.10", 3), ("198.51.100.1", 2))
