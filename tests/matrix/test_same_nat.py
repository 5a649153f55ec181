"""Two peers behind one NAT, for every matrix preset, over UDP and TCP: they meet on their LAN (their
host candidates, proto/planner/lan.py) whether the NAT hairpins or not. And where it hairpins, the
planned strategy still connects through the hairpin when the LAN path is cut, so racing the LAN
attempt breaks nothing.

Each trial gets only what a user would type (the server); the lab's LAN is routed (each host its own
link to the NAT, which forwards between them without translating)."""

from __future__ import annotations

import os
import pathlib

import pytest

from nattrav.lab.matrix import MATRIX_PRESETS, SAME_NAT
from nattrav.lab.pytest_support import require_lab
from tests.conftest import run_matrix_pair

TRIALS = int(os.environ.get("NATTRAV_SAME_NAT_TRIALS", "2"))
TRIAL_TIMEOUT = 12.0
REPORT = pathlib.Path(os.environ.get("NATTRAV_SAME_NAT_REPORT", "/tmp/nattrav-matrix-same-nat.jsonl"))
# hairpinning as the hosts see it (a hairpinned packet comes back through every layer)
HAIRPINS = ("full-cone", "restricted-cone", "port-restricted")
# cut the hosts' direct path in the NAT: only hairpinned (dnat'ed) flows may go from LAN to LAN
CUT_LAN = 'add rule ip nattrav forward_filter iifname "lan*" oifname "lan*" ct status & dnat == 0 counter drop'


@pytest.mark.lab
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("preset", MATRIX_PRESETS)
def test_peers_behind_one_nat_connect(preset, tcp):
    require_lab()
    results, ok, summary, _ = run_matrix_pair(preset, SAME_NAT, TRIALS, TRIAL_TIMEOUT, REPORT, tcp=tcp,
                                              expect="feasible")
    assert len(ok) == TRIALS, f"{preset} same-NAT ({'TCP' if tcp else 'UDP'}): {summary}"
    if preset == "none":
        # public hosts: two addresses, no shared network, the observed addresses reach each other
        assert {r.strategy for r in ok} == {"tcp-direct" if tcp else "direct"}, summary
    elif preset not in HAIRPINS:
        assert {r.strategy for r in ok} == {"tcp-lan" if tcp else "lan"}, summary


def _cut_lan(lab):
    r = lab.run("nat_a", ["nft", CUT_LAN], timeout=10)
    assert r.returncode == 0, r.stderr


@pytest.mark.lab
@pytest.mark.parametrize("preset", HAIRPINS)
def test_the_hairpin_still_connects_when_the_lan_path_is_cut(preset):
    require_lab()
    from nattrav.lab.matrix import run_pair

    results = run_pair(preset, SAME_NAT, TRIALS, trial_timeout=TRIAL_TIMEOUT, prepare=_cut_lan)
    summary = "; ".join(f"trial {r.trial}: {'ok ' + str(r.strategy) if r.ok else r.reason}" for r in results)
    assert all(r.ok for r in results), summary
    assert all(r.strategy not in ("lan", None) for r in results), summary
