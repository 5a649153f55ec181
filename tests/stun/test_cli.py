"""nattrav-stun: endpoint parsing, `probe` (table and --json) and `serve` against loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from nattrav.hostport import parse_hostport

from nattrav.cli.stun import main

from .test_server import loopback_pair


def test_parse_endpoint():
    assert parse_hostport("198.51.100.1", 3478) == ("198.51.100.1", 3478)
    assert parse_hostport("198.51.100.1:3479", 3478) == ("198.51.100.1", 3479)
    assert parse_hostport("[2001:db8::1]:5000", 3478) == ("2001:db8::1", 5000)
    assert parse_hostport("2001:db8::1", 3478) == ("2001:db8::1", 3478)


@pytest.fixture
def served():
    a, b = loopback_pair()
    p = subprocess.Popen([sys.executable, "-m", "nattrav.cli.stun", "serve", "--ip", a, "--alt-ip", b],
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


# ---- the control-link key never on the command line (issue 14, item 7)

STUN_CLI = [sys.executable, "-m", "nattrav.cli.stun"]


def _serve(args: list[str], env: dict | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
    """A `serve` expected to stop by itself (refusing its command line): at most `timeout` s."""
    return subprocess.run(STUN_CLI + ["serve"] + args, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_secret_on_the_command_line_is_refused_with_a_clear_error():
    a, b = loopback_pair()
    r = _serve(["--ip", a, "--alt-ip", b, "--peer", "--secret", "6b6579" * 8])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--secret-file" in r.stderr and "NATTRAV_STUN_SECRET" in r.stderr


def test_peer_without_a_key_or_with_a_short_one_is_refused(tmp_path):
    import os

    a, b = loopback_pair()
    env = {k: v for k, v in os.environ.items() if k != "NATTRAV_STUN_SECRET"}
    r = _serve(["--ip", a, "--alt-ip", b, "--peer"], env=env)
    assert r.returncode == 2 and "--secret-file" in r.stderr and "Traceback" not in r.stderr
    short = tmp_path / "key"
    short.write_bytes(b"short\n")
    r = _serve(["--ip", a, "--alt-ip", b, "--peer", "--secret-file", str(short)], env=env)
    assert r.returncode == 2 and "16" in r.stderr
    r = _serve(["--ip", a, "--alt-ip", b, "--peer", "--secret-file", str(tmp_path / "missing")], env=env)
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


def test_read_secret_from_file_or_environment(tmp_path, capsys):
    from nattrav.errors import UsageError
    from nattrav.cli.stun import SECRET_ENV, read_secret

    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    assert read_secret(str(key), environ={}) == b"0123456789abcdef0123456789abcdef"
    assert capsys.readouterr().err == ""
    key.chmod(0o644)
    read_secret(str(key), environ={})
    assert "readable by other users" in capsys.readouterr().err
    assert read_secret(None, environ={SECRET_ENV: "from-the-environment-16+"}) == b"from-the-environment-16+"
    assert read_secret(None, environ={}) is None
    with pytest.raises(UsageError):
        read_secret(None, environ={SECRET_ENV: "short"})


def test_two_host_layout_runs_with_a_key_file_and_the_environment(tmp_path):
    import os

    import trio

    from nattrav.io.stun_client import binding

    a, b = loopback_pair()
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    p1 = subprocess.Popen(STUN_CLI + ["serve", "--ip", a, "--alt-ip", b, "--peer", "--secret-file", str(key)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p2 = subprocess.Popen(STUN_CLI + ["serve", "--ip", b, "--alt-ip", a, "--peer"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "NATTRAV_STUN_SECRET": key.read_text()})
    try:
        for p in (p1, p2):
            line = p.stdout.readline()
            assert "serving (two-host)" in line, line

        async def change_ip() -> tuple[str, int]:
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await s.bind(("127.0.0.1", 0))
            r = await binding(s, (a, 3478), change_ip=True, change_port=True, other_address=(b, 3479),
                              timeout=3)
            s.close()
            return r.source

        assert trio.run(change_ip) == (b, 3479)  # answered by the peer: the link authenticated
    finally:
        for p in (p1, p2):
            p.terminate()
            p.wait(timeout=5)


def test_rate_limit_options_are_checked():
    from nattrav.cli.stun import parse_size

    assert parse_size("131072") == 131072 and parse_size("128k") == 131072 and parse_size("1M") == 1 << 20
    a, _ = loopback_pair()
    for bad in (["--rate-limit", "lots"], ["--max-amplification", "0.5"], ["--rate-burst", "10"]):
        r = _serve(["--ip", a] + bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr)


def test_nattrav_server_checks_its_stun_rate_limit():
    r = subprocess.run([sys.executable, "-m", "nattrav.cli.server", "--stun", "127.0.0.1",
                        "--stun-rate-limit", "100"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--stun-rate-limit" in r.stderr


def test_an_address_that_is_not_local_is_one_line_not_a_traceback():
    r = _serve(["--ip", "192.0.2.77"])  # TEST-NET-1: on no interface of this machine
    assert r.returncode == 1 and "cannot serve" in r.stderr and "Traceback" not in r.stderr
