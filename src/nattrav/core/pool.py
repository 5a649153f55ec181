"""Python face of the C socket pool: validate arguments, call C, map -errno once."""

from __future__ import annotations

import errno
import ipaddress
from array import array
from collections.abc import Sequence

from .._core import ffi, lib
from .burst import DEFAULT_TIMEOUT_MS, send_packed
from .errors import check
from .limits import ensure_fd_capacity, limit_error
from .packed import Burst, BurstStats, Hit, PackedBurst, RecvStats
from .recv import Receiver

MAX_SOCKETS = 65536


def _ip_be(ip: str) -> int:
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"not an IPv4 address: {ip!r}") from None
    return int.from_bytes(addr.packed, "little")  # packed is network order; C reads it as-is


def validate_open_args(count, ip, ports, ttl) -> list[int] | None:
    """Shared by the C pool and the Python fallback, so both refuse exactly the same input."""
    if not isinstance(count, int) or not 0 <= count <= MAX_SOCKETS:
        raise ValueError(f"count must be an int in 0..{MAX_SOCKETS}, got {count!r}")
    _ip_be(ip)
    if ports is not None:
        ports = list(ports)
        if len(ports) != count:
            raise ValueError(f"{len(ports)} ports given for {count} sockets")
        if any(not isinstance(p, int) or not 0 <= p <= 65535 for p in ports):
            raise ValueError("ports must be ints in 0..65535")
    if ttl is not None and (not isinstance(ttl, int) or not 1 <= ttl <= 255):
        raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
    return ports


def as_packed(burst: Burst | PackedBurst) -> PackedBurst:
    return burst if isinstance(burst, PackedBurst) else burst.pack()


class SocketPool:
    """N bound UDP sockets owned by the C core. Close it (or use `with`) to release the descriptors.

    IP_RECVERR is on by default: ICMP errors that low-TTL probes provoke are queued on the socket and
    drained/counted by send_burst/recv/drain_errors instead of failing a later call."""

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
        flags = (
            (lib.NT_POOL_REUSEADDR if reuse_addr else 0)
            | (lib.NT_POOL_REUSEPORT if reuse_port else 0)
            | (lib.NT_POOL_BLOCKING if blocking else 0)
            | (lib.NT_POOL_RECVERR if recverr else 0)
        )
        self._fds = ffi.new("int[]", max(count, 1))
        self._ports = ffi.new("uint16_t[]", max(count, 1))
        bind_ports = ffi.new("uint16_t[]", ports) if ports else ffi.NULL
        rc = lib.nt_pool_open(count, _ip_be(ip), bind_ports, flags, ttl or 0, self._fds, self._ports)
        if rc in (-errno.EMFILE, -errno.ENFILE):
            raise limit_error(count)
        check(rc, f"opening {count} UDP sockets on {ip}")
        self.count = count
        self.ip = ip
        self._receiver: Receiver | None = None
        self._taken: set[int] = set()

    @property
    def fds(self) -> list[int]:
        return list(self._fds[0 : self.count])

    @property
    def ports(self) -> list[int]:
        return list(self._ports[0 : self.count])

    @property
    def fdmap(self):
        """The cffi int[] of descriptors (-1 for sockets handed away), for the C burst/recv calls."""
        return self._fds

    def _index(self, index: int) -> int:
        if not isinstance(index, int) or not 0 <= index < self.count:
            raise IndexError(f"socket index {index!r} out of range 0..{self.count - 1}")
        if self._fds[index] < 0:
            raise IndexError(f"socket {index} was handed away")
        return self._fds[index]

    def set_ttl(self, index: int, ttl: int | None) -> None:
        """Set IP_TTL on one socket; None puts back the route's default."""
        fd = self._index(index)
        if ttl is not None and (not isinstance(ttl, int) or not 1 <= ttl <= 255):
            raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
        check(lib.nt_set_ttl(fd, -1 if ttl is None else ttl), f"setting TTL {ttl} on socket {index}")

    def send_burst(self, burst: Burst | PackedBurst, timeout: float = DEFAULT_TIMEOUT_MS / 1000) -> BurstStats:
        """Send every packet of the burst (indices are this pool's); returns the accounting."""
        packed = as_packed(burst)
        if packed.n and packed.src_max >= self.count:
            raise IndexError(f"socket index {packed.src_max} out of range 0..{self.count - 1}")
        if self._taken and self._taken.intersection(array("i", packed.src)):
            raise IndexError(f"the burst names sockets that were handed away: {sorted(self._taken)[:5]}")
        return send_packed(self._fds, self.count, packed, int(timeout * 1000))

    def _recv(self) -> Receiver:
        if self._receiver is None:
            self._receiver = Receiver(self._fds, self.count)
        return self._receiver

    def recv(self, match: bytes = b"", timeout: float = 5.0, *, wake_fd: int = -1, bufsize: int = 2048) -> Hit | None:
        """First datagram starting with `match` on any socket, or None after `timeout` seconds.
        Raises core.recv.Woken when wake_fd becomes readable first."""
        return self._recv().wait(match, timeout, wake_fd, bufsize)

    def drain_errors(self) -> int:
        """Empty every socket's ICMP error queue; returns how many errors were there."""
        return self._recv().drain_errors()

    @property
    def recv_stats(self) -> RecvStats:
        return self._receiver.stats if self._receiver else RecvStats()

    def take(self, index: int) -> int:
        """Hand socket `index` away: returns its fd, which the pool no longer closes or uses."""
        fd = self._index(index)
        if self._receiver is not None:
            self._receiver.forget(fd)
        self._fds[index] = -1
        self._taken.add(index)
        return fd

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        if self.count:
            lib.nt_pool_close(self._fds, self.count)
            self.count = 0

    def __enter__(self) -> SocketPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a forgotten pool must not leak a thousand descriptors
        if getattr(self, "count", 0):
            self.close()

    def __repr__(self) -> str:
        return f"<SocketPool {self.count} sockets on {self.ip}>"


__all__ = ["SocketPool", "validate_open_args"]
