"""Deadlines by key, for sans-IO state machines that are handed the time instead of reading a clock.

A plain heap of (when, key) cannot forget: an offer answered a millisecond after it was made would
keep its 60-second entry, and a peer that reconnects in a loop would pile up one expiry per round.
Here every key has at most one deadline; replacing or cancelling marks the old entry dead, and the
heap is rebuilt once dead entries outnumber live ones, so its size stays proportional to what is
actually pending (amortised O(log n) per operation).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Hashable

_WHEN, _SEQ, _KEY, _LIVE = range(4)
SLACK = 64  # dead entries tolerated before compaction is even considered


class Timers:
    def __init__(self) -> None:
        self._heap: list[list] = []  # [when, seq, key, live]; seq keeps keys out of comparisons
        self._live: dict[Hashable, list] = {}
        self._seq = itertools.count()

    def set(self, key: Hashable, when: float) -> None:
        """Fire `key` at `when`, replacing any deadline it had."""
        old = self._live.get(key)
        if old is not None:
            old[_LIVE] = False
        entry = [when, next(self._seq), key, True]
        self._live[key] = entry
        heapq.heappush(self._heap, entry)
        self._compact()

    def cancel(self, key: Hashable) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            entry[_LIVE] = False
            self._compact()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def __len__(self) -> int:
        """Entries held, dead ones included: what the heap costs, not what is pending."""
        return len(self._heap)

    def pending(self) -> int:
        return len(self._live)

    def next_deadline(self) -> float | None:
        self._drop_dead_top()
        return self._heap[0][_WHEN] if self._heap else None

    def pop_due(self, now: float) -> Hashable | None:
        """The key of the earliest deadline at or before `now` (it is forgotten), else None."""
        self._drop_dead_top()
        if not self._heap or self._heap[0][_WHEN] > now:
            return None
        entry = heapq.heappop(self._heap)
        del self._live[entry[_KEY]]
        entry[_LIVE] = False
        return entry[_KEY]

    def _drop_dead_top(self) -> None:
        heap = self._heap
        while heap and not heap[0][_LIVE]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._live) + SLACK:
            self._heap = [e for e in self._heap if e[_LIVE]]
            heapq.heapify(self._heap)


__all__ = ["Timers"]
