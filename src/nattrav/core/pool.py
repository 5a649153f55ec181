"""Python face of the C socket pool: validate arguments, call C, map -errno once."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .._core import ffi, lib
from .errors import check

MAX_SOCKETS = 65536


def _ip_be(ip: str) -> int:
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"not an IPv4 address: {ip!r}") from None
    return int.from_bytes(addr.packed, "little")  # packed is network order; C reads it as-is


class SocketPool:
    """N bound UDP sockets owned by the C core. Close it (or use `with`) to release the descriptors."""

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
    ) -> None:
        if not isinstance(count, int) or not 0 <= count <= MAX_SOCKETS:
            raise ValueError(f"count must be an int in 0..{MAX_SOCKETS}, got {count!r}")
        if ports is not None:
            ports = list(ports)
            if len(ports) != count:
                raise ValueError(f"{len(ports)} ports given for {count} sockets")
            if any(not isinstance(p, int) or not 0 <= p <= 65535 for p in ports):
                raise ValueError("ports must be ints in 0..65535")
        if ttl is not None and (not isinstance(ttl, int) or not 1 <= ttl <= 255):
            raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
        flags = (
            (lib.NT_POOL_REUSEADDR if reuse_addr else 0)
            | (lib.NT_POOL_REUSEPORT if reuse_port else 0)
            | (lib.NT_POOL_BLOCKING if blocking else 0)
        )
        self._fds = ffi.new("int[]", max(count, 1))
        self._ports = ffi.new("uint16_t[]", max(count, 1))
        bind_ports = ffi.new("uint16_t[]", ports) if ports else ffi.NULL
        check(
            lib.nt_pool_open(count, _ip_be(ip), bind_ports, flags, ttl or 0, self._fds, self._ports),
            f"opening {count} UDP sockets on {ip}",
        )
        self.count = count
        self.ip = ip

    @property
    def fds(self) -> list[int]:
        return list(self._fds[0 : self.count])

    @property
    def ports(self) -> list[int]:
        return list(self._ports[0 : self.count])

    def set_ttl(self, index: int, ttl: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"socket index {index} out of range 0..{self.count - 1}")
        if not isinstance(ttl, int) or not 1 <= ttl <= 255:
            raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
        check(lib.nt_set_ttl(self._fds[index], ttl), f"setting TTL {ttl} on socket {index}")

    def close(self) -> None:
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


__all__ = ["SocketPool"]
