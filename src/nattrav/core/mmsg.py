"""Python face of csrc/mmsg.c: recvmmsg/sendmmsg batches on one socket, and the STUN fast path.

Arguments are validated here; C checks lengths again. Errors come back as -errno and go through
errors.check, so "nothing to read" is a BlockingIOError (EAGAIN) like a non-blocking socket's.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from .._core import ffi, lib
from .errors import check

MAX_BATCH = 256
Address = tuple[str, int]


def _fd(sock_or_fd: object) -> int:
    fd = sock_or_fd if isinstance(sock_or_fd, int) else sock_or_fd.fileno()  # type: ignore[attr-defined]
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"not an open descriptor: {sock_or_fd!r}")
    return fd


def _check_sizes(n: int, bufsize: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_BATCH}, got {n!r}")
    if not isinstance(bufsize, int) or not 64 <= bufsize <= 65536:
        raise ValueError(f"bufsize must be 64..65536, got {bufsize!r}")


def addr_to_c(addr: Address, slot: object) -> None:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port!r}")
    slot.family = ip.version  # type: ignore[attr-defined]
    slot.port = port  # type: ignore[attr-defined]
    ffi.memmove(slot.ip, ip.packed, len(ip.packed))  # type: ignore[attr-defined]


def addr_from_c(slot: object) -> Address:
    fam = slot.family  # type: ignore[attr-defined]
    raw = bytes(ffi.buffer(slot.ip, 4 if fam == 4 else 16))  # type: ignore[attr-defined]
    ip = str(ipaddress.IPv4Address(raw)) if fam == 4 else str(ipaddress.IPv6Address(raw))
    return (ip, slot.port)  # type: ignore[attr-defined]


class RecvBatch:
    """Reusable buffers for nt_recv_batch: `recv()` fills them, then read `datagrams()`."""

    def __init__(self, n: int = 64, bufsize: int = 2048) -> None:
        _check_sizes(n, bufsize)
        self.n = n
        self.bufsize = bufsize
        self._bufs = ffi.new("uint8_t[]", n * bufsize)
        self._lens = ffi.new("int[]", n)
        self._addrs = ffi.new("nt_addr[]", n)
        self._count = 0

    def recv(self, sock: object) -> int:
        """Receive up to n datagrams; BlockingIOError when none is waiting."""
        self._count = check(
            lib.nt_recv_batch(_fd(sock), self._bufs, self.bufsize, self.n, self._lens, self._addrs),
            "recvmmsg",
        )
        return self._count

    def datagrams(self) -> list[tuple[bytes | None, Address]]:
        """(payload, source) for each datagram of the last recv(); payload None when it was cut."""
        out: list[tuple[bytes | None, Address]] = []
        buf = ffi.buffer(self._bufs)
        for i in range(self._count):
            n = self._lens[i]
            start = i * self.bufsize
            out.append((buf[start : start + n] if n >= 0 else None, addr_from_c(self._addrs[i])))
        return out


def send_batch(sock: object, datagrams: Sequence[tuple[bytes, Address]], bufsize: int = 2048) -> int:
    """Send datagrams with sendmmsg (in chunks of MAX_BATCH); returns how many the kernel took.
    Stops early (returning fewer) when the socket buffer is full."""
    fd = _fd(sock)
    total = 0
    for base in range(0, len(datagrams), MAX_BATCH):
        chunk = datagrams[base : base + MAX_BATCH]
        k = len(chunk)
        size = max((len(d) for d, _ in chunk), default=1)
        if size > bufsize:
            raise ValueError(f"datagram of {size} bytes exceeds bufsize {bufsize}")
        size = max(size, 64)
        bufs = ffi.new("uint8_t[]", k * size)
        lens = ffi.new("int[]", k)
        addrs = ffi.new("nt_addr[]", k)
        for i, (data, addr) in enumerate(chunk):
            ffi.memmove(bufs + i * size, data, len(data))
            lens[i] = len(data)
            addr_to_c(addr, addrs[i])
        try:
            sent = check(lib.nt_send_batch(fd, bufs, size, k, lens, addrs), "sendmmsg")
        except BlockingIOError:
            return total
        total += sent
        if sent < k:
            return total
    return total


STAT_NAMES = ("received", "answered_fast", "replayed", "malformed", "oversized", "send_errors",
              "rate_limited_fast")
LIMIT_STAT_NAMES = ("rate_limited", "amplification_limited", "shared")


def wire_bytes(payload: int, family: int) -> int:
    """What a UDP datagram of `payload` bytes occupies on the wire: the limiter's unit."""
    return payload + (48 if family == 6 else 28)


