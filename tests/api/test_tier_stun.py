"""The API measures its NAT with the STUN servers the rendezvous tier names at enrollment when the
caller named none (issue 18: STUN scales apart from the rendezvous instances): on loopback, a
rendezvous server whose host has no STUN server on port 3478 hands out the fixture's STUN server,
and listen() and connect() both find it there; a caller's own stun= still wins."""

from __future__ import annotations

import trio

from nattrav.api import connect, listen
from nattrav.io.rendezvous_server import serve_rendezvous


async def _pair(server, **options) -> tuple[list, list]:
    """listen() + connect() on loopback (QUIC, the default); the (listener's, connector's) STUN
    servers, as their discovery events name them."""
    seen_b: list = []
    seen_a: list = []

    def events(into):
        return lambda phase, detail: into.append(tuple(detail["stun"])) if phase == "discovery" else None

    with trio.fail_after(30):
        async with listen(server, cache=False, on_event=events(seen_b), **options) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as path:
                        assert await path.stream.receive_some() == b"hi"

                nursery.start_soon(listener_side)
                async with connect(server, lst.peer_id, cache=False, on_event=events(seen_a),
                                   **options) as path:
                    await path.stream.send_all(b"hi")
    return seen_b, seen_a


async def test_the_tiers_stun_servers_are_used_when_the_caller_names_none(servers):
    stun = servers["stun"]
    async with trio.open_nursery() as nursery:
        # 127.0.0.1:3478 is not the fixture's STUN port: the old default would find nobody there
        assert stun[1] != 3478
        tier = [stun, ("127.0.0.2", stun[1])]  # the fixture answers STUN on both addresses
        rv = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, stun=tier,
                                                                      task_status=task_status))
        seen_b, seen_a = await _pair(rv)
        # discovery started at once against the rendezvous host's STUN port (a guess, before the
        # enroll reply), then, the tier naming other servers, again against the tier's first; the
        # server rotates its list per enrollment: the two sides were given different first ones
        guess = ("127.0.0.1", 3478)
        assert seen_b[0] == seen_a[0] == guess
        assert len(seen_b) == len(seen_a) == 2 and {seen_b[1], seen_a[1]} == set(tier)
        nursery.cancel_scope.cancel()


async def test_a_stun_server_the_caller_names_wins(servers):
    stun = servers["stun"]
    async with trio.open_nursery() as nursery:
        # the tier names another of the fixture's STUN addresses; the caller's own is the one measured
        rv = await nursery.start(lambda task_status: serve_rendezvous(
            "127.0.0.1", 0, stun=[("127.0.0.2", stun[1])], task_status=task_status))
        seen_b, seen_a = await _pair(rv, stun=stun)
        assert set(seen_b + seen_a) == {stun}
        nursery.cancel_scope.cancel()


async def test_discovery_started_before_the_enroll_reply_is_kept_when_the_tier_lists_it(servers, monkeypatch):
    """The tier lists the rendezvous host's STUN server: the discovery started before the enroll
    reply (against the rendezvous host's default STUN port) is the one kept, not run again."""
    stun = servers["stun"]
    monkeypatch.setattr("nattrav.api.endpoint.STUN_PORT", stun[1])  # the fixture's "default" port
    async with trio.open_nursery() as nursery:
        # listed second: the rotation may put the other first, the guess is kept all the same
        tier = [("127.0.0.2", stun[1]), stun]
        rv = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, stun=tier,
                                                                      task_status=task_status))
        for _ in range(2):  # both rotations
            seen_b, seen_a = await _pair(rv)
            assert seen_b == seen_a == [stun]
        nursery.cancel_scope.cancel()
