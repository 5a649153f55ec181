#!/usr/bin/env python3
"""Goodput of the QUIC path against the plain datagram path, on loopback or in the NAT lab, in the same run.

    .venv/bin/python bench/bench_quic_path.py [--mb 50] [--rounds 3] [--profile] [--json FILE]
    .venv/bin/python bench/bench_quic_path.py --lab [--nats port-restricted,port-restricted]   # root

Each transfer is one-way, sender and receiver in two processes (two cores, like two hosts):
- udp: bare trio sendto/recvfrom of 1200-byte datagrams, no protocol at all (the floor);
- datagram: the product's punched datagram path today (io/path.PunchedPath after a real punch on
  loopback): HMAC-authenticated frames, no encryption, no loss recovery, no congestion control;
- quic: io/quic_path over the same kind of socket: TLS 1.3 encryption, loss recovery, congestion
  and flow control, the byte stream, sha256 checked at the end;
- quic-reasons: the same, also counting dropped packets by reason (aioquic reports reasons only to
  a qlog trace, which costs); quic-1452: with 1452-byte packets (a 1500-byte MTU path) instead of
  the safe default 1232, to show how much the per-packet cost weighs.
Goodput = bytes the receiver got / time from its first to its last byte. The datagram paths have no
flow control, so the sender may outrun the receiver: their loss is printed. Rounds are interleaved
and the median is reported; the goal (issue 15) is quic >= 0.5 x datagram. --profile runs one more
QUIC transfer under cProfile in both processes (the data phase only: not imports, discovery or the
handshake) and prints where the time goes, by module.

--lab runs the transfers between two hosts of the NAT lab instead (each behind its NAT, default
port-restricted on both sides, clean links: no delay, loss or reordering added), through the product
as a user calls it: the receiver listens at the lab's rendezvous server, the sender connects to its
peer ID with nattrav.api (secure=False: the datagram path; the default: QUIC), each discovering and
punching by itself; only the data phase is timed. The kinds are datagram and quic (and its variants).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import math
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import trio

LO = "127.0.0.1"
CHUNK = 64 * 1024
DGRAM = 1200
KEY = bytes(range(32))  # the bench's session key for the datagram path (loopback only)


def free_udp_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind((LO, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def bound(port: int):
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await s.bind((LO, port))
    return s


_CPU_MARK = [0.0]
_PROFILER: list[cProfile.Profile | None] = [None]  # --profile: on from mark() to the end


def mark() -> None:
    """The data phase starts: CPU from here on is what a transfer costs (not start-up, not setup)."""
    _CPU_MARK[0] = time.process_time()
    if _PROFILER[0] is not None:
        _PROFILER[0].enable()


def payload(size: int) -> bytes:
    block = os.urandom(1 << 20)
    return (block * (size // len(block) + 1))[:size]


async def receive_all(next_chunk, silence: float | None = 2.0, first_wait: float = 30.0) -> dict:
    """The receiver's loop: `next_chunk()` until it gives b"" (or, with `silence`, until nothing came
    for that long after the first byte). Every receiver hashes what it got, so CPU compares like for like."""
    h, got, first, last = hashlib.sha256(), 0, None, None
    mark()
    while True:
        wait = first_wait if first is None else (silence if silence is not None else math.inf)
        with trio.move_on_after(wait) as quiet:
            data = await next_chunk()
        if quiet.cancelled_caught or not data:
            break
        last = time.perf_counter()
        first = first or last
        got += len(data)
        h.update(data)
    return {"bytes": got, "seconds": (last - first) if first else None, "sha256": h.hexdigest()}


async def send_datagrams(path, data: bytes) -> dict:
    for i in range(0, len(data), CHUNK):
        await path.send(data[i:i + CHUNK])
    return {}


async def send_stream(path, data: bytes) -> dict:
    """The whole of `data` on the QUIC stream, then EOF, then the peer's EOF (all of it arrived)."""
    for i in range(0, len(data), CHUNK):
        await path.stream.send_all(data[i:i + CHUNK])
    await path.stream.send_eof()
    assert await path.stream.receive_some() == b""
    return {"stats": path.stats, "sha256": hashlib.sha256(data).hexdigest()}


async def receive_stream(path, first_wait: float = 30.0) -> dict:
    got = await receive_all(lambda: path.stream.receive_some(CHUNK), silence=None, first_wait=first_wait)
    await path.stream.send_eof()
    return {**got, "stats": path.stats}


# --- the child processes -----------------------------------------------------------------------

async def child_udp(role: str, me: int, peer: int, size: int) -> dict:
    sock = await bound(me)
    if role == "send":
        await trio.sleep(0.3)  # the receiver is bound by then
        data = payload(size)
        mark()
        for i in range(0, size, DGRAM):
            await sock.sendto(data[i:i + DGRAM], (LO, peer))
        for _ in range(5):
            await sock.sendto(b"", (LO, peer))  # end marker
        return {}

    async def datagram() -> bytes:
        return (await sock.recvfrom(65536))[0]

    return await receive_all(datagram)


