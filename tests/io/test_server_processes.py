"""One nattrav-server instance served by several worker processes (--processes, cli/workers.py), on a
real Redis over loopback: peers enrolled at the same address land at different workers (each a
registry member of its own) and reach each other; an observation ticket one worker answered verifies
at the other; a killed worker is started again and its peers enroll again; the flag's misuses are
one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import psutil
import pytest
import trio

from nattrav.io.redis_link import open_redis_link
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.rendezvous_tls import client_context
from nattrav.io.stun_client import binding, run_transactions
from nattrav.proto.rendezvous.observe import observe_request, ticket_of
from nattrav.proto.stun_client import Transaction
from tests.conftest import free_port_pair
from tests.instances import SERVER, instance
from tests.redisd import free_port, running_redis
from tests.secure_lab import self_signed

KEEPALIVE_TIMEOUT = 3.0  # the peers' keepalive is a third of it: 1 s
NAME = "w"  # the instance; its workers are registry members w-0 and w-1


@pytest.fixture
def redisd():
    with running_redis() as server:
        yield server


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVER, "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_processes_flag_misuse_is_one_line():
    for args, env, message in [
        (["--processes", "2"], None, "--processes 2 needs --registry"),
        ([], {"NATTRAV_PROCESSES": "3"}, "--processes 3 needs --registry"),
        (["--processes", "0", "--registry", "redis://127.0.0.1:1/0"], None, "--processes must be an integer 1..64"),
        ([], {"NATTRAV_PROCESSES": "many"}, "NATTRAV_PROCESSES must be an integer"),
        (["--processes", "2", "--registry", "redis://127.0.0.1:1/0", "--stun", "127.0.0.1",
          "--stun-peer", "127.0.0.2"], {"NATTRAV_STUN_SECRET": "x" * 32}, "does not go with --stun-peer"),
    ]:
        cp = _run(*args, env=env)
        assert cp.returncode == 2 and message in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
    with socket.socket() as taken:  # a port someone listens on: told, not shared through SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cp = subprocess.run([*SERVER, "--listen", f"127.0.0.1:{port}", "--processes", "2",
                             "--registry", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1 and cp.stderr.startswith(f"nattrav-server: cannot listen on rendezvous 127.0.0.1:{port}")
    assert "Traceback" not in cp.stderr


def test_a_worker_that_cannot_start_stops_the_instance(redisd):
    # Redis unreachable: each worker says so once (exit 1) and the parent exits with it
    cp = _run("--processes", "2", "--registry", f"redis://127.0.0.1:{free_port()}/0")
    assert cp.returncode == 1 and "cannot reach the registry" in cp.stderr and "Traceback" not in cp.stderr
    assert not cp.stdout  # no "listening" line for an instance that does not serve


def _workers(inst) -> dict[int, psutil.Process]:
    """The instance's worker processes by index (the parent's tag is in each one's environment)."""
    out = {}
    for child in psutil.Process(inst.proc.pid).children():
        tag = child.environ().get("NATTRAV_WORKER_OF", "")
        if tag.startswith(f"{inst.proc.pid}:"):
            out[int(tag.split(":")[1])] = child
    return out


async def _member(link, peer_id: str) -> str:
    """The registry member (worker) holding a peer's connection."""
    return (await link.call("HGET", f"nattrav:p:{peer_id}", "inst")).decode()


async def _session(a, b, target: str):
    got = {}

    async def answer():
        got["b"] = await b.accept(await b.next_offer())

    async with trio.open_nursery() as n:
        n.start_soon(answer)
        got["a"] = await a.connect(target, timeout=5)
    return got["a"], got["b"]


async def _tickets(addr, count: int) -> list:
    """(address, ticket) pairs from `count` punch sockets (other source ports: the kernel spreads
    them over the workers by their hash)."""
    socks = []
    for _ in range(count):
        s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await s.bind(("127.0.0.1", 0))
        socks.append(s)
    try:
        results = await run_transactions([(s, Transaction(observe_request(), addr, rto=0.2)) for s in socks])
    finally:
        for s in socks:
            s.close()
    return [ticket_of(r.message, r.mapped) for r in results if r is not None and r.ok]


