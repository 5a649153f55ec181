"""The punched path's batch receive (io/path.py over csrc/frames.c): forged, replayed and foreign
frames are dropped and counted as Handshake.receive did one at a time, handshake frames in a batch
still reach the Handshake, and the path's counters see every frame."""

import trio

from nattrav.io.path import OVERHEAD
from nattrav.proto.planner.udp import plan
from tests.io.test_punch_io import OPEN, report, run_pair, udp


async def test_batch_receive_drops_forged_replayed_and_foreign_frames():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"))
    stranger = await udp()
    before = pb.handshake.rejected
    frames = [pa.handshake.data(b"%d" % i) for i in range(10)]
    forged = bytearray(frames[3])
    forged[-2] ^= 0x40
    burst = [*frames[:5], frames[2], bytes(forged), pa.handshake.hello(0), *frames[5:], frames[0]]
    for f in burst:
        await sa.sendto(f, pa.peer_addr)
    await stranger.sendto(pa.handshake.data(b"stranger"), pa.peer_addr)  # right key, wrong source
    got = []
    with trio.fail_after(2):
        while len(got) < 10:
            got += await pb.receive_many()
    assert got == [b"%d" % i for i in range(10)]
    assert pb.handshake.rejected - before == 3  # the two replays and the forgery
    # the late HELLO went to the Handshake, which answered it with an ACK
    with trio.fail_after(2):
        data, _ = await sa.recvfrom(2048)
    assert pa.handshake.receive(data, 0).event.value in ("ack", "established")
    st = pb.statistics()
    assert st["datagrams_received"] == 10 and st["bytes_received"] == 10 + 0  # "0".."9": one byte each
    assert st["loss"] == 0.0  # counters 1..10 of DATA plus the HELLO's, all arrived
    await pa.aclose()
    with trio.fail_after(2):
        assert await pb.receive() == b""
    await pb.aclose()
    stranger.close()


async def test_sealed_bursts_arrive_as_data_frames():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"))
    size, n = 1200, 50
    flen = size + OVERHEAD
    buf = bytearray(n * flen)
    for i in range(n):
        buf[i * flen + 12 : i * flen + 12 + size] = bytes([i]) * size
    pa.seal_data(buf, flen, n)
    for i in range(n):
        await sa.sendto(bytes(buf[i * flen : (i + 1) * flen]), pa.peer_addr)
    await pa.send(b"after the burst")  # Python's frames continue the counters
    got = []
    with trio.fail_after(2):
        while len(got) < n + 1:
            got.append(await pb.receive())
    assert got == [bytes([i]) * size for i in range(n)] + [b"after the burst"]
    await pa.aclose()
    await pb.aclose()
