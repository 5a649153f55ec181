#!/usr/bin/env python3
"""The rendezvous tier scaled out (issue 18): numbers, not asserts.

    .venv/bin/python bench/bench_rendezvous_scaleout.py [--peers 100000] [--connects 10000] [--instances 3]
                                                        [--processes 2] [--json FILE]

Two tiers in one run, on loopback:
- baseline: one nattrav-server (one process) with its in-memory registry;
- scaled: --instances nattrav-server instances (3 by default), each served by --processes worker
  processes on its port (2 by default: `nattrav-server --processes`, SO_REUSEPORT), on one
  redis-server (started here, a temporary directory, no persistence); peer i enrolls at instance
  i % N (the kernel picks the worker), and with --connects not a multiple of N every initiator's
  target sits at another instance, so every offer and every accept crosses instances through Redis
  (the workers' notice streams); within an instance, half of them cross workers the same way.

Every enrolled peer holds one TCP connection, so one descriptor in its process: a process may hold
RLIMIT_NOFILE's hard limit (20,000 on the machine this was written on, without CAP_SYS_RESOURCE to
raise it). The baseline then gets at most that many peers (and as many connects per peer as the
scaled tier), measured at the same size as the scaled tier too (`--equal`); 100,000 peers over 3
instances need 2 processes each: that one process cannot hold them is the point of scaling out.

Peers are raw protocol clients (one TCP connection each, enroll with a real node info, answer every
offer), spread over --clients processes and over 127.1.x.y source addresses (100 per address: under
the per-source caps). Phases: enroll every peer (at most --parallel in flight per process) ->
enrolls/s; then every initiator asks its target at once (--connects pairs) -> p50/p99/max latency
from the connect frame to the session frame, and how many got one. Redis memory per peer: INFO
memory's used_memory after the enrolls minus before, over the peers enrolled. CPU per enroll and
per connect: the CPU time the instances (and Redis) spent over the phase (/proc/PID/stat), over the
operations: unlike wall time, it barely moves with the machine's other load (it includes each
process's housekeeping during the phase, so a longer phase adds a little).

The machine has two cores shared by every process (instances, Redis, clients): compare the two tiers
within one run, not with other runs. Needs root (or a high hard RLIMIT_NOFILE): one descriptor per
connection on both sides.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import trio

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
# the peers' addresses and node info, percentiles, and the orchestration of child processes are the
# load bench's (issue 14): the two benches' numbers stay comparable
from bench_rendezvous_load import (  # noqa: E402
    PER_ADDRESS, cpu_s, emit, expect, node_info, pct, peer_address, rss_kb, send,
)


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- a client process: raw peers ---------------------------------------------------------------------


async def peers_role(servers: list[tuple[str, int]], first: int, count: int, connects: int, parallel: int) -> None:
    from nattrav.proto.rendezvous import SERVER_MESSAGES, FrameDecoder, encode, make

    conns: dict[int, trio.SocketStream] = {}
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    failures: dict[str, int] = {}
    enrolling = trio.Semaphore(parallel)
    done = [0]
    all_enrolled = trio.Event()
    answered = [0]
    retries = [0]
    accept_errors: dict[str, int] = {}
    finished = [0]
    round_done = trio.Event()
    mine = [i for i in range(first, first + count) if i < connects]

    def one_finished():
        finished[0] += 1
        if finished[0] == len(mine):
            round_done.set()

    def enrolled_one():
        done[0] += 1
        if done[0] == count:
            all_enrolled.set()

    async def peer(i: int):
        addr = servers[i % len(servers)]
        dec = FrameDecoder(SERVER_MESSAGES)

        async def next_msg(stream):
            while (msg := dec.next_message()) is None:
                data = await stream.receive_some(65536)
                if not data:
                    raise EOFError("closed by the server")
                dec.feed(data)
            return msg

        for attempt in range(8):
            async with enrolling:
                try:
                    sock = trio.socket.socket()
                    await sock.bind((peer_address(i), 0))
                    await sock.connect(addr)
                    stream = trio.SocketStream(sock)
                    # a name comes with its secret, as names do in use: a retry after a lost answer
                    # (busy after Redis ran the enroll) proves ownership instead of meeting name-taken
                    await stream.send_all(encode(make("enroll", id=1, info=node_info(i), name=f"p{i}",
                                                      secret=f"bench-secret-{i:012d}")))
                    msg = await next_msg(stream)
                    if msg["t"] == "enrolled":
                        break
                    reason = f"{msg['t']}: {msg.get('code')}"
                except (OSError, EOFError) as exc:
                    reason = str(exc)[:60]
                sock.close()
            if not reason.endswith(("busy", "timeout")):
                break
            # busy (a registry call failed) or timeout (the instance did not get to the enroll within
            # its enroll deadline): the tier is overloaded; a real client retries
            retries[0] += 1
            await trio.sleep(min(2.0, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2))
        else:
            reason = "busy or timeout 8 times"
        if msg.get("t") != "enrolled":
            failures[reason] = failures.get(reason, 0) + 1
            enrolled_one()
            return
        conns[i] = stream
        enrolled_one()
        try:
            while True:
                msg = await next_msg(stream)
                kind = msg["t"]
                if kind == "offer":
                    await stream.send_all(encode(make("accept", id=2, offer=msg["offer"])))
                elif kind == "session" and msg.get("id") == 3:
                    latencies.append(time.perf_counter() - sent_at[i])
                    one_finished()
                elif kind == "session":
                    answered[0] += 1
                elif kind == "error" and msg.get("id") == 2:  # our accept failed: its initiator times out
                    accept_errors[msg["code"]] = accept_errors.get(msg["code"], 0) + 1
                elif kind == "error" and msg.get("id") == 3:
                    errors[msg["code"]] = errors.get(msg["code"], 0) + 1
                    one_finished()
        except (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def ask(i: int):
        sent_at[i] = time.perf_counter()
        try:
            await conns[i].send_all(encode(make("connect", id=3, target=f"p{i + connects}", timeout=60.0)))
        except (KeyError, OSError, trio.BrokenResourceError):
            errors["not enrolled"] = errors.get("not enrolled", 0) + 1
            one_finished()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(first, first + count):
            nursery.start_soon(peer, i)
        await all_enrolled.wait()
        gc.collect()
        gc.freeze()  # this process stands in for many machines: no full collections over all of them
        emit({"phase": "enrolled", "peers": len(conns), "failures": failures, "retries": retries[0],
              "seconds": time.perf_counter() - t0})
        while (command := (await trio.to_thread.run_sync(sys.stdin.readline)).strip()) not in ("quit", ""):
            if command == "go":
                t1 = time.perf_counter()
                if mine:
                    for i in mine:
                        nursery.start_soon(ask, i)
                    with trio.move_on_after(120):
                        await round_done.wait()
                latencies.sort()
                await trio.sleep(0.5)  # the last accepts' errors
                emit({"phase": "connects", "asked": len(mine), "ok": len(latencies), "errors": errors,
                      "accept_errors": accept_errors,
                      "latencies": latencies, "seconds": time.perf_counter() - t1})
            elif command == "answered":
                await trio.sleep(1.0)
                emit({"phase": "answered", "answered": answered[0]})
        nursery.cancel_scope.cancel()


# -- the orchestrator --------------------------------------------------------------------------------


def child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, HERE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port: int, *words: str) -> str:
    """One command over RESP, the reply's text (bulk strings and integers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words))
        buf = b""
        while True:
            buf += s.recv(1 << 16)
            if buf.startswith((b":", b"+", b"-")) and buf.endswith(b"\r\n"):
                return buf[1:-2].decode()
            if buf.startswith(b"$"):
                head, _, rest = buf.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[:int(head[1:])].decode()


