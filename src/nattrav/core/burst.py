"""Python face of burst.c: one call hands a whole packed plan to sendmmsg."""

from __future__ import annotations

from .._core import ffi, lib
from .errors import check
from .plan import BurstStats, PackedPlan

DEFAULT_TIMEOUT_MS = 10_000


def send_packed(fdmap, nfd: int, plan: PackedPlan, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> BurstStats:
    """Send the packets of `plan` whose source index maps to an fd >= 0 in `fdmap` (a cffi int[nfd]).
    Indices must already be checked against nfd (C checks again and refuses the whole plan)."""
    if plan.n and plan.src_max >= nfd:
        raise IndexError(f"socket index {plan.src_max} out of range 0..{nfd - 1}")
    if not 0 <= timeout_ms <= 3_600_000:
        raise ValueError("timeout_ms out of range")
    st = ffi.new("nt_burst_stats *")
    if plan.n == 0:
        return BurstStats()
    src = ffi.from_buffer("int32_t[]", plan.src)
    ports = ffi.from_buffer("uint16_t[]", plan.ports)
    ips = ffi.from_buffer("uint8_t[]", plan.ips)
    payload = ffi.from_buffer("uint8_t[]", plan.payload) if plan.payload else ffi.NULL
    check(
        lib.nt_burst_send(fdmap, nfd, src, plan.n, ips, len(plan.ips), ports, payload,
                          len(plan.payload), plan.payload_len, plan.rate, plan.ttl, timeout_ms, st),
        f"sending a burst of {plan.n} packets",
    )
    return BurstStats(
        planned=st.planned, sent=st.sent, failed=st.failed, icmp_errors=st.icmp_errors,
        waits=st.waits, syscalls=st.syscalls, elapsed_s=st.elapsed_ns / 1e9,
        send_span_s=(st.last_ns - st.first_ns) / 1e9 if st.sent else 0.0, last_errno=st.last_errno,
        last_ns=st.last_ns,
    )


__all__ = ["send_packed", "DEFAULT_TIMEOUT_MS"]
