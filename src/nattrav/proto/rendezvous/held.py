"""How long the server held a connect, sans-IO: from its offer reaching the listener's front until
the session starts.

Why: the initiator sampled its mappings before its connect, and the punch comes only after the
offer, the listener's sampling and accept (a listener slow to accept: seconds), a beacon's wait and
the start margin. Its predicted ports move with every foreign flow in that time, so both peers size
the windows aimed at its NAT for that age (planner/horizon.py), and both must read the same number:
the front that starts the session puts it (HELD) in both peers' session infos, once, in its own
clock. Across instances the offer's relay through the registry (milliseconds) is not counted.

The book is bounded like the beacon book: entries go in offer order and leave at the answer, with
their offer's expiry, or as the oldest beyond `max_entries`."""

from __future__ import annotations

from collections import OrderedDict

MAX_HELD_OFFERS = 4096  # offers a front remembers the arrival of (per peer and source they are capped too)


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

    def forget(self, offer_id: str) -> None:
        self._arrived.pop(offer_id, None)

    def _prune(self, now: float) -> None:
        # offers' timeouts differ, so this only trims the expired front (the bound does the rest)
        while self._arrived:
            _, expires = next(iter(self._arrived.values()))
            if expires > now:
                return
            self._arrived.popitem(last=False)


__all__ = ["MAX_HELD_OFFERS", "HoldBook"]
