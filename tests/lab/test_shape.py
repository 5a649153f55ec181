"""The new descriptions are pure: layers, the preset grammar, pools, caps, per-protocol behaviour,
Shapes and their topology, the rules they render, and the one-line errors for bad input. No root."""

import dataclasses
import ipaddress
import json

import pytest

from nattrav.lab import PRESETS, LabError, effective, resolve
from nattrav.lab.nftables import render, sysctls
from nattrav.lab.shape import SHAPES, LinkSpec, Shape, resolve_shape, shape_from_dict
from nattrav.lab.spec import TcpSpec, from_dict
from nattrav.lab.topology import build_topology, expected_trace, nat_chain
from nattrav.lab.wire import dir_config


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# ----- layers and the preset grammar -------------------------------------------------------------
def test_layers_join_inside_first_and_keep_each_layers_changes():
    s = resolve("port-restricted,public_ips=2+cgn-random,flows_per_host=1024")
    assert [x.name for x in s.chain] == ["port-restricted,public_ips=2+cgn-random,flows_per_host=1024", "cgn-random"]
    assert s.public_ips == 2 and s.outer.flows_per_host == 1024 and s.outer.allocation == "random"
    three = resolve("full-cone+symmetric-seq-2+cgn")
    assert three.layers == 3 and three.outer.delta == 2 and three.outer.outer.public_ips == 4
    # a preset that already has layers contributes all of them
    assert resolve("cgnat+cgn").layers == 3


def test_tcp_fields_build_a_tcp_spec():
    s = resolve("port-restricted,tcp_mapping=APDM,tcp_allocation=sequential,tcp_delta=3")
    assert s.tcp == TcpSpec("APDM", "APDF", "sequential", 3)
    assert s.for_tcp().mapping == "APDM" and s.mapping == "EIM"
    assert PRESETS["udp-full-cone"].for_tcp().filtering == "APDF"


@pytest.mark.parametrize("bad, words", [
    ("full-cone+", "empty layer"),
    ("full-cone,colour=red", "unknown field 'colour'"),
    ("full-cone,public_ips", "not field=value"),
    ("none+full-cone", "cannot be a NAT layer"),
    ("full-cone+full-cone+full-cone+full-cone", "at most 3 NAT layers"),
    ("full-cone,public_ips=9", "1..8"),
    ("full-cone,pooling=arbitrary", "needs an address pool"),
    ("full-cone,pooling=random,public_ips=2", "paired, arbitrary"),
    ("full-cone,max_flows=3", "16..262144"),
    ("full-cone,flows_per_host=-1", "16..262144"),
    ("full-cone,tcp_timeout=0", "1..432000"),
    ("full-cone,tcp_filtering=EIF,tcp_mapping=APDM,tcp_allocation=random", "(TCP)"),
    ("symmetric-seq-0+cgn", "out of range"),
])
def test_bad_names_are_one_clear_line(bad, words):
    with pytest.raises(LabError) as ei:
        resolve(bad)
    assert words in one_line(ei)


def test_effective_folds_every_layer():
    e = effective(resolve("port-restricted+cgn-random"))
    assert (e["mapping"], e["filtering"], e["allocation"]) == ("APDM", "APDF", "random")
    assert e["hairpin"] is False and e["public_ips"] == 4
    # the outer allocator decides once it translates: a random home NAT behind a sequential CGN
    e = effective(resolve("symmetric-random+cgn-seq"))
    assert (e["allocation"], e["delta"]) == ("sequential", 1)
    e = effective(resolve("full-cone+symmetric-seq-2+cgn"))
    assert (e["mapping"], e["allocation"], e["delta"]) == ("APDM", "sequential", 2)
    # hairpinning through layers: the outermost hairpins and every inner layer is a full cone
    assert effective(resolve("full-cone+full-cone"))["hairpin"] is True
    assert effective(resolve("port-restricted+full-cone"))["hairpin"] is False
    assert effective(resolve("udp-full-cone"), "tcp")["filtering"] == "APDF"
    assert effective(resolve("udp-full-cone"))["filtering"] == "EIF"


