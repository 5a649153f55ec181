"""What a worker does with its sockets, indexed by the coordinator's global socket index.

CEngine drives the C core (one fd table over every pool, epoll + recvmmsg); PyEngine does the same
with the socket module (the baseline)."""

from __future__ import annotations

import selectors
from array import array

from ..core.burst import send_packed
from ..core.fallback import PySocketPool, drain, select_recv
from ..core.packed import BurstStats, Hit, PackedBurst, RecvStats
from ..core.pool import SocketPool
from ..core.recv import Receiver


class CEngine:
    impl = "c"

    def __init__(self) -> None:
        from .._core import ffi

        self._ffi = ffi
        self._fdmap = ffi.new("int[]", 1)
        self._fdmap[0] = -1
        self._nfd = 0
        self._where: dict[int, tuple[SocketPool, int]] = {}
        self._receiver: Receiver | None = None
        self._rst_base = RecvStats()

    def _grow(self, size: int) -> None:
        if size <= self._nfd:
            return
        new = self._ffi.new("int[]", size)
        self._ffi.buffer(new)[:] = array("i", [-1]).tobytes() * size
        if self._nfd:
            self._ffi.memmove(new, self._fdmap, self._nfd * self._ffi.sizeof("int"))
        self._fdmap, self._nfd = new, size
        self._reset_receiver()

    def _reset_receiver(self) -> None:
        if self._receiver is not None:
            s = self._receiver.stats
            b = self._rst_base
            self._rst_base = RecvStats(b.received + s.received, b.rejected + s.rejected,
                                       b.icmp_errors + s.icmp_errors, b.dropped_after_hit + s.dropped_after_hit)
            self._receiver.close()
            self._receiver = None

    def open(self, count: int, ip: str, ttl: int | None, ports: list[int] | None, base: int,
             reuse_port: bool) -> list[int]:
        pool = SocketPool(count, ip, ports, ttl=ttl, reuse_port=reuse_port, reuse_addr=reuse_port)
        self._grow(base + count)
        for k, fd in enumerate(pool.fds):
            self._fdmap[base + k] = fd
            self._where[base + k] = (pool, k)
        self._reset_receiver()
        return pool.ports

    def close_range(self, base: int, count: int) -> None:
        pools = set()
        for g in [g for g in self._where if base <= g < base + count]:
            pool, _ = self._where.pop(g)
            self._fdmap[g] = -1
            pools.add(pool)
        self._reset_receiver()
        for pool in pools:
            if not any(p is pool for p, _ in self._where.values()):
                pool.close()

    def fire(self, burst: PackedBurst, timeout_ms: int) -> BurstStats:
        if burst.n and burst.src_max >= self._nfd:
            # indices past this worker's table belong to the others: widen with -1 entries
            self._grow(burst.src_max + 1)
        return send_packed(self._fdmap, self._nfd, burst, timeout_ms)

    def listen(self, match: bytes, timeout: float, wake_fd: int) -> Hit | None:
        if self._receiver is None:
            self._receiver = Receiver(self._fdmap, self._nfd)
        return self._receiver.wait(match, timeout, wake_fd)

    def set_ttl(self, indices: array, ttl: int | None) -> int:
        done = 0
        for g in indices:
            if g in self._where:
                pool, k = self._where[g]
                pool.set_ttl(k, ttl)
                done += 1
        return done

    def take(self, g: int) -> int:
        if g not in self._where:
            raise IndexError(f"socket {g} is not in this worker")
        pool, k = self._where.pop(g)
        self._reset_receiver()
        self._fdmap[g] = -1
        return pool.take(k)

    def drain(self) -> int:
        from .._core import lib

        n = lib.nt_drain_errors(self._fdmap, self._nfd)
        self._rst_base.icmp_errors += max(n, 0)
        return max(n, 0)

    def recv_stats(self) -> RecvStats:
        s = self._receiver.stats if self._receiver else RecvStats()
        b = self._rst_base
        return RecvStats(b.received + s.received, b.rejected + s.rejected,
                         b.icmp_errors + s.icmp_errors, b.dropped_after_hit + s.dropped_after_hit)

    def close(self) -> None:
        self._reset_receiver()
        for pool in {id(p): p for p, _ in self._where.values()}.values():
            pool.close()
        self._where.clear()


class PyEngine:
    impl = "py"

    def __init__(self) -> None:
        self._socks: dict = {}
        self._pools: list[PySocketPool] = []
        self._sel: selectors.BaseSelector | None = None
        self._rst = RecvStats()

    def open(self, count, ip, ttl, ports, base, reuse_port) -> list[int]:
        pool = PySocketPool(count, ip, ports, ttl=ttl, reuse_port=reuse_port, reuse_addr=reuse_port)
        self._pools.append(pool)
        for k, s in enumerate(pool._socks):
            self._socks[base + k] = s
        self._sel_reset()
        return pool.ports

    def _sel_reset(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None

    def close_range(self, base: int, count: int) -> None:
        for g in [g for g in self._socks if base <= g < base + count]:
            self._socks.pop(g).close()
        self._sel_reset()

    def fire(self, burst: PackedBurst, timeout_ms: int) -> BurstStats:
        if not self._pools:
            st = BurstStats()
            return st
        return self._pools[0].send_burst(burst, timeout_ms / 1000, owned=self._socks)

    def listen(self, match: bytes, timeout: float, wake_fd: int) -> Hit | None:
        if self._sel is None:
            self._sel = selectors.DefaultSelector()
            for g, s in self._socks.items():
                self._sel.register(s, selectors.EVENT_READ, g)
        return select_recv(self._sel, match, timeout, wake_fd, 2048, self._rst)

    def set_ttl(self, indices, ttl) -> int:
        import socket

        done = 0
        for g in indices:
            s = self._socks.get(g)
            if s is not None:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1 if ttl is None else ttl)
                done += 1
        return done

    def take(self, g: int) -> int:
        s = self._socks.pop(g, None)
        if s is None:
            raise IndexError(f"socket {g} is not in this worker")
        self._sel_reset()
        return s.detach()

    def drain(self) -> int:
        n = sum(drain(s) for s in self._socks.values())
        self._rst.icmp_errors += n
        return n

    def recv_stats(self) -> RecvStats:
        return self._rst

    def close(self) -> None:
        self._sel_reset()
        for s in self._socks.values():
            s.close()
        self._socks.clear()


ENGINES = {"c": CEngine, "py": PyEngine}

__all__ = ["CEngine", "ENGINES", "PyEngine"]
