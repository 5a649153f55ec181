"""The seed's question -- "why did the external port not change between STUN requests?" -- answered with
evidence from the lab (docs/stun.md cites these tests).

1. One socket, one destination: every NAT reuses the mapping, so the port never changes; only a second
   server address shows an APDM NAT's next port (last + Δ).
2. A new socket gets a new mapping (on a sequential NAT exactly last + Δ): the punch must leave from
   the very socket whose mapping was learned.
3. A server that ignores CHANGE-REQUEST, read by a client that does not check where replies come from
   (pystun3), makes a port-restricted NAT look like a full cone; our probe refuses the reply and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nattrav.lab.pytest_support import require_lab

from .labkit import _wait_ready, probe, stun_servers

pytestmark = pytest.mark.lab

SAME_SOCKET = r"""
import json, sys, trio
from nattrav.io.stun_client import binding
s1, s2 = sys.argv[1], sys.argv[2]
async def main():
    x = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await x.bind(("0.0.0.0", 0))
    same = [(await binding(x, (s1, 3478), timeout=2)).mapped[1] for _ in range(4)]
    other = (await binding(x, (s2, 3478), timeout=2)).mapped[1]
    back = (await binding(x, (s1, 3478), timeout=2)).mapped[1]
    y = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await y.bind(("0.0.0.0", 0))
    fresh = (await binding(y, (s1, 3478), timeout=2)).mapped[1]
    print(json.dumps({"same": same, "other": other, "back": back, "fresh": fresh}))
trio.run(main)
"""


@pytest.fixture
def lab_for():
    require_lab()
    from nattrav.lab.lab import Lab

    labs = []

    def make(preset):
        lab = Lab(left=preset, right="port-restricted").up()
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()


@pytest.mark.parametrize("preset, delta", [("symmetric-seq", 1), ("symmetric-seq-7", 7), ("port-restricted", 0)])
def test_same_socket_same_destination_keeps_the_port(lab_for, preset, delta):
    lab = lab_for(preset)
    with stun_servers(lab, "rfc5780"):
        r = lab.run("a", [sys.executable, "-c", SAME_SOCKET, lab.S1, lab.S2], timeout=30)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    p = got["same"][0]
    # 1. to one destination the port never moves, whatever the NAT
    assert got["same"] == [p] * 4
    assert got["back"] == p
    # ... a second server address reveals the per-destination mapping: exactly one step of Δ
    assert got["other"] == p + delta
    # 2. a new socket is a new mapping: the next port on a sequential NAT, its own port when preserving
    if delta:
        assert got["fresh"] == p + 2 * delta
    else:
        assert got["fresh"] != p


IGNORING_SERVER = r"""
# answers every Binding request from the socket it came in on, ignoring CHANGE-REQUEST, yet announces a
# second address (CHANGED-ADDRESS / OTHER-ADDRESS): the misbehaving server of the seed's question
import socket, select, sys
from nattrav.proto.stun import Message, parse
from nattrav.proto.stun_attrs import Attr, Class, Method
a, b = sys.argv[1], sys.argv[2]
socks = []
for ip in (a, b):
    for port in (3478, 3479):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        socks.append(s)
print("serving", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, src = s.recvfrom(2048)
        try:
            req = parse(data)
        except Exception:
            continue
        r = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
        if req.classic:
            r.add(Attr.MAPPED_ADDRESS, src).add(Attr.SOURCE_ADDRESS, s.getsockname())
            r.add(Attr.CHANGED_ADDRESS, (b, 3479))
        else:
            r.add(Attr.XOR_MAPPED_ADDRESS, src).add(Attr.OTHER_ADDRESS, (b, 3479))
        s.sendto(r.encode(), src)
"""

PYSTUN = r"""
import json, socket, sys
import stun
ip, server = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.bind((ip, 0))
print(json.dumps(stun.get_nat_type(s, ip, s.getsockname()[1], stun_host=server)[0]))
"""


def test_server_ignoring_change_request_fakes_a_full_cone_unless_replies_are_validated(lab_for):
    pytest.importorskip("stun", reason="pystun3 is a test dependency (pip install '.[test]')")
    lab = lab_for("port-restricted")
    p = lab.popen("server", [sys.executable, "-c", IGNORING_SERVER, lab.S1, lab.S2],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(p, "ignoring STUN server")
        naive = lab.run("a", [sys.executable, "-c", PYSTUN, lab.ip("a"), lab.S1], timeout=30)
        ours = probe(lab, (lab.S1, 3478), "--no-hairpin")
    finally:
        p.kill()
        p.wait()
    assert naive.returncode == 0, naive.stderr
    # pystun3 takes the unchanged reply for the change-IP test: a port-restricted NAT called full cone
    assert json.loads(naive.stdout) == "Full Cone"
    # we refuse replies from the wrong address, do not claim a filtering behaviour, and say why
    assert ours["mapping"] == "EIM" and ours["filtering"] is None
    assert ours["discarded"]["wrong_source"] >= 1
    assert any("ignores change" in f for f in ours["findings"])
    # against our own server the same NAT is what it is
    with stun_servers(lab, "rfc5780") as server:
        honest = probe(lab, server, "--no-hairpin")
    assert (honest["filtering"], honest["classic"]) == ("APDF", "port restricted cone")


@pytest.mark.parametrize("preset", ["port-restricted", "symmetric-seq"])
def test_mapping_lifetime_is_measured(lab_for, preset):
    from nattrav.lab.spec import resolve

    lab = lab_for(resolve(preset).with_timeout(3))
    with stun_servers(lab, "rfc5780") as server:
        got = probe(lab, server, "--no-hairpin", "--lifetime", "--lifetime-max", "8")
    # the NAT forgets idle mappings after 3 s: alive after 2 s idle, gone after 4 s
    assert got["lifetime"] == 2.0, got["findings"]
    assert any("at least 2 s and was gone after 4 s" in f for f in got["findings"])
