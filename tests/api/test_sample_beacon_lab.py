"""In the NAT lab: a listener behind a sequential symmetric NAT (APDM) accepts with a sample beacon
(proto/rendezvous/beacon.py) -- no STUN round trip between the offer and the accept -- and the
initiator behind a port-restricted cone connects by prediction from the beacon's port. Then the
two fallbacks: the beacon dropped on its way (a drop rule in the lab's server namespace: the server
asks for STUN samples), and a server that takes no beacons (the listener refreshes first)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from nattrav.lab.agent import SERVER_PORT
from nattrav.lab.matrix import wait_tcp
from nattrav.lab.pytest_support import running_lab
from tests.api.test_cache_lab import _connect as connect_pair

pytestmark = pytest.mark.lab

BEACON_PORT = 7411  # pinned, so that the lab's drop rule can name it


def _connect(lab, server: str, name: str) -> tuple[list[dict], list[dict]]:
    """A listener in b enrolled as `name`, `nattrav-fast -d name` in a: (listener's, a's) events."""
    heard: list[dict] = []
    theirs = connect_pair(lab, server, name, heard)
    return heard, theirs


def _after_offer(events: list[dict]) -> list[str]:
    names = [e["event"] for e in events]
    return names[names.index("offer"):]


def _server(lab, *flags: str) -> str:
    server = f"{lab.S1}:{SERVER_PORT}"
    lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", server, "--stun",
                         f"{lab.S1},{lab.S2}", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
    return server


def _predicted(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "plan")


def test_a_symmetric_listener_accepts_with_a_beacon_and_the_initiator_predicts_from_it():
    with running_lab("port-restricted", "symmetric-seq") as lab:
        # (never the initiator's fresh samples: on a loaded machine a hold past their floor would
        # close the beacon, and this test is about the beacon's own path)
        server = _server(lab, "--beacon-port", str(BEACON_PORT), "--resample-after", "0")
        mine, theirs = _connect(lab, server, "beacon-0")
        after = _after_offer(mine)
        assert "beacon" in after and "resample" not in after, after
        beacon = next(e for e in mine if e["event"] == "mapping" and e.get("beacon"))
        assert beacon["folded"] is True
        plan = _predicted(theirs)
        assert plan["strategy"] == "predicted", plan
        # the initiator's window starts right after the beacon's port (Δ 1 in the lab's preset)
        assert plan["peer_targets"][0] in range(beacon["ports"][0] + 1, beacon["ports"][0] + 4), (plan, beacon)
        # both peers folded the same sample into the listener's report: their plans are one plan
        mirror = _predicted(mine)
        assert (mirror["strategy"], mirror["odds"]) == (plan["strategy"], plan["odds"]), (mirror, plan)

        # the beacon dropped on its way to the server: the server asks for STUN samples
        drop = ["nft", "-f", "-"]
        rules = (f"table inet nt_beacon_drop {{\n chain input {{\n  type filter hook input priority 0;\n"
                 f"  udp dport {BEACON_PORT} drop\n }}\n}}\n")
        got = lab.run("server", drop, input=rules)
        assert got.returncode == 0, got.stderr
        mine, theirs = _connect(lab, server, "beacon-1")
        after = _after_offer(mine)
        assert "beacon" in after and "resample" in after, after
        assert _predicted(theirs)["strategy"] == "predicted"


def test_a_server_without_beacons_gets_the_refresh_first():
    with running_lab("port-restricted", "symmetric-seq") as lab:
        server = _server(lab, "--no-beacons")
        mine, theirs = _connect(lab, server, "beacon-2")
        after = _after_offer(mine)
        assert "beacon" not in after and "mapping" in after, after
        assert _predicted(theirs)["strategy"] == "predicted"
