"""nattrav-server as a separate process: flags, exit codes, and clients in another process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
import trio

from nattrav.io.rendezvous_client import open_rendezvous
from tests.conftest import readline

SERVER = [sys.executable, "-m", "nattrav.cli.server"]


def run_cli(*args, timeout=20):
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "127.0.0.1:70000"], "bad port"),
        (["--stun", "1.2.3"], "not an IPv4 address"),
        (["--stun", "127.0.0.1,127.0.0.1"], "must differ"),
        (["--stun-ports", "5,5"], "two distinct ports"),
        (["--offer-timeout", "0"], "--offer-timeout must be a finite number > 0"),
        (["--nonsense"], "unrecognized arguments"),
        # non-finite times would reach clients as "keepalive inf" / "start_at inf" and break them all
        (["--keepalive-timeout", "inf"], "--keepalive-timeout must be a finite number > 0"),
        (["--retain", "nan"], "--retain must be a finite number > 0"),
        (["--start-margin", "1e400"], "--start-margin must be a finite number > 0"),
        (["--stats-interval", "nan"], "--stats-interval must be a finite number >= 0"),
        (["--resample-after", "-1"], "--resample-after must be a finite number >= 0 (0: never)"),
        (["--resample-after", "inf"], "--resample-after must be a finite number >= 0 (0: never)"),
        (["--keepalive-timeout", "soon"], "invalid float value"),
        (["--max-connections", "0"], "--max-connections: must be an integer >= 1"),
        (["--max-per-source", "-3"], "--max-per-source: must be an integer >= 1"),
        (["--max-per-source", "many"], "--max-per-source: must be an integer >= 1"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args, message):
    cp = run_cli(*args)
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("nattrav-server: error:")


def test_help_explains():
    cp = run_cli("--help")
    assert cp.returncode == 0
    for word in ("--listen", "--stun", "never carries payload", "exit codes"):
        assert word in cp.stdout


def test_port_in_use_is_one_line_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cp = run_cli("--listen", f"127.0.0.1:{port}")
    assert cp.returncode == 1
    assert cp.stderr.strip() == f"nattrav-server: cannot listen on rendezvous 127.0.0.1:{port}: Address already in use"


def test_stun_on_a_foreign_address_is_one_line_exit_1():
    cp = run_cli("--listen", "127.0.0.1:0", "--stun", "192.0.2.7,192.0.2.8")
    assert cp.returncode == 1
    assert "cannot start STUN on 192.0.2.7,192.0.2.8" in cp.stderr.strip().splitlines()[-1]


@pytest.fixture
def server_process():
    p = subprocess.Popen([*SERVER, "--listen", "127.0.0.1:0", "--json-log", "-v", "--start-margin", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = json.loads(readline(p))
        host, port = line["address"].rsplit(":", 1)
        yield p, (host, int(port))
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def test_clients_across_processes_get_a_common_start_time(server_process):
    proc, addr = server_process
    async with open_rendezvous(addr, name="alice") as a, open_rendezvous(addr, name="bob") as b:
        # The server runs in another process with an unrelated Trio clock (trio adds a random
        # offset per run): start_at is only right if the client mapped the server's clock.
        got = {}

        async def bob():
            got["b"] = await b.accept(await b.next_offer())

        async with trio.open_nursery() as n:
            n.start_soon(bob)
            got["a"] = await a.connect("bob", timeout=5)
        sa, sb = got["a"], got["b"]
        assert sa.key == sb.key
        # Trio's clocks differ by a random offset of up to hours, so agreeing within a quarter of a
        # second proves the mapping; the mapping errs by half a round trip, which a loaded machine
        # stretches far past loopback's usual 0.1 ms (20 ms here failed at load 20).
        assert abs(sa.start_at - sb.start_at) < 0.25
        assert 1.0 - 0.25 < sa.start_in() <= 2.0 + 0.25
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any("session" in rec["msg"] for rec in logs)
    assert all({"ts", "level", "logger", "msg"} <= set(rec) for rec in logs)


def _free_udp_pair() -> tuple[int, int]:
    """Two free UDP ports on loopback (held only for the check: another process may still race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def test_stun_and_rendezvous_in_one_process():
    cp = run_cli("--listen", "127.0.0.1:0", "--stun", "127.0.0.1", "--stun-ports", "0,0")
    assert cp.returncode == 2  # ports 0 are refused up front: STUN must know its ports to announce them
    for attempt in range(3):
        port, alt = _free_udp_pair()
        p = subprocess.Popen([*SERVER, "--listen", "127.0.0.1:0", "--stun", "127.0.0.1",
                              "--stun-ports", f"{port},{alt}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first, second = readline(p), readline(p)
        if second.startswith("stun"):
            break
        p.wait(10)
        err = p.stderr.read()
        assert p.returncode == 1 and "Address already in use" in err, (first, second, err)
    else:
        pytest.fail("three port pairs taken by others in a row")
    try:
        assert first.startswith("rendezvous listening")
        assert second.strip() == f"stun listening addresses=127.0.0.1:{port},127.0.0.1:{alt} layout=single"
        # a bare STUN binding request gets an answer naming our address
        req = bytes.fromhex("0001 0000 2112a442") + b"\x01" * 12
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(req, ("127.0.0.1", alt))
            data, _ = s.recvfrom(2048)
        assert data[:2] == b"\x01\x01" and data[8:20] == b"\x01" * 12  # success response, same txid
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
