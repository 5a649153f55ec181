"""The one place an object made before nattrav-fast's imports waits for the code that will use it
(io/preconnect.py, io/presample.py, io/prediscover.py): at most one at a time, taken once, and
closed by whoever finds it does not fit. Standard library only, like its users."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)
R = TypeVar("R")


class Slot(Generic[T]):
    """Holds the pending early object, if any."""

    def __init__(self) -> None:
        self._held: T | None = None

    def put(self, early: T) -> None:
        """Keep `early`, closing one still pending (a second begin() replaces the first)."""
        self.discard()
        self._held = early

    def take(self, fits: Callable[[T], bool]) -> T | None:
        """The pending object when `fits` says it is exactly what the caller would have made: the
        caller owns it now. Otherwise None, and a pending one is closed: it serves nothing else."""
        early, self._held = self._held, None
        if early is None:
            return None
        if not fits(early):
            early.close()
            return None
        return early

    def discard(self) -> None:
        """Close the pending object, if nobody took it."""
        early, self._held = self._held, None
        if early is not None:
            early.close()

    @property
    def held(self) -> T | None:
        """The pending object, still pending (for tests and progress lines)."""
        return self._held


def drain(read: Callable[[], R], most: int = 64) -> list[R]:
    """What `read` (one receive on a non-blocking socket) returns until nothing is waiting, at most
    `most` datagrams: the replies that came while the process imported. An ICMP error left on the
    socket (port unreachable, TTL exceeded) is skipped: it is not an answer."""
    got: list[R] = []
    for _ in range(most):
        try:
            got.append(read())
        except BlockingIOError:
            break
        except OSError:
            continue
    return got
