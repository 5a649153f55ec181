#!/usr/bin/env python3
"""nattrav-server under load and attack (issue 14): numbers, not asserts.

    .venv/bin/python bench/bench_rendezvous_load.py [--peers 10000] [--connects 1000] [--json FILE]

Three processes besides this one, so each side's numbers are its own: nattrav-server itself (the
real serve_rendezvous, on 127.0.0.1 only), a peers process holding every legitimate peer (real
open_rendezvous clients, spread over 127.1.x.y source addresses, 100 per address, under the
server's default per-source cap), and an attack process (127.66.x.y addresses) running at the same
time:
- slowloris: connections that trickle one byte a second and never finish a frame (reopened when
  the server cuts them at its enroll timeout);
- garbage: connect, send random bytes or a sane length with a bad body, close; in a loop;
- abrupt: connect, enroll, ask a legitimate peer for a session, reset the connection (SO_LINGER 0).

Phases: enroll every peer (bounded concurrency) -> enrolls/s and the server's RSS per enrolled
peer; start the attack; then the legitimate connects, each an initiator asking a distinct target
that accepts: first all at once ("burst"), then paced (open-loop arrivals over a few seconds) ->
p50/p99 latency from connect() to Session, and how many succeeded. Finally how many legitimate peers
the server dropped meanwhile (they would have enrolled again).

Goals (issue 14): RSS <= 20 KB per enrolled peer; p99 connect <= 50 ms on loopback under the attack
mix; every legitimate peer connects. The machine has few cores shared by all four processes:
compare numbers within one run, and expect them to move between runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time

import msgpack
import trio

HERE = os.path.abspath(__file__)
PER_ADDRESS = 100  # legitimate peers per source address (the server allows 128 by default)


# -- helpers shared by the roles ---------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def peer_address(i: int) -> str:
    a = i // PER_ADDRESS
    return f"127.1.{a // 250}.{a % 250 + 1}"


def node_info(i: int, pad: int = 0) -> dict:
    """A node info shaped like what api.listen() publishes for a symmetric NAT (a real report), with
    `pad` more bytes (to measure the worst case: 8 KiB packed is the server's limit)."""
    from nattrav.proto.report import NatReport, Sample
    from nattrav.proto.vocab import Allocation, Filtering, Mapping

    report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                       public=(f"203.0.{i // 250 % 250}.{i % 250 + 1}", 20003),
                       samples=tuple(Sample(20000 + k, 0.01 * k) for k in range(4))).to_wire()
    return {"report": report, "pad": "x" * pad} if pad else {"report": report}


