"""A TCP connect to the rendezvous server begun before the process imports Trio and the crypto
stack (~0.1 s of start-up), so that the handshake's round trip runs during the imports instead of
after them (issue 13: over 50 ms of delay each way a round trip is ~0.11 s).

One place owns the socket at a time: `begin()` (cli/launch.py, standard library only, before the
heavy imports) makes it and starts the non-blocking connect; the rendezvous client `take()`s it
when it is about to connect to that same server, and from then on it is the client's. Anything that
does not match exactly (another server, a local address) closes it and the client connects as it
always did: the early socket only ever carries the SYN the ordinary connect would have sent, to the
same address, sooner. This module imports only the standard library.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

from .early_slot import Slot


class Early:
    """A connect in flight: its socket, the (ip, port) it dials, when the SYN left (time.monotonic)."""

    def __init__(self, sock: socket.socket, target: tuple[str, int], started: float):
        self.sock = sock
        self.target = target
        self.started = started

    def close(self) -> None:
        self.sock.close()


_slot: Slot[Early] = Slot()


def begin(ip: str, port: int) -> bool:
    """Start a non-blocking connect to `ip` (an address literal, never a name: nothing is looked up
    here) and `port`, kept for take(). False (and nothing kept) when the socket cannot be made or the
    connect fails at once; an earlier one still pending is closed first."""
    discard()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        sock.setblocking(False)
        started = time.monotonic()
        code = sock.connect_ex((ip, port))
    except OSError:
        sock.close()
        return False
    if code not in (0, errno.EINPROGRESS):
        sock.close()  # the ordinary connect meets the same trouble and reports it
        return False
    _slot.put(Early(sock, (ip, port), started))
    return True


def take(host: str, port: int, local_address: str | None = None) -> Early | None:
    """The early connect when it dials exactly `host`:`port` from no particular local address (the
    caller's own connect would have): the caller owns it now. None otherwise, and a pending one that
    does not match is closed: it is never used for anything else."""
    return _slot.take(lambda early: local_address is None and early.target == (host, port))


def discard() -> None:
    """Close the early connect if nobody took it."""
    _slot.discard()


def pending() -> tuple[str, int] | None:
    """Where the pending early connect dials (None: there is none); for tests and progress lines."""
    early = _slot.held
    return early.target if early is not None else None


_TCP_INFO_RTT = struct.Struct("=68xI")  # Linux struct tcp_info: tcpi_rtt (microseconds) at byte 68


def handshake_rtt(sock: socket.socket) -> float | None:
    """The kernel's round-trip estimate of a connected TCP socket in seconds (Linux TCP_INFO; after
    the handshake alone it is the SYN -> SYN-ACK time), None where the system does not say."""
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, opt, 104)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_RTT.size:
        return None
    rtt = _TCP_INFO_RTT.unpack_from(raw)[0]
    return rtt / 1e6 if rtt > 0 else None
