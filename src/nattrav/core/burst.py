"""Python face of burst.c: one call hands a whole packed burst to sendmmsg."""

from __future__ import annotations

from .._core import ffi, lib
from .errors import check
from .packed import BurstStats, PackedBurst

DEFAULT_TIMEOUT_MS = 10_000


def send_packed(fdmap, nfd: int, burst: PackedBurst, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> BurstStats:
    """Send the packets of `burst` whose source index maps to an fd >= 0 in `fdmap` (a cffi int[nfd]).
    Indices must already be checked against nfd (C checks again and refuses the whole burst)."""
    if burst.n and burst.src_max >= nfd:
        raise IndexError(f"socket index {burst.src_max} out of range 0..{nfd - 1}")
    if not 0 <= timeout_ms <= 3_600_000:
        raise ValueError("timeout_ms out of range")
    st = ffi.new("nt_burst_stats *")
    if burst.n == 0:
        return BurstStats()
    src = ffi.from_buffer("int32_t[]", burst.src)
    ports = ffi.from_buffer("uint16_t[]", burst.ports)
    ips = ffi.from_buffer("uint8_t[]", burst.ips)
    payload = ffi.from_buffer("uint8_t[]", burst.payload) if burst.payload else ffi.NULL
    check(
        lib.nt_burst_send(fdmap, nfd, src, burst.n, ips, len(burst.ips), ports, payload,
                          len(burst.payload), burst.payload_len, burst.rate, burst.ttl, timeout_ms, st),
        f"sending a burst of {burst.n} packets",
    )
    return BurstStats(
        planned=st.planned, sent=st.sent, failed=st.failed, icmp_errors=st.icmp_errors,
        waits=st.waits, syscalls=st.syscalls, elapsed_s=st.elapsed_ns / 1e9,
        send_span_s=(st.last_ns - st.first_ns) / 1e9 if st.sent else 0.0, last_errno=st.last_errno,
        last_ns=st.last_ns,
    )


__all__ = ["send_packed", "DEFAULT_TIMEOUT_MS"]
