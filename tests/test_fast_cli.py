"""nattrav-fast as a user runs it: flags, exit codes, one-line errors, and a real connection (over
loopback, where there is no NAT: the lab matrix covers the NATs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from nattrav.cli import exits

FAST = [sys.executable, "-m", "nattrav.cli.fast", "--plain"]  # our test servers have no certificate


def fresh_identity_env() -> dict:
    """An environment whose NATTRAV_IDENTITY is a new key file (made by nattrav-fast on first use):
    two processes of one test are two peers, and no test touches the user's own key."""
    where = tempfile.mkdtemp(prefix="nattrav-id-")
    return {**os.environ, "NATTRAV_IDENTITY": os.path.join(where, "identity.pem")}


def run_fast(*args, timeout=30, input=b"", env=None):
    return subprocess.run([*FAST, *args], capture_output=True, timeout=timeout, input=input,
                          env=env or fresh_identity_env())


def one_error_line(cp) -> str:
    """Progress lines may come first; the error is exactly one line, the last, with no traceback."""
    text = cp.stderr.decode()
    lines = text.strip().splitlines()
    errors = [x for x in lines if x.startswith("nattrav-fast: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert "Traceback" not in text
    return errors[0]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: -s/--server"),
        (["-s", "host:99999"], "bad port"),
        (["-s", "127.0.0.1", "-p", "70000"], "-p/--src-port must be in 0..65535"),
        (["-s", "127.0.0.1", "-t", "0"], "-t/--ttl must be in 1..64"),
        (["-s", "127.0.0.1", "--timeout", "-1"], "--timeout must be positive"),
        (["-s", "127.0.0.1", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message):
    cp = run_fast(*args)
    assert cp.returncode == exits.EXIT_USAGE
    last = cp.stderr.decode().strip().splitlines()[-1]
    assert message in last and "Traceback" not in cp.stderr.decode()


def test_help_explains_flags_and_exit_codes():
    cp = run_fast("--help")
    out = cp.stdout.decode()
    assert cp.returncode == 0
    for flag in ("-s SERVER[:PORT]", "-d PEER_ID", "-H STUN[:PORT]", "-i IP", "-p PORT", "-t TTL", "--json", "exit codes"):
        assert flag in out, flag


def _closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line_exit_3():
    port = _closed_tcp_port()
    cp = run_fast("-s", f"127.0.0.1:{port}", "-d", "someone")
    assert cp.returncode == exits.EXIT_SERVER
    line = one_error_line(cp)
    assert f"cannot reach rendezvous server 127.0.0.1:{port}" in line


def test_unknown_peer_is_one_line_exit_4(servers):
    cp = run_fast("-s", servers["server_arg"], "-H", servers["stun_arg"], "-d", "no-such-peer")
    assert cp.returncode == exits.EXIT_PEER
    assert "unknown" in one_error_line(cp).lower()


def test_two_peers_connect_and_pipe_both_ways(servers):
    common = ["-s", servers["server_arg"], "-H", servers["stun_arg"], "--json", "--linger", "1"]
    b = subprocess.Popen([*FAST, *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=fresh_identity_env())
    try:
        peer_id = None
        deadline = time.monotonic() + 20
        while peer_id is None and time.monotonic() < deadline:
            line = b.stderr.readline()
            assert line, "listener exited before enrolling"
            ev = json.loads(line)
            if ev["event"] == "enrolled":
                peer_id = ev["peer_id"]
                # the name-ownership secret is no progress information: logs must not leak it
                assert "secret" not in ev, ev
        assert peer_id
        b.stdin.write(b"from b\n")
        b.stdin.close()
        # b measured this network and cached it: a measures again (--no-cache) to show every phase
        a = run_fast(*common, "--no-cache", "-d", peer_id, input=b"from a\n")
        b_out = b.stdout.read()
        assert b.wait(20) == 0
        assert a.returncode == 0, a.stderr.decode()
        assert a.stdout == b"from b\n" and b_out == b"from a\n"
        events = [json.loads(x) for x in a.stderr.decode().splitlines()]
        kinds = [e["event"] for e in events]
        for phase in ("identity", "discovery", "discovery-done", "mapping", "rendezvous", "plan", "punch",
                      "connected", "secure", "delivered"):
            assert phase in kinds, (phase, kinds)
        # the listener's ID is its key's, and the initiator's QUIC handshake verified exactly that key
        assert peer_id.startswith("12D3KooW") and len(peer_id) == 52
        secure = next(e for e in events if e["event"] == "secure")
        assert secure == {"event": "secure", "protocol": "quic", "peer_id": peer_id, "keepalive": 5.0}
        delivered = next(e for e in events if e["event"] == "delivered")
        assert (delivered["sent"], delivered["received"]) == (7, 7) and delivered["stats"]["datagrams_in"] > 0
        connected = next(e for e in events if e["event"] == "connected")
        # the initiator is the QUIC client: its path is the first authentic answer, an ACK (RTT measured) or
        # the peer's HELLO (which of the two came first is a race; QUIC then measures the RTT)
        assert connected["strategy"] == "direct" and (connected["rtt_ms"] is None or connected["rtt_ms"] >= 0)
    finally:
        if b.poll() is None:
            b.kill()


def test_every_progress_event_has_a_line_and_odd_ones_do_not_crash():
    from nattrav.cli.events import describe

    assert describe("tcp-mapping", {"ports": [20000, 20001], "local": ["10.0.1.2", 4000], "steps": [1]}).startswith(
        "TCP mapping: local port 4000")
    assert describe("plan", {"strategy": "predicted"}) == "plan: {'strategy': 'predicted'}"
    assert describe("something-new", {"x": 1}) is None
    assert describe("something-new", {"x": 1}, verbose=True) == "something-new: {'x': 1}"
    # the relay says that it is used and why (the planner's or the punch's words)
    line = describe("relay", {"why": "infeasible", "reason": "no path: both random", "relay": ["198.51.100.1", 49200]})
    assert line == ("relay: the planner says punching cannot work (no path: both random); going through the relay "
                    "198.51.100.1:49200")
    assert describe("relay", {"why": "punch-failed", "reason": "r", "relay": ["1.2.3.4", 5]}).startswith(
        "relay: the punch failed (r)")
    assert describe("upgrade", {"peer": ["203.0.113.20", 4000], "rtt_ms": 1.0}).startswith(
        "upgrade: a direct path to 203.0.113.20:4000 answers, moved off the relay")
    for phase, d in (("relay-ready", {"relayed": ["1.2.3.4", 5]}), ("relay-note", {"note": "n"}),
                     ("relay-connected", {"relay": ["1.2.3.4", 5], "rtt_ms": 2})):
        assert describe(phase, d).startswith("relay: "), phase


TARGET = """
import sys, trio
from nattrav.hostport import parse_hostport
from nattrav.io.rendezvous_client import open_rendezvous

async def main(server, name, mode):
    async with open_rendezvous(parse_hostport(server, 7000), name=name, info={"report": {}}) as rv:
        print("ready", flush=True)
        while True:
            offer = await rv.next_offer()
            if mode == "refuse":
                await rv.refuse(offer)

trio.run(main, *sys.argv[1:4])
"""


@pytest.mark.parametrize(
    "mode, code, words",
    [("refuse", exits.EXIT_PEER, "refused"), ("ignore", exits.EXIT_TIMEOUT, "timeout")],
)
def test_refusing_or_silent_peer_is_one_line(servers, mode, code, words):
    """A peer that refuses, or never answers the offer, ends the connect with one clear line."""
    name = f"target-{mode}"
    target = subprocess.Popen([sys.executable, "-c", TARGET, servers["server_arg"], name, mode],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert target.stdout.readline() == b"ready\n"
        cp = run_fast("-s", servers["server_arg"], "-H", servers["stun_arg"], "-d", name, "--timeout", "3")
        assert cp.returncode == code, cp.stderr.decode()
        assert words in one_error_line(cp).lower()
    finally:
        target.kill()
        target.wait()


def pipe_pair(fast: list[str], common: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """A listener (b) and an initiator (a) of `fast` with `common` flags, each with its own key:
    their lines must cross and both exit 0. (a's run, b's peer ID)."""
    b = subprocess.Popen([*fast, *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=fresh_identity_env())
    try:
        peer_id = wait_event(b, "enrolled", time.monotonic() + 20)["peer_id"]
        b.stdin.write(b"from b\n")
        b.stdin.close()
        a = subprocess.run([*fast, *common, "-d", peer_id], input=b"from a\n", capture_output=True, timeout=30,
                           env=fresh_identity_env())
        assert a.returncode == 0, a.stderr.decode()
        assert b.wait(20) == 0
        assert a.stdout == b"from b\n" and b.stdout.read() == b"from a\n"
        return a, peer_id
    finally:
        if b.poll() is None:
            b.kill()


def wait_event(proc, kind: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"exited before {kind!r}"
        ev = json.loads(line)
        if ev["event"] == kind:
            return ev
    raise AssertionError(f"no {kind!r} event in time")


def test_a_peer_that_vanishes_mid_transfer_is_exit_7_not_silence(servers):
    """Data that could not be delivered is never an exit 0: the listener is killed once the secure
    path is up, and the sender learns it from the path's silence (its idle timeout)."""
    common = ["-s", servers["server_arg"], "-H", servers["stun_arg"], "--json", "--idle-timeout", "3"]
    b = subprocess.Popen([*FAST, *common], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=fresh_identity_env())
    a = None
    try:
        peer_id = wait_event(b, "enrolled", time.monotonic() + 20)["peer_id"]
        a = subprocess.Popen([*FAST, *common, "-d", peer_id], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=fresh_identity_env())
        wait_event(a, "secure", time.monotonic() + 20)  # the initiator's handshake is done last
        b.kill()
        try:
            for _ in range(400):  # 400 x 64 KB: far more than the windows hold, so the sender blocks
                a.stdin.write(b"\0" * 65536)
        except BrokenPipeError:
            pass  # the sender gave up (exit below) while we were still writing
        try:
            a.stdin.close()
        except BrokenPipeError:
            pass
        code = a.wait(30)
        err = a.stderr.read()
        assert code == exits.EXIT_UNDELIVERED, err.decode()[-2000:]
        last = json.loads(err.decode().strip().splitlines()[-1])  # --json: the error is a JSON line
        assert last["event"] == "error" and last["code"] == exits.EXIT_UNDELIVERED
        assert "no packet from the peer for 3 s" in last["message"] or "not been delivered" in last["message"]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
