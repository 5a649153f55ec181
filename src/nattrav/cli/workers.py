"""nattrav-server --processes N: one instance served by N worker processes on the same ports.

Why: every enrolled peer holds a TCP connection, so a descriptor, and RLIMIT_NOFILE caps them per
process (20,000 hard on some hosts, and raising it needs CAP_SYS_RESOURCE); one Python process also
uses one core. N processes hold N times the peers and use N cores, the way nginx's and HAProxy's
workers do: each binds the rendezvous port (TCP, and its UDP observation port; STUN's sockets when
--stun runs here) with SO_REUSEPORT, and the kernel spreads connections and datagrams over them.

Each worker is a member of the shared Redis registry of its own (its own instance name and notice
stream), so a peer enrolled at one worker is reached from the others exactly as from another host:
that is why --processes needs --registry (in process memory, workers could not see each other's
peers). What must be common to the instance comes from the parent: the MAC key of UDP observation
tickets (a ticket one worker answered is checked by whichever worker holds the peer's TCP
connection) and the key of STUN's RESPONSE-PORT cookies; the TLS certificate and --state-dir are
read by every worker from the same files.

The parent only supervises: it starts the workers (the same command line, a fixed port in place of
:0), prints the "listening" lines once every worker listens, restarts a worker that dies (backoff
0.5 s doubling to 30 s, reset after a minute of life; its peers' connections broke and the clients
enroll again, at any worker), and on SIGTERM/SIGINT stops them all and exits 0. A worker that fails
on its first start (port in use, Redis unreachable) stops the whole instance with its exit code.
Secrets reach the workers on their stdin, never argv or the environment.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys

import trio

from ..errors import UsageError
from ..proto.rendezvous.observe import KEY_BYTES as OBSERVE_KEY_BYTES

log = logging.getLogger("nattrav.rendezvous.workers")

MAX_PROCESSES = 64
WORKER_ENV = "NATTRAV_WORKER_OF"  # "PARENT_PID:INDEX", set by the parent for its workers only
READY = "nattrav-worker-ready"  # the line after a worker's "listening" lines
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
STABLE = 60.0  # a worker that lived this long starts the backoff over
STOP_GRACE = 15.0  # after SIGTERM, how long workers get before SIGKILL
PARENT_POLL = 1.0  # how often a worker checks that its parent lives


def processes_from(given: int | None, environ: dict[str, str] | None = None) -> int:
    """--processes, else NATTRAV_PROCESSES, else 1; UsageError for a bad value."""
    if given is not None:
        value, where = str(given), "--processes"
    else:
        value, where = (environ if environ is not None else os.environ).get("NATTRAV_PROCESSES", "").strip(), \
            "NATTRAV_PROCESSES"
        if not value:
            return 1
    if not value.isdigit() or not 1 <= int(value) <= MAX_PROCESSES:
        raise UsageError(f"{where} must be an integer 1..{MAX_PROCESSES}, got {value!r}")
    return int(value)


class Worker:
    """What a worker process got from its parent."""

    def __init__(self, index: int, observe_key: bytes, cookie_key: bytes, parent: int):
        self.index = index
        self.observe_key = observe_key
        self.cookie_key = cookie_key
        self.parent = parent

    async def watch_parent(self, scope: trio.CancelScope) -> None:
        """Stop serving once the parent is gone (killed: nobody else would stop us, and a worker left
        behind keeps serving the port). Polled: PR_SET_PDEATHSIG would fire when the thread that
        started us ends, and Trio starts processes from threads it retires when idle."""
        while os.getppid() == self.parent:
            await trio.sleep(PARENT_POLL)
        log.warning("the supervising process %d is gone: stopping", self.parent)
        scope.cancel()

    def instance(self, name: str | None) -> str | None:
        """This worker's registry member name: NAME-INDEX when the instance has a name (random otherwise)."""
        return None if name is None else f"{name}-{self.index}"


def worker_from_parent() -> Worker | None:
    """The Worker this process is (None when started by a user): its secrets are read from stdin."""
    tag = os.environ.pop(WORKER_ENV, None)
    if tag is None:
        return None
    parent, _, index = tag.partition(":")
    if not (parent.isdigit() and index.isdigit()) or int(parent) != os.getppid():
        return None  # inherited by something our parent did not start: not ours
    doc = json.loads(sys.stdin.readline())
    return Worker(int(index), bytes.fromhex(doc["observe_key"]), bytes.fromhex(doc["cookie_key"]), int(parent))


def announce_ready() -> None:
    """A worker's last startup line: the parent now knows it listens."""
    try:
        print(READY, flush=True)
    except OSError:
        pass


