"""The rendezvous link over TLS (issue 15): nattrav-server --tls-cert/--tls-key, nattrav-fast checks
the server (system CAs, or a pinned certificate) and talks plain only when told --plain."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from nattrav.cli import exits
from tests.conftest import start_server
from tests.secure_lab import self_signed
from tests.test_fast_cli import fresh_identity_env, pipe_pair

FAST = [sys.executable, "-m", "nattrav.cli.fast"]


@pytest.fixture
def tls_server(tmp_path):
    cert, key = self_signed(tmp_path, "rv")
    p, first, port = start_server("--tls-cert", cert, "--tls-key", key)
    assert "tls=yes" in first, first
    rv_port = int(first.split()[-1].rsplit(":", 1)[1])
    try:
        yield {"server_arg": f"127.0.0.1:{rv_port}", "stun_arg": f"127.0.0.1:{port}", "cert": cert}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


def test_peers_meet_through_a_pinned_tls_server(tls_server):
    pipe_pair(FAST, ["-s", tls_server["server_arg"], "-H", tls_server["stun_arg"], "--json",
                     "--server-cert", tls_server["cert"]])


def _last_error(cp) -> str:
    text = cp.stderr.decode()
    assert "Traceback" not in text
    return text.strip().splitlines()[-1]


def test_a_server_the_client_cannot_verify_is_refused(tls_server, tmp_path):
    other, _ = self_signed(tmp_path, "someone-else")
    base = ["-s", tls_server["server_arg"], "-H", tls_server["stun_arg"], "-d", "anyone"]
    for extra, words in ((["--server-cert", other], "does not verify"),  # pinned to another certificate
                         ([], "does not verify"),  # the system's CAs do not know a self-signed one
                         (["--plain"], "enroll")):  # plain words to a TLS server: it hangs up
        cp = subprocess.run([*FAST, *base, *extra, "--timeout", "5"], capture_output=True, timeout=30,
                            env=fresh_identity_env())
        assert cp.returncode == exits.EXIT_SERVER, (extra, cp.stderr.decode())
        assert words in _last_error(cp), (extra, _last_error(cp))


def test_tls_to_a_plain_server_says_what_to_do(servers):
    cp = subprocess.run([*FAST, "-s", servers["server_arg"], "-d", "anyone", "--timeout", "5"],
                        capture_output=True, timeout=30, env=fresh_identity_env())
    assert cp.returncode == exits.EXIT_SERVER
    assert "--plain" in _last_error(cp)