def redis_info(port: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in redis_cmd(port, "INFO", "memory").splitlines() if ":" in line)


def start_instances(n: int, peers: int, registry: str | None, profile: str | None = None,
                    processes: int = 1) -> list[tuple[subprocess.Popen, tuple[str, int]]]:
    out = []
    for k in range(n):
        # --profile DIR: each instance under cProfile, its stats written to DIR when it stops
        prof = ["-m", "cProfile", "-o", os.path.join(profile, f"{'redis' if registry else 'memory'}-{k}.prof")] \
            if profile else []
        argv = [sys.executable, *prof, "-m", "nattrav.cli.server", "--listen", "127.0.0.1:0", "--json-log",
                "--stats-interval", "0", "--keepalive-timeout", "3600", "--retain", "3600",
                "--max-connections", str(peers + 1000), "--max-per-source", str(PER_ADDRESS + 10),
                "--max-peers", str(peers + 1000)]
        if registry:
            argv += ["--registry", registry, "--instance", f"bench{k}"]
        if processes > 1:  # its workers are registry members bench{k}-0, bench{k}-1, ...
            argv += ["--processes", str(processes)]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        host, port = json.loads(p.stdout.readline())["address"].rsplit(":", 1)
        out.append((p, (host, int(port))))
    return out


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tier_pids(instances: list[tuple[subprocess.Popen, tuple[str, int]]]) -> dict[int, str]:
    """Every process of the tier, named: instance k ("i0"), and its workers ("i0w1") if it has some
    (the supervisor tags each in its environment)."""
    out = {}
    for k, (p, _) in enumerate(instances):
        out[p.pid] = f"i{k}"
        for c in psutil.Process(p.pid).children():
            tag = c.environ().get("NATTRAV_WORKER_OF", ":?")
            out[c.pid] = f"i{k}w{tag.split(':')[1]}"
    return out


