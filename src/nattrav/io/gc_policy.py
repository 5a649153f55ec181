"""Garbage collection for a long-running server that holds many long-lived objects.

CPython's collector walks every tracked object of the generations it collects. nattrav-server with
10,000 enrolled peers holds around half a million (sockets, tasks, cancel scopes, registry
entries): a full collection stalled the event loop for 0.3-1.5 s, and even the middle generation
held 35,000-65,000 objects under the attack mix of bench/bench_rendezvous_load.py (every
connection in flight at a young collection is promoted), so its collections took 14-23 ms of CPU,
43-81 ms of wall time on a busy machine, and every connect in flight waited for them.

So whatever survives a young collection is frozen at once (gc.freeze, from a gc callback: moving
the lists is O(1)): automatic collections then only ever walk the objects allocated since the
previous one, a few hundred to a few thousand, well under a millisecond. Survivors that die later
are still freed by reference counting, which is how nearly all of this server's objects die (the
bench's collections of the middle generation found no garbage at all). A cycle that becomes garbage
after it was frozen waits for the full collection, once in a long while: then the frozen objects
are handed back and collected in one go, and that pause is logged.
"""

from __future__ import annotations

import gc
import logging
import time

import trio

log = logging.getLogger("nattrav.gc")


def _freeze_survivors(phase: str, info: dict) -> None:
    # The collection is over when "stop" is reported: its survivors sit in the older generations,
    # and freezing merges those lists into the permanent one (no traversal, no allocation).
    if phase == "stop":
        gc.freeze()


async def keep_collections_short(full_every: float = 3600.0) -> None:
    """Run forever in the server's nursery (process-wide: only for a process that is a server)."""
    gc.freeze()  # what the process built before serving (imports, configuration) is long-lived
    gc.callbacks.append(_freeze_survivors)
    try:
        while True:
            await trio.sleep(full_every)
            gc.unfreeze()
            t0 = time.perf_counter()
            freed = gc.collect()
            log.info("full garbage collection: %d objects freed in %.0f ms", freed,
                     (time.perf_counter() - t0) * 1e3)
            gc.freeze()
    finally:
        gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()


__all__ = ["keep_collections_short"]
