"""The hop trace's one flow is made before the punch socket samples (api/udp.py open_endpoint): on
a sequential NAT a new mapping among the samples reads as a foreign flow, and every prediction
window behind it widens (a listener's next endpoint, opened with the behaviour it already knows,
took its samples while its trace was still starting: 1 "foreign" flow per trial, windows of 30-80
ports where 1-2 hit, the flow budget spent by back-to-back sessions). On loopback: the trace is a
stand-in that makes its flow late, and the samples are timed."""

from __future__ import annotations

import pytest
import trio

from nattrav.api import udp
from nattrav.io.stun_discover import discover
from nattrav.proto.hops import DEFAULT_HOPS
from nattrav.proto.vocab import Allocation, Mapping

TRACE_LATE = 0.15


def _instrument(monkeypatch) -> dict[str, float]:
    times: dict[str, float] = {}

    async def slow_trace(stun, src_ip, emit, made=None):
        await trio.sleep(TRACE_LATE)
        times["made"] = trio.current_time()
        if made is not None:
            made()
        return DEFAULT_HOPS

    real_sample = udp._sample

    async def timed_sample(*args, **kwargs):
        times.setdefault("sampled", trio.current_time())
        return await real_sample(*args, **kwargs)

    monkeypatch.setattr(udp, "measure_hops", slow_trace)
    monkeypatch.setattr(udp, "_sample", timed_sample)
    return times


async def _open(servers, behavior) -> None:
    with trio.fail_after(20):
        ep = await udp.open_endpoint(servers["stun"], behavior=behavior)
        ep.sock.close()


async def test_a_known_apdm_behaviour_samples_after_the_trace_made_its_flow(servers, monkeypatch):
    known = await discover(servers["stun"])
    # as a listener behind a sequential symmetric NAT knows itself after its first endpoint
    known.mapping, known.allocation, known.delta = Mapping.APDM, Allocation.SEQUENTIAL, 1
    times = _instrument(monkeypatch)
    await _open(servers, known)
    assert times["sampled"] >= times["made"], times


async def test_a_known_eim_behaviour_does_not_wait_for_the_trace(servers, monkeypatch):
    """The control: an EIM mapping is one port for every destination, a new flow cannot move it,
    so its samples go at once, the trace still running."""
    known = await discover(servers["stun"])
    assert known.mapping is Mapping.EIM  # loopback maps nothing
    times = _instrument(monkeypatch)
    await _open(servers, known)
    assert times["sampled"] < times["made"], times


async def test_a_complete_trace_stands_for_the_next_ones_on_the_same_route(monkeypatch):
    """Back-to-back endpoints (a listener's next peers) reuse a complete trace of their route for
    RECENT_TRACE seconds: routers rate-limit ICMP, so a trace a second goes silent at the outer hops
    and reads a NAT layer too few. An incomplete trace (a silent hop) is never kept; the cache's
    background refresh always traces."""
    from nattrav.api import endpoint
    from nattrav.proto.hops import read_trace

    calls: list[int] = []
    complete = read_trace({1: "192.168.1.1", 2: "100.64.0.1", 3: "203.0.113.1"}, 4, 8)
    silent = read_trace({1: "192.168.1.1"}, 4, 8)
    readings = [silent, complete, silent]

    async def fake_trace(stun, *, src_ip=None, made=None):
        calls.append(1)
        if made is not None:
            made()
        return readings[len(calls) - 1]

    monkeypatch.setattr(endpoint, "trace_hops", fake_trace)
    monkeypatch.setattr(endpoint, "_recent", {})
    stun, quiet = ("127.0.0.1", 3478), (lambda phase, detail: None)
    made: list[int] = []
    assert await endpoint.measure_hops(stun, None, quiet) == silent  # not kept: traced again
    assert await endpoint.measure_hops(stun, None, quiet) == complete
    assert await endpoint.measure_hops(stun, None, quiet, lambda: made.append(1)) == complete  # reused
    assert len(calls) == 2 and made == [1]
    # traced again, and the hops its rate-limited routers left silent are the last complete trace's
    # of the same path (the CGN's hop: without it the opening TTL would read 2, not 3)
    again = await endpoint.measure_hops(stun, None, quiet, reuse=False)
    assert len(calls) == 3 and again == complete and again.low_ttl == complete.low_ttl > silent.low_ttl
    monkeypatch.setattr(endpoint, "RECENT_TRACE", 0.0)
    readings.append(complete)
    assert await endpoint.measure_hops(stun, None, quiet) == complete and len(calls) == 4  # too old
    other_path = read_trace({1: "192.168.1.1"}, 5, 8)  # the server one hop further: not the same path
    readings.append(other_path)
    assert await endpoint.measure_hops(stun, None, quiet) == other_path
    monkeypatch.setattr(endpoint, "KEEP_TRACE", 0.0)  # a complete trace too old to stand for this one
    readings.append(silent)
    assert await endpoint.measure_hops(stun, None, quiet) == silent


async def test_a_trace_that_fails_before_its_flow_still_releases_the_samples(monkeypatch):
    """open_endpoint samples an APDM socket only once the trace says its flow is made: a trace that
    raises before sending anything (a bug, an odd route) must say so too, or the connect waits for
    ever on it instead of failing with the trace's error."""
    from nattrav.api import endpoint

    def broken_route(stun, src_ip):
        raise RuntimeError("no route")

    monkeypatch.setattr(endpoint, "route", broken_route)
    made: list[int] = []
    with pytest.raises(RuntimeError, match="no route"):  # the caller sees the error, not a hang
        await endpoint.measure_hops(("127.0.0.1", 3478), None, lambda phase, detail: None, lambda: made.append(1))
    assert made == [1]

    async def made_twice(stun, *, src_ip=None, made=None):  # a trace that tells, then fails
        made()
        raise OSError("unreachable")

    monkeypatch.setattr(endpoint, "route", lambda stun, src_ip: (stun, None))
    monkeypatch.setattr(endpoint, "trace_hops", made_twice)
    monkeypatch.setattr(endpoint, "_recent", {})
    made.clear()
    assert not (await endpoint.measure_hops(("127.0.0.1", 3478), None, lambda p, d: None, lambda: made.append(1))).measured
    assert made == [1]  # once, however often the trace said it
