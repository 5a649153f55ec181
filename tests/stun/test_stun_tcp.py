"""STUN over TCP: connection slots cannot be held by one source, nor for long (issue 14, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
import trio.testing

from nattrav.io.stun_tcp import StunTcpServer, serve_stun_tcp, source_key
from nattrav.proto.stun import binding_request, parse
from nattrav.proto.stun_attrs import Class
from nattrav.proto.stun_server import StunServerConfig

from .test_server import loopback_pair


class _Peer:
    """A memory stream that looks like a SocketStream to the server (addresses only)."""

    class _Sock:
        def __init__(self, peer, local):
            self.peer, self.local = peer, local

        def getpeername(self):
            return self.peer

        def getsockname(self):
            return self.local

    def __init__(self, stream, peer=("192.0.2.9", 40000), local=("198.51.100.1", 3478)):
        self._s, self.socket = stream, self._Sock(peer, local)

    async def send_all(self, data):
        await self._s.send_all(data)

    async def receive_some(self, n=None):
        return await self._s.receive_some(n)

    async def aclose(self):
        await self._s.aclose()


async def _served(nursery, srv: StunTcpServer, peer=("192.0.2.9", 40000)):
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(srv.handle, _Peer(server, peer))
    return client


async def _closed_after(client) -> float:
    """Virtual seconds until the server closes the stream (drains whatever it sends)."""
    t0 = trio.current_time()
    while await client.receive_some(4096):
        pass
    return trio.current_time() - t0


async def test_a_connection_that_asks_nothing_is_closed_soon(nursery, autojump_clock):
    srv = StunTcpServer(StunServerConfig(ip="198.51.100.1"))
    client = await _served(nursery, srv)
    assert await _closed_after(client) == pytest.approx(5.0)
    assert srv.stats["idle_closed"] == 1 and srv.active == 0


async def test_after_its_answer_a_connection_gets_a_short_idle_timeout(nursery, autojump_clock):
    srv = StunTcpServer(StunServerConfig(ip="198.51.100.1"))
    client = await _served(nursery, srv)
    await client.send_all(binding_request().encode())
    answer = parse(await client.receive_some(4096))
    assert answer.cls == Class.SUCCESS
    assert await _closed_after(client) == pytest.approx(2.0)


async def test_a_connection_is_closed_after_30_s_however_busy(nursery, autojump_clock):
    srv = StunTcpServer(StunServerConfig(ip="198.51.100.1"))
    client = await _served(nursery, srv)
    t0 = trio.current_time()
    answers = 0
    with trio.move_on_after(120):
        try:
            while True:
                await client.send_all(binding_request().encode())
                if not await client.receive_some(4096):
                    break
                answers += 1
                await trio.sleep(1.5)  # always within the idle timeout
        except trio.BrokenResourceError:
            pass  # closed while we slept
    assert trio.current_time() - t0 == pytest.approx(30.0, abs=1.6) and answers == 20


async def test_one_source_cannot_hold_more_than_8_connections(nursery, autojump_clock):
    srv = StunTcpServer(StunServerConfig(ip="198.51.100.1"))
    held = [await _served(nursery, srv, ("192.0.2.9", 40000 + i)) for i in range(8)]
    await trio.testing.wait_all_tasks_blocked()
    assert srv.active == 8
    ninth = await _served(nursery, srv, ("192.0.2.9", 41000))
    await ninth.send_all(binding_request().encode())
    assert await ninth.receive_some(4096) == b""  # closed without an answer
    # another source is served; IPv6 sources count per /64
    other = await _served(nursery, srv, ("192.0.2.10", 40000))
    await other.send_all(binding_request().encode())
    assert parse(await other.receive_some(4096)).cls == Class.SUCCESS
    v6 = [await _served(nursery, srv, (f"2001:db8:0:1::{i + 1:x}", 1)) for i in range(8)]
    await trio.testing.wait_all_tasks_blocked()
    v6.append(await _served(nursery, srv, ("2001:db8:0:1:ffff::1", 1)))
    await v6[-1].send_all(binding_request().encode())
    assert await v6[-1].receive_some(4096) == b""
    assert srv.stats["refused_per_source"] == 2
    for c in held + v6 + [other]:
        await c.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert srv.active == 0 and not srv.per_source  # the per-source table keeps live sources only


def test_source_key():
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8:0:1::5") == source_key("2001:db8:0:1:ffff::1") == "2001:db8:0:1::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


async def test_over_real_sockets_the_ninth_connection_from_one_ip_is_closed(nursery):
    a, _ = loopback_pair()
    srv = await nursery.start(serve_stun_tcp, StunServerConfig(ip=a, port=3478), [(a, 3478)])
    held = []
    for _ in range(8):
        s = trio.socket.socket()
        await s.bind(("127.0.0.1", 0))
        await s.connect((a, 3478))
        held.append(s)
    with trio.fail_after(5):
        while srv.active < 8:
            await trio.sleep(0.01)
    ninth = await trio.open_tcp_stream(a, 3478, local_address="127.0.0.1")
    try:
        await ninth.send_all(binding_request().encode())
        with trio.fail_after(5):
            assert await ninth.receive_some(4096) == b""
    except trio.BrokenResourceError:
        pass  # reset instead of closed: refused either way
    other = await trio.open_tcp_stream(a, 3478, local_address=a)
    await other.send_all(binding_request().encode())
    with trio.fail_after(5):
        assert parse(await other.receive_some(4096)).cls == Class.SUCCESS
    for s in held:
        s.close()
    await ninth.aclose()
    await other.aclose()


_FD_SCRIPT = """
import json, resource, sys, trio
from nattrav.io.stun_tcp import serve_stun_tcp
from nattrav.proto.stun_server import StunServerConfig
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
async def main():
    async with trio.open_nursery() as n:
        srv = await n.start(serve_stun_tcp, StunServerConfig(ip=sys.argv[3], port=3478), [(sys.argv[3], 3478)])
        print(json.dumps({"cap": srv.max_connections,
                          "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
        n.cancel_scope.cancel()
trio.run(main)
"""


@pytest.mark.parametrize("soft, hard", [(256, 256), (256, 4096)])
def test_the_connection_cap_fits_the_descriptor_limit(soft, hard):
    a, _ = loopback_pair()
    r = subprocess.run([sys.executable, "-c", _FD_SCRIPT, str(soft), str(hard), a],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    if hard >= 1024:
        # the soft limit was raised to hold all 512 connections
        assert got["cap"] == 512 and got["soft"] >= 512
    else:
        # it cannot be: fewer slots, so that accept() never fails with EMFILE, and a warning
        assert 16 <= got["cap"] < 256 - 64 and "RLIMIT_NOFILE" in r.stderr
