"""The ladder's last rung in the NAT lab, through a real coturn beside our servers: two random NATs
(the pair no punch can join) connect through the relay and carry 5 MB on QUIC's stream with the same
sha256 at both ends; a feasible pair whose NAT drops the punch falls back to the relay and moves to
the direct path in place once the sabotage is lifted, the transfer intact."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import tempfile
import time

import pytest
import trio

from nattrav.identity import Identity
from nattrav.lab.matrix import SERVER_PORT, start_relay, start_servers
from nattrav.lab.pytest_support import lab_fixture

from tests.lab_bulk import both_sides, tcp_connect, tcp_listen

from .conftest import _need_coturn

BULK = 5 * 1024 * 1024
# trials of the random<->random cases (CI keeps it short; NATTRAV_RELAY_TRIALS=10 for a measurement)
TRIALS = int(os.environ.get("NATTRAV_RELAY_TRIALS", "2"))
SABOTAGE_TABLE = "nt_sabotage"

random_lab = lab_fixture("symmetric-random", "symmetric-random")
cone_lab = lab_fixture("port-restricted", "port-restricted")


# --- run inside the lab hosts (lab.acall) -----------------------------------------------------

# QUIC as the API runs it over whichever path it made (punched or relayed), with a patient
# handshake and a short keepalive for the lab's busy CI machine
QUIC = {"handshake_timeout": 10.0, "idle_timeout": 15.0, "keepalive_interval": 2.0, "close_timeout": 10.0}


def _recorder(events: list, mark: str | None):
    """Keep the events; touch `mark` (a file the test polls) once the peer answered through the relay."""
    def record(phase, detail):
        events.append((phase, detail))
        if phase == "relay-connected" and mark:
            open(mark, "w").close()
    return record


def _counters(path) -> dict:
    """A relayed path's datagrams per route (a punched path has no routes to count)."""
    counters = getattr(path, "counters", None)
    return dict(counters) if isinstance(counters, dict) else {}


