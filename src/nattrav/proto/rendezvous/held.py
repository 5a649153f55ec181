"""How long the server held a connect, sans-IO: from its offer reaching the listener's front until
the session starts.

Why: the initiator sampled its mappings before its connect, and the punch comes only after the
offer, the listener's sampling and accept (a listener slow to accept: seconds), a beacon's wait and
the start margin. Its predicted ports move with every foreign flow in that time, so both peers size
the windows aimed at its NAT for that age (planner/horizon.py), and both must read the same number:
the front that starts the session puts it (HELD) in both peers' session infos, once, in its own
clock. Across instances the offer's relay through the registry (milliseconds) is not counted.

A connect held long (a listener slow to accept) makes that age seconds, and the windows aimed at
the initiator's NAT wide enough to spend a home or CGN flow budget. So when the hold at the accept
exceeds what a fresh sample costs (`fresh_wanted`), the front asks the initiator, too, for STUN
samples of its punch socket before the session ("resample", as it asks a listener), and HELD then
counts from their arrival (`restart`): the initiator's horizon drops back to its own sample's age,
half its round trip, the listener's re-sample and the margin.

The book is bounded like the beacon book: entries go in offer order and leave at the answer, with
their offer's expiry, or as the oldest beyond `max_entries`."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from ..planner.horizon import AGE, MAX_RTT, published_seconds

MAX_HELD_OFFERS = 4096  # offers a front remembers the arrival of (per peer and source they are capped too)


# node info: this peer takes a "resample" in answer to its connect, and, as a listener, in answer to
# its accept even without a beacon (an older client never says it, and never gets one)
TAKES_RESAMPLE = "takes_resample"
# Ask the initiator only past what the fresh sample costs: the initiator's round trip to us and one
# to its STUN server, then the listener's re-sample, which its beacon would have saved (+0.3 s to
# the connect over wan50). Over wan50 (lab, 50 ms each way per access link: each peer's round trip
# to us ~0.1 s) a 0 s accept already holds a connect 0.6-0.75 s (the offer's trip, the listener's
# sampling, its accept), and a 0.5 s floor asked the initiator on 34 of 40 such connects for windows
# 3x smaller (bench/results/initiator-resample.md): so RESAMPLE_RTTS round trips of both peers, 1 s
# there. Where the round trips are short the sample costs milliseconds, and a hold of a second is
# all age: a listener pacing its flow budget (api/flow_wait.py) held back-to-back connects ~0.9 s at
# zero delay, below a 1 s floor, and the windows aimed at an initiator behind an address pool of 4
# (each port once per address) took 400 flows, the listener's whole budget, leaving the next 20
# connects at 78 % (bench/results/reliability.md, session 13). Past RESAMPLE_AFTER, then: 0.5 s, which
# a quick accept on a busy listener host (tenths of a second) stays below.
RESAMPLE_AFTER = 0.5
RESAMPLE_RTTS = 5.0


def fresh_wanted(held: float | None, initiator_info: Any, listener_info: Any,
                 floor: float = RESAMPLE_AFTER) -> bool:
    """Whether a connect held `held` seconds so far is worth the initiator's fresh samples: it says it
    takes them, both peers publish their samples' age (so HELD reaches both plans), and the hold
    exceeds `floor` and RESAMPLE_RTTS times both published round trips (a missing one counts as 0:
    the floor)."""
    if held is None or not isinstance(initiator_info, dict) or not isinstance(listener_info, dict):
        return False
    if initiator_info.get(TAKES_RESAMPLE) is not True:
        return False
    if AGE not in initiator_info or AGE not in listener_info:
        return False
    rtts = [published_seconds(i.get("rtt"), MAX_RTT) or 0.0 for i in (initiator_info, listener_info)]
    return _past_its_cost(held, rtts, floor)


def stale_at_connect(age: float | None, rtt: float | None) -> bool:
    """Whether an initiator's samples, `age` seconds old as its connect would leave, are worth
    taking again first: by the rule the server holds a connect to, with the one round trip a
    re-sample costs. The endpoint is made while the rendezvous connection comes up; a connection
    that took seconds (a loaded host, a slow handshake) left samples seconds old, and the windows
    aimed at them states odds of a few percent (bench/results/reliability.md, session 13)."""
    if age is None or not math.isfinite(age):
        return False
    return _past_its_cost(age, [rtt if rtt is not None and math.isfinite(rtt) else 0.0])


def _past_its_cost(age: float, round_trips: list[float], floor: float = RESAMPLE_AFTER) -> bool:
    """The one rule of both: samples `age` seconds old are worth taking again past `floor` and
    RESAMPLE_RTTS times the `round_trips` the fresh ones cost."""
    return age > max(floor, RESAMPLE_RTTS * sum(round_trips))


class HoldBook:
    def __init__(self, max_entries: int = MAX_HELD_OFFERS) -> None:
        self.max_entries = max_entries
        self._arrived: OrderedDict[str, tuple[float, float]] = OrderedDict()  # offer -> (arrived, expires)

    def __len__(self) -> int:
        return len(self._arrived)

    def offered(self, offer_id: str, now: float, expires: float) -> None:
        self._prune(now)
        self._arrived.pop(offer_id, None)
        self._arrived[offer_id] = (now, expires)
        while len(self._arrived) > self.max_entries:
            self._arrived.popitem(last=False)

    def take(self, offer_id: str, now: float) -> float | None:
        """Seconds since the offer arrived (ms), forgetting it; None for an offer not noted here."""
        entry = self._arrived.pop(offer_id, None)
        return None if entry is None else round(max(0.0, now - entry[0]), 3)

    def peek(self, offer_id: str, now: float) -> float | None:
        """Seconds since the offer arrived (or was restarted), remembering it; None when not noted."""
        entry = self._arrived.get(offer_id)
        return None if entry is None else max(0.0, now - entry[0])

    def restart(self, offer_id: str, now: float) -> None:
        """The initiator's fresh samples arrived: the hold counts from now (noted offers only)."""
        entry = self._arrived.get(offer_id)
        if entry is not None:
            self._arrived[offer_id] = (now, entry[1])

    def forget(self, offer_id: str) -> None:
        self._arrived.pop(offer_id, None)

    def _prune(self, now: float) -> None:
        # offers' timeouts differ, so this only trims the expired front (the bound does the rest)
        while self._arrived:
            _, expires = next(iter(self._arrived.values()))
            if expires > now:
                return
            self._arrived.popitem(last=False)


__all__ = ["MAX_HELD_OFFERS", "RESAMPLE_AFTER", "RESAMPLE_RTTS", "TAKES_RESAMPLE", "HoldBook", "fresh_wanted", "stale_at_connect"]
