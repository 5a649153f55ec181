"""The API for experiments (issue 17) on loopback, through a real nattrav-server: the planner's knobs
reach plan(), every event the caller sees is on the path's event log with its phase timings, and the
path counts what crossed it (here: a traffic measurement over it)."""

from __future__ import annotations

import pytest
import trio

from nattrav.api import SessionOptions, connect, listen
from nattrav.api import udp as api_udp
from nattrav.errors import UsageError
from nattrav.experiment import traffic

KNOBS = {"target": 0.9, "horizon": 0.5, "max_sockets": 64, "birthday_sockets": 32, "max_window": 128,
         "best_effort_flows": 256}


async def test_knobs_reach_the_planner_and_the_path_carries_events_timings_and_counters(servers, monkeypatch):
    seen_knobs = []
    real_plan = api_udp.plan

    def spy(*args, **kw):
        seen_knobs.append({k: kw.get(k) for k in KNOBS})
        return real_plan(*args, **kw)

    monkeypatch.setattr(api_udp, "plan", spy)
    events = {"a": [], "b": []}
    out = {}
    with trio.fail_after(40):
        async with listen(servers["server"], stun=servers["stun"], cache=False, **KNOBS,
                          on_event=lambda ph, d: events["b"].append(ph)) as lst:
            async with trio.open_nursery() as nursery:
                async def listener_side():
                    async with lst.accept() as path:
                        out["rx"] = await traffic.serve_udp_receiver(traffic.PathChannel(path), timeout=20)
                        out["b"] = path
                nursery.start_soon(listener_side)
                async with connect(servers["server"], lst.peer_id, stun=servers["stun"], cache=False, **KNOBS,
                                   on_event=lambda ph, d: events["a"].append(ph)) as path:
                    out["tx"] = await traffic.run_udp_sender(traffic.PathChannel(path), rate_bps=1e6, size=600,
                                                             duration=0.3)
                    out["a"] = path
    assert seen_knobs == [KNOBS, KNOBS]  # both sides planned with the experiment's values
    a, b = out["a"], out["b"]
    assert [ph for _, ph, _ in a.events] == events["a"]  # every event the caller saw, in order
    assert {"discovery", "plan", "punch", "connected"} <= set(a.timings["first"])
    spans = a.timings["spans"]
    assert {"discovery", "punch", "total"} <= set(spans) and spans["total"] >= spans["punch"] >= 0
    assert "offer" in b.timings["first"] and "punch" in b.timings["spans"]
    stats = a.statistics()
    assert stats["datagrams_sent"] >= out["tx"]["sender"]["sent"] > 0
    assert stats["bytes_sent"] >= out["tx"]["sender"]["sent"] * 600
    assert b.statistics()["datagrams_received"] >= out["rx"]["received"] > 0
    assert stats["punch"]["sent"] >= 1 and stats["attempts"] and stats["rtt_samples"] >= 1


@pytest.mark.parametrize("bad", [{"target": 1.0}, {"target": 0}, {"horizon": -1}, {"max_sockets": 0},
                                 {"max_window": 10**7}, {"workers": 0}, {"birthday_sockets": 2.5}])
def test_a_bad_knob_is_a_usage_error_up_front(bad):
    with pytest.raises(UsageError):
        SessionOptions(**bad)


async def test_connect_refuses_a_bad_knob_before_any_packet():
    with pytest.raises(UsageError, match="target"):
        async with connect("192.0.2.1:7000", "peer", target=2.0):
            pass  # pragma: no cover
