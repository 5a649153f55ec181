#!/usr/bin/env python3
"""Rendezvous server throughput on loopback, against baselines measured in the same run.

    .venv/bin/python bench/bench_rendezvous.py [--pairs 200] [--rounds 5] [--json FILE]

Three numbers and their ratios:
- sans-IO: the state machine alone (bytes in, frames out, no sockets), sessions per second;
- echo baseline: a Trio server in another process that only decodes and re-encodes frames (the same
  framing, no registry), round trips per second with the same client load;
- nattrav-server in another process: concurrent enroll of 2*pairs peers, then every pair runs
  `rounds` connect+accept sessions at once, and everyone pings; requests per second; and the
  connect-to-session latency one pair sees on an idle server.
Bounded: at most 2*pairs connections and one request in flight per connection."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import trio

from nattrav.io.framing import FrameStream
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.proto.rendezvous import CLIENT_MESSAGES, RendezvousServer, Send, encode, make

ECHO_SERVER = r"""
import sys, trio
from nattrav.io.framing import FrameStream
from nattrav.proto.rendezvous import CLIENT_MESSAGES, make

async def handler(stream):
    frames = FrameStream(stream, CLIENT_MESSAGES)
    try:
        while (msg := await frames.receive()) is not None:
            await frames.send(make("pong", id=msg.get("id"), now=trio.current_time()))
    except Exception:
        pass

async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handler, listeners)

