"""UDP sockets on local ports this process has not used lately.

Why: a NAT keeps a flow's mapping for a while after our socket closed (RFC 4787 asks for at least
two minutes). When the kernel gives a new socket the port an older one had, and the new socket sends
where the old one did (every sample goes to the same STUN and rendezvous ports), it meets the old
flow's mapping: a sequential NAT answers with a port it handed out seconds ago, far behind its
counter, and a prediction read from it aims behind the port the punch will get. In the lab, at four
connects a second, this was most of the predicted pairs' misses (a sample series read as random, or
a whole series seconds stale). The kernel picks ephemeral ports at random and may pick a port it just
freed; so every ephemeral socket we send samples from is bound here, and a port this process handed
out within LINGER seconds is held while the kernel picks another.

Standard library only: the early samplers (io/prediscover.py, io/presample.py) bind before Trio is
imported. Other processes on the host are not seen (their flows to our servers are rare; a sample
that is still stale is what proto/predict.without_stray leaves out).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

LINGER = 300.0  # seconds a NAT may keep an idle UDP mapping (RFC 4787 REQ-5 recommends 5 min)
MAX_TRIES = 32  # sockets held at most before the kernel's next pick is taken as it is
MAX_KEPT = 32768  # ports remembered (the whole ephemeral range holds ~28k)

_lock = threading.Lock()
_used: dict[int, float] = {}  # port -> time.monotonic() it was handed out, oldest first


def fresh_udp(ip: str | None = None, family: int = socket.AF_INET) -> socket.socket:
    """A UDP socket bound to `ip` (any address when None), port 0, whose port this process did not
    hand out in the last LINGER seconds (if the kernel offers one within MAX_TRIES picks). Raises
    OSError as socket() and bind() do."""
    held: list[socket.socket] = []
    try:
        for attempt in range(MAX_TRIES):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((ip or _any(family), 0))
            except OSError:
                sock.close()
                raise
            if _taken(sock, attempt):
                return sock
            held.append(sock)  # kept bound, so the kernel cannot offer this port again meanwhile
        raise AssertionError("unreachable")
    finally:
        for sock in held:
            sock.close()


async def fresh_trio_udp(ip: str | None = None, family: int = socket.AF_INET) -> Any:
    """fresh_udp() for Trio: the socket comes from trio.socket.socket() (a test's socket factory
    makes it then) and is bound with Trio's bind."""
    import trio

    held: list[Any] = []
    try:
        for attempt in range(MAX_TRIES):
            sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
            try:
                await sock.bind((ip or _any(family), 0))
            except OSError:
                sock.close()
                raise
            if _taken(sock, attempt):
                return sock
            held.append(sock)
        raise AssertionError("unreachable")
    finally:
        for sock in held:
            sock.close()


def _any(family: int) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _taken(sock: Any, attempt: int) -> bool:
    """Whether the bound `sock` is the one to hand out (then its port is noted as used)."""
    port = sock.getsockname()[1]
    if attempt + 1 < MAX_TRIES and recently_used(port):
        return False
    note(port)
    return True


def recently_used(port: int, now: float | None = None) -> bool:
    now = time.monotonic() if now is None else now
    with _lock:
        at = _used.get(port)
    return at is not None and now - at < LINGER


def note(port: int, now: float | None = None) -> None:
    """Remember that `port` was handed out now (a socket bound elsewhere may say so too)."""
    now = time.monotonic() if now is None else now
    with _lock:
        _used.pop(port, None)
        _used[port] = now
        if len(_used) > MAX_KEPT:
            for old in list(_used)[: len(_used) - MAX_KEPT]:
                del _used[old]
        while _used:
            first = next(iter(_used))
            if now - _used[first] < LINGER:
                break
            del _used[first]


def forget_all() -> None:
    """For tests: no port counts as used."""
    with _lock:
        _used.clear()


__all__ = ["LINGER", "MAX_TRIES", "fresh_trio_udp", "fresh_udp", "note", "recently_used"]