def identity(i: int):
    """Peer i's Ed25519 identity, the same in every process (a seed from its index): the initiators
    must know their targets' peer IDs, as real peers learn them out of band."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from nattrav.identity import Identity

    return Identity(ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench peer %d" % i).digest()))


def peer_name(i: int, keys: bool) -> str:
    return identity(i).peer_id.text if keys else f"p{i}"


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def read_command(stdin) -> str:
    return (await trio.to_thread.run_sync(stdin.readline)).strip()


# -- the legitimate peers (processes of their own) ---------------------------------------------------


async def peers_role(port: int, first: int, count: int, mode: str, paced_seconds: float, parallel: int,
                     pad: int, keys: bool) -> None:
    """Enroll peers first..first+count-1 and keep them enrolled. mode "answer": they accept every
    offer (the targets); "connect": on "go" each asks peer i+count (its target, in another process)
    for a session, all at once, then paced; "hold": they only stay enrolled."""
    from nattrav.errors import RendezvousError
    from nattrav.io.rendezvous_client import open_rendezvous

    addr = ("127.0.0.1", port)
    clients: dict[int, object] = {}
    enrolling = trio.Semaphore(parallel)
    done = [0]
    all_enrolled = trio.Event()
    quit_ = trio.Event()
    failures: dict[str, int] = {}
    accepted = [0]
    # with keys each peer enrolls as api.listen() does by default: its peer ID as its name, proven by
    # signing the server's challenge (one Ed25519 verification per enroll on the server)
    ids = {i: identity(i) for i in range(first, first + count)} if keys else {}
    names = ({i: ids[i].peer_id.text for i in ids} if keys else {})
    if mode == "connect" and keys:
        names.update({i: peer_name(i, True) for i in range(first + count, first + 2 * count)})

    def name_of(i: int) -> str:
        return names[i] if keys else f"p{i}"

    def finished_one():
        done[0] += 1
        if done[0] == count:
            all_enrolled.set()

    async def peer(i: int):
        async with enrolling:
            try:
                cm = open_rendezvous(addr, name=name_of(i), info=node_info(i, pad), local_address=peer_address(i),
                                     identity=ids.get(i))
                rv = await cm.__aenter__()
            except RendezvousError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                finished_one()
                return
        clients[i] = rv
        finished_one()
        try:
            async with trio.open_nursery() as n:
                if mode == "answer":
                    n.start_soon(answer_offers, rv)
                await quit_.wait()
                n.cancel_scope.cancel()
        finally:
            await cm.__aexit__(None, None, None)

    async def answer_offers(rv):
        while True:
            offer = await rv.next_offer()
            try:
                await rv.accept(offer)
                accepted[0] += 1
            except RendezvousError:
                pass  # an attacker's offer whose initiator already vanished

    async def one_connect(i: int, target: int, out: list, errors: dict):
        t0 = time.perf_counter()
        try:
            s = await clients[i].connect(name_of(target), timeout=30)
            assert s.peer_id == name_of(target)
            out.append(time.perf_counter() - t0)
        except (RendezvousError, KeyError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async def connect_round(todo, spread: float) -> dict:
        lat: list[float] = []
        errors: dict[str, int] = {}
        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for k, (i, target) in enumerate(todo):
                if spread:
                    await trio.sleep(max(0.0, t0 + spread * k / len(todo) - time.perf_counter()))
                n.start_soon(one_connect, i, target, lat, errors)
        lat.sort()
        return {"ok": len(lat), "asked": len(todo), "errors": errors, "seconds": time.perf_counter() - t0,
                "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3, "max_ms": pct(lat, 1.0) * 1e3}

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(first, first + count):
            nursery.start_soon(peer, i)
        await all_enrolled.wait()
        # This process stands in for thousands of machines, each with a small heap; one heap holding
        # all their clients spends its time in full garbage collections (100 ms pauses) and the
        # latencies would measure that instead of the server. Long-lived objects are frozen out of
        # the collector in the client processes only; the server runs as shipped.
        gc.collect()
        gc.freeze()
        emit({"phase": "enrolled", "peers": len(clients), "failures": failures,
              "seconds": time.perf_counter() - t0})
        while (command := await read_command(sys.stdin)) not in ("quit", ""):
            if command == "go":
                initiators = range(first, first + count)
                targets = range(first + count, first + 2 * count)
                burst = await connect_round(list(zip(initiators, targets)), 0.0)
                paced = await connect_round(list(zip(initiators, reversed(targets))), paced_seconds)
                emit({"phase": "connects", "burst": burst, "paced": paced, "accepted": accepted[0]})
            elif command == "status":
                dropped = sum(1 for c in clients.values() if c.enrollments > 1 or not c.connected)
                emit({"phase": "status", "dropped": dropped})
        quit_.set()


# -- the attack (a process of its own) ---------------------------------------------------------------


async def attack_role(port: int, slowloris: int, garbage: float, abrupt: float, flat_out: int,
                      victims: list[str]) -> None:
    from nattrav.proto.rendezvous import encode, make

    addr = ("127.0.0.1", port)
    stats = {"slowloris_opened": 0, "slowloris_cut": 0, "garbage": 0, "abrupt": 0, "connect_errors": 0}
    rng = random.Random(14)
    enroll = encode(make("enroll", id=1, info={"pad": "x" * 500}))

    async def open_from(local: str) -> trio.socket.SocketType:
        s = trio.socket.socket()
        try:
            await s.bind((local, 0))
            await s.connect(addr)
        except BaseException:
            s.close()
            raise
        return s

    async def slow(k: int):
        local = f"127.66.1.{k // 100 + 1}"
        while True:
            try:
                s = await open_from(local)
            except OSError:
                stats["connect_errors"] += 1
                await trio.sleep(1)
                continue
            stats["slowloris_opened"] += 1
            with s:
                payload = b"\x00\x00\x20\x00" + b"\x85" * 8192  # a long frame, one byte a second
                try:
                    for b in payload:
                        await s.send(bytes([b]))
                        await trio.sleep(1)
                except OSError:
                    stats["slowloris_cut"] += 1

    async def junk(k: int, r: random.Random):
        try:
            s = await open_from(f"127.66.2.{k % 100 + 1}")
        except OSError:
            stats["connect_errors"] += 1
            return
        with s:
            if r.random() < 0.5:
                data = r.randbytes(r.randint(1, 2000))
            else:  # a sane length, a bad body: the connection survives, the frame does not
                body = r.randbytes(r.randint(1, 300))
                data = struct.pack("!I", len(body)) + body
            try:
                await s.send(data)
                with trio.move_on_after(0.05):
                    await s.recv(4096)
            except OSError:
                pass
        stats["garbage"] += 1

    async def vanish(k: int, r: random.Random):
        try:
            s = await open_from(f"127.66.3.{k % 100 + 1}")
        except OSError:
            stats["connect_errors"] += 1
            return
        with s:
            try:
                await s.send(enroll)
                await s.recv(4096)
                await s.send(encode(make("connect", id=2, target=r.choice(victims), timeout=30.0)))
                await trio.sleep(r.uniform(0, 0.05))
            except OSError:
                pass
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, no FIN
        stats["abrupt"] += 1

    async def paced(kind, rate: float, nursery):
        # open-loop arrivals at `rate` a second (as an attacker would send them), at most 500 in flight
        r = random.Random(rng.random())
        in_flight = trio.CapacityLimiter(500)
        t0, k = trio.current_time(), 0

        async def one(k):
            async with in_flight:
                await kind(k, r)

        while True:
            k += 1
            await trio.sleep_until(t0 + k / rate)
            if in_flight.borrowed_tokens < 500:
                nursery.start_soon(one, k)

    async def looped(kind, k):
        r = random.Random(rng.random())
        while True:
            await kind(k, r)
            k += 100

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for k in range(slowloris):
            n.start_soon(slow, k)
        if flat_out:
            for k in range(flat_out):
                n.start_soon(looped, junk, k)
                n.start_soon(looped, vanish, k)
        else:
            if garbage > 0:
                n.start_soon(paced, junk, garbage, n)
            if abrupt > 0:
                n.start_soon(paced, vanish, abrupt, n)
        emit({"phase": "attacking"})
        await read_command(sys.stdin)  # "stop"
        n.cancel_scope.cancel()
    elapsed = time.perf_counter() - t0
    emit({"phase": "attack", "seconds": elapsed, **stats,
          "garbage_per_s": stats["garbage"] / elapsed, "abrupt_per_s": stats["abrupt"] / elapsed})


# -- the orchestrator --------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    return sum(cpu_user_sys(pid))


def cpu_user_sys(pid: int) -> tuple[float, float]:
    """CPU seconds in user space (Python) and in the kernel (the syscalls; on loopback a send also
    runs the receiver's side of TCP)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def run_delay(pid: int) -> tuple[float, int]:
    """Seconds the process's threads spent runnable but waiting for a CPU, and how many times they
    were put on one (/proc/PID/task/*/schedstat): the part of a latency that is the machine's."""
    total, slices = 0, 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            total += int(fields[1])
            slices += int(fields[2])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9, slices


class LoopTurns:
    """A Trio instrument for the server (--trace-loop): how long each turn of the event loop spent
    running tasks (from one epoll wake-up to the next wait) and how many task steps it ran. A frame
    that arrives during a turn waits for the rest of it; long turns are what a fair server avoids."""

    def __init__(self) -> None:
        # (start, seconds, CPU seconds, steps), perf_counter clock: a turn whose wall time is far above
        # its CPU time was preempted (the machine's doing), not slow
        self.turns: list[tuple[float, float, float, int]] = []
        # (start, generation, seconds, objects freed) of each garbage collection
        self.collections: list[tuple[float, int, float, int]] = []
        self._start: float | None = None
        self._cpu = 0.0
        self._steps = 0
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.collections.append((self._gc_start, info["generation"], time.perf_counter() - self._gc_start,
                                     info["collected"]))

    def after_io_wait(self, timeout: float) -> None:
        self._start = time.perf_counter()
        self._cpu = time.thread_time()
        self._steps = 0

    def before_task_step(self, task) -> None:
        self._steps += 1

    def before_io_wait(self, timeout: float) -> None:
        if self._start is not None:
            self.turns.append((self._start, time.perf_counter() - self._start, time.thread_time() - self._cpu,
                               self._steps))
            self._start = None


def traced_server(turns_file: str, server_argv: list[str]) -> int:
    """nattrav-server's own main, with LoopTurns in its event loop; the turns go to `turns_file` at exit."""
    import nattrav.cli.server as cli

    turns = LoopTurns()
    profile_file = os.environ.get("NATTRAV_BENCH_PROFILE")
    if profile_file:  # --profile: the connect phase only, between SIGUSR1 and SIGUSR2 from the orchestrator
        import cProfile

        profiler = cProfile.Profile()
        signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
        signal.signal(signal.SIGUSR2, lambda *_: (profiler.disable(), profiler.dump_stats(profile_file)))
    real_run = trio.run
    trio.run = lambda *a, **k: real_run(*a, instruments=[turns], **k)
    try:
        return cli.main(server_argv)
    finally:
        # cyclic garbage nobody collected yet (the server's gc policy has unfrozen everything on its
        # way out): what a policy that freezes survivors would leave for its periodic full collection
        gc.unfreeze()
        left = gc.collect()
        with open(turns_file, "w") as f:
            json.dump({"turns": turns.turns, "collections": turns.collections, "garbage_at_exit": left}, f)


def loop_summary(trace: dict, t0: float, t1: float) -> dict:
    inside = [(d, c, n) for start, d, c, n in trace["turns"] if t0 <= start <= t1]
    if not inside:
        return {}
    d = sorted(x[0] for x in inside)
    c = sorted(x[1] for x in inside)
    n = sorted(x[2] for x in inside)
    long = [x for x in inside if x[0] > 0.010]
    gcs = [(g, s, freed) for start, g, s, freed in trace["collections"] if t0 <= start <= t1]
    return {"turns": len(d), "busy_s": round(sum(d), 3), "busy_cpu_s": round(sum(c), 3),
            "p50_ms": round(pct(d, 0.5) * 1e3, 2), "p99_ms": round(pct(d, 0.99) * 1e3, 2),
            "max_ms": round(d[-1] * 1e3, 2), "cpu_p99_ms": round(pct(c, 0.99) * 1e3, 2),
            "cpu_max_ms": round(c[-1] * 1e3, 2),
            "over_10ms": len(long), "over_20ms": sum(1 for x in inside if x[0] > 0.020),
            "cpu_over_20ms": sum(1 for x in inside if x[1] > 0.020), "over_10ms_cpu_share": round(sum(x[1] for x in long) / max(1e-9, sum(x[0] for x in long)), 2),
            "steps_p50": pct(n, 0.5), "steps_p99": pct(n, 0.99), "steps_max": n[-1],
            "gc": {f"gen{g}": [sum(1 for x in gcs if x[0] == g), round(sum(x[1] for x in gcs if x[0] == g) * 1e3, 1),
                               round(max([x[1] for x in gcs if x[0] == g], default=0) * 1e3, 1),
                               sum(x[2] for x in gcs if x[0] == g)] for g in range(3)}}


def renice(pids: list[int], value: int) -> str:
    """Give these processes nice `value`; says how. With autogroup scheduling (the kernel splits the
    CPUs between sessions first, then between a session's processes) a thread's nice only counts
    inside its session, so the session's own nice is set: every bench process is in this one's."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            autogroup = f.read().strip() == "1"
    except OSError:
        autogroup = False
    if autogroup:
        with open(f"/proc/{os.getpid()}/autogroup", "w") as f:
            f.write(str(value))
        return "session (autogroup)"
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), value)
            except (ProcessLookupError, PermissionError):
                pass
    return "threads"


def machine_idle_s() -> float:
    """Seconds all CPUs spent idle since boot (/proc/stat): how much the machine had to spare."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, HERE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)


def expect(p: subprocess.Popen, phase: str, timeout: float) -> dict:
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"{p.args[2:4]} exited (code {p.wait()}) before {phase}")
        msg = json.loads(line)
        if msg.get("phase") == phase:
            return msg
    raise RuntimeError(f"no {phase} from {p.args[2:4]} within {timeout} s")


