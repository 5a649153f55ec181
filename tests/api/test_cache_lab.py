"""In the NAT lab: a second `nattrav-fast -d` from the same host finds the NAT behaviour the first one
measured (the cache), skips the RFC 5780 tests -- no discovery phase in its events, the punch
socket's own samples name the network -- and still connects, here by prediction through a
sequential symmetric NAT."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nattrav.lab import registry
from nattrav.lab.agent import SERVER_PORT
from nattrav.lab.matrix import wait_tcp
from nattrav.lab.pytest_support import running_lab

pytestmark = pytest.mark.lab

FAST = [sys.executable, "-m", "nattrav.cli.fast", "--json", "--timeout", "20", "--linger", "0.5",
        "--plain"]  # the lab's server has no certificate
KEYS = tempfile.mkdtemp(prefix="nattrav-cache-lab-")  # each side its own identity key, not the user's


def _events(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _connect(lab, server: str, name: str, heard: list[dict] | None = None, a_args: tuple[str, ...] = (),
             dest: str = "-d") -> list[dict]:
    """One listener in b (enrolled as `name`), one fresh `nattrav-fast -d name` in a (`a_args`
    added, `dest` for -d); a's events (`heard` gets the listener's)."""
    listener = lab.popen("b", [*FAST, "--identity", f"{KEYS}/b.pem", "-s", server, "-n", name],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = listener.stderr.readline()
            assert line, "the listener exited before enrolling"
            lines.append(line.decode())
            if json.loads(line).get("event") == "enrolled":
                break
        listener.stdin.write(b"from b\n")
        listener.stdin.close()
        a = lab.run("a", [*FAST, *a_args, "--identity", f"{KEYS}/a.pem", "-s", server, dest, name],
                    input="from a\n", timeout=40)
        assert listener.wait(30) == 0
        assert a.returncode == 0, a.stderr[-2000:]
        assert a.stdout == "from b\n" and listener.stdout.read() == b"from a\n"
        if heard is not None:
            heard.extend(_events("".join(lines) + listener.stderr.read().decode()))
        return _events(a.stderr)
    finally:
        if listener.poll() is None:
            listener.kill()


def test_a_warm_connect_skips_discovery_and_still_connects():
    with running_lab("symmetric-seq", "port-restricted") as lab:
        server = f"{lab.S1}:{SERVER_PORT}"
        lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", server, "--stun",
                             f"{lab.S1},{lab.S2}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)

        cold = _connect(lab, server, "warm-test-0")
        kinds = [e["event"] for e in cold]
        assert "discovery" in kinds and "discovery-done" in kinds and "behavior-cached" not in kinds, kinds
        measured = next(e for e in cold if e["event"] == "discovery-done")
        assert (measured["mapping"], measured["allocation"]) == ("APDM", "sequential")

        warm = _connect(lab, server, "warm-test-1")
        kinds = [e["event"] for e in warm]
        assert "discovery" not in kinds and "discovery-done" not in kinds, kinds
        cached = next(e for e in warm if e["event"] == "behavior-cached")
        assert cached["via"] == "samples"  # one round trip: the punch socket's samples named the network
        # the hop trace the cold run took is kept with the behaviour: the warm one runs none
        (cold_hops,) = [e for e in cold if e["event"] == "hops"]
        (warm_hops,) = [e for e in warm if e["event"] == "hops"]
        assert warm_hops.get("cached") is True and cold_hops.get("cached") is None
        assert (warm_hops["low_ttl"], warm_hops["hops"]) == (cold_hops["low_ttl"], cold_hops["hops"])
        assert (cached["mapping"], cached["allocation"], cached["delta"]) == (
            measured["mapping"], measured["allocation"], measured["delta"])
        # the punch socket's mappings are still sampled fresh, and the pair is met by prediction
        assert "mapping" in kinds
        connected = next(e for e in warm if e["event"] == "connected")
        assert connected["strategy"] == "predicted"

        # an entry getting old is measured again once the session is up, its hop trace too
        path = Path(registry.cache_home(lab.ns("a"))) / "nattrav" / "behavior.json"
        doc = json.loads(path.read_text())
        ((key, entry),) = doc["entries"].items()
        real = entry["trace"]
        assert len(real["answers"]) >= 2, real
        entry["saved"] -= 700  # past REFRESH_AFTER
        # the warm connect takes the kept trace as it is (one hop fewer: the same low TTL here);
        # the background measurement puts the real one back
        last = max(real["answers"], key=int)
        entry["trace"] = {**real, "answers": {t: ip for t, ip in real["answers"].items() if t != last}}
        path.write_text(json.dumps(doc))
        third = _connect(lab, server, "warm-test-2")
        assert next(e for e in third if e["event"] == "hops").get("cached") is True
        entry = json.loads(path.read_text())["entries"][key]
        assert entry["saved"] > time.time() - 60 and entry["trace"] == real, entry


def test_early_discovery_classifies_the_nat_as_the_ordinary_one():
    """A cold nattrav-fast sends discovery's first requests before its imports (io/prediscover.py)
    and discovery adopts them: the NAT reads the same as when everything is sent after the imports
    (`--des`, an abbreviation argparse takes and the pre-start does not read: nothing goes early)."""
    with running_lab("symmetric-seq", "port-restricted") as lab:
        server = f"{lab.S1}:{SERVER_PORT}"
        lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", server, "--stun",
                             f"{lab.S1},{lab.S2}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
        done = {}
        for early, dest in ((True, "-d"), (False, "--des")):
            events = _connect(lab, server, f"early-{early}", a_args=("--no-cache",), dest=dest)
            done[early] = next(e for e in events if e["event"] == "discovery-done")
            assert next(e for e in events if e["event"] == "connected")["strategy"] == "predicted"
        fields = ("mapping", "filtering", "allocation", "delta", "nat", "classic", "other_address")
        assert {f: done[True][f] for f in fields} == {f: done[False][f] for f in fields}
        assert (done[True]["mapping"], done[True]["filtering"], done[True]["allocation"]) == (
            "APDM", "APDF", "sequential")

        def gap(d):  # test I's request, then the main socket's next: the imports lie between when early
            first, second = [s for s in d["samples"] if s["socket"] == 0][:2]
            return second["t"] - first["t"]

        assert gap(done[True]) > 0.05 > gap(done[False]), (gap(done[True]), gap(done[False]))
