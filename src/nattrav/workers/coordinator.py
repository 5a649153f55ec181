"""The coordinator: a Trio object that owns N worker processes (process.py, each behind a channel.py
channel), splits the socket pool among them and fans bursts out. Every wait on a worker has a
deadline and notices its exit, so a dead or hung worker turns into WorkerDied / WorkerError instead
of a hang, and closing the coordinator reaps every worker."""

from __future__ import annotations

import math
import os
import socket
import sys
from array import array
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psutil
import trio

from ..core.packed import Burst, BurstStats, Hit, PackedBurst, RecvStats
from ..core.pool import validate_open_args
from ..errors import WorkerDied, WorkerError
from .channel import WorkerChannel, request_all
from .messages import encode
from .process import WorkerProcess, fan_out

START_TIMEOUT = 20.0



def usable_cpus() -> list[int]:
    """The CPUs this process may run on, sorted. psutil is the project's tool for process control;
    its cpu_affinity() is sched_getaffinity(2), so taskset, a cgroup cpuset and a container's CPU
    share all count -- unlike psutil.cpu_count(), which names every CPU of the machine: a worker
    beyond the usable ones only competes with the others for them."""
    try:
        cpus = psutil.Process().cpu_affinity()
    except (psutil.Error, AttributeError, OSError):  # AttributeError: a platform without affinity
        cpus = []
    return sorted(cpus) or [0]

