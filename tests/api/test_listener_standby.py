"""A listener waiting for its next peer keeps its EIM punch socket's mapping confirmed (api/udp.py's
keep_fresh): an offer then finds the samples fresh and the accept makes no refresh round trip. On
loopback, through a real nattrav-server with two STUN addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

from dataclasses import replace

import trio

from nattrav.api import connect, listen
from nattrav.api import udp
from nattrav.proto.vocab import Mapping


async def _session(servers, wait: float) -> list[tuple[str, dict]]:
    """listen(), then `wait` seconds, then connect(); the listener's events."""
    events: list[tuple[str, dict]] = []
    with trio.fail_after(30):
        async with listen(servers["server"], stun=servers["stun"], cache=False,
                          on_event=lambda ph, d: events.append((ph, d))) as lst:
            assert lst.endpoint.behavior.mapping is Mapping.EIM  # loopback maps nothing: EIM
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as path:
                        assert await path.stream.receive_some() == b"hi"

                nursery.start_soon(listener_side)
                await trio.sleep(wait)
                async with connect(servers["server"], lst.peer_id, stun=servers["stun"], cache=False) as path:
                    await path.stream.send_all(b"hi")
    return events


def _after_offer(events: list[tuple[str, dict]]) -> list[str]:
    names = [ph for ph, _ in events]
    return names[names.index("offer"):]


async def test_a_confirmed_mapping_spares_the_accept_its_refresh(servers, monkeypatch):
    monkeypatch.setattr(udp, "EIM_SAMPLES_FRESH", 1.0)
    monkeypatch.setattr(udp, "STANDBY_EVERY", 0.3)
    events = await _session(servers, 1.5)
    standby = [d for ph, d in events if ph == "standby"]
    assert len(standby) >= 3 and all(d["fresh"] for d in standby), standby
    assert "mapping" not in _after_offer(events)  # no samples taken between the offer and the accept


async def test_without_the_standby_an_old_mapping_is_sampled_again(servers, monkeypatch):
    """The control: the same wait with the standby's period longer than the wait -- the accept
    samples again (the round trip the standby saves)."""
    monkeypatch.setattr(udp, "EIM_SAMPLES_FRESH", 1.0)
    monkeypatch.setattr(udp, "STANDBY_EVERY", 60.0)
    events = await _session(servers, 1.5)
    assert "standby" not in [ph for ph, _ in events]
    assert "mapping" in _after_offer(events)


async def test_a_changed_mapping_is_not_marked_fresh(servers, monkeypatch):
    """A binding that shows another public address than the report's marks nothing and stops: the
    accept's refresh measures as before."""
    with trio.fail_after(20):
        ep = await udp.open_endpoint(servers["stun"])
        try:
            ep.report = replace(ep.report, public=("127.0.0.1", 1))  # as if the NAT had moved us
            before = ep.sampled_at
            seen: list[dict] = []
            monkeypatch.setattr(udp, "STANDBY_EVERY", 0.05)
            await udp.keep_fresh(ep, lambda ph, d: seen.append(d))  # returns: nothing to keep
            assert seen and seen[-1]["fresh"] is False
            assert ep.sampled_at == before
        finally:
            ep.sock.close()
