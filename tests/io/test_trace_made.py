"""trace_hops calls made() exactly once, however the trace ends (no lab: loopback only)."""

from __future__ import annotations

import pytest

from nattrav.io.trace import trace_hops


async def test_made_is_called_once_when_the_trace_cannot_start():
    calls = []
    with pytest.raises(OSError):  # not an address of this host: bind fails before any probe
        await trace_hops(("127.0.0.1", 9), src_ip="192.0.2.77", made=lambda: calls.append(1))
    assert calls == [1]


async def test_made_is_called_once_when_the_trace_times_out():
    calls = []
    await trace_hops(("127.0.0.1", 9), max_ttl=2, timeout=0.05, made=lambda: calls.append(1))
    assert calls == [1]
