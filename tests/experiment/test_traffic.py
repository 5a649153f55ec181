"""The traffic measurement over loopback sockets: a plain pair (the direct path's channel) and a pair
of punched paths (every probe an authenticated DATA frame, the paths' counters see them). The rates
are small so a busy machine delivers every probe; what is checked is the accounting, not speed."""

from __future__ import annotations

import os

import pytest
import trio

from nattrav.experiment import measure, traffic
from nattrav.io.path import PunchedPath
from nattrav.proto.handshake import NONCE_LEN, Handshake
from nattrav.proto.vocab import Strategy


async def _pair():
    a = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    b = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await a.bind(("127.0.0.1", 0))
    await b.bind(("127.0.0.1", 0))
    return a, b


async def _measure(tx, rx, rx_kw=None, **kw):
    out = {}
    async with trio.open_nursery() as n:
        async def receive():
            out["rx"] = await traffic.serve_udp_receiver(rx, interval=0.25, timeout=10, **(rx_kw or {}))
        n.start_soon(receive)
        out["tx"] = await traffic.run_udp_sender(tx, **kw)
    return out["tx"], out["rx"]


async def test_a_direct_measurement_accounts_for_every_probe():
    a, b = await _pair()
    with a, b:
        res, rx = await _measure(traffic.RawChannel(a, b.getsockname()), traffic.RawChannel(b, a.getsockname()),
                                 rate_bps=2e6, size=500, duration=0.5)
    sent = res["sender"]["sent"]
    assert sent == res["sender"]["planned"] == 250
    assert res["receiver"] == rx  # the sender got the receiver's whole report back
    assert rx["sent"] == sent and rx["received"] + rx["lost"] == sent
    assert rx["received"] >= 0.9 * sent and rx["bytes"] == rx["received"] * 500
    assert rx["owd_clock"] == "shared" and rx["owd_ms"]["p0"] >= 0
    assert res["rtt_samples"] >= 1 and res["rtt_ms"]["p50"] > 0
    assert sum(i["packets"] for i in rx["intervals"]) == rx["received"]


def _paths(a, b):
    key, nonce = bytes(range(32)), bytes(NONCE_LEN)
    pa = PunchedPath(a, b.getsockname(), 0.001, Strategy.DIRECT, Handshake(key, "first", nonce))
    pb = PunchedPath(b, a.getsockname(), 0.001, Strategy.DIRECT, Handshake(key, "second", nonce))
    return pa, pb


@pytest.mark.parametrize("channel", [traffic.PathChannel, traffic.PyFramesChannel])
async def test_a_punched_measurement_rides_the_paths_frames_and_counters(channel):
    """Batch frames (csrc/frames.c) and the Python baseline, one frame at a time: the same account."""
    a, b = await _pair()
    pa, pb = _paths(a, b)
    with a, b:
        res, rx = await _measure(channel(pa), channel(pb), rate_bps=2e6, size=1200, duration=0.5)
        # a stranger's datagram on the path's socket is no probe and no frame
        await trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM).sendto(
            measure.encode(measure.DATA, 1, 0, 100), b.getsockname())
    assert res["path"] == channel.kind and rx["received"] >= 0.9 * res["sender"]["sent"]
    # the kernel doubles what it was asked for; without root, rmem_max caps it
    assert rx["rcvbuf"] >= (traffic.SOCKBUF if os.geteuid() == 0 else 1)
    # the sender's counters: every probe and ping went out as a DATA frame
    assert pa.counters.datagrams_sent >= res["sender"]["sent"]
    assert pb.counters.bytes_received >= rx["bytes"]
    assert pb.counters.loss() is not None and pb.counters.loss() <= 0.1
    stats = pb.statistics()
    assert stats["datagrams_received"] == pb.counters.datagrams_received and stats["strategy"] == "direct"


async def test_sockbuf_zero_leaves_the_kernels_buffer():
    a, b = await _pair()
    with a, b:
        default = b.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF)
        _, rx = await _measure(traffic.RawChannel(a, b.getsockname()), traffic.RawChannel(b, a.getsockname()),
                               {"sockbuf": 0}, rate_bps=1e6, size=500, duration=0.2, sockbuf=0)
    assert rx["rcvbuf"] == default < traffic.SOCKBUF
    assert rx["netns_rcvbuf_drops"] is None or rx["netns_rcvbuf_drops"] >= 0


async def test_a_probe_too_big_for_a_punched_path_is_refused_before_sending():
    a, b = await _pair()
    pa, _ = _paths(a, b)
    with a, b, pytest.raises(ValueError, match="size"):
        await traffic.run_udp_sender(traffic.PathChannel(pa), rate_bps=1e6, size=1500, duration=0.1)


async def test_tcp_bulk_reports_what_the_receiver_counted():
    async with trio.open_nursery() as n:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        got = {}

        async def receive():
            stream = await listeners[0].accept()
            async with stream:
                got["rx"] = await traffic.serve_tcp_receiver(stream, interval=0.1)
        n.start_soon(receive)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            res = await traffic.run_tcp_sender(stream, duration=0.3)
        await listeners[0].aclose()
    assert res["receiver"] == got["rx"]
    assert got["rx"]["bytes"] == res["sender"]["bytes"] > 0
