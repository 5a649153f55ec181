"""Paths and layers, measured: every router answers an expiring packet, NAT layers in any order behave
as effective() folds them, the layers talk over 100.64.0.0/10, and hosts on a switched LAN reach each
other directly while routed ones go through their NAT."""

import dataclasses
import ipaddress
import json
import subprocess
import sys

import pytest

from nattrav.lab import effective
from nattrav.lab.probe import PORTS, measure, start_responder
from nattrav.lab.probe_path import send_once, trace_run
from nattrav.lab.pytest_support import running_lab
from nattrav.lab.shape import Shape
from nattrav.lab.topology import expected_trace

pytestmark = pytest.mark.lab
SHARED = ipaddress.ip_network("100.64.0.0/10")


@pytest.fixture(scope="module")
def long_path():
    """A home NAT behind a CGN on a, three layers on b, 3 + 1 + 5 routers between them."""
    with running_lab("port-restricted+cgn", "full-cone+symmetric-seq+cgn-random",
                     shape=Shape(routers_a=3, routers_b=5, name="asym")) as lab:
        yield lab


@pytest.mark.parametrize("side", ["a", "b"])
def test_every_router_and_nat_layer_answers_time_exceeded(long_path, side):
    lab = long_path
    other = "b" if side == "a" else "a"
    want = expected_trace(lab.topology, side, other)
    got = lab.call(side, trace_run, (lab.wan_ip(other), 33434), len(want) + 2, timeout=120)
    assert got[: len(want)] == want, got
    # the peer's outermost NAT drops the unsolicited datagram: no answer from there on
    assert got[len(want):] == [None, None], got
    assert len(want) == len(lab.nats(side)) + 3 + 1 + 5


def test_layers_talk_over_the_shared_address_space(long_path):
    lab = long_path
    for inner in ("nat_a", "nat_b", "cgn_b"):
        assert ipaddress.ip_address(lab.wan_ip(inner)) in SHARED
    start_responder(lab)
    measure(lab, "a", checks=("mapping",))
    # the CGN's conntrack sees the home NAT's 100.64 address as its inside endpoint
    inside = [m.inside[0] for m in lab.mappings("cgn_a", "udp")]
    assert inside and all(ipaddress.ip_address(ip) in SHARED for ip in inside), inside


LAYERED = {
    "home-behind-random-cgn": "port-restricted+cgn-random",
    "seq-home-behind-cgn": "symmetric-seq+cgn",
    "random-home-behind-seq-cgn": "symmetric-random+cgn-seq",
    "three-layers": "full-cone+symmetric-seq-2+cgn",
    "cone-behind-cone": "full-cone+full-cone",
}


@pytest.fixture(scope="module", params=list(LAYERED), ids=list(LAYERED))
def layered(request):
    with running_lab(LAYERED[request.param], "none", hosts_per_nat=2, responder=True) as lab:
        yield lab


def test_layered_nat_measures_as_its_layers_fold(layered):
    lab = layered
    exp = effective(lab.spec("a"))
    m = measure(lab, "a", checks=("mapping", "filtering", "allocation", "hairpin"))
    assert (m.mapping, m.filtering, m.allocation) == (exp["mapping"], exp["filtering"], exp["allocation"]), m
    if exp["allocation"] == "sequential":
        assert m.delta == exp["delta"], m
    assert m.hairpin is exp["hairpin"], m
    assert m.public_ip in lab.wan_ips("a")


def _ttl_seen(lab, sender: str, receiver: str) -> dict:
    argv = [sys.executable, "-c", f"from nattrav.lab.probe_path import recv_ttl_main as m; m({PORTS[0] + 50}, 5.0)"]
    proc = lab.popen(receiver, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        assert json.loads(proc.stdout.readline())["ready"]
        lab.call(sender, send_once, (lab.ip(receiver), PORTS[0] + 50))
        return json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("lan", ["switched", "routed"])
def test_same_lan_segment_is_direct_and_routed_lan_is_one_hop(lan):
    with running_lab("symmetric-seq", "none", hosts_per_nat=2, shape=Shape(lan=lan, name=lan),
                     responder=True) as lab:
        got = _ttl_seen(lab, "a", "a2")
        hairpin = measure(lab, "a", checks=("hairpin",)).hairpin
    assert got["from"][0] == lab.ip("a"), got  # never translated: same NAT, inside addresses
    assert got["ttl"] == (64 if lan == "switched" else 63), got
    assert hairpin is False  # symmetric-seq does not hairpin, whatever the LAN


def test_switched_lan_with_hairpinning():
    with running_lab("port-restricted", "none", hosts_per_nat=3, shape=Shape(lan="switched", name="sw"),
                     responder=True) as lab:
        m = measure(lab, "a", checks=("hairpin", "mapping"))
    assert m.hairpin is True and m.hairpin_source[0] == "203.0.113.10", m
    assert m.mapping == "EIM", m


def test_every_link_has_permanent_neighbour_entries():
    """The lab writes the neighbours of every link (lab/build.py static_neighbours): the kernel's
    one neighbour table for all namespaces then holds no learned entries of ours to overflow when
    tens of labs run at once. Through a wire (wan50's delay lines) and a switched LAN's bridge too."""
    from nattrav.lab.build import static_neighbours
    from nattrav.lab.shape import SHAPES

    shape = dataclasses.replace(SHAPES["wan50"], lan="switched", name="wan50-switched")
    with running_lab("port-restricted", "symmetric-seq", hosts_per_nat=2, shape=shape) as lab:
        want = static_neighbours(lab.topology)
        nodes = {"a", "a2", "nat_a", "router", "server"}
        assert {n for n, *_ in want} >= nodes
        for node in sorted(nodes):
            got = lab.run(node, ["ip", "-j", "neigh", "show"])
            assert got.returncode == 0, got.stderr
            seen = {(e["dev"], e["dst"]) for e in json.loads(got.stdout or "[]") if "PERMANENT" in e.get("state", [])}
            mine = {(ifname, address) for n, ifname, address, _ in want if n == node}
            assert mine and mine <= seen, (node, mine - seen)
        # the two hosts on the switched LAN know each other (one bridge, one segment)
        assert any(n == "a" and address == lab.ip("a2") for n, _, address, _ in want)
