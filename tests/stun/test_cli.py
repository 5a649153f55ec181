"""nattrav-stun: endpoint parsing, `probe` (table and --json) and `serve` against loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from nattrav.stun_cli import main, parse_endpoint

from .test_server import loopback_pair


def test_parse_endpoint():
    assert parse_endpoint("198.51.100.1") == ("198.51.100.1", 3478)
    assert parse_endpoint("198.51.100.1:3479") == ("198.51.100.1", 3479)
    assert parse_endpoint("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    assert parse_endpoint("2001:db8::1") == ("2001:db8::1", 3478)


@pytest.fixture
def served():
    a, b = loopback_pair()
    p = subprocess.Popen([sys.executable, "-m", "nattrav.stun_cli", "serve", "--ip", a, "--alt-ip", b],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    assert "serving (rfc5780)" in line, line
    yield a, b, p
    p.terminate()
    p.wait(timeout=5)


def test_probe_json_and_table_against_served(served, capsys):
    a, b, proc = served
    assert main(["probe", a, "--json", "--local-ip", "127.0.0.1", "--rto", "0.05"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["nat"] is False and rep["classic"] == "open internet"
    assert rep["other_address"] == [b, 3479] and rep["server"] == [a, 3478]
    assert main(["probe", f"{a}:3478", "--local-ip", "127.0.0.1", "--rto", "0.05", "--no-hairpin"]) == 0
    table = capsys.readouterr().out
    assert "RFC 3489 name         open internet" in table
    assert "mapping               EIM" in table
    # SIGTERM makes the server print its counters and exit cleanly
    proc.terminate()
    out = proc.communicate(timeout=5)[0]
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["answered"] >= 10 and counters["malformed"] == 0


def test_probe_with_no_server_says_blocked(capsys):
    a, _ = loopback_pair()
    t0 = time.monotonic()
    assert main(["probe", f"{a}:3478", "--rto", "0.02", "--no-hairpin"]) == 2
    assert "UDP blocked" in capsys.readouterr().out
    assert time.monotonic() - t0 < 5
