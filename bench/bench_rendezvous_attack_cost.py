#!/usr/bin/env python3
"""What one attack connection costs nattrav-server, in server CPU time: this tree against another.

    .venv/bin/python bench/bench_rendezvous_attack_cost.py --baseline-src DIR [--rounds 3] [--n 2000]

DIR holds another commit's nattrav package (e.g. `git archive m2 src | tar -x -C /tmp/old` with the
built C core copied into /tmp/old/src/nattrav/). Each round starts both servers in turn (their order
alternates) and sends each the same attack, one kind at a time, 50 connections in flight, from
127.66.x.y: garbage (random bytes, then close), bad-body (a sane length, a bad body: the connection
that used to stay open), slowloris bytes (one byte of a long frame on each of 500 open connections,
repeated) and
enroll-ask-reset (enroll, ask for a peer, RST). The number is the server's CPU seconds (/proc, user +
system) per connection (per byte for slowloris), so the neighbours' load on a shared machine moves
it far less than a latency. Ratios new/baseline are per round; their median is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time

import trio

KINDS = ("garbage", "bad-body", "slowloris-byte", "enroll-ask-reset")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(src: str | None) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
    p = subprocess.Popen([sys.executable, "-m", "nattrav.cli.server", "--listen", "127.0.0.1:0", "--json-log",
                          "--stats-interval", "0", "--max-connections", "4000"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    port = int(json.loads(p.stdout.readline())["address"].rsplit(":", 1)[1])
    return p, port


async def attack(port: int, kind: str, n: int) -> None:
    from nattrav.proto.rendezvous import encode, make

    addr = ("127.0.0.1", port)
    rng = random.Random(14)
    enroll = encode(make("enroll", id=1, info={"pad": "x" * 200}))
    ask = encode(make("connect", id=2, target="nobody-here", timeout=5.0))
    limiter = trio.CapacityLimiter(50)

    async def open_from(k: int):
        s = trio.socket.socket()
        await s.bind((f"127.66.{k // 100 % 250 + 1}.{k % 100 + 1}", 0))
        await s.connect(addr)
        return s

    async def drain(s, timeout=2.0):
        with trio.move_on_after(timeout):
            while await s.recv(65536):
                pass

    async def one(k: int):
        async with limiter:
            s = await open_from(k)
            with s:
                if kind == "garbage":
                    await s.send(rng.randbytes(rng.randint(1, 2000)))
                    await drain(s)
                elif kind == "bad-body":
                    body = rng.randbytes(rng.randint(1, 300))
                    await s.send(struct.pack("!I", len(body)) + body)
                    with trio.move_on_after(0.05):
                        await s.recv(4096)
                else:  # enroll-ask-reset
                    await s.send(enroll)
                    await s.recv(4096)
                    await s.send(ask)
                    await s.recv(4096)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    if kind == "slowloris-byte":
        # a valid header announcing 8 KiB, then the body a byte at a time (as bench_rendezvous_load's)
        payload = b"\x00\x00\x20\x00" + b"\x85" * 8192
        socks = [await open_from(k) for k in range(500)]
        try:
            for i in range(n // 500):
                for s in socks:
                    await s.send(payload[i:i + 1])
                await trio.sleep(0.02)
        finally:
            for s in socks:
                s.close()
        return
    async with trio.open_nursery() as nursery:
        for k in range(n):
            nursery.start_soon(one, k)


def measure(src: str | None, n: int) -> dict[str, float]:
    server, port = start_server(src)
    try:
        time.sleep(0.5)
        out = {}
        for kind in KINDS:
            c0 = cpu_s(server.pid)
            trio.run(attack, port, kind, n)
            time.sleep(0.3)  # the server finishes its closes
            out[kind] = (cpu_s(server.pid) - c0) / n
        return out
    finally:
        server.terminate()
        server.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", required=True, metavar="DIR", help="directory holding the baseline's nattrav")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="connections (slowloris: bytes) per kind and round")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.baseline_src, "nattrav")):
        ap.error(f"{args.baseline_src} has no nattrav package")
    rounds = []
    for r in range(args.rounds):
        order = [("baseline", args.baseline_src), ("this", None)]
        if r % 2:
            order.reverse()
        got = {name: measure(src, args.n) for name, src in order}
        rounds.append({**got, "loadavg": open("/proc/loadavg").read().split()[:3]})
        print(f"round {r + 1} (load {' '.join(rounds[-1]['loadavg'])}): " + ", ".join(
            f"{k} {got['baseline'][k] * 1e6:.0f} -> {got['this'][k] * 1e6:.0f} us" for k in KINDS), flush=True)
    print("server CPU per attack connection (slowloris: per byte), median over rounds, this tree vs baseline:")
    summary = {}
    for k in KINDS:
        base = statistics.median(x["baseline"][k] for x in rounds) * 1e6
        this = statistics.median(x["this"][k] for x in rounds) * 1e6
        ratio = statistics.median(x["this"][k] / x["baseline"][k] for x in rounds if x["baseline"][k] > 0)
        summary[k] = {"baseline_us": round(base, 1), "this_us": round(this, 1), "ratio": round(ratio, 2)}
        print(f"  {k:17} {base:7.0f} us -> {this:7.0f} us  ({ratio:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "summary": summary, "n": args.n}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
