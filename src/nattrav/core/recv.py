"""Python face of recv.c: wait across a whole fd table for the first datagram that passes the check."""

from __future__ import annotations

import errno
import math
import os
import socket
import sys

from .._core import ffi, lib
from .errors import check
from .packed import Hit, RecvStats

MAX_MATCH = 1024
MAX_BUF = 65536


class Woken(Exception):
    """The wake descriptor became readable before any hit (a control message arrived)."""


class Receiver:
    """An epoll set over fdmap[0..nfd) (entries < 0 ignored); reuse it across waits."""

    def __init__(self, fdmap, nfd: int) -> None:
        self._fdmap = fdmap
        self._nfd = nfd
        self._ep = check(lib.nt_recv_create(fdmap, nfd), f"creating an epoll set over {nfd} sockets")
        self._st = ffi.new("nt_recv_stats *")

    def forget(self, fd: int) -> None:
        """Stop watching fd (it was handed away); the caller also sets its fdmap entry to -1."""
        if self._ep >= 0:
            lib.nt_recv_remove(self._ep, fd)

    def wait(self, match: bytes = b"", timeout: float = 5.0, wake_fd: int = -1, bufsize: int = 2048) -> Hit | None:
        if not isinstance(match, (bytes, bytearray)) or len(match) > MAX_MATCH:
            raise ValueError(f"match must be bytes of at most {MAX_MATCH}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 <= timeout <= 86400):
            raise ValueError(f"timeout must be 0..86400 s, got {timeout!r}")
        if not 1 <= bufsize <= MAX_BUF:
            raise ValueError(f"bufsize must be 1..{MAX_BUF}")
        idx = ffi.new("int32_t *")
        ip = ffi.new("uint32_t *")
        port = ffi.new("uint16_t *")
        buf = ffi.new("uint8_t[]", bufsize)
        m = bytes(match)
        rc = lib.nt_recv_wait(self._ep, self._fdmap, self._nfd, wake_fd, m, len(m),
                              int(math.ceil(timeout * 1000)), idx, ip, port, buf, bufsize, self._st)
        if rc == -errno.ETIMEDOUT:
            return None
        if rc == -errno.ECANCELED:
            raise Woken()
        check(rc, "waiting for a datagram")
        addr = socket.inet_ntop(socket.AF_INET, int(ip[0]).to_bytes(4, sys.byteorder))
        return Hit(int(idx[0]), (addr, int(port[0])), bytes(ffi.buffer(buf, rc)))

    def drain_errors(self) -> int:
        n = check(lib.nt_drain_errors(self._fdmap, self._nfd), "draining socket error queues")
        self._st.icmp_errors += n
        return n

    @property
    def stats(self) -> RecvStats:
        s = self._st
        return RecvStats(s.received, s.rejected, s.icmp_errors, s.dropped_after_hit)

    def close(self) -> None:
        if self._ep >= 0:
            os.close(self._ep)
            self._ep = -1


__all__ = ["Receiver", "Woken"]
