"""In the NAT lab: two peers behind NATs (symmetric, CGNAT, none) enroll at nattrav-server and exchange node info.

The server sees each peer's public (NAT WAN) address and puts it into the node info the other peer
gets; both get the same session key and fire at the same wall-clock moment.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest
import trio

from nattrav.lab.pytest_support import require_lab
from tests.conftest import readline

pytestmark = pytest.mark.lab

PORT = 7000


# --- run inside the namespaces (module-level so lab.call can pickle them) -------------------------

def _summary(rv, session) -> dict:
    return {
        "peer_id": rv.peer_id,
        "observed": list(rv.observed),
        "session": session.session_id,
        "other": session.peer_id,
        "other_info": session.peer_info,
        "key": session.key.hex(),
        "role": session.role,
        "start_wall": time.time() + session.start_in(),
    }


def wait_and_accept(server: str, name: str, local_ip: str) -> dict:
    from nattrav.io.rendezvous_client import open_rendezvous

    async def main():
        async with open_rendezvous((server, PORT), name=name, info={"local": [local_ip]}) as rv:
            offer = await rv.next_offer()
            session = await rv.accept(offer)
            await trio.sleep_until(session.start_at)
            return _summary(rv, session)

    return trio.run(main)


def connect_when_there(server: str, target: str, local_ip: str) -> dict:
    from nattrav.errors import UnknownPeer
    from nattrav.io.rendezvous_client import open_rendezvous

    async def main():
        async with open_rendezvous((server, PORT), info={"local": [local_ip]}) as rv:
            with trio.fail_after(20):
                while True:
                    try:
                        session = await rv.connect(target, timeout=10)
                        break
                    except UnknownPeer:  # the other side is still starting
                        await trio.sleep(0.1)
            await trio.sleep_until(session.start_at)
            return _summary(rv, session)

    return trio.run(main)


# --- the test ------------------------------------------------------------------------------------

@pytest.fixture
def sym_lab(request):
    require_lab()
    from nattrav.lab.lab import Lab

    lab = Lab(*request.param).up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize(
    "sym_lab",
    [("symmetric-seq", "symmetric-seq"), ("cgnat", "symmetric-random"), ("none", "full-cone")],
    indirect=True, ids=lambda p: "|".join(p),
)
async def test_peers_behind_nats_meet_through_the_server(sym_lab, tmp_path):
    lab = sym_lab
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe nobody drains
    server = lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{PORT}",
                                  "--stun", f"{lab.S1},{lab.S2}", "--json-log", "-v"],
                       stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        lines = [json.loads(readline(server)) for _ in range(2)]
        assert [rec["service"] for rec in lines] == ["rendezvous", "stun"], lines
        name = f"bob-{secrets.token_hex(3)}"
        got = {}

        async def side(node, fn, *args):
            got[node] = await lab.acall(node, fn, *args, timeout=40)

        async with trio.open_nursery() as n:
            n.start_soon(side, "b", wait_and_accept, lab.S1, name, lab.ip("b"))
            n.start_soon(side, "a", connect_when_there, lab.S1, name, lab.ip("a"))
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    sessions = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    assert sum(rec["msg"].endswith(f"session {name}") for rec in sessions) == 1
    a, b = got["a"], got["b"]
    # each peer learns its own public address (its outermost NAT's WAN address, or its own address
    # when it has no NAT), and the other gets it in the node info
    for node, seen in (("a", a), ("b", b)):
        nats = lab.nats(node)
        want = {lab.wan_ip(nat) for nat in nats} if nats else {lab.ip(node)}
        assert seen["observed"][0] in want, (node, seen["observed"], want)
        if nats:
            assert seen["observed"][0].startswith("203.0.113.")
    assert b["other_info"]["observed"] == a["observed"] and a["other_info"]["observed"] == b["observed"]
    assert b["other_info"]["local"] == [lab.ip("a")] and a["other_info"]["local"] == [lab.ip("b")]
    assert a["other"] == name and b["other"] == a["peer_id"]
    assert a["key"] == b["key"] and len(bytes.fromhex(a["key"])) == 32 and a["session"] == b["session"]
    assert {a["role"], b["role"]} == {"first", "second"}
    # both fire at the same wall-clock moment (one machine, so wall clocks are comparable)
    assert abs(a["start_wall"] - b["start_wall"]) < 0.05
