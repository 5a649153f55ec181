"""Issue 14 item 5: connection slots of the rendezvous server over real loopback TCP.

One address may hold only so many connections (a clear busy error, then close), the server says
busy rather than silently closing when it is full, and nattrav-server raises its file-descriptor
limit at start and sizes its connection table to what the limit allows."""

from __future__ import annotations

import json
import logging
import resource
import signal
import socket
import subprocess

import pytest
import trio

from nattrav.errors import RendezvousError, ServerBusy
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.rendezvous import RendezvousServer, encode, make
from tests.conftest import SERVER_CLI, readline
from tests.io.test_rendezvous_io import Raw


async def _raw_from(addr, local: str) -> Raw:
    return Raw(await trio.open_tcp_stream(*addr, local_address=local))


async def test_one_address_gets_a_few_connections_and_a_clear_busy(nursery):
    state = RendezvousServer(max_conns_per_source=3)
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    held = [await _raw_from(addr, "127.0.0.1") for _ in range(3)]
    extra = await _raw_from(addr, "127.0.0.1")
    with trio.fail_after(5):
        err = await extra.recv()
        assert err["code"] == "busy" and "127.0.0.1" in err["message"]
        assert await extra.recv() is None  # and closed
    with trio.fail_after(5):  # another address still gets in, with the real client
        async with open_rendezvous(addr, name="honest", local_address="127.0.0.2") as rv:
            assert rv.observed[0] == "127.0.0.2"
    with trio.fail_after(5):
        with pytest.raises(ServerBusy, match="too many connections"):
            async with open_rendezvous(addr, local_address="127.0.0.1"):
                pass
    for raw in held:
        await raw.stream.aclose()


async def test_a_full_server_says_busy_instead_of_hanging_up(nursery):
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, max_connections=2,
                                                                    task_status=task_status))
    held = [await _raw_from(addr, f"127.0.0.{i + 1}") for i in range(2)]
    with trio.fail_after(5):
        with pytest.raises(ServerBusy, match="connections"):
            async with open_rendezvous(addr, local_address="127.0.0.9"):
                pass
    for raw in held:
        await raw.stream.aclose()


def _limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open files line")


def _server(soft: int, hard: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*SERVER_CLI, "--listen", "127.0.0.1:0", "--json-log", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def _stop(p: subprocess.Popen) -> list[dict]:
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    return [json.loads(line) for line in p.stderr.read().splitlines() if line.startswith("{")]


def test_server_raises_its_fd_limit_to_the_hard_one():
    p = _server(256, 4096)
    try:
        readline(p)
        assert _limits(p.pid) == (4096, 4096)
    finally:
        logs = _stop(p)
    # 10,000 connections (the default) do not fit 4,096 descriptors: the table shrank, and said so
    warned = [rec["msg"] for rec in logs if rec["level"] == "warning" and "RLIMIT_NOFILE" in rec["msg"]]
    assert warned and "4096" in warned[0], logs


async def test_server_sizes_its_connection_table_to_the_fd_limit():
    p = _server(200, 200)
    try:
        port = int(json.loads(readline(p))["address"].rsplit(":", 1)[1])
        addr = ("127.0.0.1", port)
        raws, busy = [], 0
        # 250 connections from 250 addresses (no per-source cap involved) into 200 descriptors
        for i in range(250):
            raws.append(await _raw_from(addr, f"127.0.{1 + i // 200}.{1 + i % 200}"))
        with trio.fail_after(10):
            for raw in raws[-60:]:
                msg = await raw.recv()
                busy += msg is not None and msg.get("code") == "busy"
        for raw in raws:
            await raw.stream.aclose()
        with trio.fail_after(10):  # still serving once they are gone
            async with open_rendezvous(addr, name="after") as rv:
                assert rv.peer_id == "after"
    finally:
        logs = _stop(p)
    assert busy >= 50
    sized = [rec["msg"] for rec in logs if "RLIMIT_NOFILE" in rec["msg"]]
    assert sized and "200" in sized[0], logs


async def test_a_write_that_stalls_is_cut_after_the_write_timeout(nursery, caplog):
    caplog.set_level(logging.INFO, logger="nattrav.rendezvous")
    # the queue stays below its byte limit, but the peer reads nothing: the watchdog ends the write
    state = RendezvousServer(offer_timeout=60.0, max_offers_per_source=100, max_conns_per_source=100)
    addr = await nursery.start(lambda task_status: serve_rendezvous(
        "127.0.0.1", 0, state=state, write_timeout=1.0, max_queued=64 * 1024 * 1024, task_status=task_status))
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.connect(addr)
    sink.sendall(encode(make("enroll", id=1, name="sink")))
    with trio.fail_after(5):
        while "sink" not in state.online():
            await trio.sleep(0.01)
    async def ask():
        async with open_rendezvous(addr, info={"pad": "z" * 7000}) as c:
            try:
                await c.connect("sink", timeout=30)
            except RendezvousError:
                pass

    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for _ in range(60):  # ~420 KB of offers: more than the socket buffers hold
            n.start_soon(ask)
        with trio.fail_after(15):
            while "sink" in state.online():
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert trio.current_time() - t0 < 14
    assert any("a write took more than 1 s" in r.getMessage() for r in caplog.records)
    sink.close()