async def test_peers_spread_over_the_workers_of_one_address_and_reach_each_other(redisd):
    flags = ("--registry", redisd.url, "--processes", "2", "--instance", NAME,
             "--keepalive-timeout", str(KEEPALIVE_TIMEOUT))
    with instance(*flags) as inst:
        assert set(_workers(inst)) == {0, 1}
        async with open_redis_link(redisd.url) as link, trio.open_nursery() as nursery:
            # peers at one address until both workers hold some (the kernel hashes each connection)
            peers, where = [], {}
            for k in range(40):
                ready = trio.Event()
                got = {}

                async def keep(k=k, ready=ready, got=got):
                    async with open_rendezvous(inst.addr, name=f"p{k}") as client:
                        got["c"] = client
                        ready.set()
                        await trio.sleep_forever()

                nursery.start_soon(keep)
                await ready.wait()
                peers.append(got["c"])
                where[f"p{k}"] = await _member(link, f"p{k}")
                if len(set(where.values())) == 2 and len(peers) >= 4:
                    break
            assert set(where.values()) == {f"{NAME}-0", f"{NAME}-1"}, where
            a = next(c for c in peers if where[c.peer_id] == f"{NAME}-0")
            b = next(c for c in peers if where[c.peer_id] == f"{NAME}-1")
            sa, sb = await _session(a, b, b.peer_id)  # offer and accept cross workers through Redis
            assert sa.key == sb.key and sa.peer_id == b.peer_id and sb.peer_id == a.peer_id

            # tickets from 8 punch sockets, answered by whichever worker each one hashed to, each
            # checked by both workers (a's and b's): at least one of the two is the other process
            tickets = await _tickets(inst.addr, 8)
            assert len(tickets) == 8
            for observed in tickets:
                for one, other in ((a, b), (b, a)):
                    got = {}

                    async def answer(other=other, got=got):
                        got["s"] = await other.accept(await other.next_offer())

                    async with trio.open_nursery() as n:
                        n.start_soon(answer)
                        await one.connect(other.peer_id, info={"report": "r"}, observed=[observed], timeout=5)
                    assert got["s"].peer_info["observed_udp"] == [list(observed[0])]

            # a killed worker: the parent starts it again, its peers enroll again (at either worker)
            victim = _workers(inst)[1]
            theirs = [c for c in peers if where[c.peer_id] == f"{NAME}-1"]
            victim.send_signal(signal.SIGKILL)
            with trio.fail_after(4 * KEEPALIVE_TIMEOUT):
                while not all(c.enrollments == 2 and c.connected for c in theirs):
                    await trio.sleep(0.05)
            with trio.fail_after(10):
                while not (set(_workers(inst)) == {0, 1} and _workers(inst)[1].pid != victim.pid):
                    await trio.sleep(0.05)
            for c in theirs:
                assert await _member(link, c.peer_id) in (f"{NAME}-0", f"{NAME}-1")
            sa, sb = await _session(a, b, b.peer_id)
            assert sa.key == sb.key
            nursery.cancel_scope.cancel()
        workers = list(_workers(inst).values())
        assert inst.stop() == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        log = inst.log()
        assert any(r.get("logger") == "nattrav.rendezvous.workers" and "killed by SIGKILL" in r["msg"] for r in log)
        assert not any(r["level"] in ("error", "critical") for r in log), [r for r in log if r["level"] == "error"]


async def test_stun_and_tls_in_every_worker(redisd, tmp_path):
    # two IPs (RFC 5780) in every worker: a change-IP-and-port request leaves from the alternate
    # socket of whichever worker its source port hashed to; the rendezvous link is TLS at each
    cert, key = self_signed(tmp_path, "rv")
    port, alt = free_port_pair()
    with instance("--registry", redisd.url, "--processes", "2", "--instance", NAME, "--tls-cert", cert,
                  "--tls-key", key, "--stun", "127.0.0.1,127.0.0.2", "--stun-ports", f"{port},{alt}") as inst:
        tcp = {w.pid: {c.laddr.port for c in w.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
               for w in _workers(inst).values()}
        assert all(ports >= {inst.addr[1], port, alt} for ports in tcp.values()), tcp
        for _ in range(8):
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
                await s.bind(("127.0.0.1", 0))
                r = await binding(s, ("127.0.0.1", port), timeout=3)
                assert r.other_address == ("127.0.0.2", alt)
                r = await binding(s, ("127.0.0.1", port), change_ip=True, change_port=True,
                                  other_address=r.other_address, timeout=3)
                assert r.source == ("127.0.0.2", alt)
        tls = client_context(cert)
        async with open_rendezvous(inst.addr, name="alice", tls=tls) as a, \
                open_rendezvous(inst.addr, name="bob", tls=tls) as b:
            sa, sb = await _session(a, b, "bob")
            assert sa.key == sb.key
        assert inst.stop() == 0
