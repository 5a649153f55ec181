"""TCP traversal through the NAT lab: the low-TTL SYN opens our NAT without reaching the peer's, and a
5 MB bulk transfer over a punched TCP stream between two symmetric (sequential) NATs arrives intact."""

from __future__ import annotations

import hashlib
import random
import sys
import time

import pytest
import trio

from nattrav.lab.pytest_support import lab_fixture
from nattrav.matrix import SERVER_PORT, _wait_tcp

BULK = 5 * 1024 * 1024
SEED = 8

seq_lab = lab_fixture("symmetric-seq", "symmetric-seq-7")


# --- run inside the lab hosts (lab.acall) -----------------------------------------------------


def _low_ttl_syn(dest: tuple[str, int], ttl: int) -> int:
    from nattrav.io.tcp_punch import open_listener, send_low_ttl_syn

    holder = open_listener(("0.0.0.0", 0))
    port = holder.getsockname()[1]
    try:
        send_low_ttl_syn(("0.0.0.0", port), dest, ttl)
        time.sleep(0.3)  # the ICMP time-exceeded comes back meanwhile; nothing else may leave
    finally:
        holder.close()
    return port


def _bulk_listen(server: tuple[str, int], name: str, ttl: int) -> dict:
    from nattrav.api import listen_tcp

    async def main() -> dict:
        async with listen_tcp(server, name=name, ttl=ttl) as lst:
            async with lst.accept() as stream:
                h, n = hashlib.sha256(), 0
                while chunk := await stream.receive_some(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                await stream.send_all(h.hexdigest().encode())
                await stream.send_eof()
                return {"sha256": h.hexdigest(), "bytes": n, "strategy": stream.strategy.value,
                        "peer": list(stream.peer_addr)}

    return trio.run(main)


def _bulk_connect(server: tuple[str, int], name: str, ttl: int, size: int, seed: int) -> dict:
    from nattrav.api import connect_tcp
    from nattrav.io.rendezvous_client import UnknownPeer

    blob = random.Random(seed).randbytes(size)

    async def main() -> dict:
        while True:
            try:
                async with connect_tcp(server, name, ttl=ttl, timeout=20) as stream:
                    t0 = trio.current_time()
                    await stream.send_all(blob)
                    await stream.send_eof()
                    echo = b""
                    while chunk := await stream.receive_some(1024):
                        echo += chunk
                    return {"sha256": hashlib.sha256(blob).hexdigest(), "echo": echo.decode(),
                            "seconds": trio.current_time() - t0, "strategy": stream.strategy.value,
                            "peer": list(stream.peer_addr)}
            except UnknownPeer:
                await trio.sleep(0.05)  # the listener has not enrolled yet

    return trio.run(main)


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.lab
def test_low_ttl_syn_opens_our_nat_and_never_reaches_the_peers(seq_lab):
    lab = seq_lab
    dest = (lab.wan_ip("b"), 20777)
    before = lab.counter("nat_b", "wan_in")
    port = lab.call("a", _low_ttl_syn, dest, lab.low_ttl_from("a"))
    tcp = [m for m in lab.mappings("nat_a", "tcp") if m.inside[1] == port]
    assert tcp, f"no TCP mapping for local port {port} on nat_a: {lab.mappings('nat_a')}"
    assert tuple(tcp[0].remote) == dest
    assert lab.counter("nat_b", "wan_in") == before, "the low-TTL SYN reached the peer's NAT"


@pytest.mark.lab
async def test_bulk_transfer_over_punched_tcp_stream_arrives_intact(seq_lab):
    lab = seq_lab
    lab.flush_conntrack()
    py = sys.executable
    server = lab.popen("server", [py, "-m", "nattrav.server_cli", "--listen", f"{lab.S1}:{SERVER_PORT}",
                                  "--stun", f"{lab.S1},{lab.S2}"])
    try:
        await trio.to_thread.run_sync(_wait_tcp, lab, lab.S1, SERVER_PORT, time.monotonic() + 10)
        rv = (lab.S1, SERVER_PORT)
        name = f"bulk{time.monotonic_ns() % 10**6}"
        out = {}

        async def side(node, fn, *args):
            out[node] = await lab.acall(node, fn, *args, timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "b", _bulk_listen, rv, name, lab.low_ttl_from("b"))
            nursery.start_soon(side, "a", _bulk_connect, rv, name, lab.low_ttl_from("a"), BULK, SEED)
    finally:
        server.terminate()
        server.wait(10)
    a, b = out["a"], out["b"]
    assert b["bytes"] == BULK
    assert b["sha256"] == a["sha256"] == a["echo"]
    # both NATs are symmetric: only a predicted simultaneous open gets through, and each side talks
    # to the other's public (NAT) address
    assert a["strategy"] == b["strategy"] == "tcp-simultaneous"
    assert a["peer"][0] == lab.wan_ip("b") and b["peer"][0] == lab.wan_ip("a")
    print(f"5 MB over the punched TCP stream in {a['seconds']:.3f} s "
          f"({BULK / a['seconds'] / 1e6:.1f} MB/s)")