def run_tier(name: str, n_instances: int, args, registry: str | None, redis_port: int | None, peers: int,
             connects: int, redis_pid: int | None = None, processes: int = 1) -> dict:
    if redis_port:
        redis_cmd(redis_port, "FLUSHALL")
    instances = start_instances(n_instances, peers, registry, args.profile, processes)
    servers = [addr for _, addr in instances]
    clients: list[subprocess.Popen] = []
    try:
        time.sleep(0.5)
        mem0 = int(redis_info(redis_port)["used_memory"]) if redis_port else 0
        pids = tier_pids(instances)
        rss0 = sum(rss_kb(pid) for pid in pids)

        def cpu() -> tuple[float, float]:
            """CPU seconds so far of the instances, and of Redis: load-proof, unlike wall time."""
            return sum(cpu_s(pid) for pid in pids), (cpu_s(redis_pid) if redis_pid else 0.0)

        load0 = open("/proc/loadavg").read().split()[0]
        cpu0 = cpu()
        n_clients = max(args.clients, -(-peers // args.cap))
        per = -(-peers // n_clients)
        t0 = time.perf_counter()
        for c in range(n_clients):
            first = c * per
            count = min(per, peers - first)
            clients.append(child(["--role", "peers", "--servers", ",".join(f"{h}:{p}" for h, p in servers),
                                  "--first", str(first), "--count", str(count), "--connects", str(connects),
                                  "--parallel", str(args.parallel)]))
        reports = [expect(c, "enrolled", 3600) for c in clients]
        cpu1 = cpu()
        # from the first enroll to the last, as the clients saw it (their start-up is not the tier's)
        enroll_s = max(r["seconds"] for r in reports)
        started_s = time.perf_counter() - t0
        enrolled = sum(r["peers"] for r in reports)
        failures: dict[str, int] = {}
        retries = sum(r["retries"] for r in reports)
        for r in reports:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        time.sleep(2.0)  # leases, heartbeats settle
        mem1 = int(redis_info(redis_port)["used_memory"]) if redis_port else 0
        keys = int(redis_cmd(redis_port, "DBSIZE")) if redis_port else 0
        rss_each = {pids[pid]: rss_kb(pid) for pid in sorted(pids, key=pids.get)}
        rss1 = sum(rss_each.values())
        # peers per worker (registry member): how evenly the kernel spread an instance's connections
        members = {f"bench{k}-{j}" if processes > 1 else f"bench{k}": 0 for k in range(n_instances)
                   for j in range(processes)} if redis_port else {}
        for m in members:
            members[m] = int(redis_cmd(redis_port, "SCARD", f"nattrav:i:{m}"))
        t1 = time.perf_counter()
        cpu2 = cpu()
        for c in clients:
            send(c, "go")
        results = [expect(c, "connects", 600) for c in clients]
        connect_wall = time.perf_counter() - t1
        cpu3 = cpu()
        load1 = open("/proc/loadavg").read().split()[0]
        lat = sorted(x for r in results for x in r["latencies"])
        errors: dict[str, int] = {}
        accept_errors: dict[str, int] = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in r["accept_errors"].items():
                accept_errors[k] = accept_errors.get(k, 0) + v
        alive = all(p.poll() is None for p, _ in instances) and all(psutil.pid_exists(pid) for pid in pids)
        for c in clients:
            send(c, "quit")
    finally:
        stop(clients)
        stop([p for p, _ in instances])
    return {
        "tier": name, "instances": n_instances, "processes_per_instance": processes, "peers": peers, "enrolled": enrolled, "client_processes": n_clients,
        "enroll_failures": failures, "enroll_busy_retries": retries, "enroll_s": round(enroll_s, 2), "enroll_with_startup_s": round(started_s, 2), "enrolls_per_s": round(enrolled / enroll_s),
        "connects": connects, "sessions": len(lat), "connect_errors": errors, "accept_errors": accept_errors,
        "connect_wall_s": round(connect_wall, 2),
        "p50_ms": round(pct(lat, 0.5) * 1e3, 1), "p99_ms": round(pct(lat, 0.99) * 1e3, 1),
        "max_ms": round(pct(lat, 1.0) * 1e3, 1),
        "instances_rss_per_peer_kb": round((rss1 - rss0) / max(1, enrolled), 2),
        "process_rss_mb": {k: round(v / 1024, 1) for k, v in rss_each.items()},
        "peers_per_member": members,
        "redis_used_memory_bytes": mem1 - mem0 if redis_port else None,
        "redis_bytes_per_peer": round((mem1 - mem0) / max(1, enrolled)) if redis_port else None,
        "redis_keys": keys if redis_port else None, "instances_alive": alive,
        # CPU per operation, summed over the instances (and Redis): what the tier spends, whatever
        # else the machine was doing (wall times above are not)
        "instances_cpu_us_per_enroll": round((cpu1[0] - cpu0[0]) / max(1, enrolled) * 1e6),
        "redis_cpu_us_per_enroll": round((cpu1[1] - cpu0[1]) / max(1, enrolled) * 1e6) if redis_port else None,
        "instances_cpu_us_per_connect": round((cpu3[0] - cpu2[0]) / max(1, connects) * 1e6),
        "redis_cpu_us_per_connect": round((cpu3[1] - cpu2[1]) / max(1, connects) * 1e6) if redis_port else None,
        "loadavg_before_after": [load0, load1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="run", choices=["run", "peers"])
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--connects", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--parallel", type=int, default=64, help="enrolls in flight per client process")
    ap.add_argument("--instances", type=int, default=3, help="instances of the scaled tier")
    ap.add_argument("--processes", type=int, default=2, help="worker processes per instance of the scaled tier")
    ap.add_argument("--equal", action="store_true",
                    help="also run the scaled tier at the baseline's size (when the baseline had to be smaller)")
    ap.add_argument("--only", choices=["memory", "redis"], help="run one tier only")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--profile", metavar="DIR", help="run every instance under cProfile, stats into DIR")
    # the client role's own
    ap.add_argument("--servers", default="")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    args = ap.parse_args()
    if args.role == "peers":
        raise_fd_limit(args.count + 1000)
        servers = [(h, int(p)) for h, p in (s.rsplit(":", 1) for s in args.servers.split(","))]
        trio.run(peers_role, servers, args.first, args.count, args.connects, args.parallel)
        return
    if args.connects * 2 > args.peers:
        raise SystemExit("--connects must be at most half of --peers (each initiator has its own target)")
    fd_limit = raise_fd_limit(args.peers + 2000)
    args.cap = fd_limit - 1500  # peers one process (an instance, a client) can hold
    # the kernel spreads an instance's connections over its workers by a hash: leave 5 % for the imbalance
    per_process = -(-args.peers // (args.instances * args.processes))
    if per_process * (1.05 if args.processes > 1 else 1) > args.cap:
        raise SystemExit(f"{args.peers} peers over {args.instances} instances x {args.processes} processes is "
                         f"{per_process} a process, more than the {args.cap} connections one can hold "
                         f"(RLIMIT_NOFILE {fd_limit}): more --instances or --processes")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    base_peers = min(args.peers, args.cap)
    base_connects = min(args.connects, args.connects * base_peers // args.peers)
    out = {"cpus": os.cpu_count(), "fd_limit": fd_limit, "tiers": []}
    if args.only != "redis":
        out["tiers"].append(run_tier("memory", 1, args, None, None, base_peers, base_connects))
        print(json.dumps(out["tiers"][-1]), flush=True)
    if args.only != "memory":
        with tempfile.TemporaryDirectory(prefix="nattrav-bench-redis-") as d:
            port = free_port()
            redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", d, "--maxclients", "10000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        redis_cmd(port, "PING")
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise SystemExit("redis-server did not start")
                        time.sleep(0.05)
                out["redis_version"] = redis_info(port).get("redis_version") or redis_cmd(port, "INFO", "server").split(
                    "redis_version:")[1].split()[0]
                url = f"redis://127.0.0.1:{port}/0"
                if args.equal and base_peers < args.peers:
                    out["tiers"].append(run_tier("redis", args.instances, args, url, port, base_peers,
                                                 base_connects, redis.pid, args.processes))
                    print(json.dumps(out["tiers"][-1]), flush=True)
                out["tiers"].append(run_tier("redis", args.instances, args, url, port, args.peers, args.connects,
                                             redis.pid, args.processes))
                print(json.dumps(out["tiers"][-1]), flush=True)
            finally:
                stop([redis])
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def report(out: dict) -> None:
    print(f"\nrendezvous scale-out: {out['cpus']} CPUs shared by every process (RLIMIT_NOFILE {out['fd_limit']} each)")
    for t in out["tiers"]:
        print(f"  {t['tier']:<6} {t['instances']} instance(s) x {t['processes_per_instance']} process(es), "
              f"{t['client_processes']} client processes: "
              f"{t['enrolled']}/{t['peers']} enrolled in "
              f"{t['enroll_s']} s = {t['enrolls_per_s']:,}/s; {t['sessions']}/{t['connects']} connects "
              f"p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms max {t['max_ms']} ms "
              f"(enroll failures {t['enroll_failures'] or 'none'} after {t['enroll_busy_retries']} busy/timeout retries, "
              f"connect errors {t['connect_errors'] or 'none'}, the targets' accept errors "
              f"{t['accept_errors'] or 'none'})")
        print(f"         CPU per enroll: instances {t['instances_cpu_us_per_enroll']} µs"
              + (f", Redis {t['redis_cpu_us_per_enroll']} µs" if t["redis_cpu_us_per_enroll"] is not None else "")
              + f"; per connect: instances {t['instances_cpu_us_per_connect']} µs"
              + (f", Redis {t['redis_cpu_us_per_connect']} µs" if t["redis_cpu_us_per_connect"] is not None else "")
              + f" (load average {t['loadavg_before_after'][0]} -> {t['loadavg_before_after'][1]})")
        print(f"         RSS per process (MB): {t['process_rss_mb']}"
              + (f"; peers per worker: {t['peers_per_member']}" if t["peers_per_member"] else ""))
        if t["redis_bytes_per_peer"] is not None:
            print(f"         Redis used_memory +{t['redis_used_memory_bytes'] / 2**20:.1f} MiB = "
                  f"{t['redis_bytes_per_peer']} B per peer ({t['redis_keys']} keys)")
    base = next((t for t in out["tiers"] if t["tier"] == "memory"), None)
    for t in out["tiers"]:
        if base is not None and t is not base:
            print(f"  redis ({t['peers']} peers) / memory ({base['peers']} peers): enrolls/s "
                  f"{t['enrolls_per_s'] / base['enrolls_per_s']:.2f}x, p99 connect {t['p99_ms'] / base['p99_ms']:.2f}x, "
                  f"instance CPU per connect {t['instances_cpu_us_per_connect'] / base['instances_cpu_us_per_connect']:.2f}x")


if __name__ == "__main__":
    main()
