"""The TURN client (proto/turn.py + io/turn.py) against a real coturn run with --use-auth-secret, on
loopback: allocate with TURN REST credentials, permissions, data both ways as Send/Data indications
and as ChannelData, refresh, release; refused and expired credentials; a TCP allocation (RFC 6062)."""

from __future__ import annotations

import socket
import time

import pytest
import trio

from nattrav.errors import RelayError
from nattrav.io.turn import allocate_tcp, allocate_udp
from nattrav.proto.turn import Refreshed
from nattrav.proto.turn_rest import TurnRest


def grant(coturn, peer="peer-1", now=None, secret=None):
    rest = coturn["rest"] if secret is None else TurnRest(*coturn["server"], secret)
    return rest.grant(peer, time.time() if now is None else now)


async def test_allocate_permission_and_data_both_ways(coturn, nursery):
    link = await allocate_udp(grant(coturn), local_ip="127.0.0.1")
    try:
        relayed, mapped = link.relayed, link.mapped
        assert relayed[0] == coturn["server"][0] and coturn["turn"].config.min_port <= relayed[1] <= coturn["turn"].config.max_port
        assert mapped == link.sock.getsockname()  # no NAT on loopback: the server saw our socket
        got = trio.open_memory_channel(16)
        link.on_data = lambda peer, data: got[0].send_nowait((peer, data))
        nursery.start_soon(link.serve)

        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        peer_addr = peer.getsockname()
        # without a permission the relay drops the peer's packets
        await peer.sendto(b"too early", relayed)
        with trio.move_on_after(0.3) as early:
            await got[1].receive()
        assert early.cancelled_caught
        await link.permit(["127.0.0.1"])
        await peer.sendto(b"hello via relay", relayed)
        with trio.fail_after(3):
            assert await got[1].receive() == (peer_addr, b"hello via relay")  # a Data indication
        await link.send(peer_addr, b"hello back")  # a Send indication
        with trio.fail_after(3):
            data, src = await peer.recvfrom(2048)
        assert (data, src) == (b"hello back", relayed)

        # a channel: 4-byte headers each way
        number = await link.bind(peer_addr)
        assert 0x4000 <= number <= 0x4FFF and link.client.channels[peer_addr][0] == number
        big = bytes(range(256)) * 4
        link.send_to(peer_addr, big)
        with trio.fail_after(3):
            data, src = await peer.recvfrom(2048)
        assert data == big and src == relayed
        await peer.sendto(b"on the channel", relayed)
        with trio.fail_after(3):
            assert await got[1].receive() == (peer_addr, b"on the channel")
        # refresh now (the timers would do it half-way through the lifetime)
        events = []
        link.on_event = events.append
        link.client.refresh(trio.current_time())
        link._kick()
        with trio.fail_after(3):
            while not any(isinstance(e, Refreshed) for e in events):
                await trio.sleep(0.02)
        assert next(e for e in events if isinstance(e, Refreshed)).lifetime > 0
        assert link.client.stats["bad_integrity"] == 0
        peer.close()
    finally:
        await link.aclose()


async def test_release_gives_the_allocation_back(coturn):
    link = await allocate_udp(grant(coturn), local_ip="127.0.0.1")
    relayed = link.relayed
    await link.aclose()
    # the relayed port is free again on the server's side soon: a new allocation may get it, and a
    # packet to the old one finds no allocation (nothing comes back through it)
    assert link.client.state == "released" and relayed[1] > 0


async def test_refused_credentials_say_so(coturn):
    with pytest.raises(RelayError, match="credentials were refused"):
        await allocate_udp(grant(coturn, secret=b"another-secret-0123456789"), local_ip="127.0.0.1")
    with pytest.raises(RelayError, match="credentials were refused"):
        await allocate_udp(grant(coturn, now=time.time() - 7200), local_ip="127.0.0.1")  # expired


async def test_a_silent_relay_is_a_timeout_not_a_hang():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # nobody answers here
    try:
        g = TurnRest("127.0.0.1", s.getsockname()[1], b"k" * 16).grant("p", time.time())
        with trio.fail_after(5):
            with pytest.raises(RelayError, match="no answer"):
                await allocate_udp(g, local_ip="127.0.0.1", timeout=1.0)
    finally:
        s.close()


async def test_tcp_allocation_carries_a_peer_connection(coturn, nursery):
    link = await allocate_tcp(grant(coturn, "tcp-peer"))
    try:
        nursery.start_soon(link.serve)
        await link.permit(["127.0.0.1"])
        relayed = link.relayed
        out = {}

        async def peer():
            # the other peer needs no TURN at all: a plain TCP connection to the relayed address
            s = await trio.open_tcp_stream(*relayed)
            await s.send_all(b"ping from the peer")
            out["peer_got"] = await s.receive_some(100)
            await s.aclose()

        nursery.start_soon(peer)
        data, who = await link.accept_peer(timeout=5)
        assert who[0] == "127.0.0.1"
        with trio.fail_after(3):
            got = b""
            while len(got) < len(b"ping from the peer"):
                got += await data.receive_some(100)
        assert got == b"ping from the peer"
        await data.send_all(b"pong from the allocation")
        with trio.fail_after(3):
            while "peer_got" not in out:
                await trio.sleep(0.01)
        assert out["peer_got"] == b"pong from the allocation"
        await data.aclose()
    finally:
        await link.aclose()


async def test_tcp_allocations_in_a_row_all_get_their_credentialed_retry(coturn):
    """The 401 challenge can come back while the first request is still being written: its reply
    (the request with credentials) must not wait for a timer a stream does not have. One in six
    allocations hung for good before the fix."""
    for i in range(30):
        with trio.fail_after(5):
            link = await allocate_tcp(grant(coturn, f"row-{i}"), timeout=3)
        await link.aclose()