@pytest.mark.parametrize("name", ["udp-full-cone", "cgn-random", "port-restricted+cgn", "full-cone+symmetric-seq+cgn",
                                  "symmetric-seq,public_ips=3,pooling=arbitrary,max_flows=100"])
def test_describe_round_trip_through_json(name):
    s = resolve(name)
    assert from_dict(json.loads(json.dumps(s.describe()))) == s


# ----- rules --------------------------------------------------------------------------------------
def r(spec, pool=None):
    spec = resolve(spec) if isinstance(spec, str) else spec
    pool = pool or [f"203.0.113.{10 + k}" for k in range(spec.public_ips)]
    return render(spec, wan_ip=pool[0], lan_net="10.0.1.0/24", wan_ips=pool)


def test_same_tcp_and_udp_keep_one_allocator_but_a_tcp_override_splits_them():
    one = r("symmetric-seq")
    assert "meta l4proto { tcp, udp } counter name seq_alloc snat" in one and "seq_alloc_tcp" not in one.split("}", 8)[-1]
    split = r("symmetric-seq,tcp_mapping=EIM,tcp_allocation=preserve,tcp_filtering=APDF")
    assert "meta l4proto udp counter name seq_alloc snat" in split
    assert "meta l4proto tcp counter name seq_alloc" not in split
    cone = r("udp-full-cone")
    # UDP is dnat'ed from anywhere, TCP is not
    assert 'ip daddr 203.0.113.10 meta l4proto udp dnat ip addr . port to' in cone
    assert "meta l4proto tcp dnat" not in cone


def test_tcp_entries_carry_their_own_lifetime():
    text = r(dataclasses.replace(resolve("udp-full-cone"), tcp_timeout=45, tcp=TcpSpec("EIM", "EIF", "preserve")))
    assert "update @pub { meta l4proto . th sport timeout 45s :" in text
    assert sysctls(resolve("full-cone,tcp_timeout=45"))["net/netfilter/nf_conntrack_tcp_timeout_established"] == "45"


def test_pools_paired_and_arbitrary():
    paired = r("symmetric-seq,public_ips=4")
    assert "map pool { typeof numgen inc mod 4 : ip saddr; elements = { 0 : 203.0.113.10, 1 : 203.0.113.11" in paired
    assert "snat ip to jhash ip saddr mod 4 map @pool : numgen inc" in paired
    assert "ip daddr { 203.0.113.10, 203.0.113.11, 203.0.113.12, 203.0.113.13 }" in paired
    arbitrary = r("symmetric-seq,public_ips=4,pooling=arbitrary")
    assert "snat ip to numgen random mod 4 map @pool : numgen inc" in arbitrary
    eim = r("full-cone,public_ips=2,pooling=arbitrary")
    # EIM keeps one address per inside endpoint, and inbound maps know which address was used
    assert "snat ip to jhash ip saddr . th sport mod 2 map @pool" in eim
    assert "dnat ip addr . port to meta l4proto . ip daddr . th dport map @pub" in eim
    with pytest.raises(ValueError):
        render(resolve("full-cone,public_ips=2"), wan_ip="203.0.113.10", lan_net="10.0.1.0/24")


def test_flow_caps_render_as_ct_count():
    text = r("port-restricted,max_flows=4096,flows_per_host=1024")
    assert "ct state new ct count over 4096 counter name flows_refused drop" in text
    assert 'iifname "lan*" ct state new add @subs { ip saddr ct count over 1024 } counter name flows_refused drop' in text
    assert "ct count" not in r("port-restricted")


# ----- shapes and topology ------------------------------------------------------------------------
def test_shape_presets_validate_and_round_trip():
    for name, s in SHAPES.items():
        assert resolve_shape(name) is s and s.name == name
        assert shape_from_dict(json.loads(json.dumps(s.describe()))) == s
    assert SHAPES["wan50"].link("a").delay_ms == 50 and SHAPES["flat"].link("a") is None
    assert SHAPES["wan50"].routers_a + 1 + SHAPES["wan50"].routers_b == 12


