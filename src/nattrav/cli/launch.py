"""How nattrav-fast starts: its console script enters here, before the command's modules are imported.

Start-up imports ~400 modules (Trio, the API, the crypto stack): millions of allocations that make the
cyclic garbage collector run over and over through objects that will live as long as the process, to
find almost nothing. With the collector off for the imports and the survivors frozen (moved out of
its reach) after them, a warm connect costs ~8 % less CPU (issue 13, bench/warm_cpu.py). The collector
is back on before the command does anything else, so a long-running listener collects as usual.
"""

from __future__ import annotations

import gc

_paused = False  # did startup_begin() turn the collector off (and so may startup_done() turn it on)?


def startup_begin() -> None:
    """The collector off for the imports that follow (if it was on)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def startup_done() -> None:
    """Imports are done: what they made is frozen out of the collector's way, the collector is back
    on. Does nothing unless startup_begin() paused it (an embedding program's choice is its own)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def fast() -> None:
    """The nattrav-fast console script."""
    startup_begin()
    from .fast import entry

    entry()


__all__ = ["fast", "startup_begin", "startup_done"]
