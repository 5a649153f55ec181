"""A cold connect's first discovery requests, sent before nattrav-fast imports Trio and the crypto
stack (issue 13): their round trip and the filtering tests' silence run during the ~0.13 s of
imports instead of after them.

io/stun_discover.discover() starts with the same three requests whatever it finds: the two
filtering tests (CHANGE-REQUEST change-IP+port, then change-port), each from its own fresh socket
and sent twice DUPLICATE_GAP apart, then test I from the main socket, all to the STUN server.
`begin()` (cli/launch.py, when no cache entry lets the connect skip discovery) binds three sockets
as discover() binds them (io/lifetime.open_udp: `src_ip` or any address, an ephemeral port) and
sends those requests in that order; a timer thread sends the filtering tests' second copies on
time while the main thread imports. discover() `take()`s them when it would send exactly those
requests to exactly that server from such sockets, and adopts the sockets, the transactions (IDs,
send times) and the replies that came meanwhile, each with the kernel's arrival time (SO_TIMESTAMPNS:
read later, a reply must still count its real round trip, which sizes every later timeout). Anything
else closes them: the early sockets never serve anything but the requests they sent.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from typing import Any

from .early_slot import Slot, drain
from .fresh_port import fresh_udp

Address = tuple[str, int]
DUPLICATE_GAP = 0.005  # io/stun_discover.DUPLICATE_GAP (a test holds them equal): that module imports Trio
FILTER_CHANGES = ({"change_ip": True, "change_port": True}, {"change_port": True})  # discover() uses these
SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); the socket module does not name it
_TIMESPEC = struct.Struct("@ll")  # struct timespec: seconds, nanoseconds (longs on Linux)


class EarlyDiscovery:
    """The three sockets (the main one, the two filtering tests'), their requests and when each copy
    left (time.monotonic()): `sent[i]` for `requests[i]`, the filtering tests' first."""

    def __init__(self, src_ip: str | None, server: Address, main: socket.socket, filters: list[socket.socket],
                 requests: list[Any]):
        self.src_ip, self.server = src_ip, server
        self.main, self.filters = main, filters
        self.requests = requests
        self.sent: list[list[float]] = [[] for _ in requests]
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._stopped = False

    @property
    def sockets(self) -> list[socket.socket]:
        """In the order of `requests`: the filtering tests' sockets, then the main one."""
        return [*self.filters, self.main]

    def send_first(self) -> None:
        for i, sock in enumerate(self.sockets):
            self._send(i, sock)
        self._timer = threading.Timer(DUPLICATE_GAP, self._send_duplicates)
        self._timer.daemon = True
        self._timer.start()

    def _send(self, i: int, sock: socket.socket) -> None:
        at = time.monotonic()
        try:
            sock.sendto(self.requests[i].encode(), self.server)
        except OSError:
            pass  # as a failed send in discover(): the request counts as sent, its schedule goes on
        self.sent[i].append(at)

    def _send_duplicates(self) -> None:
        with self._lock:
            if not self._stopped:
                for i, sock in enumerate(self.filters):
                    if not self._answered(i, sock):
                        self._send(i, sock)

    def _answered(self, i: int, sock: socket.socket) -> bool:
        """A reply with the request's ID already waits on its socket: the server had the request,
        and discover()'s copy would not go either (there the answer ends the test first)."""
        want = bytes(self.requests[i].transaction_id[-12:])
        try:
            head = sock.recv(20, socket.MSG_PEEK)
        except OSError:
            return False
        return head[8:20] == want

    def stop(self) -> None:
        """No more copies from the timer (they went, or they never will): `sent` is final."""
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def queued(self, i: int, most: int = 64) -> list[tuple[bytes, Any, float]]:
        """The datagrams waiting on the socket of `requests[i]`: (data, source, arrival on the
        time.monotonic() clock, from the kernel's timestamp; never before the first request left
        nor after now)."""
        sock, earliest = self.sockets[i], self.sent[i][0]

        def read() -> tuple[bytes, Any, float]:
            data, anc, _flags, src = sock.recvmsg(65536, socket.CMSG_SPACE(_TIMESPEC.size))
            now, wall = time.monotonic(), time.time()
            at = now
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(raw)
                    at = now - (wall - (sec + nsec / 1e9))
            return data, src, min(now, max(earliest, at))

        return drain(read, most)

    def close(self) -> None:
        self.stop()
        for sock in self.sockets:
            sock.close()


_slot: Slot[EarlyDiscovery] = Slot()


def begin(src_ip: str | None, server: Address) -> bool:
    """Bind the three sockets to `src_ip` (any address when None), port 0, and send discover()'s
    first requests to the IPv4 `server`. Kept for take(); False (nothing kept) where the kernel
    cannot timestamp arrivals (not Linux) or a socket cannot be made."""
    discard()
    if not sys.platform.startswith("linux"):
        return False
    from ..proto.stun import binding_request  # the wire's one encoder, as discover()'s

    socks: list[socket.socket] = []
    try:
        for _ in range(3):  # discover() binds the main socket first, then the filtering tests'
            sock = fresh_udp(src_ip)  # as io/lifetime.open_udp binds discover()'s
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        return False
    requests = [binding_request(**change) for change in FILTER_CHANGES] + [binding_request()]
    early = EarlyDiscovery(src_ip, server, socks[0], socks[1:], requests)
    early.send_first()
    _slot.put(early)
    return True


def take(src_ip: str | None, server: Address, fits: bool = True) -> EarlyDiscovery | None:
    """The early requests when they went to `server` from sockets bound to `src_ip` (as discover()
    would bind its own) and the caller says they `fit` the rest of what it does: the caller owns
    them now, and no more copies leave. None otherwise, and one that does not match is closed."""
    early = _slot.take(lambda e: fits and e.src_ip == src_ip and e.server == server)
    if early is not None:
        early.stop()
    return early


def discard() -> None:
    _slot.discard()


def pending() -> EarlyDiscovery | None:
    return _slot.held
