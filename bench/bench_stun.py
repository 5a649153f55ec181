#!/usr/bin/env python3
"""STUN Binding responses per second: nattrav-stun serve against coturn, same load, same run.

    .venv/bin/python bench/bench_stun.py [--seconds 3] [--rounds 3] [--inflight 64] [--json FILE]

One C load generator (core.mmsg.stun_load: sendmmsg/recvmmsg, `inflight` bare Binding requests with
fresh transaction IDs kept outstanding) is pointed in turn at:
- nattrav-stun serve (RFC 5780 layout on 127.0.0.1/127.0.0.2), C fast path (the default);
- the same server with --no-fast-path (every request parsed and encoded in Python): the reference
  that shows what the C batch path buys;
- coturn (`turnserver --stun-only`, two listening IPs 127.0.0.3/127.0.0.4, RFC 5780 on), when installed.
Each server runs in its own process; rounds alternate between them so drift hits all alike. The best
round of each is reported, and the ratio ours/coturn printed. Loopback only.
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

from nattrav.core.mmsg import stun_load


def wait_udp(addr: tuple[str, int], timeout: float = 10.0) -> None:
    """Until a Binding request to addr gets an answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    req = bytes.fromhex("000100002112a442") + os.urandom(12)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.sendto(req, addr)
            try:
                s.recvfrom(2048)
                return
            except OSError:
                continue
    finally:
        s.close()
    raise RuntimeError(f"no STUN server answering on {addr}")


def start_ours(ip: str, alt: str, port: int, fast: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "nattrav.stun_cli", "serve", "--ip", ip, "--alt-ip", alt,
            "--port", str(port), "--alt-port", str(port + 1)]
    if not fast:
        argv.append("--no-fast-path")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_coturn(ip: str, alt: str, port: int, tmp: str) -> subprocess.Popen | None:
    binary = shutil.which("turnserver") or ("/usr/bin/turnserver" if os.path.exists("/usr/bin/turnserver") else None)
    if binary is None:
        return None
    argv = [binary, "--stun-only", "-L", ip, "-L", alt, "--listening-port", str(port),
            "--alt-listening-port", str(port + 1), "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "-n",
            "--log-file", "stdout", "--simple-log", "--no-stdout-log",
            "--pidfile", os.path.join(tmp, "turnserver.pid"), "--userdb", os.path.join(tmp, "turndb")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(addr: tuple[str, int], seconds: float, inflight: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    try:
        t0 = time.perf_counter()
        r = stun_load(s, addr, inflight=inflight, duration=seconds)
        r["seconds"] = time.perf_counter() - t0
    finally:
        s.close()
    r["per_second"] = r["received"] / r["seconds"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--port", type=int, default=34780)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="nt-bench-stun-")
    procs: dict[str, subprocess.Popen] = {}
    targets: dict[str, tuple[str, int]] = {}
    try:
        procs["nattrav"] = start_ours("127.0.0.1", "127.0.0.2", args.port, fast=True)
        targets["nattrav"] = ("127.0.0.1", args.port)
        procs["nattrav-python"] = start_ours("127.0.0.5", "127.0.0.6", args.port, fast=False)
        targets["nattrav-python"] = ("127.0.0.5", args.port)
        coturn = start_coturn("127.0.0.3", "127.0.0.4", args.port, tmp)
        if coturn is not None:
            procs["coturn"] = coturn
            targets["coturn"] = ("127.0.0.3", args.port)
        else:
            print("coturn (turnserver) not installed: no baseline ratio (apt-get install coturn)")
        for name, addr in targets.items():
            wait_udp(addr)
        results: dict[str, list[dict]] = {name: [] for name in targets}
        for rnd in range(args.rounds):
            for name, addr in targets.items():
                r = measure(addr, args.seconds, args.inflight)
                results[name].append(r)
                print(f"round {rnd + 1} {name:15s} {r['per_second']:>10,.0f} responses/s "
                      f"(sent {r['sent']:,}, received {r['received']:,}, stalls {r['stalls']})", flush=True)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    best = {name: max(r["per_second"] for r in rs) for name, rs in results.items()}
    print()
    for name, v in best.items():
        print(f"best {name:15s} {v:>10,.0f} Binding responses/s")
    summary = {"best": best, "rounds": results, "inflight": args.inflight, "seconds": args.seconds}
    if "coturn" in best:
        ratio = best["nattrav"] / best["coturn"]
        summary["ratio_vs_coturn"] = ratio
        print(f"ratio nattrav / coturn          = {ratio:.2f}x  (goal >= 1.0x)")
        print(f"ratio nattrav-python / coturn   = {best['nattrav-python'] / best['coturn']:.2f}x")
    print(f"ratio C fast path / Python path = {best['nattrav'] / best['nattrav-python']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