class Coordinator:
    """Use through open_coordinator(). Socket indices are global: 0..count-1 over all workers."""

    def __init__(self, impl: str, reply_timeout: float) -> None:
        self.impl = impl
        self.reply_timeout = reply_timeout
        self._workers: list[WorkerChannel] = []
        self._owner = array("i")  # global index -> worker
        # the same as runs (start, end, worker), one per worker per open_sockets: a fire finds its
        # workers in these few runs instead of walking its whole index range in Python (1024 boxed
        # ints a 1024-socket fire, measured as most of the coordinator's CPU a fire)
        self._runs: list[tuple[int, int, int]] = []
        self._ports = array("H")
        self._taken: set[int] = set()
        self.last_fire = BurstStats()

    # -- lifecycle -----------------------------------------------------------------------------
    async def _start(self, n: int, pin: bool, netns: str | None) -> None:
        cpus = usable_cpus()
        async with fan_out() as nursery:
            for i in range(n):
                nursery.start_soon(self._start_one, i, cpus[i % len(cpus)] if pin else None, netns)
        self._workers.sort(key=lambda w: w.index)

    async def _start_one(self, i: int, cpu: int | None, netns: str | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-m", "nattrav.workers.worker", "--fd", str(theirs.fileno()), "--impl", self.impl]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if netns:
            cmd += ["--netns", netns]
        try:
            proc = WorkerProcess(cmd, (theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        w = WorkerChannel(i, proc, ours)
        self._workers.append(w)
        with trio.move_on_after(START_TIMEOUT):
            hello = await w.next_message("start")
            if hello["t"] == "error":
                w.kill()
                raise WorkerError(i, w.pid, hello["msg"])
            if hello["t"] != "hello" or hello["impl"] != self.impl:
                w.kill()
                raise WorkerError(i, w.pid, f"greeted with {hello!r}")
            return
        w.kill()
        raise WorkerError(i, w.pid, f"did not start within {START_TIMEOUT} s")

    async def _shutdown(self) -> None:
        async def stop(w: WorkerChannel) -> None:
            if w.broken is None and w.proc.returncode is None:
                with trio.move_on_after(2):
                    try:
                        await w.request("shutdown", 2)
                    except (WorkerError, OSError):
                        pass
            with trio.move_on_after(2):
                await w.proc.wait()
            if w.proc.returncode is None:
                w.kill()
                await w.proc.wait()
            w.close()
            for fd in w.fds:
                os.close(fd)

        async with fan_out() as nursery:
            for w in self._workers:
                nursery.start_soon(stop, w)

    # -- public API ----------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    @property
    def count(self) -> int:
        return len(self._owner)

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    def owner_of(self, index: int) -> int:
        return self._owner[self._check_index(index)]

    def _check_index(self, index: int) -> int:
        if not isinstance(index, int) or not 0 <= index < len(self._owner):
            raise IndexError(f"socket index {index!r} out of range 0..{len(self._owner) - 1}")
        if index in self._taken:
            raise IndexError(f"socket {index} was already taken")
        return index

    async def open_sockets(self, count: int, ip: str = "0.0.0.0", ttl: int | None = None,
                           ports: Sequence[int] | None = None, *, reuse_port: bool = False) -> list[int]:
        """Open `count` more sockets split evenly across the workers; returns their bound ports.
        Their global indices continue from the sockets opened before."""
        ports = validate_open_args(count, ip, ports, ttl)
        n = len(self._workers)
        base0 = len(self._owner)
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        bases = [base0 + sum(shares[:i]) for i in range(n)]
        got: dict[int, list[int]] = {}
        errors: list[BaseException] = []

        async def one(i: int) -> None:
            if not shares[i]:
                got[i] = []
                return
            part = ports[bases[i] - base0 : bases[i] - base0 + shares[i]] if ports else None
            try:
                msg, _ = await self._workers[i].request(
                    "open", self.reply_timeout, count=shares[i], ip=ip, ttl=ttl, base=bases[i],
                    ports=array("H", part).tobytes() if part is not None else None, reuse_port=reuse_port)
                got[i] = list(array("H", msg["ports"]))
            except (OSError, ValueError, WorkerError) as e:
                errors.append(e)

        async with fan_out() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        if errors:
            # all or nothing: the workers that did open close theirs, so indices stay dense
            async with fan_out() as nursery:
                for i in got:
                    if shares[i]:
                        nursery.start_soon(self._close_quietly, i, bases[i], shares[i])
            raise errors[0]
        for i in range(n):
            if len(got[i]) != shares[i]:
                raise WorkerError(i, self._workers[i].pid, f"opened {len(got[i])} sockets, asked {shares[i]}")
            self._owner.extend([i] * shares[i])
            self._ports.extend(got[i])
            if shares[i]:
                self._runs.append((bases[i], bases[i] + shares[i], i))
        return list(self._ports[base0:])

    async def _close_quietly(self, i: int, base: int, count: int) -> None:
        try:
            await self._workers[i].request("close", self.reply_timeout, base=base, count=count)
        except (OSError, WorkerError):
            pass

    def _fire_timeout(self, burst: PackedBurst) -> tuple[int, float]:
        send_s = burst.n / burst.rate if burst.rate else burst.n * 20e-6
        c_timeout_ms = int(min(3_600_000, 5_000 + 2_000 * send_s))
        return c_timeout_ms, c_timeout_ms / 1000 + self.reply_timeout

    async def fire(self, burst: Burst | PackedBurst) -> int:
        """Send every packet of the burst from the workers that own its sockets; returns packets sent.
        self.last_fire has the accounting (sent + failed == planned == len(burst))."""
        packed = burst if isinstance(burst, PackedBurst) else burst.pack()
        if packed.n == 0:
            self.last_fire = BurstStats()
            return 0
        if packed.src_max >= len(self._owner):
            raise IndexError(f"socket index {packed.src_max} out of range 0..{len(self._owner) - 1}")
        if self._taken:
            bad = self._taken.intersection(array("i", packed.src))
            if bad:
                raise IndexError(f"sockets {sorted(bad)[:5]} were taken and cannot fire")
        lo, hi = packed.src_min, packed.src_max
        involved = sorted({w for start, end, w in self._runs if start <= hi and lo < end})
        wire = packed.to_wire()
        c_timeout_ms, reply_timeout = self._fire_timeout(packed)
        total = BurstStats()
        chans = [self._workers[i] for i in involved]
        replies = await request_all(chans, "fire", reply_timeout, {"burst": wire, "timeout_ms": c_timeout_ms})
        for w, (msg, _) in zip(chans, replies):
            try:
                total.add(BurstStats(**msg["stats"]))
            except (KeyError, TypeError) as e:
                raise WorkerError(w.index, w.pid, f"answered 'fire' with malformed stats: {e}") from None
        self.last_fire = total
        if total.planned != packed.n or total.sent + total.failed != packed.n:
            raise WorkerError(-1, None, f"burst accounting broke: planned {packed.n}, workers saw "
                              f"{total.planned}, sent {total.sent}, failed {total.failed}")
        return total.sent

    async def listen(self, match: bytes = b"", timeout: float = 5.0) -> Hit | None:
        """The first datagram starting with `match` on any socket of any worker, or None."""
        if not isinstance(match, (bytes, bytearray)) or len(match) > 1024:
            raise ValueError("match must be bytes of at most 1024")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 <= timeout <= 86400):
            raise ValueError(f"timeout must be 0..86400 s, got {timeout!r}")
        involved = sorted(set(self._owner))
        if not involved:
            await trio.sleep(timeout)  # no socket, so nothing can arrive
            return None
        winner: list[Hit] = []
        listening = set(involved)

        async def one(i: int, cancel_all: trio.CancelScope) -> None:
            w = self._workers[i]
            msg, _ = await w.request("listen", timeout + self.reply_timeout, match=bytes(match), timeout=float(timeout))
            listening.discard(i)
            if msg["hit"] is not None and not winner:
                idx, ip, port, payload = msg["hit"]
                winner.append(Hit(int(idx), (str(ip), int(port)), bytes(payload)))
                cancel_all.cancel()

        try:
            async with fan_out() as nursery:
                for i in involved:
                    nursery.start_soon(one, i, nursery.cancel_scope)
        finally:
            # workers still listening stop; their late replies are matched by id and dropped
            with trio.CancelScope(shield=True):
                for i in sorted(listening):
                    w = self._workers[i]
                    if w.broken is None:
                        try:
                            await w.send(encode("cancel"))
                        except OSError:
                            pass
        return winner[0] if winner else None

    async def set_ttl(self, indices: Sequence[int], ttl: int | None) -> None:
        """Set IP_TTL on the given sockets (None = back to the default)."""
        if ttl is not None and (not isinstance(ttl, int) or not 1 <= ttl <= 255):
            raise ValueError(f"ttl must be in 1..255, got {ttl!r}")
        by_worker: dict[int, array] = {}
        for g in indices:
            by_worker.setdefault(self._owner[self._check_index(g)], array("i")).append(g)

        async def one(i: int, idx: array) -> None:
            msg, _ = await self._workers[i].request("set_ttl", self.reply_timeout, indices=idx.tobytes(), ttl=ttl)
            if msg["done"] != len(idx):
                raise WorkerError(i, self._workers[i].pid, f"set TTL on {msg['done']} of {len(idx)} sockets")

        async with fan_out() as nursery:
            for i, idx in by_worker.items():
                nursery.start_soon(one, i, idx)

    async def take_socket(self, index: int) -> trio.socket.SocketType:
        """Move socket `index` out of its worker into this process (SCM_RIGHTS): the session goes on
        from the very socket whose NAT mapping was punched."""
        i = self._owner[self._check_index(index)]
        w = self._workers[i]
        msg, fd = await w.request("take", self.reply_timeout, index=index)
        if fd is None:
            raise WorkerError(i, w.pid, f"answered 'take' for socket {index} without a descriptor")
        self._taken.add(index)
        return trio.socket.from_stdlib_socket(socket.socket(fileno=fd))

    async def drain_errors(self) -> int:
        """Empty the ICMP error queues of every socket; returns how many errors were there."""
        counts = []

        async def one(w: WorkerChannel) -> None:
            msg, _ = await w.request("drain", self.reply_timeout)
            counts.append(msg["icmp_errors"])

        async with fan_out() as nursery:
            for w in self._workers:
                nursery.start_soon(one, w)
        return sum(counts)

    async def recv_stats(self) -> RecvStats:
        total = RecvStats()

        async def one(w: WorkerChannel) -> None:
            msg, _ = await w.request("stats", self.reply_timeout)
            for k, v in msg["recv"].items():
                setattr(total, k, getattr(total, k) + v)

        async with fan_out() as nursery:
            for w in self._workers:
                nursery.start_soon(one, w)
        return total


@asynccontextmanager
async def open_coordinator(workers: int | None = None, *, pin: bool = False, impl: str = "c",
                           netns: str | None = None, reply_timeout: float = 10.0) -> AsyncIterator[Coordinator]:
    """Start `workers` worker processes (None = one per CPU this process may use) and yield the Coordinator; on exit every
    socket is closed and every worker is gone.

    pin: bind worker i to CPU i (mod the CPUs this process may use). impl: "c" (the C core) or "py"
    (socket module, the baseline). netns: a /run/netns name the workers enter before opening sockets.
    reply_timeout: seconds a worker may take beyond the expected time before it counts as hung."""
    if workers is None:
        workers = len(usable_cpus())
    if not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be 1..256, got {workers!r}")
    if impl not in ("c", "py"):
        raise ValueError(f"impl must be 'c' or 'py', got {impl!r}")
    coord = Coordinator(impl, reply_timeout)
    try:
        await coord._start(workers, pin, netns)
        yield coord
    finally:
        with trio.CancelScope(shield=True):
            await coord._shutdown()


__all__ = ["Coordinator", "WorkerDied", "WorkerError", "open_coordinator"]
