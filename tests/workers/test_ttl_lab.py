"""TTL really reaches the wire: sender namespace -> router namespace -> receiver namespace. A probe with
TTL n arrives with n-1; with TTL 1 it dies at the router and the ICMP error it provokes is counted."""

import os
import socket

import pytest
import trio

from nattrav.workers import Burst, open_coordinator
from nattrav.workers.netns import routed_pair, run_in

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
pytestmark = pytest.mark.lab


def receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    s.bind(("0.0.0.0", 40000))
    s.setblocking(False)
    return s


async def received(s, timeout):
    out = []
    with trio.move_on_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(s)
            data, anc, _, src = s.recvmsg(2048, 64)
            ttl = next(int.from_bytes(d[:4], "little") for lvl, t, d in anc if t == socket.IP_TTL)
            out.append((data, src, ttl))
    return out


async def test_ttl_through_a_router(root_or_ci):
    with routed_pair(f"nt-ttl-{os.getpid()}") as net:
        rx = run_in(net["b"], receiver)
        try:
            async with open_coordinator(2, netns=net["a"]) as coord:
                await coord.open_sockets(8, "0.0.0.0")
                ports = [40000] * 8
                assert await coord.fire(Burst(range(8), net["b_ip"], ports, [b"t5-%d" % i for i in range(8)], ttl=5)) == 8
                got = await received(rx, 0.5)
                assert sorted(d for d, _, _ in got) == [b"t5-%d" % i for i in range(8)]
                assert {ttl for _, _, ttl in got} == {4} and {src[0] for _, src, _ in got} == {net["a_ip"]}

                # TTL 1: the router drops it and answers with time-exceeded, which the worker counts
                assert await coord.fire(Burst(range(8), net["b_ip"], ports, b"dies", ttl=1)) == 8
                assert await received(rx, 0.4) == []
                assert await coord.drain_errors() >= 1

                # per-socket TTL, then back to the default (64 leaves a, 63 arrives)
                await coord.set_ttl([0, 1], 2)
                await coord.fire(Burst([0, 1, 2], net["b_ip"], [40000] * 3, [b"s0", b"s1", b"s2"]))
                got = {d: ttl for d, _, ttl in await received(rx, 0.5)}
                assert got == {b"s0": 1, b"s1": 1, b"s2": 63}
                await coord.set_ttl([0, 1], 1)
                await coord.fire(Burst([0, 1], net["b_ip"], [40000] * 2, b"gone"))
                assert await received(rx, 0.3) == []
                # a listen over sockets whose probes died drains the errors and still sees the winner
                rx.sendto(b"WIN", (net["a_ip"], coord.ports[0]))
                hit = await coord.listen(b"WIN", timeout=3)
                assert hit is not None and hit.index == 0 and hit.src == (net["b_ip"], 40000)
        finally:
            rx.close()
