"""The hop trace's one flow is made before the punch socket samples (api/udp.py open_endpoint): on
a sequential NAT a new mapping among the samples reads as a foreign flow, and every prediction
window behind it widens (a listener's next endpoint, opened with the behaviour it already knows,
took its samples while its trace was still starting: 1 "foreign" flow per trial, windows of 30-80
ports where 1-2 hit, the flow budget spent by back-to-back sessions). On loopback: the trace is a
stand-in that makes its flow late, and the samples are timed."""

from __future__ import annotations

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
