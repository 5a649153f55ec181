"""nattrav-perf as a user meets it: help, clear usage errors, and a direct measurement on loopback
whose --json summary carries both sides' figures."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from nattrav.cli import perf

PERF = [sys.executable, "-m", "nattrav.cli.perf"]


def test_help_explains_the_modes():
    r = subprocess.run([*PERF, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "--direct-listen" in r.stdout and "punch" in r.stdout and "exit codes" in r.stdout


@pytest.mark.parametrize("argv,words", [
    ([], "exactly one of"),
    (["-s", "192.0.2.1", "--direct", "192.0.2.2"], "exactly one of"),
    (["-s", "192.0.2.1"], "-d PEER"),
    (["--direct", "192.0.2.2", "-b", "fast"], "not a rate"),
    (["--direct", "192.0.2.2", "-l", "5000"], "--size"),
    (["--direct", "192.0.2.2", "-T", "0"], "--time"),
    (["--direct", "192.0.2.2:notaport"], "port"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(argv, words, capsys):
    assert perf.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_bound(port: int, proc: subprocess.Popen, limit: float = 30.0) -> None:
    """Until the listener holds the port (our own bind fails): a sender that starts first loses
    its datagrams on a busy machine."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.02)
    raise AssertionError("the listener never bound its port")


def test_a_direct_measurement_on_loopback():
    port = _free_udp_port()
    rx = subprocess.Popen([*PERF, "--direct-listen", f"127.0.0.1:{port}", "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        _wait_bound(port, rx)
        tx = subprocess.run([*PERF, "--direct", f"127.0.0.1:{port}", "-b", "2M", "-l", "400", "-T", "0.5",
                             "--json"], capture_output=True, text=True, timeout=60)
        out, _ = rx.communicate(timeout=30)
    finally:
        rx.kill()
    assert tx.returncode == 0, tx.stderr
    res = json.loads(tx.stdout)
    assert res["path"] == "direct" and res["sender"]["sent"] == round(2e6 / 3200 * 0.5)
    assert res["receiver"]["sent"] == res["sender"]["sent"]
    assert res["receiver"]["received"] >= 0.9 * res["sender"]["sent"]
    assert json.loads(out)["receiver"]["received"] == res["receiver"]["received"]
