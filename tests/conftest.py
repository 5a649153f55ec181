import pathlib
import sys

# build_ext.py lives at the project root; tests import it to check the cdef comes from the header
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


import signal
import socket
import subprocess

import pytest

SERVER_CLI = [sys.executable, "-m", "nattrav.cli.server"]


@pytest.fixture(autouse=True)
def _own_behavior_cache(tmp_path, monkeypatch):
    """Each test its own $XDG_CACHE_HOME: the NAT behaviour one test's connect caches (api/
    behavior_cache.py) must not answer for another's network. Lab hosts get one of their own anyway
    (lab/registry.cache_home)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def free_port_pair() -> tuple[int, int]:
    """Two ports free for both UDP and TCP on 127.0.0.1 (the STUN server binds both)."""
    socks = []
    try:
        while True:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", 0))
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", u.getsockname()[1]))
            except OSError:
                u.close()
                t.close()
                continue
            socks += [u, t]
            if len(socks) == 4:
                return socks[0].getsockname()[1], socks[2].getsockname()[1]
    finally:
        for s in socks:
            s.close()


def start_server(*extra: str) -> tuple[subprocess.Popen, str, int]:
    """nattrav-server (rendezvous + STUN over UDP and TCP) on 127.0.0.1 and 127.0.0.2, with `extra`
    flags: (process, its first line, the STUN port). free_port_pair checks 127.0.0.1 only, and
    another test may take a port before the server binds it: then another pair is tried."""
    for _ in range(5):
        port, alt = free_port_pair()
        p = subprocess.Popen([*SERVER_CLI, "--listen", "127.0.0.1:0", "--stun", "127.0.0.1,127.0.0.2",
                              "--stun-ports", f"{port},{alt}", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first, second = p.stdout.readline(), p.stdout.readline()
        if second.startswith("stun"):
            return p, first, port
        p.wait(10)
    pytest.fail("could not start nattrav-server on loopback")


@pytest.fixture
def servers():
    """start_server's addresses as tuples ("server", "stun") and as command-line words ("server_arg",
    "stun_arg")."""
    p, first, port = start_server()
    rv_port = int(first.split()[-1].rsplit(":", 1)[1])
    try:
        yield {"server": ("127.0.0.1", rv_port), "stun": ("127.0.0.1", port),
               "server_arg": f"127.0.0.1:{rv_port}", "stun_arg": f"127.0.0.1:{port}"}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


def run_matrix_pair(left: str, right: str, trials: int, trial_timeout: float, report_path, *, tcp: bool = False,
                    expect: str, shape: str | None = None, server_layout: str = "two-address"):
    """Run one matrix pair in the lab, append its rows to report_path (JSON lines) and return
    (results, connected results, one-line summary, seconds taken)."""
    import json
    import time

    from nattrav.lab.matrix import run_pair

    t0 = time.monotonic()
    results = run_pair(left, right, trials, trial_timeout=trial_timeout, tcp=tcp, shape=shape,
                       server_layout=server_layout)
    elapsed = time.monotonic() - t0
    with open(report_path, "a") as f:
        for r in results:
            f.write(json.dumps({"expect": expect, **r.to_dict()}) + "\n")
    assert len(results) == trials
    ok = [r for r in results if r.ok]
    summary = "; ".join(f"trial {r.trial}: {'ok ' + str(r.strategy) if r.ok else r.reason}" for r in results)
    return results, ok, summary, elapsed


def readline(proc, timeout: float = 20.0) -> str:
    """One line of a child's stdout, or fail instead of hanging when it prints nothing."""
    import os
    import select
    import time

    # Byte by byte from the fd: a buffered readline could swallow the next line where select
    # cannot see it.
    fd, out, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while not out.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            proc.kill()
            raise AssertionError(f"no output line from {proc.args} within {timeout} s (got {out!r})")
        byte = os.read(fd, 1)
        if not byte:
            break
        out += byte
    return out.decode()
