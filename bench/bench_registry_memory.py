#!/usr/bin/env python3
"""Redis memory per enrolled peer of the shared registry (issue 18), Redis's default hash encoding
against a tuned one, in the same run: numbers, not asserts.

    .venv/bin/python bench/bench_registry_memory.py [--peers 20000] [--json FILE]

A peer's record is one Redis hash (io/redis_scripts.py), and its node info (~200-300 B packed) is
larger than `hash-max-listpack-value` (64 B by default): Redis then keeps the whole hash as a hash
table, a dict entry and two strings per field, instead of one compact listpack. This enrolls the
same peers (the scale-out bench's addresses and node info, through RedisRegistry.enroll) into two
fresh redis-servers, one with the default and one with `hash-max-listpack-value 1024`, and reports
INFO memory's used_memory after minus before, per peer. No network tier: only what Redis holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import msgpack
import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rendezvous_load import node_info, peer_address  # noqa: E402

CONFIGS = {"default": [], "listpack-1024": ["--hash-max-listpack-value", "1024"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fill(url: str, peers: int, parallel: int) -> dict:
    from nattrav.io.redis_link import open_redis_link
    from nattrav.io.redis_registry import RedisRegistry
    from nattrav.proto.rendezvous import Home

    async with open_redis_link(url) as link:
        async def used() -> int:
            text = (await link.call("INFO", "memory")).decode()
            return int(text.split("used_memory:")[1].split()[0])

        registry = RedisRegistry(link, instance="bench0", clock_offset=time.time(), max_peers=peers + 10)
        await registry.maintain(trio.current_time())
        before = await used()
        limit = trio.Semaphore(parallel)

        async def one(i: int) -> None:
            addr = [peer_address(i), 40000 + i % 20000]
            info = msgpack.packb({**node_info(i), "observed": addr}, use_bin_type=True)
            async with limit:
                got = await registry.enroll(Home("bench0", i), addr[0], addr, info, f"p{i}",
                                            f"bench-secret-{i:012d}", trio.current_time())
            if not hasattr(got, "peer_id"):
                raise RuntimeError(f"enroll {i} refused: {got}")

        async with trio.open_nursery() as nursery:
            for i in range(peers):
                nursery.start_soon(one, i)
        after = await used()
        encoding = (await link.call("OBJECT", "ENCODING", "nattrav:p:p0")).decode()
        info_bytes = len(await link.call("HGET", "nattrav:p:p0", "info"))
        return {"bytes_per_peer": round((after - before) / peers), "used_memory_delta": after - before,
                "peer_hash_encoding": encoding, "info_bytes": info_bytes}


def run_config(name: str, extra: list[str], peers: int, parallel: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nattrav-bench-mem-") as d:
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", d, *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start")
                    time.sleep(0.05)
            return {"config": name, "redis_args": extra, "peers": peers,
                    **trio.run(fill, f"redis://127.0.0.1:{port}/0", peers, parallel)}
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=20_000)
    ap.add_argument("--parallel", type=int, default=200, help="enrolls in flight")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    out = [run_config(name, extra, args.peers, args.parallel) for name, extra in CONFIGS.items()]
    for r in out:
        print(f"  {r['config']:<14} {r['peers']} peers: {r['bytes_per_peer']} B per peer "
              f"(peer hash as {r['peer_hash_encoding']}, node info {r['info_bytes']} B)")
    print(f"  listpack-1024 / default: {out[1]['bytes_per_peer'] / out[0]['bytes_per_peer']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
