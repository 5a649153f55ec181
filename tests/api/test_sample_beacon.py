"""The sample beacon over real sockets on loopback (proto/rendezvous/beacon.py): a listener whose
samples need refreshing accepts with a beacon instead of a STUN round trip, the server starts the
session on it; a beacon the server never takes falls back to the listener's STUN samples; a server
without beacons gets today's refresh-then-accept. The rendezvous server runs in this process (its
state is read and hooked); STUN is a real nattrav-server's on 127.0.0.1 and 127.0.0.2."""

from __future__ import annotations

import trio

from nattrav.api import connect, listen
from nattrav.api import udp
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.rendezvous import RendezvousServer


async def _session(servers, monkeypatch, *, beacons: bool = True, drop: bool = False,
                   state: RendezvousServer | None = None, accept_delay: float = 0.0):
    """One connect to a listener whose samples are stale (so its accept must show fresh ones), on
    `state` (a server with a 50 ms start margin when None), the listener accepting `accept_delay`
    seconds late; (listener events, initiator events, server state)."""
    monkeypatch.setattr(udp, "EIM_SAMPLES_FRESH", 0.0)  # loopback maps like EIM: make its samples stale
    monkeypatch.setattr(udp, "STANDBY_EVERY", 600.0)
    if state is None:
        state = RendezvousServer(start_margin=0.05)
    if drop:  # the beacon never reaches the front (lost, or another process's port)
        monkeypatch.setattr(state, "beacon_received", lambda data, src, now: False)
    mine: list[tuple[str, dict]] = []
    theirs: list[tuple[str, dict]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            addr = await outer.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state, beacons=beacons,
                                                                          task_status=task_status))
            async with listen(addr, stun=servers["stun"], cache=False,
                              on_event=lambda ph, d: mine.append((ph, d))) as lst:
                async with trio.open_nursery() as nursery:

                    async def listener_side():
                        await trio.sleep(accept_delay)  # the offer waits in the client meanwhile
                        async with lst.accept() as path:
                            assert await path.stream.receive_some() == b"hi"

                    nursery.start_soon(listener_side)
                    async with connect(addr, lst.peer_id, stun=servers["stun"], cache=False,
                                       on_event=lambda ph, d: theirs.append((ph, d))) as path:
                        await path.stream.send_all(b"hi")
            outer.cancel_scope.cancel()
    return mine, theirs, state


def _after_offer(events):
    names = [ph for ph, _ in events]
    return names[names.index("offer"):]


async def test_the_accept_goes_with_a_beacon_and_the_session_starts_on_it(servers, monkeypatch):
    mine, theirs, state = await _session(servers, monkeypatch)
    after = _after_offer(mine)
    assert "beacon" in after and "resample" not in after
    mapping = [d for ph, d in mine if ph == "mapping" and d.get("beacon")]
    assert len(mapping) == 1 and mapping[0]["folded"] is True
    beacon_port = mapping[0]["ports"][0]
    assert state.beacons.stats["beacons"] == 1 and state.stats["beacon_fallbacks"] == 0
    # no STUN sampling between the offer and the accept: the only mapping event is the beacon's
    assert [ph for ph in after if ph == "mapping"] == ["mapping"]
    assert beacon_port == lst_port(mine)  # loopback maps nothing: the beacon shows the socket's own port
    assert "connected" in [ph for ph, _ in theirs]


def lst_port(events) -> int:
    """The listener's punch socket port: its first samples' public port (no NAT on loopback)."""
    return next(d["public"][1] for ph, d in events if ph == "mapping")


async def test_a_beacon_that_never_arrives_falls_back_to_stun_samples(servers, monkeypatch):
    mine, theirs, state = await _session(servers, monkeypatch, drop=True)
    after = _after_offer(mine)
    assert "beacon" in after and "resample" in after
    assert not [d for ph, d in mine if ph == "mapping" and d.get("beacon")]
    assert state.stats["beacon_fallbacks"] == 1 and state.beacons.stats["beacons"] == 0
    assert "connected" in [ph for ph, _ in theirs]


async def test_a_server_without_beacons_gets_the_refresh_first(servers, monkeypatch):
    mine, theirs, state = await _session(servers, monkeypatch, beacons=False)
    after = _after_offer(mine)
    assert "beacon" not in after and "mapping" in after and state.beacon_port is None
    assert "connected" in [ph for ph, _ in theirs]
