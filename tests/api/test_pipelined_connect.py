"""connect() sends its connect right behind the enroll when the endpoint is ready before the enroll
reply (issue 13), on loopback: a rendezvous server whose registry takes its time over enrollments
makes the endpoint the earlier of the two. The pipelined connect gets a session; with a skewed clock
the server answers the timed enroll with a challenge (at once: no registry call), and the connect
goes behind the enroll that answers it (one session on the server; the frames a doubted enroll
refuses are tests/io/test_rendezvous_pipelined.py's); a guess at the STUN server that the early
connect published is kept though the tier names another; an unknown peer is the same error with
and without the pipeline. The connect goes early only where the behaviour cache knows the server
granted us no relay when we last enrolled there (a grant comes in the enroll reply, too late for an
early connect); not knowing, it waits for the reply."""

from __future__ import annotations

import pytest
import trio

from nattrav.api import connect, listen
from nattrav.api.behavior_cache import BehaviorCache
from nattrav.errors import UnknownPeer
from nattrav.io import rendezvous_client
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.rendezvous import MemoryRegistry, RendezvousServer

ENROLL_DELAY = 0.8  # longer than a loopback endpoint takes (discovery with cache=False)


class SlowEnrollments(MemoryRegistry):
    async def enroll(self, *args, **kwargs):
        await trio.sleep(ENROLL_DELAY)
        return await super().enroll(*args, **kwargs)


async def _slow_server(nursery, **options) -> tuple[RendezvousServer, tuple[str, int]]:
    state = RendezvousServer(registry=SlowEnrollments(), **options)
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    return state, addr


def _known_no_relay(tmp_path, server) -> BehaviorCache:
    """A cache that saw `server` grant no relay (as a run before this one would have noted)."""
    cache = BehaviorCache(tmp_path / "behavior.json")
    assert cache.note_relay(server, False)
    return cache


async def _pair(server, cache: BehaviorCache | bool = False, **options) -> list[tuple[str, dict]]:
    """listen() + connect() with a line across; the connector's events."""
    events: list[tuple[str, dict]] = []
    with trio.fail_after(30):
        async with listen(server, cache=False, **options) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as path:
                        assert await path.stream.receive_some() == b"hi"

                nursery.start_soon(listener_side)
                async with connect(server, lst.peer_id, cache=cache, on_event=lambda p, d: events.append((p, d)),
                                   **options) as path:
                    await path.stream.send_all(b"hi")
    return events


def _connects(events) -> list[dict]:
    return [d for p, d in events if p == "rendezvous-connect"]


async def test_the_connect_goes_behind_the_enroll_and_connects(servers, tmp_path):
    async with trio.open_nursery() as nursery:
        state, rv = await _slow_server(nursery)
        events = await _pair(rv, _known_no_relay(tmp_path, rv), stun=servers["stun"])
        phases = [p for p, _ in events]
        assert _connects(events) == [{"peer": _connects(events)[0]["peer"], "early": True}]
        # the endpoint was ready before the enroll reply (the "rendezvous" event)
        assert phases.index("mapping") < phases.index("rendezvous"), phases
        assert state.stats["sessions"] == 1
        nursery.cancel_scope.cancel()


async def test_without_the_pipeline_the_connect_waits_for_the_reply(servers, tmp_path):
    async with trio.open_nursery() as nursery:
        state, rv = await _slow_server(nursery)
        events = await _pair(rv, _known_no_relay(tmp_path, rv), stun=servers["stun"], pipeline=False)
        assert [d.get("early") for d in _connects(events)] == [None]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("known", ["nothing", "granted"])
async def test_a_server_that_may_grant_a_relay_gets_the_connect_after_its_reply(servers, tmp_path, known):
    # the relay rung needs our allocation in the connect's info, and the grant is in the reply
    cache = BehaviorCache(tmp_path / "behavior.json")
    async with trio.open_nursery() as nursery:
        state, rv = await _slow_server(nursery)
        if known == "granted":
            cache.note_relay(rv, True)
        events = await _pair(rv, cache, stun=servers["stun"])
        assert [d.get("early") for d in _connects(events)] == [None]
        assert state.stats["sessions"] == 1
        # this server granted none: noted, so the next connect may go in the enroll's flight
        assert cache.relay_granted(rv) is False
        nursery.cancel_scope.cancel()


async def test_a_skewed_clock_falls_back_and_still_connects(servers, monkeypatch, tmp_path):
    async with trio.open_nursery() as nursery:
        state, rv = await _slow_server(nursery)  # (its wall clock taken before the skew)
        cache = _known_no_relay(tmp_path, rv)
        real = rendezvous_client.time.time
        monkeypatch.setattr(rendezvous_client.time, "time", lambda: real() + 120.0)  # both sides: challenges
        events = await _pair(rv, cache, stun=servers["stun"])
        assert [d.get("early") for d in _connects(events)] == [True]  # behind the challenge's enroll
        assert state.stats["timed_fallbacks"] == 2 and state.stats["sessions"] == 1
        nursery.cancel_scope.cancel()


async def test_a_published_stun_guess_is_kept(servers, monkeypatch, tmp_path):
    stun = servers["stun"]
    monkeypatch.setattr("nattrav.api.endpoint.STUN_PORT", stun[1])  # the guess answers
    async with trio.open_nursery() as nursery:
        # the tier names only another address: without the early connect the guess would be dropped
        state, rv = await _slow_server(nursery, stun=[("127.0.0.2", stun[1])])
        events = await _pair(rv, _known_no_relay(tmp_path, rv))
        assert [d.get("early") for d in _connects(events)] == [True]
        assert "discovery-restart" not in [p for p, _ in events]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pipeline", [True, False])
async def test_an_unknown_peer_is_the_same_error_either_way(servers, pipeline, tmp_path):
    async with trio.open_nursery() as nursery:
        _, rv = await _slow_server(nursery)
        cache = _known_no_relay(tmp_path, rv)
        with trio.fail_after(20), pytest.raises(UnknownPeer) as err:
            async with connect(rv, "nobody", cache=cache, stun=servers["stun"], pipeline=pipeline):
                pass
        assert "nobody" in str(err.value)
        nursery.cancel_scope.cancel()