async def child_datagram(role: str, me: int, peer: int, size: int) -> dict:
    from nattrav.io.punch import punch
    from nattrav.io.session import Session
    from nattrav.proto.planner.udp import plan
    from nattrav.proto.report import NatReport
    from nattrav.proto.vocab import Mapping, Role

    sock = await bound(me)
    # loopback: no NAT on either side, each reachable where it is bound
    mine = NatReport(mapping=Mapping.NONE, public=(LO, me))
    theirs = NatReport(mapping=Mapping.NONE, public=(LO, peer))
    punch_role = Role.FIRST if role == "send" else Role.SECOND
    path = await punch(sock, plan(mine, theirs, punch_role, peer_ip=LO), Session(KEY, punch_role))
    if role == "send":
        data = payload(size)
        mark()
        await send_datagrams(path, data)
        await path.aclose()
        return {}
    return await receive_all(path.receive)


async def child_lab(kind: str, role: str, server: str, size: int, keys: list[str]) -> dict:
    """One side of a transfer between two lab hosts, through nattrav.api as a user calls it."""
    from nattrav.api import connect, listen
    from nattrav.identity import load_identity

    ids = [load_identity(k) for k in keys]
    secure = kind != "datagram"
    quic = dict(VARIANTS[kind]) if secure else None
    common = {"secure": secure, "cache": False, "quic": quic}
    if role == "send":
        data = payload(size)
        async with connect(server, ids[1].peer_id.text, identity=ids[0], timeout=60, **common) as path:
            mark()
            return await (send_stream(path, data) if secure else send_datagrams(path, data))
    async with listen(server, identity=ids[1], **common) as lst:
        print("ready", flush=True)
        async with lst.accept() as path:
            if secure:
                return await receive_stream(path, first_wait=60.0)
            return await receive_all(path.receive, first_wait=60.0)


VARIANTS = {"quic": {}, "quic-nogso": {"gso": False}, "quic-reasons": {"drop_reasons": True},
            "quic-1452": {"max_datagram_size": 1452}}


async def child_quic(role: str, me: int, peer: int, size: int, keys: list[str], variant: str) -> dict:
    from nattrav.identity import load_identity
    from nattrav.io.quic_path import QuicSettings, open_quic_path

    ids = [load_identity(k) for k in keys]
    mine, theirs = (ids[0], ids[1]) if role == "send" else (ids[1], ids[0])
    sock = await bound(me)
    settings = QuicSettings(**VARIANTS[variant])
    quic_role = "client" if role == "send" else "server"
    async with open_quic_path(sock, (LO, peer), mine, theirs.peer_id, role=quic_role,
                              settings=settings) as path:
        if role == "send":
            data = payload(size)
            mark()
            return await send_stream(path, data)
        return await receive_stream(path)


def child_main(args: argparse.Namespace) -> None:
    kind, role, me, peer, size = args.child
    if kind.startswith("lab:"):
        lab_kind = kind[4:]
        run = lambda: trio.run(child_lab, lab_kind, role, me, int(size), args.keys)  # noqa: E731
        kind = "lab"
    else:
        me, peer, size = int(me), int(peer), int(size)
    if kind == "lab":
        pass
    elif kind == "udp":
        run = lambda: trio.run(child_udp, role, me, peer, size)  # noqa: E731
    elif kind == "datagram":
        run = lambda: trio.run(child_datagram, role, me, peer, size)  # noqa: E731
    else:
        run = lambda: trio.run(child_quic, role, me, peer, size, args.keys, kind)  # noqa: E731
    if args.profile_to:
        prof = _PROFILER[0] = cProfile.Profile()
        result = run()
        prof.disable()
        prof.dump_stats(args.profile_to)
    else:
        result = run()
    result["cpu"] = time.process_time() - _CPU_MARK[0]
    print(json.dumps(result, default=str), flush=True)


# --- the parent --------------------------------------------------------------------------------