def check_processes(n: int, *, registry: str | None, stun_peer: str | None, instance: str | None) -> None:
    if n == 1:
        return
    if registry is None:
        raise UsageError(f"--processes {n} needs --registry redis://HOST:PORT/DB: with the in-process registry "
                         "each process would see only its own peers")
    if stun_peer is not None:
        raise UsageError("--processes does not go with --stun-peer (the two-host control link keeps a replay "
                         "window per process): run STUN with one process, or apart with nattrav-stun")
    if instance is not None and len(instance) > 60:
        raise UsageError("--instance with --processes: at most 60 characters (each process is NAME-N)")


def fixed_port(host: str, port: int) -> int:
    """The port every worker binds: `port`, or a free one for 0. OSError when it is taken: a plain
    bind (no SO_REUSEPORT) fails where anyone listens, so a second instance is told, not merged."""
    family, kind, proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart beside TIME_WAIT connections
        s.bind(addr)
        return s.getsockname()[1]


async def supervise(argv: list[str], n: int) -> int:
    """Run `n` workers of `nattrav-server argv` until a signal (0) or a first start that failed
    (that worker's exit code)."""
    keys = json.dumps({"observe_key": secrets.token_bytes(OBSERVE_KEY_BYTES).hex(),
                       "cookie_key": secrets.token_bytes(32).hex()}).encode() + b"\n"
    procs: dict[int, trio.Process] = {}
    announced: dict[int, list[str]] = {}
    all_ready = trio.Event()
    failed: list[int] = []
    stopping = [False]

    async def keep_running(k: int, nursery: trio.Nursery) -> None:
        backoff, first = BACKOFF_MIN, True
        env = {**os.environ, WORKER_ENV: f"{os.getpid()}:{k}"}
        while not stopping[0]:
            started = trio.current_time()
            proc = await trio.lowlevel.open_process([sys.executable, "-m", "nattrav.cli.server", *argv], env=env,
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs[k] = proc
            try:
                await proc.stdin.send_all(keys)
                await proc.stdin.aclose()
            except (trio.BrokenResourceError, OSError):
                pass  # it died at once: its exit code tells why
            lines = await _startup_lines(proc.stdout)
            if lines is not None:
                if first:
                    announced[k] = lines
                    if len(announced) == n:
                        all_ready.set()
                else:
                    log.info("worker %d serving again (pid %d)", k, proc.pid)
                async for _ in proc.stdout:
                    pass  # nothing more is printed; EOF comes when it exits
            code = await proc.wait()
            if stopping[0]:
                return
            if lines is None and first:  # it told why on stderr (port in use, Redis unreachable)
                failed.append(code if code > 0 else 1)
                stopping[0] = True
                _terminate(procs)
                nursery.cancel_scope.cancel()
                return
            backoff = BACKOFF_MIN if trio.current_time() - started > STABLE else backoff
            # exit 0 is a worker stopped by a signal of its own: most often the one the whole process
            # group got (Ctrl-C, systemd's default KillMode), and ours arrives within the backoff
            (log.info if code == 0 else log.warning)(
                "worker %d (pid %d) %s; starting it again in %.1f s", k, proc.pid, _ended(code), backoff)
            await trio.sleep(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX)
            first = False

    async with trio.open_nursery() as nursery:
        async def on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stopping[0] = True  # (the workers are stopped below, once the nursery is done)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signal)
        for k in range(n):
            nursery.start_soon(keep_running, k, nursery)
        await all_ready.wait()
        for line in announced[0]:
            try:
                print(line, flush=True)
            except OSError:
                pass
        log.info("%d worker processes serving: pids %s", n, ", ".join(str(p.pid) for p in procs.values()))
    # a signal or a failed first start: stop every worker (one that outlived us would hold the port),
    # SIGTERM first, SIGKILL for those still there after STOP_GRACE
    with trio.CancelScope(shield=True):
        _terminate(procs)
        with trio.move_on_after(STOP_GRACE):
            for proc in list(procs.values()):
                await proc.wait()
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return failed[0] if failed else 0


async def _startup_lines(stdout: trio.abc.ReceiveStream) -> list[str] | None:
    """A worker's "listening" lines, once it says it is ready; None when it exited first."""
    buf, lines = b"", []
    while True:
        data = await stdout.receive_some(4096)
        if not data:
            return None
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text == READY:
                return lines
            lines.append(text)


def _terminate(procs: dict[int, trio.Process]) -> None:
    for proc in procs.values():
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


__all__ = ["MAX_PROCESSES", "Worker", "announce_ready", "check_processes", "fixed_port", "processes_from",
           "supervise", "worker_from_parent"]