@pytest.mark.parametrize("make, words", [
    (lambda: resolve_shape("moon"), "unknown shape 'moon'"),
    (lambda: Shape(routers_a=31).validate(), "0..30"),
    (lambda: Shape(routers_b=True).validate(), "routers_b"),
    (lambda: Shape(lan="wifi").validate(), "routed, switched"),
    (lambda: Shape(link_a="slow").validate(), "LinkSpec"),
    (lambda: LinkSpec(delay_ms=5, jitter_ms=6).validate(), "negative delays"),
    (lambda: LinkSpec(delay_ms=-1).validate(), "0..10000"),
    (lambda: LinkSpec(loss_percent=101).validate(), "0..100"),
    (lambda: LinkSpec(distribution="pareto").validate(), "uniform, normal"),
    (lambda: LinkSpec(limit=5).validate(), "64..262144"),
    (lambda: LinkSpec(delay_ms=float("nan")).validate(), "must be a number"),
    (lambda: shape_from_dict({"routers_a": 1, "hops": 3}), "unknown shape field"),
    (lambda: shape_from_dict({"link_a": {"delay": 3}}), "unknown link field"),
    (lambda: build_topology(None, None, hosts_per_nat=11), "at most 10 public hosts"),
])
def test_bad_shapes_are_one_clear_line(make, words):
    with pytest.raises(LabError) as ei:
        make()
    assert words in one_line(ei)


def test_delay_line_units():
    cfg = dir_config(LinkSpec(delay_ms=50, jitter_ms=10, loss_percent=1.5, rate_mbit=20, distribution="normal",
                              reorder=True, limit=1000))
    assert cfg == {"delay_ns": 50_000_000, "jitter_ns": 10_000_000, "rate_bps": 20_000_000, "distribution": 1,
                   "loss_ppm": 15_000, "reorder": 1, "limit": 1000}


def test_routers_wires_and_layers_in_the_topology():
    topo = build_topology(resolve("port-restricted+cgn"), resolve("full-cone+symmetric-seq+cgn-random"),
                          shape=SHAPES["wan50"])
    n = topo.nodes
    assert nat_chain(topo, "a") == ["nat_a", "cgn_a"] and nat_chain(topo, "b") == ["nat_b", "cgn_b", "cgn2_b"]
    assert n["cgn_a"].wan_ips == [f"203.0.113.{10 + k}" for k in range(4)]
    shared = ipaddress.ip_network("100.64.0.0/10")
    for inner in ("nat_a", "nat_b", "cgn_b"):
        assert ipaddress.ip_address(n[inner].wan_ip) in shared, inner
    assert [w.name for w in topo.wires()] == ["w_a", "w_b"] and n["w_a"].link.delay_ms == 50
    impaired = [link for link in topo.links if link.wire]
    assert {(link.a, link.b) for link in impaired} == {("cgn_a", "r_a1"), ("cgn2_b", "r_b1")}
    assert expected_trace(topo, "a", "b") == (
        ["10.0.1.1", "100.64.1.1"] + [f"192.0.2.{k}" for k in (1, 2, 3, 4)] + ["192.0.2.254"]
        + [f"192.0.2.{100 + k}" for k in (7, 6, 5, 4, 3, 2, 1)])
    for link in topo.links:
        assert len(link.a_if) <= 15 and len(link.b_if) <= 15


def test_switched_lan_is_one_bridge_and_a_slash_24():
    topo = build_topology(PRESETS["symmetric-seq"], None, hosts_per_nat=3, shape=SHAPES["switched"])
    (br,) = topo.bridges
    assert br.node == "nat_a" and br.name.startswith("lan") and len(br.ports) == 3
    assert {(a.node, a.prefixlen) for a in topo.addrs if a.node in ("a", "a2", "a3")} == {("a", 24), ("a2", 24), ("a3", 24)}


def test_lab_takes_a_shape_by_name_and_counts_its_hops():
    from nattrav.lab import Lab

    lab = Lab("cgnat", "port-restricted", shape="hops12")
    assert lab.hops("a", "b") == 2 + 12 + 1
    assert lab.low_ttl_from("a") == 3  # leaves both own layers, dies at the first router
    with pytest.raises(LabError) as ei:
        Lab(shape=Shape(routers_a=-1))
    assert "0..30" in one_line(ei)