def run(args) -> dict:
    fd_soft = raise_fd_limit()
    need = args.peers + args.slowloris + 1000
    if fd_soft < need:
        raise SystemExit(f"RLIMIT_NOFILE {fd_soft} < {need} descriptors this run needs per process; "
                         f"raise the hard limit (ulimit -Hn) or use fewer --peers")
    server_argv = ["--listen", "127.0.0.1:0", "--json-log", "--max-connections", str(need + 2000),
                   "--stats-interval", "0"]
    turns_file = None
    if args.trace_loop or args.profile:
        import tempfile

        fd, turns_file = tempfile.mkstemp(prefix="nattrav-loop-", suffix=".json")
        os.close(fd)
        launch = [sys.executable, HERE, "--role", "server", turns_file, *server_argv]
    else:
        launch = [sys.executable, "-m", "nattrav.cli.server", *server_argv]
    env = None
    if args.server_src:  # the server (only) from another source tree: an A/B against a baseline
        env = {**os.environ, "PYTHONPATH": os.path.abspath(args.server_src)}
    if args.profile:
        env = {**(env or os.environ), "NATTRAV_BENCH_PROFILE": os.path.abspath(args.profile)}
    server = subprocess.Popen(
        launch, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1])))  # start low, as service managers do: the server must raise it
    procs = [server]
    niced = None
    try:
        port = int(json.loads(server.stdout.readline())["address"].rsplit(":", 1)[1])
        time.sleep(0.5)
        rss0 = rss_kb(server.pid)
        keys = "--keys" if args.keys else "--no-keys"
        common = ["--role", "peers", "--port", str(port), "--paced", str(args.paced), "--pad", str(args.pad), keys,
                  "--parallel", str(args.parallel // (args.holders + 2) or 1)]
        # initiators and their targets each in a process of their own (they are different machines);
        # the idle rest held by --holders processes
        active_n = 2 * args.connects
        active = child([*common, "--first", "0", "--count", str(args.connects), "--mode", "connect"])
        answering = child([*common, "--first", str(args.connects), "--count", str(args.connects),
                           "--mode", "answer"])
        procs += [active, answering]
        holders = [answering]
        rest, start = args.peers - active_n, active_n
        for h in range(args.holders):
            n = rest // args.holders + (1 if h < rest % args.holders else 0)
            if n:
                holders.append(child([*common, "--first", str(start), "--count", str(n), "--mode", "hold"]))
                start += n
        procs += holders
        if args.nice:  # from the enrolls to the end of the connects; the attacker inherits it (same session)
            niced = renice([p.pid for p in procs], args.nice)
        t0 = time.perf_counter()
        reports = [expect(p, "enrolled", 900) for p in [active, *holders]]
        enroll_s = time.perf_counter() - t0
        enrolled = sum(r["peers"] for r in reports)
        failures: dict[str, int] = {}
        for r in reports:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        time.sleep(1.0)
        rss1 = rss_kb(server.pid)
        attack = None
        if not args.no_attack:
            attack = child(["--role", "attack", "--port", str(port), "--slowloris", str(args.slowloris),
                            "--garbage", str(args.garbage), "--abrupt", str(args.abrupt),
                            "--flat-out", str(args.flat_out), "--peers", str(args.peers),
                            "--connects", str(args.connects), keys])
            procs.append(attack)
            expect(attack, "attacking", 30)
            time.sleep(args.attack_warmup)
        rss2 = rss_kb(server.pid)
        watched = {"server": server, "initiators": active, "targets": answering}
        if attack is not None:
            watched["attacker"] = attack
        cpu0 = {k: cpu_s(p.pid) for k, p in watched.items()}
        server_us0 = cpu_user_sys(server.pid)
        wait0 = {k: run_delay(p.pid) for k, p in watched.items()}
        idle0, wall0 = machine_idle_s(), time.perf_counter()
        if args.profile:
            server.send_signal(signal.SIGUSR1)
        send(active, "go")
        result = expect(active, "connects", 900)
        wall = time.perf_counter() - wall0
        if args.profile:
            server.send_signal(signal.SIGUSR2)
        if niced:
            renice([p.pid for p in procs if p.poll() is None], 0)
            niced += ", restored after the connects"
        cpu_phase = {k: round(cpu_s(p.pid) - cpu0[k], 2) for k, p in watched.items()}
        server_us = [round(b - a, 2) for a, b in zip(server_us0, cpu_user_sys(server.pid))]
        wait1 = {k: run_delay(p.pid) for k, p in watched.items()}
        wait_phase = {k: round(wait1[k][0] - wait0[k][0], 2) for k in watched}
        # the mean wait each time the process became runnable: a connect crosses the initiator, the
        # server, the target, the server and the initiator again, and waits about that much at each
        wait_each = {k: round(1e3 * (wait1[k][0] - wait0[k][0]) / max(1, wait1[k][1] - wait0[k][1]), 3)
                     for k in watched}
        idle_share = (machine_idle_s() - idle0) / (wall * os.cpu_count())
        attack_stats = {}
        if attack is not None:
            send(attack, "stop")
            attack_stats = expect(attack, "attack", 60)
        dropped = 0
        for p in [active, *holders]:
            send(p, "status")
            dropped += expect(p, "status", 60)["dropped"]
        alive = server.poll() is None
        for p in [active, *holders]:
            send(p, "quit")
    finally:
        if niced and not niced.endswith("connects"):  # cut short: give the session its share back
            renice([p.pid for p in procs if p.poll() is None], 0)
        for p in reversed(procs):
            if p.poll() is None and p is not server:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    server_err = server.stderr.read()
    loop = loop_paced = {}
    garbage_at_exit = None
    if turns_file is not None:
        with open(turns_file) as f:
            trace = json.load(f)
        loop = loop_summary(trace, wall0, wall0 + wall)
        # the paced round alone (the burst's turns are a queue of a thousand connects by design)
        loop_paced = loop_summary(trace, wall0 + result["burst"]["seconds"], wall0 + wall)
        garbage_at_exit = trace.get("garbage_at_exit")
        os.unlink(turns_file)
    tracebacks = server_err.count("Traceback")
    return {
        "peers": args.peers, "enrolled": enrolled, "enroll_failures": failures,
        "enroll_s": round(enroll_s, 3), "enrolls_per_s": round(enrolled / enroll_s),
        "server_rss_idle_kb": rss0, "server_rss_enrolled_kb": rss1, "server_rss_under_attack_kb": rss2,
        "rss_per_peer_kb": round((rss1 - rss0) / max(1, enrolled), 2),
        "connects": args.connects, "burst": result["burst"], "paced": result["paced"],
        "paced_over_s": args.paced, "dropped_peers": dropped,
        "connect_phase_s": round(wall, 2), "connect_phase_cpu_s": cpu_phase,
        "connect_phase_server_user_sys_s": server_us,
        "server_cpu_per_connect_us": round(1e6 * cpu_phase["server"] / (2 * args.connects)),
        "connect_phase_run_queue_s": wait_phase, "connect_phase_wait_per_wakeup_ms": wait_each, "server_loop": loop, "server_loop_paced": loop_paced, "keys": args.keys,
        "loadavg": open("/proc/loadavg").read().split()[:3], "server_src": args.server_src, "nice": args.nice, "niced": niced,
        "connect_phase_machine_idle": round(idle_share, 3), "server_garbage_at_exit": garbage_at_exit, "attack": attack_stats,
        "info_bytes": len(msgpack.packb(node_info(0, args.pad))), "server_alive": alive, "server_tracebacks": tracebacks, "cpus": os.cpu_count(), "fd_limit": fd_soft,
        "client_processes": 1 + len(holders),
    }


def send(p: subprocess.Popen, command: str) -> None:
    p.stdin.write(command + "\n")
    p.stdin.flush()


def report(out: dict) -> None:
    b, p, a = out["burst"], out["paced"], out["attack"]
    print(f"rendezvous load: {out['peers']} peers, {out['connects']} connects, {out['cpus']} CPUs shared by "
          f"the server, {out['client_processes']} peer processes and the attacker (loopback)")
    print(f"  enroll            {out['enrolled']}/{out['peers']} in {out['enroll_s']:.2f} s = "
          f"{out['enrolls_per_s']:,} enrolls/s  (failures {out['enroll_failures'] or 'none'})")
    print(f"  server RSS        idle {out['server_rss_idle_kb'] / 1024:.1f} MB, enrolled "
          f"{out['server_rss_enrolled_kb'] / 1024:.1f} MB, under attack {out['server_rss_under_attack_kb'] / 1024:.1f} MB"
          f" -> {out['rss_per_peer_kb']:.2f} KB per enrolled peer with {out['info_bytes']} B of node info "
          "(goal <= 20)")
    if a:
        print(f"  attack            {a['slowloris_opened']} slowloris connections opened ({a['slowloris_cut']} cut), "
              f"{a['garbage']} garbage ({a['garbage_per_s']:.0f}/s), {a['abrupt']} abrupt "
              f"({a['abrupt_per_s']:.0f}/s) over {a['seconds']:.1f} s")
    for name, r, extra in (("burst", b, "all at once"), ("paced", p, f"over {out['paced_over_s']:g} s")):
        print(f"  connects {name:8} {r['ok']}/{r['asked']} ok ({extra}) in {r['seconds']:.2f} s: p50 "
              f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms (goal p99 <= 50)"
              + (f"  errors {r['errors']}" if r["errors"] else ""))
    print(f"  legitimate peers dropped by the server: {out['dropped_peers']}; server alive: {out['server_alive']}; "
          f"tracebacks in its log: {out['server_tracebacks']}")
    cpu = ", ".join(f"{k} {v:.2f} s" for k, v in out["connect_phase_cpu_s"].items())
    print(f"  connect phase {out['connect_phase_s']:.2f} s: CPU {cpu}; the machine was idle "
          f"{100 * out['connect_phase_machine_idle']:.0f}% of the time (other load shares the cores)")
    user, system = out["connect_phase_server_user_sys_s"]
    print(f"  server CPU per connect {out['server_cpu_per_connect_us']} us ({2 * out['connects']} connects, "
          f"keepalives and attack included; user {user:.2f} s, kernel {system:.2f} s)")
    wait = ", ".join(f"{k} {v:.2f} s ({out['connect_phase_wait_per_wakeup_ms'][k]:.2f} ms a wake-up)"
                     for k, v in out["connect_phase_run_queue_s"].items())
    print(f"  waiting for a CPU (runnable, not running) in that phase: {wait}; load average "
          f"{' '.join(out['loadavg'])}" + (f"; bench processes at nice {out['nice']} ({out['niced']})" if out["nice"] else ""))
    if out["server_loop"]:
        lp = out["server_loop"]
        print(f"  server loop turns {lp['turns']}, busy {lp['busy_s']:.2f} s: p50 {lp['p50_ms']:.2f} ms, "
              f"p99 {lp['p99_ms']:.2f} ms, max {lp['max_ms']:.1f} ms ({lp['over_10ms']} over 10 ms, running "
              f"{100 * lp['over_10ms_cpu_share']:.0f}% of their time); CPU a turn p99 {lp['cpu_p99_ms']:.2f} ms, "
              f"max {lp['cpu_max_ms']:.1f} ms; task steps a turn p50 {lp['steps_p50']}, p99 {lp['steps_p99']}, "
              f"max {lp['steps_max']}")
        gcs = ", ".join(f"{g} {n}x {ms:.0f} ms (max {mx:.0f}, {freed} objects freed)"
                        for g, (n, ms, mx, freed) in lp["gc"].items())
        print(f"  server garbage collections in that phase: {gcs}; cyclic garbage left at exit: "
              f"{out['server_garbage_at_exit']} objects")
    if out.get("server_loop_paced"):
        lp = out["server_loop_paced"]
        gcs = ", ".join(f"{g} {n}x (max {mx:.0f} ms)" for g, (n, ms, mx, _) in lp["gc"].items())
        print(f"  paced round alone: turns p99 {lp['p99_ms']:.2f} ms, max {lp['max_ms']:.1f} ms "
              f"({lp['over_10ms']} over 10 ms, {lp['over_20ms']} over 20 ms; {lp['cpu_over_20ms']} over 20 ms "
              f"of CPU); CPU a turn max {lp['cpu_max_ms']:.1f} ms; task steps a turn max "
              f"{lp['steps_max']}; collections {gcs}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--role", "server"]:  # the server's own arguments follow the turns file
        return traced_server(argv[2], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=10_000, help="enrolled legitimate peers (default 10000)")
    ap.add_argument("--connects", type=int, default=1000, help="initiator/target pairs (default 1000)")
    ap.add_argument("--paced", type=float, default=4.0, help="seconds the paced round spreads its connects over")
    ap.add_argument("--parallel", type=int, default=500, help="enrolls in flight at once (default 500)")
    ap.add_argument("--slowloris", type=int, default=500, help="slowloris connections (default 500)")
    ap.add_argument("--garbage", type=float, default=300, help="garbage connections a second (default 300)")
    ap.add_argument("--abrupt", type=float, default=100,
                    help="enroll, ask a target, reset: connections a second (default 100)")
    ap.add_argument("--flat-out", type=int, default=0, metavar="LOOPS",
                    help="instead of those rates: LOOPS garbage and LOOPS abrupt loops as fast as they go "
                         "(the attacker then competes with the server for the same cores)")
    ap.add_argument("--attack-warmup", type=float, default=3.0, help="seconds of attack before the connects")
    ap.add_argument("--no-attack", action="store_true", help="no attack process (a baseline)")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    ap.add_argument("--pad", type=int, default=0, metavar="BYTES",
                    help="pad every node info by this much (default 0: a real report, ~0.8 KiB packed; "
                         "7000 comes close to the 8 KiB limit)")
    ap.add_argument("--holders", type=int, default=2,
                    help="processes holding the idle peers (default 2; the active pairs have their own)")
    ap.add_argument("--keys", action=argparse.BooleanOptionalAction, default=True,
                    help="enroll by Ed25519 key, named by peer ID, as api.listen() does (default); "
                         "--no-keys: by name only (the path before identity keys)")
    ap.add_argument("--trace-loop", action="store_true",
                    help="run the server's main with a Trio instrument timing each event-loop turn (a little "
                         "overhead per task step) and report the turns of the connect phase")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the server under cProfile during the connect phase and write its stats to FILE "
                         "(read them with `python -m pstats FILE`; the profiler slows the server several-fold, "
                         "so the latencies of such a run mean nothing)")
    ap.add_argument("--server-src", metavar="DIR",
                    help="run the server from this source tree (a directory holding the nattrav package, e.g. "
                         "a `git archive` of another commit's src/ with the C core copied in); the peers and "
                         "the attacker stay this tree's")
    ap.add_argument("--nice", type=int, default=0, metavar="N",
                    help="from the enrolls to the end of the connects, run the server, the peers and the attacker "
                         "at this nice value (e.g. -15, as root): on a machine shared with unrelated load this "
                         "measures the server and its attack mix rather than the neighbours; reported beside "
                         "the numbers")
    ap.add_argument("--role", choices=["peers", "attack"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["hold", "answer", "connect"], default="hold", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "peers":
        raise_fd_limit()
        trio.run(peers_role, args.port, args.first, args.count, args.mode, args.paced, args.parallel, args.pad,
                 args.keys)
        return 0
    if args.role == "attack":
        raise_fd_limit()
        # the abrupt attackers ask the targets of the legitimate connects (peer IDs are public)
        trio.run(attack_role, args.port, args.slowloris, args.garbage, args.abrupt, args.flat_out,
                 [peer_name(i, args.keys) for i in range(args.connects, 2 * args.connects)])
        return 0
    if args.holders < 1:
        ap.error("--holders must be >= 1")
    if not 2 <= 2 * args.connects <= args.peers:
        ap.error("--connects must be at least 1 and at most half of --peers (distinct initiators and targets)")
    if not 1 <= args.slowloris // 100 + 1 <= 250:
        ap.error("--slowloris must be below 25000")
    out = run(args)
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
