"""In the NAT lab: for every preset and both server layouts, `nattrav-stun probe` in node "a" against
our server reports exactly the NAT the lab was told to build (Δ included); pystun3, an independent
RFC 3489 client, gets the classic answer it should get from our server."""

from __future__ import annotations

import json
import sys

import pytest

from nattrav.lab.pytest_support import require_lab
from nattrav.lab.spec import preset_names

from .labkit import PYSTUN_NAMES, expected, expected_one_ip, probe, stun_servers

pytestmark = pytest.mark.lab

PRESETS = preset_names()


@pytest.fixture
def make_lab():
    require_lab()
    from nattrav.lab.lab import Lab

    labs = []

    def make(preset: str, **kw) -> Lab:
        lab = Lab(left=preset, right="port-restricted", **kw).up()
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()


@pytest.mark.parametrize("layout", ["rfc5780", "two-host"])
@pytest.mark.parametrize("preset", PRESETS)
def test_probe_reports_the_configured_nat(make_lab, preset, layout):
    lab = make_lab(preset, second_server=(layout == "two-host"))
    with stun_servers(lab, layout) as server:
        got = probe(lab, server)
    want = expected(lab)
    seen = {k: got[k] for k in want}
    assert seen == want, f"{preset}/{layout}: probe said {json.dumps(got, indent=1)}"
    # the second address the server announced is the one this layout serves from
    other_ip = lab.S2 if layout == "rfc5780" else lab.S3
    assert got["other_address"] == [other_ip, 3479]
    assert got["discarded"].get("wrong_source", 0) == 0
    if want["nat"]:
        # the outermost NAT's WAN address (the only one on the router's 203.0.113.0/24), or any of
        # its pool's for a NAT with several
        wans = [ip for n in lab.nats("a") for ip in lab.wan_ips(n)]
        assert got["public_ip"] in wans and got["public_ip"].startswith("203.0.113.")
    # the predictor's input: one socket, S1 then S2 (and more), Δ apart for a sequential APDM
    ports = [s["port"] for s in got["one_socket"]]
    assert len(ports) == 4
    if want["mapping"] == "APDM" and want["allocation"] == "sequential":
        assert [b - a for a, b in zip(ports, ports[1:])] == [want["delta"]] * 3


@pytest.mark.parametrize("preset", PRESETS)
def test_probe_against_one_ip_measures_by_port(make_lab, preset):
    """A server with ONE IP (the common cloud VM) and two ports: its second port, named in OTHER-PORT,
    is a second destination, enough to see APDM (with its Δ) and port-dependent filtering."""
    lab = make_lab(preset)
    with stun_servers(lab, "single") as server:
        got = probe(lab, server)
    want = expected_one_ip(lab)
    seen = {k: got[k] for k in want}
    assert seen == want, f"{preset}/single: probe said {json.dumps(got, indent=1)}"
    assert got["other_address"] == [lab.S1, 3479]  # the same IP, the other port
    assert got["discarded"].get("wrong_source", 0) == 0
    ports = [s["port"] for s in got["one_socket"]]
    assert len(ports) == 2
    if want["mapping"] == "APDM" and want["allocation"] == "sequential":
        assert ports[1] - ports[0] == want["delta"]
    if want["nat"]:
        assert any("one IP and two ports" in f for f in got["findings"])


PYSTUN = r"""
import json, socket, sys
import stun
ip, server = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.bind((ip, 0))
typ, ret = stun.get_nat_type(s, ip, s.getsockname()[1], stun_host=server, stun_port=3478)
print(json.dumps({"type": typ, "ret": ret}))
"""


@pytest.mark.parametrize(
    "preset, layout",
    [(p, "rfc5780") for p in PRESETS] + [("restricted-cone", "two-host"), ("symmetric-seq", "two-host")],
)
def test_pystun3_gets_the_classic_answer(make_lab, preset, layout):
    pytest.importorskip("stun", reason="pystun3 is a test dependency (pip install '.[test]')")
    lab = make_lab(preset, second_server=(layout == "two-host"))
    want = PYSTUN_NAMES[expected(lab)["classic"]]
    with stun_servers(lab, layout) as server:
        r = lab.run("a", [sys.executable, "-c", PYSTUN, lab.ip("a"), server[0]], timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["type"] == want, f"{preset}/{layout}: pystun3 said {got}"