def transfer(kind: str, size: int, keys: list[str], profile: list[str] | None = None, lab=None,
             server: str = "") -> dict:
    procs = {}
    if lab is None:
        send_port, recv_port = free_udp_ports(2)
        for role, me, peer in (("recv", recv_port, send_port), ("send", send_port, recv_port)):
            cmd = [sys.executable, __file__, "--child", kind, role, str(me), str(peer), str(size),
                   "--keys", *keys]
            if profile:
                cmd += ["--profile-to", profile[0 if role == "send" else 1]]
            procs[role] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    else:
        for role, host in (("recv", "b"), ("send", "a")):
            cmd = [sys.executable, __file__, "--child", f"lab:{kind}", role, server, "-", str(size), "--keys", *keys]
            if profile:
                cmd += ["--profile-to", profile[0 if role == "send" else 1]]
            procs[role] = lab.popen(host, cmd, stdout=subprocess.PIPE, text=True)
            if role == "recv" and procs[role].stdout.readline().strip() != "ready":
                raise SystemExit(f"{kind} receiver did not enroll")
    out = {}
    for role, p in procs.items():
        stdout, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"{kind} {role} failed (exit {p.returncode})")
        out[role] = json.loads(stdout.strip().splitlines()[-1])
    recv = out["recv"]
    result = {"kind": kind, "bytes": recv["bytes"], "seconds": recv["seconds"],
              "mb_s": recv["bytes"] / recv["seconds"] / 1e6 if recv["seconds"] else 0.0,
              "delivered": recv["bytes"] / size,
              # CPU seconds per MB sent / received: what the load of other processes cannot inflate much
              "send_cpu_mb": out["send"]["cpu"] / (size / 1e6),
              "recv_cpu_mb": recv["cpu"] / (recv["bytes"] / 1e6)}
    if kind.startswith("quic"):
        result["intact"] = recv["sha256"] == out["send"]["sha256"]
        result["sender_stats"] = out["send"]["stats"]
        result["receiver_stats"] = recv["stats"]
    return result


GROUPS = [  # (label, substring of the profiled function's file or name), first match wins
    ("kernel: sendto/recvfrom", "method 'sendto'"), ("kernel: sendto/recvfrom", "method 'recvfrom'"),
    ("kernel: sendto/recvfrom", "method 'sendmsg'"),
    ("crypto: AEAD + header protection", "aioquic/_crypto"), ("crypto: AEAD + header protection", "aioquic/quic/crypto"), ("crypto: AEAD + header protection", "cryptography"),
    ("crypto: AEAD + header protection", "method 'encrypt"), ("crypto: AEAD + header protection", "method 'decrypt"),
    ("aioquic: packet building", "packet_builder"), ("aioquic: loss recovery / congestion", "recovery"),
    ("aioquic: loss recovery / congestion", "congestion"), ("aioquic: range sets", "rangeset"),
    ("aioquic: streams", "aioquic/quic/stream"), ("aioquic: connection (frames, acks)", "aioquic/quic/connection"),
    ("aioquic: packets/buffers", "aioquic/quic/packet"), ("aioquic: packets/buffers", "aioquic/buffer"), ("aioquic: packets/buffers", "aioquic._buffer"),
    ("aioquic: drop-counting qlog hooks", "aioquic/quic/logger"), ("nattrav io/quic_* (the Trio driver)", "nattrav/io/quic_"),
    ("trio scheduler", "trio/"), ("hashing the payload (bench)", "sha256"), ("hashing the payload (bench)", "_hashlib"),
    ("bench harness", "bench_quic_path"),
]


def where_time_goes(path: str) -> list[tuple[str, float]]:
    stats = pstats.Stats(path)
    total = 0.0
    by: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        if "epoll" in name:
            continue  # waiting for packets or timers: idle, not CPU
        total += tottime
        key = f"{filename} {name}"
        label = next((lbl for lbl, sub in GROUPS if sub in key), None)
        if label is None:  # named by the function itself, so the biggest of the rest can be read
            label = f"other: {os.path.basename(filename)} {name}"
        by[label] = by.get(label, 0.0) + tottime
    return sorted(((k, v / total) for k, v in by.items()), key=lambda kv: -kv[1])


LOAD = [open("/proc/loadavg").read().split()[:3]]


