"""In the NAT lab: three nattrav-server instances on one Redis (issue 18). Peers behind NATs that
enrolled at different instances punch to each other over UDP and over TCP; an instance killed
mid-run costs its peer less than one keepalive before it is reachable again through another one.

Everything the peers get is what a user would type: the tier's addresses and a peer name."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest
import trio

from nattrav.lab.matrix import wait_tcp
from nattrav.lab.pytest_support import lab_fixture
from tests.redisd import require_redis

pytestmark = pytest.mark.lab

KEEPALIVE_TIMEOUT = 6.0  # the peers ping every 2 s: their keepalive
PORTS = (7000, 7001, 7002)

scale_lab = lab_fixture("port-restricted", "symmetric-seq")


# --- run inside the namespaces (module-level so lab.call can pickle them) -------------------------

async def _echo_udp(path) -> None:
    data = await path.receive()
    await path.send(b"echo:" + data)


async def _ask_udp(path, data: bytes) -> bytes:
    for _ in range(20):  # UDP: ask again until the answer comes
        await path.send(data)
        with trio.move_on_after(0.5):
            return await path.receive()
    raise AssertionError("no UDP echo over the punched path")


async def _echo_tcp(stream) -> None:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    await stream.send_all(b"echo:" + data)
    await stream.send_eof()


async def _ask_tcp(stream, data: bytes) -> bytes:
    await stream.send_all(data)
    await stream.send_eof()
    out = b""
    while chunk := await stream.receive_some(4096):
        out += chunk
    return out


def listen_udp_twice(servers: str, name: str, marker: str) -> dict:
    """Listen for two UDP sessions; write the wall time of any enrollment after the first to `marker`."""
    from nattrav.api import listen
    from nattrav.errors import PunchFailed

    async def main():
        async with listen(servers, name=name, secure=False) as lst:
            client = lst._client
            done = {"servers": []}

            async def watch():
                seen = client.enrollments
                while True:
                    await trio.sleep(0.02)
                    if client.enrollments != seen and client.connected:
                        seen = client.enrollments
                        with open(marker, "w") as f:
                            f.write(f"{time.time()} {client.server[0]}:{client.server[1]}")

            async with trio.open_nursery() as n:
                n.start_soon(watch)
                while len(done["servers"]) < 2:
                    try:
                        async with lst.accept() as path:
                            done["servers"].append(list(client.server))
                            await _echo_udp(path)
                    except PunchFailed:  # the asker tries once more (connect_udp)
                        done["misses"] = done.get("misses", 0) + 1
                n.cancel_scope.cancel()
            done["enrollments"] = client.enrollments
            return done

    return trio.run(main)


def listen_tcp_once(servers: str, name: str) -> str:
    from nattrav.api import listen_tcp

    async def main():
        async with listen_tcp(servers, name=name, secure=False) as lst:
            async with lst.accept() as stream:
                await _echo_tcp(stream)
                return stream.strategy.value

    return trio.run(main)


def connect_udp(server: str, name: str, data: bytes) -> dict:
    from nattrav.api import connect
    from nattrav.errors import PeerOffline, PunchFailed, UnknownPeer

    async def main():
        misses = []
        with trio.fail_after(55):
            while True:
                try:
                    async with connect(server, name, timeout=15, secure=False) as path:
                        return {"echo": await _ask_udp(path, data), "peer": list(path.peer_addr),
                                "misses": misses}
                except (UnknownPeer, PeerOffline):  # the listener is still starting
                    await trio.sleep(0.1)
                except PunchFailed as exc:
                    # this test is about the server tier, not the punch's odds (bench/matrix.py
                    # measures those): a predicted punch states ~99.9 % and may miss, so ask once
                    # more, as an application would, and say so
                    if misses:
                        raise
                    misses.append(str(exc))

    return trio.run(main)


def connect_tcp_to(server: str, name: str, data: bytes) -> dict:
    from nattrav.api import connect_tcp
    from nattrav.errors import PeerOffline, UnknownPeer

    async def main():
        with trio.fail_after(40):
            while True:
                try:
                    async with connect_tcp(server, name, timeout=15, secure=False) as stream:
                        return {"echo": await _ask_tcp(stream, data), "strategy": stream.strategy.value}
                except (UnknownPeer, PeerOffline):
                    await trio.sleep(0.1)

    return trio.run(main)


# --- the test ------------------------------------------------------------------------------------

async def _wait_file(path: str, timeout: float) -> str:
    with trio.fail_after(timeout):
        while not os.path.exists(path) or not open(path).read().strip():
            await trio.sleep(0.02)
    return open(path).read()


async def test_three_instances_on_one_redis(scale_lab):
    require_redis()
    lab = scale_lab
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="nattrav-scale-") as d:
        sock = os.path.join(d, "redis.sock")
        redis = lab.popen("server", ["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                                     "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "redis.log")])
        with trio.fail_after(10):
            while not os.path.exists(sock):
                await trio.sleep(0.05)
        common = ["--registry", f"unix://{sock}", "--keepalive-timeout", str(KEEPALIVE_TIMEOUT),
                  "--stun-servers", f"{lab.S1}:3478"]
        hosts = (lab.S1, lab.S1, lab.S2)
        procs = []
        for i, (host, port) in enumerate(zip(hosts, PORTS)):
            extra = ["--stun", f"{lab.S1},{lab.S2}"] if i == 0 else []  # STUN runs once, for the tier
            procs.append(lab.popen("server", [py, "-m", "nattrav.cli.server", "--listen", f"{host}:{port}",
                                              *common, *extra],
                                   stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, f"i{i}.log"), "w")))
        i1, i2, i3 = (f"{h}:{p}" for h, p in zip(hosts, PORTS))
        try:
            for host, port in zip(hosts, PORTS):
                await trio.to_thread.run_sync(wait_tcp, lab, host, port, time.monotonic() + 20)
            marker = os.path.join(d, "reenrolled")
            out = {}
            stamp = time.monotonic_ns() % 10**6

            async def side(key, node, fn, *args):
                out[key] = await lab.acall(node, fn, *args, timeout=90)

            async with trio.open_nursery() as n:
                # bob-udp enrolls at instance 2 (instance 3 is his fallback), bob-tcp at instance 3;
                # alice always asks through instance 1
                n.start_soon(side, "b_udp", "b", listen_udp_twice, f"{i2},{i3}", f"bu{stamp}", marker)
                # one after the other: a burst's flows would shift the other's predicted ports, and so
                # would bob-tcp's own discovery (a dozen fresh flows on bob's sequential NAT in the
                # milliseconds bob-udp's punch was predicted for: two misses at 99.99 % in a row)
                await side("a_udp", "a", connect_udp, i1, f"bu{stamp}", b"over udp")
                n.start_soon(side, "b_tcp", "b", listen_tcp_once, i3, f"bt{stamp}")
                await side("a_tcp", "a", connect_tcp_to, i1, f"bt{stamp}", b"over tcp")
                assert out["a_udp"]["echo"] == b"echo:over udp"
                assert out["a_tcp"]["echo"] == b"echo:over tcp"
                # instance 2 dies: bob-udp's connection ends, he enrolls again at instance 3
                procs[1].kill()
                procs[1].wait()
                killed = time.time()
                when, where = (await _wait_file(marker, 2 * KEEPALIVE_TIMEOUT)).split()
                unreachable = float(when) - killed
                assert where == i3 and unreachable < KEEPALIVE_TIMEOUT / 3, (where, unreachable)
                await side("a_again", "a", connect_udp, i1, f"bu{stamp}", b"after the kill")
            assert out["a_again"]["echo"] == b"echo:after the kill"
            assert out["b_udp"]["servers"] == [[lab.S1, PORTS[1]], [lab.S2, PORTS[2]]]
            assert out["b_udp"]["enrollments"] == 2
            assert out["b_tcp"] == out["a_tcp"]["strategy"]
            for key in ("a_udp", "a_again"):
                for why in out[key]["misses"]:
                    print(f"scale-out lab: {key} punched a second time after: {why}")
            print(f"scale-out lab: bob reachable again {unreachable:.2f} s after his instance was killed "
                  f"(keepalive {KEEPALIVE_TIMEOUT / 3:g} s)")
        finally:
            for p in procs + [redis]:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
        for i in (0, 2):
            assert procs[i].returncode == 0, open(os.path.join(d, f"i{i}.log")).read()[-2000:]
