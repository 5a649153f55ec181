"""A burst: which socket sends what to where. Validated and packed once, here, before any C call
or worker message sees it; packed arrays travel to the workers as bytes."""

from __future__ import annotations

import math
import socket
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_PACKETS = 1 << 24
MAX_PAYLOAD = 65507  # largest UDP payload over IPv4
MAX_INDEX = 1 << 20  # socket indices a burst may name (a worker sizes its fd table by them)


def _ip4(ip: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except (OSError, TypeError):
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


@dataclass(frozen=True)
class PackedBurst:
    """The C-ready form: src int32[n], ips 4 bytes (one for all) or 4*n, ports uint16[n], payload of
    payload_len bytes (one for all) or n*payload_len."""

    n: int
    src: bytes
    ips: bytes
    ports: bytes
    payload: bytes
    payload_len: int
    rate: float = 0.0
    ttl: int = 0
    src_min: int = field(default=0)
    src_max: int = field(default=-1)

    def payload_of(self, i: int) -> bytes:
        if len(self.payload) == self.payload_len:
            return self.payload
        return self.payload[i * self.payload_len : (i + 1) * self.payload_len]

    def ip_of(self, i: int) -> str:
        raw = self.ips if len(self.ips) == 4 else self.ips[4 * i : 4 * i + 4]
        return socket.inet_ntop(socket.AF_INET, raw)

    def to_wire(self) -> dict:
        return {
            "n": self.n, "src": self.src, "ips": self.ips, "ports": self.ports,
            "payload": self.payload, "plen": self.payload_len, "rate": self.rate, "ttl": self.ttl,
            "lo": self.src_min, "hi": self.src_max,
        }

    @classmethod
    def from_wire(cls, m: dict) -> PackedBurst:
        """Rebuild from a worker message; every length is checked again (the bytes crossed a pipe)."""
        if not isinstance(m, dict):
            raise ValueError("bad burst: not a map")
        kinds = {"n": int, "plen": int, "ttl": int, "lo": int, "hi": int, "rate": (int, float),
                 "src": bytes, "ips": bytes, "ports": bytes, "payload": bytes}
        for key, kind in kinds.items():
            # exact types: bytes(some_int) would allocate that many bytes, bool is no count
            if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
                raise ValueError(f"bad burst: {key!r} missing or of type {type(m.get(key)).__name__}")
        n, plen, ttl, lo, hi = m["n"], m["plen"], m["ttl"], m["lo"], m["hi"]
        src, ips, ports, payload = m["src"], m["ips"], m["ports"], m["payload"]
        rate = float(m["rate"])
        if not 0 <= n <= MAX_PACKETS or not 0 <= plen <= MAX_PAYLOAD:
            raise ValueError("bad burst: n or payload length out of range")
        if len(src) != 4 * n or len(ports) != 2 * n or len(ips) not in (4, 4 * n):
            raise ValueError("bad burst: array lengths do not match n")
        if len(payload) not in (plen, plen * n):
            raise ValueError("bad burst: payload length does not match")
        if not (rate == 0 or (math.isfinite(rate) and 0 < rate <= 1e9)) or not 0 <= ttl <= 255:
            raise ValueError("bad burst: rate or ttl out of range")
        # the index range is taken as declared (scanning 16M indices in Python would cost more than
        # sending them); the C core refuses the whole burst if any index lies outside its table
        if n and not 0 <= lo <= hi < MAX_INDEX or not n and (lo, hi) != (0, -1):
            raise ValueError("bad burst: index range")
        return cls(n, src, ips, ports, payload, plen, rate, ttl, lo, hi)


@dataclass(frozen=True)
class Burst:
    """Packet i goes from socket src_indices[i] to (dst_ips[i] or dst_ips, dst_ports[i]) carrying
    payload (the same bytes for all) or payload[i] (per-packet tokens, all the same length).
    rate: packets per second for the whole burst (None = as fast as the kernel takes them).
    ttl: IP TTL for this burst only (None = leave the sockets' TTL)."""

    src_indices: Sequence[int]
    dst_ips: str | Sequence[str]
    dst_ports: Sequence[int]
    payload: bytes | Sequence[bytes]
    rate: float | None = None
    ttl: int | None = None

    @classmethod
    def one_to_many(cls, index: int, ip: str, ports: Sequence[int], payload, **kw) -> Burst:
        """One socket probing many ports of one address (the easy side of a birthday attack)."""
        return cls(array("i", [index]) * len(ports), ip, ports, payload, **kw)

    @classmethod
    def many_to_one(cls, indices: Sequence[int], ip: str, port: int, payload, **kw) -> Burst:
        """Many sockets each sending one packet to the same address (opening many mappings)."""
        return cls(indices, ip, array("H", [port]) * len(indices), payload, **kw)

    def pack(self) -> PackedBurst:
        try:
            src = self.src_indices if isinstance(self.src_indices, array) and self.src_indices.typecode == "i" else array("i", self.src_indices)
        except (TypeError, OverflowError):
            raise ValueError("src_indices must be ints") from None
        n = len(src)
        if n > MAX_PACKETS:
            raise ValueError(f"at most {MAX_PACKETS} packets in one burst, got {n}")
        try:
            ports = self.dst_ports if isinstance(self.dst_ports, array) and self.dst_ports.typecode == "H" else array("H", self.dst_ports)
        except (TypeError, OverflowError):
            raise ValueError("dst_ports must be ints in 0..65535") from None
        if len(ports) != n:
            raise ValueError(f"{len(ports)} destination ports for {n} packets")
        if isinstance(self.dst_ips, str):
            ips = _ip4(self.dst_ips)
        else:
            ip_list = list(self.dst_ips)
            if len(ip_list) != n:
                raise ValueError(f"{len(ip_list)} destination addresses for {n} packets")
            ips = b"".join(map(_ip4, ip_list)) if n else b"\0\0\0\0"
        if isinstance(self.payload, (bytes, bytearray, memoryview)):
            payload = bytes(self.payload)
            plen = len(payload)
        else:
            parts = [bytes(p) for p in self.payload]
            if len(parts) != n:
                raise ValueError(f"{len(parts)} payloads for {n} packets")
            plen = len(parts[0]) if parts else 0
            if any(len(p) != plen for p in parts):
                raise ValueError("per-packet payloads must all have the same length")
            payload = b"".join(parts)
        if plen > MAX_PAYLOAD:
            raise ValueError(f"payload of {plen} bytes exceeds {MAX_PAYLOAD}")
        rate = 0.0
        if self.rate is not None:
            rate = float(self.rate)
            if not (math.isfinite(rate) and 0 < rate <= 1e9):
                raise ValueError(f"rate must be a positive number of packets per second, got {self.rate!r}")
        ttl = 0
        if self.ttl is not None:
            if not isinstance(self.ttl, int) or not 1 <= self.ttl <= 255:
                raise ValueError(f"ttl must be in 1..255, got {self.ttl!r}")
            ttl = self.ttl
        lo, hi = (min(src), max(src)) if n else (0, -1)
        if lo < 0 or hi >= MAX_INDEX:
            raise ValueError(f"socket indices must be in 0..{MAX_INDEX - 1}, got {lo}..{hi}")
        return PackedBurst(n, src.tobytes(), ips, ports.tobytes(), payload, plen, rate, ttl, lo, hi)


@dataclass
class BurstStats:
    """What happened to a burst: sent + failed == planned, always."""

    planned: int = 0
    sent: int = 0
    failed: int = 0
    icmp_errors: int = 0
    waits: int = 0
    syscalls: int = 0
    elapsed_s: float = 0.0
    send_span_s: float = 0.0  # first to last packet handed to the kernel
    last_errno: int = 0
    last_ns: int = 0  # CLOCK_MONOTONIC (time.monotonic_ns) when the last packet went to the kernel

    def add(self, other: BurstStats) -> None:
        for k in ("planned", "sent", "failed", "icmp_errors", "waits", "syscalls"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.send_span_s = max(self.send_span_s, other.send_span_s)
        self.last_errno = other.last_errno or self.last_errno
        self.last_ns = max(self.last_ns, other.last_ns)


@dataclass(frozen=True)
class Hit:
    """The first datagram that passed the check: which socket got it, from where, what it said."""

    index: int
    src: tuple[str, int]
    payload: bytes


@dataclass
class RecvStats:
    """What the receive side of a pool saw (recv.c's counters, summed over the workers)."""

    received: int = 0
    rejected: int = 0  # datagrams that did not start with the expected bytes
    icmp_errors: int = 0  # drained from the sockets' error queues
    dropped_after_hit: int = 0  # read in the same call after the hit


__all__ = ["Burst", "BurstStats", "Hit", "PackedBurst", "RecvStats", "MAX_PACKETS", "MAX_PAYLOAD"]
