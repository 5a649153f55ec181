"""Our client against independent STUN servers in the NAT lab: coturn (`turnserver --stun-only`,
RFC 5780 with two listening IPs and an alternate port) and stund (the classic RFC 3489 server). The
probe must report the lab's configured NAT through either of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from nattrav.lab.pytest_support import in_ci, require_lab

from .labkit import expected, probe

pytestmark = pytest.mark.lab

SERVERS = {
    "coturn": "turnserver",
    "stund": "stund",
}


def need(binary: str) -> str:
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin")
    if path is None:
        msg = f"{binary} is not installed (apt-get install coturn stun-server, or bash .ci/install)"
        if in_ci():
            pytest.fail(msg + " -- CI must run the interop tests", pytrace=False)
        pytest.skip(msg + " -- interop NOT tested")
    return path


def argv_for(kind: str, binary: str, lab, tmp_path) -> list[str]:
    if kind == "coturn":
        return [
            binary, "--stun-only", "-L", lab.S1, "-L", lab.S2,
            "--listening-port", "3478", "--alt-listening-port", "3479",
            "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "-n",
            "--log-file", "stdout", "--simple-log", "--pidfile", str(tmp_path / "turnserver.pid"),
            "--userdb", str(tmp_path / "turndb"),
        ]
    return [binary, "-h", lab.S1, "-a", lab.S2]


def wait_listening(lab, addrs: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.run("server", ["ss", "-Hnlu"], timeout=5).stdout
        if all(a in out for a in addrs):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not listening on {addrs}: {out}")


@pytest.mark.parametrize(
    "kind, preset",
    [("coturn", p) for p in ("none", "full-cone", "restricted-cone", "port-restricted", "symmetric-seq",
                             "symmetric-seq-7", "symmetric-random", "adm", "cgnat")]
    + [("stund", p) for p in ("full-cone", "restricted-cone", "port-restricted", "symmetric-seq-2", "adm")],
)
def test_our_probe_against_an_independent_server(kind, preset, tmp_path):
    require_lab()
    binary = need(SERVERS[kind])
    from nattrav.lab.lab import Lab

    with Lab(left=preset, right="port-restricted") as lab:
        proc = lab.popen("server", argv_for(kind, binary, lab, tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(lab, [f"{lab.S1}:3478", f"{lab.S2}:3478", f"{lab.S1}:3479", f"{lab.S2}:3479"])
            got = probe(lab, (lab.S1, 3478))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        want = expected(lab)
        want.pop("hairpin", None)  # hairpinning is the NAT's, checked against our server in test_lab
        assert {k: got[k] for k in want} == want, f"{kind}/{preset}: {got}"
        assert got["other_address"] == [lab.S2, 3479]
