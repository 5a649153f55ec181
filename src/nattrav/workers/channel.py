"""One worker as the coordinator talks to it: msgpack messages over a socketpair, each request with
a deadline, a dead or hung worker turned into WorkerDied / WorkerError instead of a hang.

The socket is a plain non-blocking one, tried first and waited on (trio.lowlevel) only when it would
block, and free locks are taken without a yield: a fire's round trip then yields to Trio only to wait
for the reply, not at every socket call and lock (trio.socket and trio.Lock checkpoint on each), which
cut the coordinator's Python calls a fire from ~620 to ~180 and its instructions by more than half
(bench/results/burst-floor.md)."""

from __future__ import annotations

import os
import socket
from array import array

import trio

from ..errors import BadMessage, FdLimitError, WorkerDied, WorkerError
from .messages import MAX_REPLY, MessageReader, encode
from .process import WorkerProcess, exit_reason

MAX_FDS_PER_REPLY = 4


class WorkerChannel:
    """The message channel to one worker process (a unix socketpair): requests with a deadline and a
    watch on the process, replies (with descriptors passed over SCM_RIGHTS), and the reason it broke."""

    def __init__(self, index: int, proc: WorkerProcess, sock: socket.socket | None) -> None:
        self.index, self.proc, self.sock = index, proc, sock
        if sock is not None:
            sock.setblocking(False)
        self.pid = proc.pid
        self.reader = MessageReader(MAX_REPLY)
        self.inbox: list[dict] = []
        self.fds: list[int] = []
        self.send_lock = trio.Lock()
        self.req_lock = trio.Lock()
        self.next_id = 0
        self.broken: WorkerError | None = None

    async def _died(self, doing: str) -> WorkerDied:
        with trio.move_on_after(2):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        err = WorkerDied(self.index, self.pid, f"{exit_reason(self.proc.returncode)} during {doing!r}")
        self.broken = err
        return err

    async def send(self, data: bytes | memoryview) -> None:
        await _acquire(self.send_lock)
        try:
            view = memoryview(data)
            while view:
                try:
                    sent = self.sock.send(view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                view = view[sent:]
        finally:
            self.send_lock.release()

    async def next_message(self, doing: str) -> dict:
        while not self.inbox:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(4 * MAX_FDS_PER_REPLY))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                data, anc = b"", []
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    self.fds.extend(array("i", raw[: len(raw) - len(raw) % 4]))
            if not data:
                raise await self._died(doing)
            try:
                self.inbox.extend(self.reader.feed(data))
            except BadMessage as e:
                self.kill()
                self.broken = WorkerError(self.index, self.pid, f"broke the protocol during {doing!r}: {e}")
                raise self.broken from None
        return self.inbox.pop(0)

    async def request(self, t: str, wait: float, /, **fields) -> tuple[dict, int | None]:
        """One request, its one reply (and a descriptor, when the reply carried one)."""
        return (await request_all([self], t, wait, fields))[0]

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise type(self.broken)(self.index, self.pid, f"unusable since: {self.broken.reason}")

    async def _send_request(self, t: str, wait: float, fields: dict) -> int:
        """Send one request (the caller holds req_lock); returns its id."""
        self.next_id += 1
        rid = self.next_id
        data = memoryview(encode(t, id=rid, **fields))
        if not self.send_lock.locked():
            # the common case: the whole request fits the socket buffer at once, and nothing can
            # run between this check and the send, so no lock and no cancel scope are needed
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                pass
            except OSError:
                raise await self._died(t) from None
            if not data:
                return rid
        # half a message would wreck the stream for good: a request goes out whole or the worker
        # counts as hung, whatever cancellation arrives meanwhile (a shielded scope's own
        # deadline still applies)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + wait) as send_scope:
            try:
                await self.send(data)
            except OSError:
                raise await self._died(t) from None
        if send_scope.cancelled_caught:
            self.kill()
            self.broken = WorkerError(self.index, self.pid, f"did not take {t!r} within {wait:.1f} s; killed it")
            raise self.broken
        return rid

    async def _await_reply(self, t: str, wait: float, rid: int) -> tuple[dict, int | None]:
        """The reply to request `rid` (replies to requests given up on are dropped on the way)."""
        with trio.move_on_after(wait) as scope:
            while True:
                msg = await self.next_message(t)
                # descriptors come only with 'take' results, in order
                fd = self.fds.pop(0) if msg.get("fd") is True and self.fds else None
                if msg.get("id") == rid:
                    break
                if fd is not None:  # a reply to a take we stopped waiting for
                    os.close(fd)
        if scope.cancelled_caught:
            self.kill()
            self.broken = WorkerError(self.index, self.pid, f"did not answer {t!r} within {wait:.1f} s; killed it")
            raise self.broken
        if msg["t"] == "error":
            if fd is not None:
                os.close(fd)
            kind, code, text = msg["kind"], msg["errno"], msg["msg"]
            if kind == "ValueError":
                raise ValueError(f"worker {self.index}: {text}")
            if kind == "IndexError":
                raise IndexError(f"worker {self.index}: {text}")
            if kind == "FdLimitError":
                raise FdLimitError(code, f"worker {self.index}: {text}")
            if code > 0:
                raise OSError(code, f"worker {self.index}: {text}")
            raise WorkerError(self.index, self.pid, f"failed {t!r}: {text}")
        return msg, fd

    def close(self) -> None:
        if self.sock is not None:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


async def _acquire(lock: trio.Lock) -> None:
    """Take a free lock without a trip through the scheduler (trio.Lock.acquire always yields)."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


async def request_all(chans: list[WorkerChannel], t: str, wait: float, fields: dict) -> list[tuple[dict, int | None]]:
    """The same request to several workers at once: every request goes out first, then the replies
    are collected in turn (the workers run meanwhile). No nursery and no task per worker: on this
    machine that was most of the coordinator's CPU time for a two-worker fire. Fails with the first
    WorkerError if any (a dead or hung worker is what matters), else the first other error, once
    every reply is in or given up on."""
    for ch in chans:
        ch._check_usable()
    held: list[WorkerChannel] = []
    rids: dict[int, int] = {}
    errors: list[BaseException] = []
    out: list[tuple[dict, int | None]] = []
    try:
        for ch in chans:
            await _acquire(ch.req_lock)
            held.append(ch)
            try:
                rids[id(ch)] = await ch._send_request(t, wait, fields)
            except (OSError, ValueError, IndexError, WorkerError) as e:
                errors.append(e)
        for ch in chans:
            if id(ch) not in rids:
                continue
            try:
                out.append(await ch._await_reply(t, wait, rids[id(ch)]))
            except (OSError, ValueError, IndexError, WorkerError) as e:
                errors.append(e)
    finally:
        for ch in held:
            ch.req_lock.release()
    if errors:
        raise next((e for e in errors if isinstance(e, WorkerError)), errors[0])
    return out
