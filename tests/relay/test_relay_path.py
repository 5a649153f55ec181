"""The relayed UDP path (io/relay_path.py) through a real coturn on loopback: the handshake through
the relay, data both ways, QUIC's byte stream on top, the upgrade in place to a direct route while a
transfer runs, and the peer's own frames from anywhere else refused."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import trio

from nattrav.errors import RelayError
from nattrav.identity import Identity
from nattrav.io.quic_path import QuicSettings, open_quic_path
from nattrav.io.relay_path import RelayedPath
from nattrav.io.turn import allocate_udp

KEY = bytes(range(32))
FAST = QuicSettings(handshake_timeout=5.0, idle_timeout=5.0, keepalive_interval=1.0, close_timeout=5.0)


async def udp_socket():
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def pair(coturn, *, direct: bool, probe_first: float = 0.5, events=None):
    """(allocating side, other side): the first holds the allocation, the second only knows the
    relayed address. `direct`: each also knows the other's socket (where an upgrade would go)."""
    link = await allocate_udp(coturn["rest"].grant("first", time.time()), local_ip="127.0.0.1")
    sa, sb = await udp_socket(), await udp_socket()
    emit = (lambda who: (lambda phase, d: events.append((who, phase, d)))) if events is not None else (lambda w: None)
    a = RelayedPath(sa, KEY, "first", os.urandom(8), peer_ip="127.0.0.1",
                    direct=[sb.getsockname()] if direct else [], link=link, emit=emit("a"),
                    probe_first=probe_first)
    b = RelayedPath(sb, KEY, "second", os.urandom(8), peer_ip="127.0.0.1",
                    direct=[sa.getsockname()] if direct else [], relayed=link.relayed, emit=emit("b"),
                    probe_first=probe_first)
    return a, b


async def test_handshake_and_data_both_ways_through_the_relay(coturn):
    a, b = await pair(coturn, direct=False)
    async with trio.open_nursery() as n:
        async def side(path, out):
            async with path.open(timeout=5):
                await path.send(f"hello from {path.handshake.role}".encode())
                out.append(await path.receive())
                out.append(path.via)
                out.append(dict(path.counters))
                await trio.sleep(0.2)

        got_a, got_b = [], []
        n.start_soon(side, a, got_a)
        n.start_soon(side, b, got_b)
    assert got_a[:2] == [b"hello from second", "relay"] and got_b[:2] == [b"hello from first", "relay"]
    # the allocating side heard the peer only through the relay, and bound a channel to it
    assert a.link.client.channels and got_a[2].get("in_relay", 0) >= 1
    assert a.link.client.state == "released"  # given back on the way out


async def test_quic_stream_over_the_relay_then_upgraded_in_place_mid_transfer(coturn):
    """2 MB each way on QUIC's stream: it starts through the relay, the direct probes succeed half
    way (loopback: direct works) and the rest goes direct; the stream never notices."""
    events = []
    a, b = await pair(coturn, direct=True, probe_first=0.5, events=events)
    alice, bob = Identity.generate(), Identity.generate()
    size = 2 * 1024 * 1024
    out = {}

    async def side(path, me, them, role, seed):
        blob = seed.to_bytes(1, "big") * size
        async with path.open(timeout=5):
            async with open_quic_path(None, ("127.0.0.1", 9), me, them.peer_id, role=role, settings=FAST,
                                      wire=path.quic_wire(path.counters)) as q:
                async def send():
                    view = memoryview(blob)
                    for i in range(0, size, 65536):
                        await q.stream.send_all(view[i:i + 65536])
                        await trio.sleep(0.05)  # spread over the upgrade's moment (1.6 s)
                    await q.stream.send_eof()

                async def recv():
                    h, n = hashlib.sha256(), 0
                    while chunk := await q.stream.receive_some(65536):
                        h.update(chunk)
                        n += len(chunk)
                    out[role] = (n, h.hexdigest(), hashlib.sha256(blob).hexdigest(), path.via,
                                 dict(path.counters))

                async with trio.open_nursery() as n:
                    n.start_soon(send)
                    n.start_soon(recv)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(side, a, alice, bob, "client", 1)
            n.start_soon(side, b, bob, alice, "server", 2)
    assert out["client"][0] == out["server"][0] == size
    assert out["client"][1] == out["server"][2] and out["server"][1] == out["client"][2]
    assert out["client"][3] == out["server"][3] == "direct"
    ups = [(who, d) for who, phase, d in events if phase == "upgrade"]
    assert {who for who, _ in ups} == {"a", "b"}, events
    # both routes carried part of it
    for role in ("client", "server"):
        counters = out[role][4]
        assert counters.get("in_relay", 0) > 10 and counters.get("in_direct", 0) > 10, counters


