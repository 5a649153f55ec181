"""Keepalives sized from the measured mapping lifetime, in the NAT lab (issue 15): behind NATs that
forget an idle UDP mapping after 8 s, a first nattrav-fast session measures the lifetime in the
background (and shortens its own keepalives), the behaviour cache keeps it, and the next session
starts with keepalives below it. Only the server's address and the peer's ID on the command line."""

from __future__ import annotations

import subprocess

import pytest

from nattrav.lab.pytest_support import running_lab
from tests.secure_lab import FAST, Side, start_server

NAT_TIMEOUT = 8


def _fast(lab, host: str, tmp_path, args: list[str]) -> Side:
    # each lab host has a behaviour cache of its own (lab/registry.cache_home), kept for the lab's life
    argv = [*FAST, "--json", "--plain", "--identity", str(tmp_path / f"{host}.pem"), *args]
    return Side(lab.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


def _session(lab, tmp_path, server: str, wait_for_lifetime: bool) -> tuple[Side, Side]:
    b = _fast(lab, "b", tmp_path, ["-s", server])
    peer_id = b.wait_event("enrolled", 30)["peer_id"]
    a = _fast(lab, "a", tmp_path, ["-s", server, "-d", peer_id])
    a.wait_event("secure", 60)
    if wait_for_lifetime:
        a.wait_event("lifetime", 60)
    for side in (a, b):
        side.proc.stdin.close()
    assert (a.finish(60), b.finish(60)) == (0, 0), (a.lines[-3:], b.lines[-3:])
    return a, b


@pytest.mark.lab
def test_the_measured_lifetime_sizes_the_next_sessions_keepalives(tmp_path):
    nat = f"port-restricted,udp_timeout={NAT_TIMEOUT}"
    with running_lab(nat, f"symmetric-seq,udp_timeout={NAT_TIMEOUT}") as lab:
        server = start_server(lab)
        a, _ = _session(lab, tmp_path, server, wait_for_lifetime=True)
        first = a.event("secure")["keepalive"]
        life = a.event("lifetime")
        print(f"first session: keepalive {first} s; measured {life}")
        # the bracket holds the NAT's timeout, and the measurement stayed cheap
        assert 0 < life["alive"] <= NAT_TIMEOUT and life["expired"] is not None
        assert NAT_TIMEOUT <= life["expired"] <= 2 * NAT_TIMEOUT
        assert life["requests"] <= 3 * 11 * 2
        assert life["keepalive"] < NAT_TIMEOUT and life["cached"] is True
        retuned = a.event("keepalive")
        if first > life["keepalive"]:  # the running path shortened its keepalives at once
            assert retuned is not None and retuned["interval"] == life["keepalive"]

        a2, _ = _session(lab, tmp_path, server, wait_for_lifetime=False)
        assert a2.event("behavior-cached") is not None
        second = a2.event("secure")["keepalive"]
        print(f"second session: keepalive {second} s (from the cache)")
        assert second == life["keepalive"] < NAT_TIMEOUT / 2 + 0.5
        assert a2.event("lifetime") is None  # known: not measured again
