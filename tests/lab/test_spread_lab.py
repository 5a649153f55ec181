"""The spread in the NAT lab (planner/udp._spread): a port-restricted cone whose flow budget holds
no window (a user's --max-flows 2) still connects to a peer behind a sequential symmetric NAT
with a busy background: the symmetric side opens its next mappings from many sockets at once and
the cone answers two of their ports."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.lab


def test_a_cone_with_a_two_flow_budget_meets_a_busy_sequential_nat(need_lab):
    from nattrav.experiment.trial import SERVER_PORT, Case, open_case, run_hosts

    def agent(role: str, options: dict) -> list[str]:
        return [sys.executable, "-m", "nattrav.experiment.agent", "--server", f"{lab.S1}:{SERVER_PORT}",
                "--name", "spread-test", "--options", json.dumps(options), "--timeout", "20", "--role", role]

    with open_case(Case("symmetric-seq", "port-restricted", background=20.0)) as lab:
        a, b, errors = run_hosts(lab, {"a": agent("connect", {}), "b": agent("listen", {"max_flows": 2})}, 40)
    assert a.get("ok") and b.get("ok"), (a.get("reason") or b.get("reason"), errors)
    assert a["strategy"] == "predicted"
    plan = a["plan"]
    # the symmetric side (a, the connecting one) opened many mappings; the cone aimed at no more
    # ports than its budget
    assert plan["local_sockets"] > 1 and plan["remote_sockets"] == 1, plan
    assert plan["remote_flows"] <= 2 and plan["flow_budget"] >= plan["local_sockets"], plan