async def test_nobody_answering_through_the_relay_is_a_relay_error(coturn):
    a, b = await pair(coturn, direct=False)
    await b.aclose()  # the other side never shows up
    with trio.fail_after(5):
        with pytest.raises(RelayError, match="never came through the relay"):
            async with a.open(timeout=1.0):
                pass


async def test_frames_of_another_session_and_strangers_are_refused(coturn):
    a, b = await pair(coturn, direct=False)
    stranger = await udp_socket()
    async with trio.open_nursery() as n:
        async def side_b():
            async with b.open(timeout=5):
                await trio.sleep(0.5)
                await b.send(b"real")
                await trio.sleep(0.5)

        async def side_a(out):
            async with a.open(timeout=5):
                # a frame under another session's key, sent straight at a's socket by a stranger
                other = RelayedPath(await udp_socket(), bytes(32), "second", os.urandom(8), peer_ip="127.0.0.1",
                                    direct=[], relayed=a.link.relayed)
                await stranger.sendto(other.handshake.data(b"forged"), a._sock.getsockname())
                await other.aclose()
                out.append(await a.receive())
                out.append(a.handshake.rejected)

        got = []
        n.start_soon(side_b)
        n.start_soon(side_a, got)
    assert got[0] == b"real" and got[1] >= 1
    stranger.close()


async def test_relayed_stream_carries_eof_as_a_chunk_and_keeps_bytes_after_the_handshake():
    """A TURN relay does not pass a half-close on, so EOF travels as an empty chunk; bytes the peer
    sent right behind the handshake (leftover) come out first."""
    import socket as stdsocket

    from nattrav.io.relay_stream import CHUNK, RelayedStream

    a, b = stdsocket.socketpair()
    sa, sb = trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(trio.socket.from_stdlib_socket(b))
    early = CHUNK.pack(3) + b"abc"
    left = RelayedStream(sa, peer_addr=("192.0.2.1", 1), rtt=0.0)
    right = RelayedStream(sb, peer_addr=("192.0.2.2", 2), rtt=0.0, leftover=early[:4])
    await sa.send_all(early[4:])  # the rest of the early chunk arrives on the socket
    big = os.urandom(200_000)

    async def send():
        await left.send_all(big)
        await left.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"after eof")

    got = bytearray()
    async with trio.open_nursery() as n:
        n.start_soon(send)
        while chunk := await right.receive_some(7000):
            assert len(chunk) <= 7000
            got += chunk
    assert bytes(got) == b"abc" + big
    # the connection itself is still open the other way: the half-close did not close it
    await right.send_all(b"reply")
    assert await left.receive_some() == b"reply"
    await left.aclose()
    await right.aclose()


async def _reaches(coturn, peer_ip: str, peer_ips: list[str]) -> bool:
    link = await allocate_udp(coturn["rest"].grant("first", time.time()), local_ip="127.0.0.1")
    sa, sb = await udp_socket(), await udp_socket()
    a = RelayedPath(sa, KEY, "first", os.urandom(8), peer_ip=peer_ip, direct=[], link=link, peer_ips=peer_ips)
    b = RelayedPath(sb, KEY, "second", os.urandom(8), peer_ip="127.0.0.1", direct=[], relayed=link.relayed)
    got = []

    async def side(path):
        try:
            async with path.open(timeout=3):
                got.append(path.handshake.role)
        except RelayError:
            pass

    async with trio.open_nursery() as n:
        n.start_soon(side, a)
        n.start_soon(side, b)
    return sorted(got) == ["first", "second"]


async def test_the_permission_covers_every_address_the_server_saw_the_peer_on(coturn):
    # the peer's TCP connection left from one address of its NAT's pool (127.0.0.9 here) and its
    # flow to our relayed address from another (127.0.0.1), which the server saw too: permitted
    assert await _reaches(coturn, "127.0.0.9", ["127.0.0.9", "127.0.0.1"])
    # without that observation the relay drops the peer's packets: the pooled listener's 2 in 3
    assert not await _reaches(coturn, "127.0.0.9", [])
