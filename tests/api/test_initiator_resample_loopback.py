"""A long-held connect over real sockets on loopback (proto/rendezvous/held.py): the listener accepts
late, the server asks the initiator for fresh samples (its connect's answer is a "resample", its
"sampled" gets the session), then the listener, and the session connects. The rendezvous server runs
in this process (its state is read); STUN is a real nattrav-server's on 127.0.0.1 and 127.0.0.2."""

from __future__ import annotations

import pytest
import trio

from nattrav.api import udp
from nattrav.proto.rendezvous import RendezvousServer
from tests.api.test_sample_beacon import _session


async def _late(servers, monkeypatch, *, delay: float, resample_after: float | None, beacons: bool = True,
                initiator_wait: float = 1.0):
    state = RendezvousServer(start_margin=0.05, resample_after=resample_after, initiator_wait=initiator_wait)
    return await _session(servers, monkeypatch, beacons=beacons, state=state, accept_delay=delay)


@pytest.mark.parametrize("beacons", [True, False])
async def test_a_late_accept_gets_the_initiators_fresh_samples_then_the_listeners(servers, monkeypatch, beacons):
    mine, theirs, state = await _late(servers, monkeypatch, delay=0.6, resample_after=0.3, beacons=beacons)
    names = [ph for ph, _ in theirs]
    assert ("resample", {"initiator": True}) in theirs and "connected" in names
    assert names.index("resample") < names.index("plan")
    assert "resample" in [ph for ph, _ in mine]  # the listener after it (with or without a beacon)
    assert state.stats["initiator_resamples"] == 1 and state.stats["initiator_timeouts"] == 0


async def test_a_quick_accept_or_a_server_that_never_asks_costs_the_initiator_nothing(servers, monkeypatch):
    _, theirs, state = await _late(servers, monkeypatch, delay=0.6, resample_after=None)
    assert "resample" not in [ph for ph, _ in theirs] and "connected" in [ph for ph, _ in theirs]
    _, theirs, state = await _late(servers, monkeypatch, delay=0.0, resample_after=0.3)
    assert "resample" not in [ph for ph, _ in theirs] and state.stats["initiator_resamples"] == 0


async def test_an_initiator_too_slow_to_sample_still_gets_its_session(servers, monkeypatch):
    """Its samples come after the server stopped waiting: the session on its old ones answers it."""
    real = udp.UdpTransport.refresh

    async def slow(self, ep, emit):
        await trio.sleep(0.5)
        await real(self, ep, emit)

    monkeypatch.setattr(udp.UdpTransport, "refresh", slow)
    mine, theirs, state = await _late(servers, monkeypatch, delay=0.6, resample_after=0.3, initiator_wait=0.2)
    assert ("resample", {"initiator": True}) in theirs and "connected" in [ph for ph, _ in theirs]
    assert state.stats["initiator_timeouts"] == 1


async def test_samples_aged_before_the_connect_leaves_are_taken_again_first(servers, monkeypatch):
    """The endpoint is made while the rendezvous connection comes up; when the rest (here the relay
    allocation) takes long, the initiator samples again before its connect leaves
    (held.stale_at_connect), so the peer's windows are not sized for the wait."""
    from nattrav.api import session as api_session

    real = api_session.relay.allocate

    async def slow(*args, **kw):
        await trio.sleep(0.8)
        return await real(*args, **kw)

    monkeypatch.setattr(api_session.relay, "allocate", slow)
    _, theirs, _ = await _late(servers, monkeypatch, delay=0.0, resample_after=None)
    names = [ph for ph, _ in theirs]
    stale = [d for ph, d in theirs if ph == "resample"]
    assert stale and stale[0]["initiator"] is True and stale[0]["age"] > 0.5, theirs
    assert names.index("resample") < names.index("rendezvous-connect") < names.index("connected")


def test_stale_at_connect_by_the_servers_rule():
    from nattrav.proto.rendezvous.held import RESAMPLE_AFTER, RESAMPLE_RTTS, stale_at_connect

    assert not stale_at_connect(None, 0.1) and not stale_at_connect(float("nan"), 0.1)
    assert not stale_at_connect(RESAMPLE_AFTER, None) and stale_at_connect(RESAMPLE_AFTER + 0.01, None)
    assert not stale_at_connect(RESAMPLE_RTTS * 0.2, 0.2) and stale_at_connect(RESAMPLE_RTTS * 0.2 + 0.01, 0.2)
    assert stale_at_connect(RESAMPLE_AFTER + 0.01, float("inf"))  # a nonsense round trip counts 0
