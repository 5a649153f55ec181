"""Shared helpers for the STUN lab tests: start our server in the lab's server namespaces (either
layout), run a probe in node "a", and say what the probe should report for a preset."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

from nattrav.lab.lab import Lab
from nattrav.lab.spec import effective

STUN_CLI = [sys.executable, "-m", "nattrav.cli.stun"]
SECRET = b"nattrav-lab-control-link-key"  # control-link key for the two-host layout (>= 16 bytes)


def _wait_ready(proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    """Block until the server prints its "serving" line (it binds before printing)."""
    line: list[str] = []

    def read() -> None:
        line.append(proc.stdout.readline())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if not line or "serving" not in line[0]:
        proc.kill()
        out = (line[0] if line else "") + (proc.stdout.read() if proc.poll() is not None else "")
        raise RuntimeError(f"{what} did not start: {out!r}")


@contextlib.contextmanager
def stun_servers(lab: Lab, layout: str) -> Iterator[tuple[str, int]]:
    """Start our server(s); yields the address a client should probe."""
    if layout == "rfc5780":
        argvs = [("server", STUN_CLI + ["serve", "--ip", lab.S1, "--alt-ip", lab.S2])]
    elif layout == "single":  # one IP, two ports (a cloud VM): the second named in OTHER-PORT
        argvs = [("server", STUN_CLI + ["serve", "--ip", lab.S1])]
    elif layout == "two-host":
        # the key travels in a file, never on the command line (namespaces share the filesystem)
        fd, key_file = tempfile.mkstemp(prefix="nt-stun-key-")
        os.write(fd, SECRET)
        os.close(fd)
        argvs = [
            ("server", STUN_CLI + ["serve", "--ip", lab.S1, "--alt-ip", lab.S3, "--peer", "--secret-file", key_file]),
            ("server2", STUN_CLI + ["serve", "--ip", lab.S3, "--alt-ip", lab.S1, "--peer", "--secret-file", key_file]),
        ]
    else:
        raise ValueError(layout)
    procs = []
    try:
        for node, argv in argvs:
            p = lab.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(p)
            _wait_ready(p, f"STUN server in {node}")
        yield (lab.S1, 3478)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
        if layout == "two-host":
            os.unlink(key_file)


def probe(lab: Lab, server: tuple[str, int], *extra: str) -> dict:
    r = lab.run("a", STUN_CLI + ["probe", f"{server[0]}:{server[1]}", "--json", *extra],
                timeout=60)
    assert r.returncode == 0, f"probe failed ({r.returncode}): {r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def expected(lab: Lab) -> dict:
    """What `nattrav-stun probe` from node "a" must report for the lab's left NAT."""
    eff = effective(lab.spec("a"))
    if eff is None:  # a public host
        return {"nat": False, "mapping": "EIM", "filtering": "EIF", "allocation": "preserve", "delta": 0,
                "classic": "open internet"}
    names = {"EIF": "full cone", "ADF": "restricted cone", "APDF": "port restricted cone"}
    return {
        "nat": True,
        "mapping": eff["mapping"],
        "filtering": eff["filtering"],
        "allocation": eff["allocation"],
        "delta": None if eff["allocation"] == "random" else eff["delta"],
        "hairpin": eff["hairpin"],
        "classic": names[eff["filtering"]] if eff["mapping"] == "EIM" else "symmetric",
    }


def expected_one_ip(lab: Lab) -> dict:
    """What the probe must report against a server with one IP and two ports: ports alone cannot
    tell ADM from EIM (a new IP would show it) nor EIF from ADF, so those read as the latter."""
    want = expected(lab)
    if not want["nat"]:
        return {**want, "filtering": "ADF", "classic": "symmetric UDP firewall"}
    mapping = "EIM" if want["mapping"] in ("EIM", "ADM") else "APDM"
    filtering = "ADF" if want["filtering"] in ("EIF", "ADF") else "APDF"
    names = {"ADF": "restricted cone", "APDF": "port restricted cone"}
    out = {**want, "mapping": mapping, "filtering": filtering,
           "classic": names[filtering] if mapping == "EIM" else "symmetric"}
    if want["mapping"] == "ADM":  # seen as EIM: one socket keeps its port towards the server's IP
        out["delta"] = 0
    return out


# what pystun3 (RFC 3489 algorithm) must conclude for each classic type
PYSTUN_NAMES = {
    "open internet": "Open Internet",
    "full cone": "Full Cone",
    "restricted cone": "Restric NAT",
    "port restricted cone": "Restric Port NAT",
    "symmetric": "Symmetric NAT",
}
