"""A worker process: msgpack requests in over a unix socket, C calls, msgpack replies out.

Started by the coordinator as `python -m nattrav.workers.worker --fd N ...`. It dies with its parent
(PR_SET_PDEATHSIG) and exits on EOF, so a crashed coordinator leaves no orphans holding sockets."""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import os
import signal
import socket
import sys
from array import array

from ..core.packed import MAX_INDEX, PackedBurst
from ..core.recv import Woken
from ..errors import BadMessage
from .engine import ENGINES
from .messages import MessageReader, encode

PR_SET_PDEATHSIG = 1


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Worker:
    def __init__(self, sock: socket.socket, impl: str) -> None:
        self.sock = sock
        self.engine = ENGINES[impl]()
        self.reader = MessageReader()
        self.pending: collections.deque[dict] = collections.deque()

    def send(self, t: str, **fields) -> None:
        self.sock.sendall(encode(t, **fields))

    def read_more(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            return False
        self.pending.extend(self.reader.feed(data))
        return True

    def serve(self) -> int:
        self.send("hello", pid=os.getpid(), impl=self.engine.impl)
        while True:
            while not self.pending:  # a big burst arrives in many reads
                if not self.read_more():
                    return 0  # the coordinator went away
            msg = self.pending.popleft()
            t = msg["t"]
            if t == "cancel":
                continue  # the listen it meant already answered
            rid = msg["id"]
            try:
                if t == "shutdown":
                    self.engine.close()
                    self.send("result", id=rid)
                    return 0
                self.handle(t, rid, msg)
            except (OSError, ValueError, IndexError) as e:
                if isinstance(e, OSError):
                    code = e.errno or errno.EIO
                else:
                    code = errno.EINVAL if isinstance(e, ValueError) else errno.ERANGE
                self.send("error", id=rid, errno=code, kind=type(e).__name__, msg=str(e))
            except Exception as e:  # noqa: BLE001 - a bug here fails one request, not the worker
                self.send("error", id=rid, errno=0, kind=type(e).__name__, msg=f"{type(e).__name__}: {e}")

    def handle(self, t: str, rid: int, msg: dict) -> None:
        eng = self.engine
        if t in ("open", "close") and not (0 <= msg["base"] < MAX_INDEX and 0 <= msg["count"] <= MAX_INDEX - msg["base"]):
            raise ValueError(f"socket range {msg['base']}+{msg['count']} outside 0..{MAX_INDEX - 1}")
        if t == "open":
            ports = list(array("H", msg["ports"])) if msg["ports"] is not None else None
            got = eng.open(msg["count"], msg["ip"], msg["ttl"], ports, msg["base"], msg["reuse_port"])
            self.send("result", id=rid, ports=array("H", got).tobytes())
        elif t == "close":
            eng.close_range(msg["base"], msg["count"])
            self.send("result", id=rid)
        elif t == "fire":
            st = eng.fire(PackedBurst.from_wire(msg["burst"]), msg["timeout_ms"])
            self.send("result", id=rid, stats=vars(st))
        elif t == "listen":
            self.listen(rid, msg)
        elif t == "set_ttl":
            ttl = msg["ttl"]
            if ttl is not None and not 1 <= ttl <= 255:
                raise ValueError(f"ttl must be in 1..255, got {ttl}")
            done = eng.set_ttl(array("i", msg["indices"]), ttl)
            self.send("result", id=rid, done=done)
        elif t == "take":
            fd = eng.take(msg["index"])
            try:
                socket.send_fds(self.sock, [encode("result", id=rid, index=msg["index"], fd=True)], [fd])
            finally:
                os.close(fd)
        elif t == "drain":
            self.send("result", id=rid, icmp_errors=eng.drain())
        elif t == "stats":
            self.send("result", id=rid, recv=vars(eng.recv_stats()))
        else:
            raise ValueError(f"unexpected request {t!r}")

    def listen(self, rid: int, msg: dict) -> None:
        timeout = float(msg["timeout"])
        if not 0 <= timeout <= 86400:
            raise ValueError(f"timeout out of range: {timeout}")
        try:
            if self.pending:
                raise Woken()  # a message arrived together with the listen request
            hit = self.engine.listen(msg["match"], timeout, self.sock.fileno())
        except Woken:
            # any control message ends a listen: a cancel is consumed, anything else waits its turn
            if not self.pending and not self.read_more():
                raise SystemExit(0) from None
            if self.pending and self.pending[0]["t"] == "cancel":
                self.pending.popleft()
            self.send("result", id=rid, hit=None, cancelled=True)
            return
        if hit is None:
            self.send("result", id=rid, hit=None, cancelled=False)
        else:
            self.send("result", id=rid, hit=[hit.index, hit.src[0], hit.src[1], hit.payload],
                      cancelled=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nattrav-worker")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--impl", choices=sorted(ENGINES), default="c")
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--netns", default=None)
    args = ap.parse_args(argv)
    die_with_parent()
    if os.getppid() == 1:
        return 1  # the parent died before we could ask to die with it
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    try:
        if args.netns:
            from .netns import enter_named  # the lab's primitives: imported only when asked

            enter_named(args.netns)
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        w = Worker(sock, args.impl)
    except Exception as e:  # noqa: BLE001 - the coordinator must hear why we could not start
        sock.sendall(encode("error", id=None, errno=getattr(e, "errno", 0) or 0, kind=type(e).__name__,
                            msg=f"worker start failed: {e}"))
        return 1
    try:
        return w.serve()
    except BadMessage as e:
        print(f"nattrav worker {os.getpid()}: bad message from coordinator: {e}", file=sys.stderr)
        return 2
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        w.engine.close()


if __name__ == "__main__":
    sys.exit(main())
