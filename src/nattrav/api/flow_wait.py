"""Before a session samples its punch socket: wait, a few seconds at most, for the NAT entries of
our own earlier bursts to expire (proto/planner/budget.pace), so that the budget it publishes holds
a burst like the last one again.

Why: an application (or a user) that connects again within FLOW_LINGER of a predicted or grid punch
publishes only what that burst left of its budget, and the plan sized to the leftover states odds of
a few percent, then fails. Waiting until the entries expire costs seconds and keeps the 99.9 %. The
wait comes before the samples, so they are as fresh as without it. Our bursts are known from this
process's ledger (api/udp.py's LEDGER, which knows the budget each fired under) and from the
behaviour cache file (other processes' bursts; the budget then from the network's kept hop trace,
as open_endpoint would derive it)."""

from __future__ import annotations

import time
from typing import Any

import trio

from ..proto.planner.budget import PACE_CAP, FlowLedger, default_flow_budget, pace
from .behavior_cache import BehaviorCache
from .endpoint import EventHook, route


def flow_wait(ledger: FlowLedger, local_ip: str | None, *, cache: BehaviorCache | None = None,
              stun: tuple[str, int] | None = None, budget: int | None = None, cap: float = PACE_CAP,
              ) -> tuple[float, dict[str, Any]]:
    """(seconds to wait, what the wait is for) for bursts from `local_ip`; `budget` None: the one the
    ledger's last burst fired under, or the cache's network's default."""
    if not local_ip or cap <= 0:
        return 0.0, {}
    now = time.monotonic()
    held = ledger.held(local_ip, now)  # (and drops the expired bursts)
    wait = ledger.wait(local_ip, now, budget, cap)
    if cache is not None:
        bursts = cache.bursts(local_ip)
        theirs = budget if budget is not None else _cached_budget(cache, local_ip, stun)
        if bursts and theirs is not None:
            wait = max(wait, pace(theirs, bursts, time.time(), cap))
            held = max(held, sum(n for _, n in bursts))
    return wait, {"seconds": round(wait, 3), "held": held, "local_ip": local_ip}


def _cached_budget(cache: BehaviorCache, local_ip: str, stun: tuple[str, int] | None) -> int | None:
    """The budget open_endpoint would give this network (its kept trace says whether a CGN is ours)."""
    guessed = cache.guess(local_ip, stun) if stun is not None else None
    hops = guessed[1].hops() if guessed is not None else None
    return None if hops is None else default_flow_budget(hops, [local_ip])


async def wait_for_flows(ledger: FlowLedger, emit: EventHook, local_ip: str | None = None, *,
                         src_ip: str | None = None, **kw: Any) -> float:
    """Sleep flow_wait()'s seconds (from the address the kernel sends to `kw["stun"]` from, unless
    `local_ip` is given); the seconds slept."""
    if local_ip is None and kw.get("stun") is not None:
        local_ip = route(kw["stun"], src_ip)[1]
    wait, detail = flow_wait(ledger, local_ip, **kw)
    if wait > 0:
        emit("flow-wait", detail)
        await trio.sleep(wait)
    return wait
