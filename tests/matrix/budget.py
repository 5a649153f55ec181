"""Trials of a feasible pair that may fail: those whose plan said, before punching, that the flow
budgets left could not connect them.

Each agent runs its trials back to back in one process, a few seconds apart. Our own bursts hold
their flows in the NATs for FLOW_LINGER seconds, and the budget a side publishes is what is left
(proto/planner/budget.py), so a second birthday within 30 s gets the flows the first one did not
take: the plan states the odds those buy and names the budgets, instead of filling the flow table
(on a carrier-grade NAT that also cut the rendezvous connection). The first trial of an agent has its
whole budget: it must connect. A later failure is excused only when its plan stated odds below the
target (99.9%) AND gave the flow budgets as the reason (the planner names them only then); any other
failure is still one.
"""

from __future__ import annotations

from typing import Any

from nattrav.proto.planner.side import DEFAULT_TARGET


def out_of_budget(r: Any) -> bool:
    return (not r.ok and r.odds is not None and r.odds < DEFAULT_TARGET
            and "at the flow budgets the sides published" in (r.reason or ""))


def unexplained_failures(results: list[Any]) -> list[Any]:
    """The trials a feasible pair may not lose: the first, and every later one that failed for
    another reason than the budgets its plan named."""
    return [r for i, r in enumerate(results) if not r.ok and (i == 0 or not out_of_budget(r))]