@contextlib.contextmanager
def lab_or_not(use_lab: bool, nats: str):
    """(lab, rendezvous server "ip:port") for --lab, else (None, "")."""
    if not use_lab:
        yield None, ""
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests.secure_lab
    from nattrav.lab import Lab
    from tests.secure_lab import start_server

    left, right = nats.split(",", 1)
    lab = Lab(left, right)
    lab.up()
    try:
        yield lab, start_server(lab)
    finally:
        lab.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes per transfer (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--profile", action="store_true", help="one more QUIC transfer under cProfile")
    ap.add_argument("--kinds", default="all",
                    help="comma-separated subset of udp,datagram," + ",".join(VARIANTS) + " (default all)")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--lab", action="store_true", help="between two NAT lab hosts through nattrav.api (root)")
    ap.add_argument("--nats", default="port-restricted,port-restricted", metavar="LEFT,RIGHT",
                    help="the lab's two NATs (presets; default port-restricted,port-restricted)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--keys", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)
    if args.mb <= 0 or args.rounds < 1:
        ap.error("--mb must be > 0 and --rounds >= 1")

    from nattrav.identity import create_identity

    size = int(args.mb * 1e6)
    kinds = ["udp", "datagram", *VARIANTS]
    if args.lab:
        kinds.remove("udp")  # bare sockets would need the lab's addresses: only what a user runs
        if os.geteuid() != 0:
            ap.error("--lab needs root (the NAT lab)")
    if args.kinds != "all":
        unknown = set(args.kinds.split(",")) - set(kinds)
        if unknown:
            ap.error(f"unknown kinds: {', '.join(sorted(unknown))}")
        kinds = [k for k in kinds if k in args.kinds.split(",")]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp, lab_or_not(args.lab, args.nats) as (lab, server):
        os.chmod(tmp, 0o755)  # the lab's processes run as root too, but keep the keys readable for them
        keys = [os.path.join(tmp, "a.pem"), os.path.join(tmp, "b.pem")]
        for k in keys:
            create_identity(k)
        for r in range(args.rounds):
            for kind in kinds:
                res = transfer(kind, size, keys, lab=lab, server=server)
                results[kind].append(res)
                extra = f" intact={res['intact']}" if "intact" in res else f" delivered={res['delivered']:.1%}"
                print(f"round {r + 1} {kind:13s} {res['mb_s']:7.1f} MB/s{extra}  CPU ms/MB: sender "
                      f"{res['send_cpu_mb'] * 1e3:.1f}, receiver {res['recv_cpu_mb'] * 1e3:.1f}", flush=True)
        profile = None
        if args.profile:
            paths = [os.path.join(tmp, "send.prof"), os.path.join(tmp, "recv.prof")]
            transfer("quic", size, keys, profile=paths, lab=lab, server=server)
            profile = {"sender": where_time_goes(paths[0]), "receiver": where_time_goes(paths[1])}

    med = {k: statistics.median(r["mb_s"] for r in v) for k, v in results.items()}
    where = f"the NAT lab ({args.nats}, clean links)" if args.lab else "loopback"
    print(f"\none-way goodput on {where}, {args.mb:g} MB, median of {args.rounds} (sender and receiver in two "
          f"processes); load before: {LOAD[0]}, after: {open('/proc/loadavg').read().split()[:3]}")
    for kind in kinds:
        lost = 1 - statistics.median(r["delivered"] for r in results[kind])
        note = f"  lost {lost:.1%}" if lost > 0.0005 else ""
        cpu = [statistics.median(r[k] for r in results[kind]) * 1e3 for k in ("send_cpu_mb", "recv_cpu_mb")]
        print(f"  {kind:13s} {med[kind]:7.1f} MB/s   CPU ms per MB sent {cpu[0]:5.1f}, received {cpu[1]:5.1f}{note}")
    ratio = None
    if "quic" in med and "datagram" in med:
        ratio = med["quic"] / med["datagram"]
        # rounds are interleaved, so the per-round ratio drifts less with the machine's load
        per_round = statistics.median(q["mb_s"] / d["mb_s"] for q, d in zip(results["quic"], results["datagram"]))
        print(f"  quic / datagram path    = {ratio:.2f}x  (median of per-round ratios {per_round:.2f}x; goal >= 0.5x)")
    if "quic" in med and "datagram" in med:
        cpu_ratio = max(statistics.median(r[k] for r in results["datagram"]) for k in ("send_cpu_mb", "recv_cpu_mb")) / \
            max(statistics.median(r[k] for r in results["quic"]) for k in ("send_cpu_mb", "recv_cpu_mb"))
        print(f"  busier side's CPU/MB, datagram / quic = {cpu_ratio:.2f}x  (the goodput ratio a quiet machine "
              "with a core per side would show, if the busier side is the limit)")
    if "quic" in med and "udp" in med:
        print(f"  quic / bare udp         = {med['quic'] / med['udp']:.2f}x")
    if "quic" in med and "quic-reasons" in med:
        print(f"  drop reasons cost       = {1 - med['quic-reasons'] / med['quic']:.1%} of quic")
    if "quic" in med and "quic-1452" in med:
        print(f"  1452-byte packets       = {med['quic-1452'] / med['quic']:.2f}x quic")
    if "quic" in results:
        s = results["quic"][-1]
        print(f"  quic packets: sent {s['sender_stats'].get('datagrams_out')}, received "
              f"{s['receiver_stats'].get('datagrams_in')}, receiver discarded "
              f"{s['receiver_stats'].get('discarded', 0)}")
    if profile:
        for side, groups in profile.items():
            print(f"\nwhere the QUIC {side}'s CPU time goes (cProfile tottime share):")
            for label, share in groups:
                if share >= 0.01:
                    print(f"  {share:6.1%}  {label}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mb": args.mb, "lab": args.nats if args.lab else None, "median_mb_s": med, "ratio_quic_datagram": ratio, "rounds": results,
                       "profile": profile}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
