"""pytest-benchmark suite for the burst core over loopback (no root needed):

    .venv/bin/python -m pytest bench/bench_burst.py --benchmark-only

Compare the c and py rows of each group; bench/burst_ratios.py measures the goals against the bare C
floor through a drop-at-ingress sink (needs root)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from array import array

import pytest
import trio

from nattrav.core import Burst, SocketPool
from nattrav.core.fallback import PySocketPool
from nattrav.workers import open_coordinator

POOLS = {"c": SocketPool, "py": PySocketPool}
PAYLOAD = b"nattrav-burst-probe-28bytes!"


@pytest.fixture(scope="module")
def sink_port():
    # a receiver with a tiny buffer: the kernel drops what it cannot queue, the senders never wait
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


@pytest.mark.benchmark(group="open 1024 sockets + bind + TTL")
@pytest.mark.parametrize("impl", ["c", "py"])
def test_open_1024(benchmark, impl):
    cls = POOLS[impl]
    pools = []

    def close_last():  # outside the timed part, like the bare C loop
        while pools:
            pools.pop().close()

    benchmark.pedantic(lambda: pools.append(cls(1024, "127.0.0.1", ttl=64, recverr=False)),
                       setup=close_last, rounds=30, warmup_rounds=2)
    close_last()


@pytest.mark.benchmark(group="send 1024 sockets x 1 packet (in-process)")
@pytest.mark.parametrize("impl", ["c", "py"])
def test_send_1024x1(benchmark, impl, sink_port):
    with POOLS[impl](1024, "127.0.0.1") as pool:
        plan = Burst(range(1024), "127.0.0.1", array("H", [sink_port]) * 1024, PAYLOAD).pack()
        st = benchmark.pedantic(pool.send_burst, args=(plan,), rounds=30, warmup_rounds=2)
        assert st.sent == 1024


@pytest.mark.benchmark(group="send 1 socket x 4096 probes (in-process)")
@pytest.mark.parametrize("impl", ["c", "py"])
def test_send_1x4096(benchmark, impl, sink_port):
    with POOLS[impl](1, "127.0.0.1") as pool:
        plan = Burst.one_to_many(0, "127.0.0.1", array("H", [sink_port]) * 4096, PAYLOAD).pack()
        st = benchmark.pedantic(pool.send_burst, args=(plan,), rounds=20, warmup_rounds=2)
        assert st.sent == 4096


@contextlib.contextmanager
def coordinator_thread(workers: int, impl: str = "c"):
    """A coordinator living in its own Trio thread, so the synchronous benchmark fixture can time
    `fire` from command to reply."""
    ready: queue.Queue = queue.Queue()

    async def main():
        stop = trio.Event()
        async with open_coordinator(workers, impl=impl) as coord:
            await coord.open_sockets(1024, "127.0.0.1")
            ready.put((coord, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    t = threading.Thread(target=trio.run, args=(main,))
    t.start()
    coord, token, stop = ready.get(timeout=60)
    try:
        yield coord, token
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        t.join(30)


@pytest.mark.benchmark(group="fire latency: 1024 packets, command to reply")
@pytest.mark.parametrize("workers", [1, 2])
def test_fire_latency_1024(benchmark, workers, sink_port):
    plan = Burst(range(1024), "127.0.0.1", array("H", [sink_port]) * 1024, PAYLOAD).pack()
    with coordinator_thread(workers) as (coord, token):
        n = benchmark.pedantic(lambda: trio.from_thread.run(coord.fire, plan, trio_token=token),
                               rounds=30, warmup_rounds=2)
        assert n == 1024
