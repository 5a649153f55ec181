"""Garbage collection for a long-running server that holds many long-lived objects.

CPython's full collection walks every tracked object. nattrav-server with 10,000 enrolled peers
holds around a million (sockets, tasks, cancel scopes, registry entries), so each full collection
stalled the event loop for 0.3-1.5 s: in bench/bench_rendezvous_load.py those pauses were the worst
connect latencies. Here the objects that survived a while are moved out of the collector's reach
(gc.freeze) every few seconds, so automatic collections only walk what is new. Once in a long while
the frozen objects are handed back and collected in one go, so garbage cycles among them (rare: the
server makes almost none) cannot pile up; that pause is logged.
"""

from __future__ import annotations

import gc
import logging
import time

import trio

log = logging.getLogger("nattrav.gc")


async def keep_collections_short(freeze_every: float = 10.0, full_every: float = 3600.0) -> None:
    """Run forever in the server's nursery (process-wide: only for a process that is a server)."""
    last_full = trio.current_time()
    try:
        while True:
            await trio.sleep(freeze_every)
            if trio.current_time() - last_full >= full_every:
                last_full = trio.current_time()
                gc.unfreeze()
                t0 = time.perf_counter()
                freed = gc.collect()
                log.info("full garbage collection: %d objects freed in %.0f ms", freed,
                         (time.perf_counter() - t0) * 1e3)
            else:
                gc.collect(1)  # the young garbage first: what is frozen is never collected until then
            gc.freeze()
    finally:
        gc.unfreeze()


__all__ = ["keep_collections_short"]