trio.run(main)
"""


def sans_io(sessions: int) -> float:
    """Sessions per second through the state machine alone (enroll two peers once, then connect+accept)."""
    srv = RendezvousServer(max_offers_per_peer=sessions + 1)
    srv.connection_made(1, ("192.0.2.1", 1), 0.0)
    srv.connection_made(2, ("192.0.2.2", 2), 0.0)
    srv.receive_data(1, encode(make("enroll", id=1, name="a", info={"pad": "x" * 200})), 0.0)
    srv.receive_data(2, encode(make("enroll", id=1, name="b", info={"pad": "y" * 200})), 0.0)
    srv.actions()
    connect = encode(make("connect", id=2, target="b"))
    t0 = time.perf_counter()
    for i in range(sessions):
        srv.receive_data(1, connect, 0.0)
        offer = next(a.msg["offer"] for a in srv.actions() if isinstance(a, Send))
        srv.receive_data(2, encode(make("accept", id=3, offer=offer)), 0.0)
        for act in srv.actions():
            encode(act.msg)  # the server I/O layer encodes every frame it sends
    return sessions / (time.perf_counter() - t0)


def start_process(argv: list[str]) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, p.stdout.readline().strip()


async def echo_round_trips(port: int, clients: int, per_client: int) -> float:
    async def one():
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        frames = FrameStream(stream, {"pong": CLIENT_MESSAGES["ping"] | {"now": ((int, float), True)}})
        async with stream:
            for i in range(per_client):
                await frames.send(make("ping", id=i))
                await frames.receive()

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(one)
    return clients * per_client / (time.perf_counter() - t0)


async def rendezvous_load(port: int, pairs: int, rounds: int, pings: int) -> dict:
    addr = ("127.0.0.1", port)
    result = {"enroll_s": 0.0, "sessions": 0, "requests": 0}
    enrolled = trio.Event()
    ready = [0]
    go = trio.Event()

    async def pair(i: int, t_enroll: list):
        async with open_rendezvous(addr, name=f"t{i}", info={"pad": "x" * 200}) as t, \
                open_rendezvous(addr, info={"pad": "y" * 200}) as c:
            ready[0] += 1
            if ready[0] == pairs:
                t_enroll.append(time.perf_counter())
                enrolled.set()
            await go.wait()

            async def target():
                for _ in range(rounds):
                    await t.accept(await t.next_offer())

            async with trio.open_nursery() as n:
                n.start_soon(target)
                for _ in range(rounds):
                    s = await c.connect(f"t{i}", timeout=30)
                    assert s.peer_id == f"t{i}"
                    result["sessions"] += 1
            for _ in range(pings):
                await c.ping()

    t_enroll: list = []
    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for i in range(pairs):
            n.start_soon(pair, i, t_enroll)
        await enrolled.wait()
        result["enroll_s"] = t_enroll[0] - t0
        t1 = time.perf_counter()
        go.set()
    result["work_s"] = time.perf_counter() - t1
    # per session: connect, accept (2 requests, 4 frames out: offer, 2 sessions... counted as requests)
    result["requests"] = result["sessions"] * 2 + pairs * pings
    return result


async def session_latency(port: int, sessions: int) -> list[float]:
    """connect() to session on an otherwise idle server: what a traversal waits for the rendezvous."""
    addr = ("127.0.0.1", port)
    times = []
    async with open_rendezvous(addr, name="lat-t") as t, open_rendezvous(addr) as c:
        async def target():
            while True:
                await t.accept(await t.next_offer())

        async with trio.open_nursery() as n:
            n.start_soon(target)
            for _ in range(sessions):
                t0 = time.perf_counter()
                await c.connect("lat-t")
                times.append(time.perf_counter() - t0)
            n.cancel_scope.cancel()
    return sorted(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200, help="peer pairs (2x connections), default 200")
    ap.add_argument("--rounds", type=int, default=5, help="sessions per pair, default 5")
    ap.add_argument("--pings", type=int, default=20, help="pings per initiator after its sessions")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.pairs <= 2000:
        ap.error("--pairs must be 1..2000 (bounded: 2 connections a pair)")

    sio = sans_io(20_000)

    echo, port = start_process([sys.executable, "-c", ECHO_SERVER])
    try:
        echo_rps = trio.run(echo_round_trips, int(port), 2 * args.pairs, args.rounds + args.pings)
    finally:
        echo.terminate()
        echo.wait()

    # every client comes from 127.0.0.1 here: lift the per-address cap (bench_rendezvous_load.py
    # spreads its peers over many loopback addresses instead)
    server, line = start_process([sys.executable, "-m", "nattrav.cli.server", "--listen", "127.0.0.1:0",
                                  "--json-log", "--max-per-source", str(4 * args.pairs + 10)])
    try:
        port = int(json.loads(line)["address"].rsplit(":", 1)[1])
        lat = trio.run(session_latency, port, 300)
        load = trio.run(rendezvous_load, port, args.pairs, args.rounds, args.pings)
    finally:
        server.terminate()
        server.wait()

    rv_rps = load["requests"] / load["work_s"]
    out = {
        "pairs": args.pairs, "connections": 2 * args.pairs, "rounds": args.rounds, "pings": args.pings,
        "cpus": os.cpu_count(),
        "sans_io_sessions_per_s": round(sio),
        "echo_round_trips_per_s": round(echo_rps),
        "enroll_all_s": round(load["enroll_s"], 3),
        "enrolls_per_s": round(2 * args.pairs / load["enroll_s"]),
        "sessions": load["sessions"],
        "sessions_per_s": round(load["sessions"] / load["work_s"]),
        "requests_per_s": round(rv_rps),
        "ratio_requests_vs_echo": round(rv_rps / echo_rps, 3),
        "session_latency_ms_median": round(lat[len(lat) // 2] * 1e3, 3),
        "session_latency_ms_p99": round(lat[int(len(lat) * 0.99)] * 1e3, 3),
    }
    print(f"rendezvous bench: {out['connections']} connections on loopback, {os.cpu_count()} CPUs "
          "(client load and server share them)")
    print(f"  sans-IO state machine          {out['sans_io_sessions_per_s']:>9,} sessions/s (no sockets)")
    print(f"  echo baseline (framing only)   {out['echo_round_trips_per_s']:>9,} round trips/s")
    print(f"  enroll {out['connections']} peers at once      {out['enroll_all_s']:>9.3f} s "
          f"({out['enrolls_per_s']:,} enrolls/s)")
    print(f"  connect+accept sessions        {out['sessions_per_s']:>9,} sessions/s ({out['sessions']} in all)")
    print(f"  rendezvous requests            {out['requests_per_s']:>9,} requests/s "
          f"= {out['ratio_requests_vs_echo']:.2f} x the echo baseline")
    print(f"  connect -> session, idle server {out['session_latency_ms_median']:>9.2f} ms median, "
          f"{out['session_latency_ms_p99']:.2f} ms p99 (2 round trips through the server)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
