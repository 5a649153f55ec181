"""nattrav-server's deployment layouts (issue 16) as a user runs them: one IP (its two ports), two
hosts with one IP each (--stun-peer), behind a 1:1 NAT (--external-ip), with a coturn relay
(--turn); bad combinations are one line and exit 2, secrets never come from argv."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import trio

from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.stun_client import binding
from nattrav.io.stun_discover import discover
from tests.conftest import readline

SERVER = [sys.executable, "-m", "nattrav.cli.server"]


def run_cli(*args, env=None, timeout=20):
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _key(tmp_path, name="key", text=None):
    path = tmp_path / name
    path.write_text(text or os.urandom(16).hex())
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stun-peer", "127.0.0.2"], "--stun-peer needs --stun"),
        (["--external-ip", "203.0.113.7"], "--external-ip needs --stun"),
        (["--stun", "127.0.0.1", "--stun-peer", "127.0.0.1", "--stun-secret-file", "KEY"], "must differ"),
        (["--stun", "127.0.0.1,127.0.0.2", "--stun-peer", "127.0.0.3"], "one IP of the pair"),
        (["--stun", "127.0.0.1", "--stun-peer", "127.0.0.2"], "--stun-peer needs the control-link key"),
        (["--stun", "127.0.0.1", "--stun-secret-file", "KEY"], "go with --stun-peer"),
        (["--stun", "127.0.0.1", "--external-ip", "203.0.113"], "not an IPv4 address"),
        (["--stun", "127.0.0.1", "--external-ip", "203.0.113.7/10.9.9.9"], "not one of the --stun IPs"),
        (["--stun", "127.0.0.1,127.0.0.2", "--external-ip", "203.0.113.7"], "PUBLIC/LOCAL"),
        (["--turn", "relay.example:3478"], "--turn needs coturn's static-auth-secret"),
        (["--turn", "relay.example:99999", "--turn-secret-file", "KEY"], "bad port"),
        (["--turn", "relay.example", "--turn-secret-file", "KEY", "--turn-ttl", "5"], "--turn-ttl must be"),
        (["--turn-secret-file", "KEY"], "goes with --turn"),
        (["--turn", "relay.example", "--turn-secret-file", "MISSING"], "No such file"),
        (["--turn", "relay.example", "--turn-secret", "x" * 32], "readable by every local user"),  # never argv
        (["--stun", "127.0.0.1", "--stun-secret", "x" * 32], "readable by every local user"),
    ],
)
def test_bad_layouts_give_one_line_and_exit_2(tmp_path, args, message):
    key = _key(tmp_path)
    args = [key if a == "KEY" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    cp = run_cli(*args, env={"NATTRAV_TURN_SECRET": "", "NATTRAV_STUN_SECRET": ""})
    assert cp.returncode == 2, cp
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in cp.stderr, cp.stderr


def _loopback() -> str:
    return f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


def _start(args, env=None):
    """Start the server; returns it with its "listening" lines, once every service announced itself."""
    p = subprocess.Popen([*SERVER, "--listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    wanted = {"rendezvous"} | ({"stun"} if "--stun" in args else set()) | ({"relay"} if "--turn" in args else set())
    lines = []
    while wanted - {x.split()[0] for x in lines}:
        line = readline(p)
        if not line:
            p.kill()
            raise AssertionError(f"server exited: {p.stderr.read()}")
        lines.append(line.strip())
    return p, lines


def _stop(*procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(10) == 0


def test_one_ip_serves_both_port_tests_and_says_so(tmp_path):
    net = _loopback()
    p, lines = _start(["--stun", f"{net}.1", "--stun-ports", "3478,3479"])
    try:
        assert f"stun listening addresses={net}.1:3478,{net}.1:3479 layout=single" in lines
        b = trio.run(discover, (f"{net}.1", 3478), "127.0.0.1")
        assert b.other_address == (f"{net}.1", 3479)  # learned from OTHER-PORT
        assert b.nat is False and b.mapping == "EIM"
        assert not any("sent no OTHER-ADDRESS" in f for f in b.findings)
    finally:
        _stop(p)


def test_two_hosts_with_one_ip_each_are_one_stun_server(tmp_path):
    """The two-VM layout as a mode of nattrav-server: each host serves its IP, change-IP requests
    cross the authenticated control link (its key from a file on one host, the environment on the
    other)."""
    net = _loopback()
    a, b = f"{net}.1", f"{net}.2"
    key = os.urandom(16).hex()
    path = _key(tmp_path, text=key)
    pa, la = _start(["--stun", a, "--stun-peer", b, "--stun-secret-file", path, "--stun-control-port", "3480"])
    pb, lb = _start(["--stun", b, "--stun-peer", a, "--stun-control-port", "3480"],
                    env={"NATTRAV_STUN_SECRET": key})
    try:
        assert la[-1].endswith("layout=two-host") and lb[-1].endswith("layout=two-host")

        async def check():
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await s.bind(("127.0.0.1", 0))
            r = await binding(s, (a, 3478), timeout=3)
            assert r.other_address == (b, 3479)
            r = await binding(s, (a, 3478), change_ip=True, change_port=True, other_address=r.other_address,
                              timeout=3)
            assert r.source == (b, 3479)  # answered by the other host
            s.close()

        trio.run(check)
    finally:
        _stop(pa, pb)


def test_external_ip_is_what_stun_names(tmp_path):
    net = _loopback()
    p, lines = _start(["--stun", f"{net}.1", "--external-ip", "203.0.113.77"])
    try:
        # the server speaks of its public address; its sockets are bound to the local one
        assert "addresses=203.0.113.77:3478,203.0.113.77:3479" in lines[-1], lines

        async def check():
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await s.bind(("127.0.0.1", 0))
            r = await binding(s, (f"{net}.1", 3478), timeout=3)
            assert r.response_origin == ("203.0.113.77", 3478) and r.other_port == 3479
            s.close()

        trio.run(check)
    finally:
        _stop(p)


def test_turn_grants_ride_with_each_enrollment(tmp_path):
    """--turn: every peer gets its own TURN REST credentials when it enrolls, valid --turn-ttl."""
    secret = os.urandom(16).hex()
    p, lines = _start(["--turn", "198.51.100.9:3490", "--turn-secret-file", _key(tmp_path, text=secret),
                       "--turn-ttl", "600"])
    try:
        assert any(x.startswith("relay listening turn=198.51.100.9:3490") for x in lines)
        port = int(lines[0].split()[-1].rsplit(":", 1)[1])

        async def two():
            async with open_rendezvous(("127.0.0.1", port)) as a, open_rendezvous(("127.0.0.1", port)) as b:
                return [(c.peer_id, c.relay) for c in (a, b)]

        now = time.time()
        for me, g in trio.run(two):
            assert g is not None and (g.host, g.port) == ("198.51.100.9", 3490)
            expiry, _, who = g.username.partition(":")
            assert who == me and now + 590 <= int(expiry) <= now + 610
            want = base64.b64encode(hmac.new(secret.encode(), g.username.encode(), hashlib.sha1).digest()).decode()
            assert g.password == want
    finally:
        _stop(p)


def test_without_turn_no_grant_comes(tmp_path):
    p, lines = _start([])
    try:
        port = int(lines[0].split()[-1].rsplit(":", 1)[1])

        async def one():
            async with open_rendezvous(("127.0.0.1", port)) as a:
                return a.relay, a.relay_problem

        assert trio.run(one) == (None, None)
    finally:
        _stop(p)
