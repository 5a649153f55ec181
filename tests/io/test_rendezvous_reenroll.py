"""Issue 14 item 7 and the fault harness: a rendezvous client notices a server that vanished (even
silently, with no FIN or RST) and enrolls again by itself, keeping its peer ID, secret and info, so a
listener is reachable again within about one keepalive instead of ~15 minutes of TCP retries."""

from __future__ import annotations

import random

import pytest
import trio

from nattrav.errors import NameTaken, ServerGone
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto import rendezvous as rvp
from nattrav.proto.rendezvous import RendezvousServer


class BlackholeProxy:
    """TCP proxy in front of the server; blackhole() silently stops forwarding the connections open
    now (nothing is closed: what a crashed host or a dropped route looks like), later ones pass."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.links: list[dict] = []

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as n:
            await n.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(listeners[0].socket.getsockname()[:2])

    def blackhole(self):
        for link in self.links:
            link["dead"] = True

    async def _handle(self, down):
        link = {"dead": False}
        self.links.append(link)
        up = await trio.open_tcp_stream(*self.upstream)

        async def pump(src, dst):
            try:
                while data := await src.receive_some(65536):
                    if not link["dead"]:
                        await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if not link["dead"]:
                await trio.aclose_forcefully(dst)

        async with up, down:
            async with trio.open_nursery() as n:
                n.start_soon(pump, down, up)
                n.start_soon(pump, up, down)


async def _connect_once(addr, target):
    async with open_rendezvous(addr) as c:
        return await c.connect(target, timeout=5)


async def test_a_silently_vanished_server_is_noticed_and_the_listener_enrolls_again(nursery):
    state = RendezvousServer(keepalive=0.3, keepalive_timeout=1.0)
    server = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    proxy = BlackholeProxy(server)
    via = await nursery.start(proxy.serve)
    async with open_rendezvous(via, info={"v": 1}) as listener:
        peer_id, secret = listener.peer_id, listener.secret
        await listener.update_info({"v": 2})
        got = {}

        async def accept_one():
            offer = await listener.next_offer()  # waits across the re-enrollment
            got["session"] = await listener.accept(offer)

        async with trio.open_nursery() as n:
            n.start_soon(accept_one)
            proxy.blackhole()
            with trio.fail_after(10):
                while listener.enrollments < 2:
                    await trio.sleep(0.05)
            assert (listener.peer_id, listener.secret) == (peer_id, secret)
            with trio.fail_after(10):
                session = await _connect_once(server, peer_id)
        assert session.peer_info["v"] == 2  # the info published before the loss is published again
        assert got["session"].session_id == session.session_id


class RestartableServer:
    """serve_rendezvous on a fixed port that can be stopped (every connection drops) and started
    again with a fresh, empty registry: a server process restarted by its service manager."""

    def __init__(self, nursery, **options):
        self.nursery, self.options = nursery, options
        self.port = 0
        self.state: RendezvousServer | None = None
        self._scope: trio.CancelScope | None = None

    async def start(self):
        self.state = RendezvousServer(**self.options)
        self._scope = trio.CancelScope()

        async def run(task_status):
            with self._scope:
                await serve_rendezvous("127.0.0.1", self.port, state=self.state, task_status=task_status)

        self.port = (await self.nursery.start(run))[1]

    async def restart(self, down_for: float = 0.0):
        self._scope.cancel()
        await trio.sleep(down_for)
        await self.start()


async def test_listener_is_reachable_again_after_a_server_restart(nursery):
    server = RestartableServer(nursery, keepalive=1.0)
    await server.start()
    addr = ("127.0.0.1", server.port)
    async with open_rendezvous(addr, info={"x": 1}) as listener:
        peer_id = listener.peer_id  # minted by the first server, kept across the restart
        t0 = trio.current_time()
        await server.restart(down_for=0.5)
        with trio.fail_after(10):
            while listener.enrollments < 2:
                await trio.sleep(0.02)
        # back within the keepalive of the server coming up (the backoff is capped by it)
        assert trio.current_time() - t0 < 0.5 + listener.keepalive + 0.5
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(_accept_next, listener)
                session = await _connect_once(addr, peer_id)
        assert session.peer_id == peer_id and session.peer_info["x"] == 1
        assert server.state.peers[peer_id].conn is not None


async def test_requests_fail_fast_while_reconnecting_and_work_after(nursery):
    server = RestartableServer(nursery, keepalive=1.0)
    await server.start()
    async with open_rendezvous(("127.0.0.1", server.port), name="alice") as a:
        server._scope.cancel()
        with trio.fail_after(2):
            with pytest.raises(ServerGone):
                while True:  # until the loss is seen: then at once, not after some timeout
                    await a.ping()
                    await trio.sleep(0.01)
        await server.start()
        with trio.fail_after(10):
            while a.enrollments < 2:
                await trio.sleep(0.02)
        assert await a.ping() < 1


async def test_a_peer_replaced_by_its_own_name_does_not_fight_back(nursery):
    state = RendezvousServer(keepalive=0.2)
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    secret = "s" * 20
    async with open_rendezvous(addr, name="alice", secret=secret) as old:
        async with open_rendezvous(addr, name="alice", secret=secret) as new:
            with trio.fail_after(5):
                with pytest.raises(NameTaken):
                    await old.next_offer()  # replaced: it gives up instead of taking the name back
            await trio.sleep(1)
            assert state.peers["alice"].conn is not None and old.enrollments == 1
            assert await new.ping() < 1


async def _accept_next(rv):
    await rv.accept(await rv.next_offer())


def test_reconnect_delays_back_off_with_jitter_up_to_a_cap():
    rng = random.Random(3)
    delays = [[rvp.reconnect_delay(n, cap=10.0, rng=rng.random) for n in range(12)] for _ in range(200)]
    assert all(d[0] == 0 for d in delays)  # the first retry is immediate (a restart, a blip)
    for n in range(1, 12):
        column = [d[n] for d in delays]
        ceiling = min(10.0, 0.25 * 2 ** (n - 1))
        assert all(ceiling / 2 <= x <= ceiling for x in column)
        assert len(set(column)) > 100  # jitter: thousands of peers do not come back in lockstep
