"""Exit codes of the command-line tools, from the error family (nattrav.errors), in one table."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import trio

from ..errors import (ConnectError, NattravError, NattravTimeout, PathError, PeerAuthError, PeerError,
                      RendezvousError, UsageError, WrongPeer)

EXIT_OK = 0
EXIT_FAILURE = 1  # could not do the job: a port in use, an address not on this host, ...
EXIT_USAGE = 2
EXIT_SERVER = 3  # rendezvous server unreachable, gone, or protocol trouble
EXIT_PEER = 4  # unknown peer, offline, refused
EXIT_PUNCH = 5  # no path: the NAT pair is infeasible or the punch timed out
EXIT_TIMEOUT = 6
EXIT_UNDELIVERED = 7  # the path broke, or data could not be confirmed delivered
EXIT_INTERRUPTED = 130

# The first family an error belongs to decides; more specific families first.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    (UsageError, EXIT_USAGE),
    (PathError, EXIT_UNDELIVERED),
    (trio.BrokenResourceError, EXIT_UNDELIVERED),  # a plain stream that broke (--raw --tcp)
    (PeerError, EXIT_PEER),
    (WrongPeer, EXIT_PEER),  # not the key asked for: the server's word or the peer's certificate
    (PeerAuthError, EXIT_PEER),
    (NattravTimeout, EXIT_TIMEOUT),
    (trio.TooSlowError, EXIT_TIMEOUT),
    (RendezvousError, EXIT_SERVER),
    (ConnectError, EXIT_PUNCH),
    (NattravError, EXIT_FAILURE),
)
# What the CLIs turn into one line and an exit code instead of a traceback.
HANDLED = tuple(cls for cls, _ in EXIT_CODES)


def exit_code(exc: BaseException) -> int:
    """The exit code for `exc` (EXIT_FAILURE for anything the table does not name)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_FAILURE)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once stdout and stderr are flushed, skipping the interpreter's
    teardown: freeing every module and object of a QUIC-capable process costs ~35 ms of CPU (a sixth
    of a warm connect's, issue 13) and does nothing a finished command needs. For a command's very
    last line only: atexit handlers do not run (logging's, the only one our imports register, is
    run here)."""
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    cache = sys.modules.get("nattrav.codecache")
    if cache is not None:  # what this run compiled that the next need not (after its work: off its clock)
        try:
            cache.save()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


__all__ = ["EXIT_CODES", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PEER", "EXIT_PUNCH",
           "EXIT_SERVER", "EXIT_TIMEOUT", "EXIT_UNDELIVERED", "EXIT_USAGE", "HANDLED", "exit_code", "exit_now"]