class SourceLimiter:
    """Per-source limits in C (csrc/mmsg.c), shared by every socket of a server: a token bucket of
    `rate` bytes/s and `burst` bytes per source IP (IPv6: per /64), both directions counted; replies
    never more than `max_amplification` x the request bytes a source sent (plus at most `bank` bytes
    saved up). The table has `slots` entries whatever the number of sources.

    `now_ms` (tests) replaces the monotonic clock."""

    def __init__(
        self,
        rate: int,
        burst: int,
        *,
        max_amplification: float = 3.0,
        bank: int = 4096,
        slots: int = 65536,
        key: bytes | None = None,
    ) -> None:
        key = os.urandom(16) if key is None else key
        if not isinstance(key, bytes) or len(key) != 16:
            raise ValueError("limiter key must be 16 bytes")
        if not 1.0 <= max_amplification <= 1000.0:
            raise ValueError(f"max_amplification must be 1..1000, got {max_amplification!r}")
        if not isinstance(slots, int) or slots <= 0 or slots & (slots - 1) or slots > 1 << 22:
            raise ValueError(f"slots must be a power of two up to 2**22, got {slots!r}")
        if not 0 < rate <= 1 << 40 or not 0 < burst <= 1 << 40 or not 0 <= bank <= 1 << 40:
            raise ValueError(f"rate and burst must be > 0 (got {rate!r}, {burst!r}), bank >= 0")
        self.nbytes = check(lib.nt_limiter_size(slots), "limiter size")
        self._mem = ffi.new("uint8_t[]", self.nbytes)
        check(lib.nt_limiter_init(self._mem, slots, int(rate), int(burst),
                                  round(max_amplification * 100), int(bank), key), "limiter init")
        self._addr = ffi.new("nt_addr *")
        self._out = ffi.new("uint64_t[]", lib.NT_LIMIT_STAT_COUNT)

    def _call(self, fn, src: Address, *sizes: int, now_ms: int | None) -> bool:
        addr_to_c(src, self._addr)
        return bool(check(fn(self._mem, self._addr, *sizes, -1 if now_ms is None else now_ms), "limiter"))

    def exchange(self, src: Address, request: int, reply: int, *, now_ms: int | None = None) -> bool:
        """A request and its reply, admitted (and charged) together or not at all."""
        return self._call(lib.nt_limiter_exchange, src, request, reply, now_ms=now_ms)

    def request(self, src: Address, size: int, *, now_ms: int | None = None) -> bool:
        return self._call(lib.nt_limiter_request, src, size, now_ms=now_ms)

    def reply(self, dest: Address, size: int, *, now_ms: int | None = None) -> bool:
        return self._call(lib.nt_limiter_reply, dest, size, now_ms=now_ms)

    @property
    def stats(self) -> dict[str, int]:
        check(lib.nt_limiter_stats(self._mem, self._out), "limiter stats")
        return {name: int(self._out[i]) for i, name in enumerate(LIMIT_STAT_NAMES)}


class StunFastPath:
    """Receive a batch and answer bare RFC 5389 Binding requests in C.

    `tail` is the pre-encoded attribute block appended after XOR-MAPPED-ADDRESS (RESPONSE-ORIGIN,
    OTHER-ADDRESS, SOFTWARE): constant for a given socket. `serve()` returns the datagrams the C path
    did not answer or drop, for the full Python handler. Replays (same transaction ID from the same
    source within window_ms) are dropped and counted in C.
    """

    def __init__(
        self,
        tail: bytes | None,
        *,
        n: int = 64,
        bufsize: int = 2048,
        replay_slots: int = 4096,
        replay_window_ms: int = 50,
        limiter: SourceLimiter | None = None,
    ) -> None:
        _check_sizes(n, bufsize)
        self.limiter = limiter
        self._limiter = limiter._mem if limiter is not None else ffi.NULL
        # tail None: answer nothing in C, only drop malformed/replayed datagrams
        if tail is not None and (len(tail) > 512 or len(tail) % 4):
            raise ValueError("tail must be a whole number of attributes, at most 512 bytes")
        self.batch = RecvBatch(n, bufsize)
        self._tail = ffi.new("uint8_t[]", max(len(tail or b""), 1))
        ffi.memmove(self._tail, tail or b"", len(tail or b""))
        self._tail_len = -1 if tail is None else len(tail)
        if replay_slots:
            size = check(lib.nt_replay_cache_size(replay_slots), "replay cache size")
            self._cache = ffi.new("uint8_t[]", size)
        else:
            self._cache = ffi.NULL
        self._slots = replay_slots
        self._window = int(replay_window_ms)
        self._stats = ffi.new("uint64_t[]", lib.NT_STAT_COUNT)

    def serve(self, sock: object) -> list[tuple[bytes, Address]]:
        b = self.batch
        b._count = check(
            lib.nt_stun_serve_batch(
                _fd(sock), b._bufs, b.bufsize, b.n, b._lens, b._addrs,
                self._tail, self._tail_len, self._cache, self._slots, self._window, self._limiter,
                self._stats,
            ),
            "STUN batch",
        )
        rest: list[tuple[bytes, Address]] = []
        buf = ffi.buffer(b._bufs)
        for i in range(b._count):
            n = b._lens[i]
            if n >= 0:
                start = i * b.bufsize
                rest.append((buf[start : start + n], addr_from_c(b._addrs[i])))
        return rest

    @property
    def stats(self) -> dict[str, int]:
        return {name: int(self._stats[i]) for i, name in enumerate(STAT_NAMES)}


def stun_load(sock: object, server: Address, *, inflight: int = 64, duration: float = 1.0) -> dict[str, int]:
    """Keep `inflight` bare Binding requests outstanding towards `server` for `duration` seconds (in C,
    GIL released); returns {"sent", "received", "stalls"}. The bench's load generator."""
    if not isinstance(inflight, int) or not 1 <= inflight <= MAX_BATCH:
        raise ValueError(f"inflight must be 1..{MAX_BATCH}, got {inflight!r}")
    ms = int(duration * 1000)
    if not 1 <= ms <= 3_600_000:
        raise ValueError(f"duration out of range: {duration!r}")
    dst = ffi.new("nt_addr *")
    addr_to_c(server, dst)
    out = ffi.new("uint64_t[]", 3)
    check(lib.nt_stun_load(_fd(sock), dst, inflight, ms, out), "STUN load")
    return {"sent": int(out[0]), "received": int(out[1]), "stalls": int(out[2])}


__all__ = ["MAX_BATCH", "RecvBatch", "SourceLimiter", "StunFastPath", "addr_from_c", "addr_to_c", "send_batch",
           "stun_load", "wire_bytes"]