def _listen(server, name, my_pem: bytes, their_id: str, size: int, mark: str | None = None) -> dict:
    from nattrav.api import listen

    me = Identity.from_pem(my_pem)
    events = []

    async def main() -> dict:
        async with listen(server, name=name, identity=me, quic=QUIC,
                          on_event=_recorder(events, mark)) as lst:
            async with lst.accept() as q:
                assert q.peer_id.text == their_id  # the key the QUIC handshake proved
                h, n = hashlib.sha256(), 0
                while chunk := await q.stream.receive_some(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                await q.stream.send_all(h.hexdigest().encode())
                await q.stream.send_eof()
            path = q.punched
            return {"sha256": h.hexdigest(), "bytes": n, "strategy": path.strategy.value,
                    "via": getattr(path, "via", "direct"), "events": _brief(events),
                    "counters": _counters(path)}

    return trio.run(main)


def _connect(server, name, my_pem: bytes, their_id: str, size: int, seed: int, pace: float,
             mark: str | None = None) -> dict:
    from nattrav.api import connect
    from nattrav.errors import UnknownPeer

    me = Identity.from_pem(my_pem)
    blob = random.Random(seed).randbytes(size)
    events = []

    async def main() -> dict:
        while True:
            try:
                async with connect(server, name, timeout=30, identity=me, quic=QUIC,
                                   on_event=_recorder(events, mark)) as q:
                    assert q.peer_id.text == their_id
                    t0 = trio.current_time()
                    step = 1 << 16
                    for i in range(0, size, step):
                        await q.stream.send_all(blob[i:i + step])
                        if pace:
                            await trio.sleep(pace)  # a transfer long enough to span an upgrade
                    await q.stream.send_eof()
                    echo = b""
                    while chunk := await q.stream.receive_some(1024):
                        echo += chunk
                path = q.punched
                return {"sha256": hashlib.sha256(blob).hexdigest(), "echo": echo.decode(),
                        "seconds": trio.current_time() - t0, "strategy": path.strategy.value,
                        "via": getattr(path, "via", "direct"), "events": _brief(events),
                        "counters": _counters(path)}
            except UnknownPeer:
                await trio.sleep(0.05)  # the listener has not enrolled yet

    return trio.run(main)


def _brief(events):
    keep = {"plan", "relay", "offer", "rendezvous", "relay-ready", "relay-connected", "relay-note", "upgrade", "connected"}
    out = []
    for phase, d in events:
        if phase in keep:
            d = {k: v for k, v in d.items() if k in ("why", "reason", "strategy", "feasible", "peer", "relay",
                                                     "relayed", "note", "via")}
            out.append((phase, d))
    return out


# --- the lab side ------------------------------------------------------------------------------

class Servers:
    """coturn and nattrav-server --turn in the lab's server node (lab/matrix.py's start_relay and
    start_servers: the secret in a file both read, as docs/deploy.md sets it up)."""

    def __init__(self, lab):
        self.lab = lab
        self.files: list[str] = []
        self.procs: list = []

    def __enter__(self):
        self.lab.flush_conntrack()
        self.coturn, flags = start_relay(self.lab, self.files)
        self.files += start_servers(self.lab, "two-address", flags, self.procs)
        return self

    def __exit__(self, *exc):
        for proc in self.procs:  # the next test's server needs the port (the lab outlives a test)
            proc.terminate()
            proc.wait(10)
        self.coturn.__exit__(*exc)
        for f in self.files:
            os.unlink(f)


async def _pair(lab, *, pace: float = 0.0, during=None, marks=(None, None)) -> tuple[dict, dict]:
    a_id, b_id = Identity.generate(), Identity.generate()
    rv = (lab.S1, SERVER_PORT)
    name = f"relay{time.monotonic_ns() % 10**6}"
    return await both_sides(lab, (_listen, rv, name, b_id.to_pem(), a_id.peer_id.text, BULK, marks[1]),
                            (_connect, rv, name, a_id.to_pem(), b_id.peer_id.text, BULK, 16, pace, marks[0]),
                            during=during)


def _phases(events, phase):
    return [d for p, d in events if p == phase]


@pytest.mark.lab
async def test_random_to_random_connects_through_coturn_and_carries_5_mb(random_lab):
    _need_coturn()
    lab = random_lab
    with Servers(lab):
        for trial in range(TRIALS):
            a, b = await _pair(lab)
            assert b["bytes"] == BULK and b["sha256"] == a["sha256"] == a["echo"], (trial, a, b)
            assert a["strategy"] == b["strategy"] == "relay" and a["via"] == b["via"] == "relay", (a, b)
            # both went straight to the relay, for the planner's reason
            for side in (a, b):
                plan = _phases(side["events"], "plan")[0]
                relay = _phases(side["events"], "relay")[0]
                assert plan["feasible"] is False and relay["why"] == "infeasible"
                assert "relay (TURN) is needed" in relay["reason"]
                assert relay["relay"][0] == lab.S1  # our coturn's relayed address, nowhere else
            print(f"trial {trial}: 5 MB through coturn in {a['seconds']:.2f} s "
                  f"({BULK / a['seconds'] / 1e6:.1f} MB/s)")


@pytest.mark.lab
async def test_random_to_random_over_tcp_connects_through_a_tcp_relay_and_carries_5_mb(random_lab):
    """RFC 6062: the asking side's TCP allocation, the listener's plain connection to it, the punch
    handshake on the relayed stream, 5 MB each way's hash."""
    _need_coturn()
    lab = random_lab
    with Servers(lab):
        for trial in range(TRIALS):
            rv = (lab.S1, SERVER_PORT)
            name = f"trelay{time.monotonic_ns() % 10**6}"
            a, b = await both_sides(lab, (tcp_listen, rv, name), (tcp_connect, rv, name, BULK, 9 + trial))
            a["events"], b["events"] = _brief(a["events"]), _brief(b["events"])
            if "error" in a or "error" in b:
                pytest.fail(f"trial {trial}:\na: {a}\nb: {b}", pytrace=False)
            assert b["bytes"] == BULK and b["sha256"] == a["sha256"] == a["echo"], (a, b)
            assert a["strategy"] == b["strategy"] == "relay" and a["via"] == b["via"] == "relay", (a, b)
            for side_ in (a, b):
                relay = _phases(side_["events"], "relay")[0]
                assert relay["why"] == "infeasible" and relay["relay"][0] == lab.S1, side_["events"]
            print(f"TCP trial {trial}: 5 MB through coturn's TCP relay in {a['seconds']:.2f} s")


def _sabotage(lab, nat: str, drop_from: str, on: bool) -> None:
    """In `nat`'s namespace (the lab's own), drop every UDP packet from `drop_from` before conntrack
    sees it: the peer's punch never gets in; the relay's packets (another address) still do."""
    from nattrav.lab.tools import tool

    script = (f"table ip {SABOTAGE_TABLE} {{\n chain pre {{\n  type filter hook prerouting priority -300;\n"
              f"  ip saddr {drop_from} meta l4proto udp counter drop\n }}\n}}\n" if on
              else f"delete table ip {SABOTAGE_TABLE}\n")
    cp = subprocess.run(["ip", "netns", "exec", lab.ns(nat), tool("nft"), "-f", "-"], input=script, text=True,
                        capture_output=True)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.lab
async def test_a_sabotaged_punch_falls_back_to_the_relay_then_upgrades_in_place(cone_lab):
    _need_coturn()
    lab = cone_lab
    nat_b = lab.nats("b")[-1]  # the outermost NAT of side b
    _sabotage(lab, nat_b, lab.wan_ip("a"), True)
    lifted = {}
    marks = tuple(tempfile.mktemp(prefix=f"nattrav-relayed-{side}-") for side in "ab")

    async def lift_later():
        # once both sides talk through the relay (the punch gave up), lift the sabotage while the
        # paced transfer (16 s) goes on; on a loaded machine that moment varies
        with trio.move_on_after(60):
            while not all(os.path.exists(m) for m in marks):
                await trio.sleep(0.1)
        _sabotage(lab, nat_b, lab.wan_ip("a"), False)
        lifted["at"] = time.monotonic()

    try:
        with Servers(lab):
            a, b = await _pair(lab, pace=0.2, during=lift_later, marks=marks)
    finally:
        for m in marks:
            if os.path.exists(m):
                os.unlink(m)
        if "at" not in lifted:
            _sabotage(lab, nat_b, lab.wan_ip("a"), False)
    assert b["bytes"] == BULK and b["sha256"] == a["sha256"] == a["echo"], (a, b)
    for side in (a, b):
        plan = _phases(side["events"], "plan")[0]
        relay = _phases(side["events"], "relay")
        assert plan["feasible"] is True, side["events"]
        assert relay and relay[0]["why"] == "punch-failed", side["events"]
        assert _phases(side["events"], "upgrade"), side["events"]
    assert a["strategy"] == b["strategy"] == "relay" and a["via"] == b["via"] == "direct", (a, b)
    # the one stream crossed both routes: through the relay first, then direct
    for side in (a, b):
        assert side["counters"].get("in_relay", 0) > 0 and side["counters"].get("in_direct", 0) > 0, side
    print(f"5 MB relay -> direct in {a['seconds']:.2f} s; datagrams in: a {a['counters'].get('in_relay')} via "
          f"relay, {a['counters'].get('in_direct')} direct; b {b['counters'].get('in_relay')} via relay, "
          f"{b['counters'].get('in_direct')} direct")
