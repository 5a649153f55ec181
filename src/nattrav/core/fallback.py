"""The same pool interface on Python's socket module: the fallback where the C core is missing, and
the baseline every benchmark compares against."""

from __future__ import annotations

import errno
import selectors
import socket
import time
from array import array
from collections.abc import Sequence

from .errors import ICMP_ERRNOS
from .limits import ensure_fd_capacity, limit_error
from .packed import Burst, BurstStats, Hit, PackedBurst, RecvStats
from .pool import as_packed, validate_open_args
from .recv import Woken

_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


class PySocketPool:
    """Same constructor and methods as core.SocketPool, one socket.socket per slot."""

    def __init__(
        self,
        count: int,
        ip: str = "0.0.0.0",
        ports: Sequence[int] | None = None,
        *,
        ttl: int | None = None,
        reuse_addr: bool = False,
        reuse_port: bool = False,
        blocking: bool = False,
        recverr: bool = True,
    ) -> None:
        self.count = 0
        ports = validate_open_args(count, ip, ports, ttl)
        ensure_fd_capacity(count)
        socks: list[socket.socket | None] = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                if reuse_addr:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if recverr:
                    s.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                if ttl:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                s.setblocking(blocking)
                s.bind((ip, ports[i] if ports else 0))
        except OSError as e:
            for s in socks:
                s.close()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise limit_error(count) from None
            raise OSError(e.errno, f"opening {count} UDP sockets on {ip}: {e.strerror}") from None
        self._socks = socks
        self._ports = [s.getsockname()[1] for s in socks]
        self.count = count
        self.ip = ip
        self._sel: selectors.BaseSelector | None = None
        self._rst = RecvStats()

    @property
    def fds(self) -> list[int]:
        return [s.fileno() if s is not None else -1 for s in self._socks]

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    def _sock(self, index: int) -> socket.socket:
        if not isinstance(index, int) or not 0 <= index < self.count:
            raise IndexError(f"socket index {index!r} out of range 0..{self.count - 1}")
        s = self._socks[index]
        if s is None:
            raise IndexError(f"socket {index} was handed away")
        return s

    def set_ttl(self, index: int, ttl: int | None) -> None:
        s = self._sock(index)
        if ttl is not None and (not isinstance(ttl, int) or not 1 <= ttl <= 255):
            raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1 if ttl is None else ttl)

    def send_burst(self, burst: Burst | PackedBurst, timeout: float = 10.0, *, owned=None) -> BurstStats:
        """owned: optional map global index -> socket (a worker's view of a larger burst); packets of
        other indices are skipped, as fdmap entries < 0 are in C."""
        p = as_packed(burst)
        src = array("i", p.src)
        ports = array("H", p.ports)
        ips = [p.ip_of(0)] * p.n if len(p.ips) == 4 else [p.ip_of(i) for i in range(p.n)]
        one_payload = len(p.payload) == p.payload_len
        st = BurstStats()
        socks = self._socks
        if owned is None:
            if p.n and p.src_max >= self.count:
                raise IndexError(f"socket index {p.src_max} out of range 0..{self.count - 1}")
            owned = {i: s for i, s in enumerate(socks) if s is not None}
            if len(owned) < self.count and not set(owned).issuperset(src):
                raise IndexError("the burst names sockets that were handed away")
        mine = [i for i in range(p.n) if src[i] in owned]
        st.planned = len(mine)
        used = {src[i] for i in mine}
        saved = {}
        if p.ttl:
            for j in used:
                saved[j] = owned[j].getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
                owned[j].setsockopt(socket.IPPROTO_IP, socket.IP_TTL, p.ttl)
        rate = p.rate * len(mine) / p.n if p.rate and p.n else 0.0
        t0 = time.perf_counter()
        deadline = t0 + timeout
        first = last = 0.0
        for k, i in enumerate(mine):
            if rate:
                due = t0 + k / rate
                while (now := time.perf_counter()) < due:
                    if due - now > 2e-4:
                        time.sleep(due - now - 1e-4)
            s = owned[src[i]]
            data = p.payload if one_payload else p.payload[i * p.payload_len : (i + 1) * p.payload_len]
            retried = False
            while True:
                try:
                    s.sendto(data, (ips[i], ports[i]))
                    last = time.perf_counter()
                    first = first or last
                    st.sent += 1
                    break
                except (BlockingIOError, InterruptedError):
                    if time.perf_counter() >= deadline:
                        st.failed += 1
                        st.last_errno = errno.EAGAIN
                        break
                    st.waits += 1
                    _wait_writable(s, min(1.0, deadline - time.perf_counter()))
                except OSError as e:
                    if e.errno == errno.ENOBUFS and time.perf_counter() < deadline:
                        st.waits += 1
                        time.sleep(5e-5)
                        continue
                    if e.errno in ICMP_ERRNOS and not retried:
                        st.icmp_errors += 1
                        retried = True
                        continue
                    st.failed += 1
                    st.last_errno = e.errno or 0
                    break
        for j, v in saved.items():
            owned[j].setsockopt(socket.IPPROTO_IP, socket.IP_TTL, v)
        st.elapsed_s = time.perf_counter() - t0
        st.send_span_s = last - first
        st.last_ns = time.monotonic_ns() if st.sent else 0  # perf_counter has no fixed epoch
        return st

    def _selector(self) -> selectors.BaseSelector:
        if self._sel is None:
            self._sel = selectors.DefaultSelector()
            for i, s in enumerate(self._socks):
                if s is not None:
                    self._sel.register(s, selectors.EVENT_READ, i)
        return self._sel

    def recv(self, match: bytes = b"", timeout: float = 5.0, *, wake_fd: int = -1, bufsize: int = 2048) -> Hit | None:
        return select_recv(self._selector(), match, timeout, wake_fd, bufsize, self._rst)

    def drain_errors(self) -> int:
        n = sum(drain(s) for s in self._socks if s is not None)
        self._rst.icmp_errors += n
        return n

    @property
    def recv_stats(self) -> RecvStats:
        return self._rst

    def take(self, index: int) -> int:
        s = self._sock(index)
        if self._sel is not None:
            self._sel.unregister(s)
        self._socks[index] = None
        return s.detach()

    def close(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for s in self._socks if self.count else ():
            if s is not None:
                s.close()
        self.count = 0

    def __enter__(self) -> PySocketPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PySocketPool {self.count} sockets on {self.ip}>"


def select_recv(sel: selectors.BaseSelector, match: bytes, timeout: float, wake_fd: int, bufsize: int,
                stats: RecvStats) -> Hit | None:
    """The selectors loop: sockets registered with their index as data. Raises Woken on wake_fd."""
    if wake_fd >= 0:
        sel.register(wake_fd, selectors.EVENT_READ, -1)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for key, _ in sel.select(left):
                if key.data == -1:
                    raise Woken()
                s = key.fileobj
                while True:
                    try:
                        data, src = s.recvfrom(bufsize)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        stats.icmp_errors += max(1, drain(s))
                        break
                    stats.received += 1
                    if data.startswith(match):
                        return Hit(key.data, src, data)
                    stats.rejected += 1
    finally:
        if wake_fd >= 0:
            sel.unregister(wake_fd)


def _wait_writable(s: socket.socket, timeout: float) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_WRITE)
        sel.select(max(0.0, timeout))


def drain(s: socket.socket) -> int:
    n = 0
    while n < 4096:
        try:
            s.recvmsg(256, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:
            break
        n += 1
    if not n and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        n = 1
    return n


__all__ = ["PySocketPool", "drain", "select_recv"]
