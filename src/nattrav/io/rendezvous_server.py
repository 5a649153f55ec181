"""The rendezvous server on Trio: one task per connection around the sans-IO RendezvousServer.

Every connection has a reader (feeds bytes into the state machine) and a writer (drains a bounded
queue of frames). A peer that does not read its frames fast enough is disconnected rather than
allowed to hold server memory or block anyone else; a peer that sends garbage gets a bad-frame error
and, when the stream cannot be resynchronised, is disconnected. Nobody else notices either.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import resource

import trio

from ..core.limits import HEADROOM, FdLimitError, ensure_fd_capacity, open_fd_count
from ..proto.rendezvous import Close, ErrorCode, LocalProtocolError, RendezvousServer, Send, encode, make

log = logging.getLogger("nattrav.rendezvous")

READ_SIZE = 65536


def fit_connections(wanted: int, reserve: int = 64) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one and return how many connections fit.

    Many systems start services with a soft limit of 1,024: left alone, accept() fails with EMFILE
    long before ``max_connections``. ``reserve`` keeps descriptors for everything else in the process
    (listeners, the STUN server's sockets, log files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard == resource.RLIM_INFINITY:
        try:
            soft = ensure_fd_capacity(wanted + reserve)
        except FdLimitError:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    elif soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = soft - open_fd_count() - HEADROOM - reserve
    if room < wanted:
        fit = max(room, 16)
        log.warning("RLIMIT_NOFILE %d (hard %s) leaves room for %d connections, not %d: serving at most %d "
                    "(raise it with `ulimit -n`, LimitNOFILE= in a systemd unit, or 'nofile' in "
                    "/etc/security/limits.conf)", soft, hard, room, wanted, fit)
        return fit
    log.info("RLIMIT_NOFILE %d (was %d): room for the %d connections asked for", soft, before, wanted)
    return wanted


class _ConnIO:
    """Outbound frames of one connection, bounded in bytes.

    A client's own requests are throttled by their replies: the reader stops reading while the queue
    is above ``pause`` bytes. Frames caused by other peers (offers, cancels) cannot be throttled that
    way, so past ``limit`` bytes the connection is dropped: a peer that does not read cannot make
    the server hold memory for it.
    """

    def __init__(self, addr: tuple, pause: int, limit: int):
        self.addr = addr
        self.pause = pause
        self.limit = limit
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.closing = False  # no more frames: the writer flushes, then ends
        self.has_data = trio.Event()
        self.below_pause = trio.Event()
        self.below_pause.set()
        self.read_scope = trio.CancelScope()
        self.write_scope = trio.CancelScope()  # cancelled: unsent frames are dropped

    def put(self, data: bytes) -> bool:
        if self.queued + len(data) > self.limit:
            return False
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.pause:
            self.below_pause = trio.Event() if self.below_pause.is_set() else self.below_pause
        self.has_data.set()
        return True

    def taken(self, data: bytes) -> None:
        self.queued -= len(data)
        if self.queued <= self.pause:
            self.below_pause.set()

    def close(self) -> None:
        self.closing = True
        self.has_data.set()


class _Dispatcher:
    def __init__(self, state: RendezvousServer):
        self.state = state
        self.conns: dict[int, _ConnIO] = {}
        self.timer_scope: trio.CancelScope | None = None

    def run(self) -> None:
        """Carry out everything the state machine asked for (which may ask for more)."""
        while actions := self.state.actions():
            for act in actions:
                io = self.conns.get(act.conn)
                if io is None:
                    continue
                if isinstance(act, Send):
                    kind = act.msg["t"]
                    if kind == "error":
                        log.info("conn %d %s: error %s: %s", act.conn, io.addr, act.msg["code"], act.msg["message"])
                    elif kind in ("enrolled", "session"):
                        log.info("conn %d %s: %s %s", act.conn, io.addr, kind, act.msg.get("peer"))
                    if io.closing:
                        continue
                    try:
                        frame = encode(act.msg)
                    except LocalProtocolError as exc:  # a bug: it costs this connection only
                        log.error("conn %d %s: cannot frame a %s reply: %s", act.conn, io.addr, kind, exc)
                        self._drop(act.conn, io, "internal error")
                        continue
                    if not io.put(frame):
                        self._drop(act.conn, io, f"peer does not read its frames ({io.queued} bytes queued)")
                elif isinstance(act, Close):
                    log.info("conn %d %s: closing: %s", act.conn, io.addr, act.reason)
                    io.read_scope.cancel()
        deadline = self.state.next_deadline()
        if deadline is not None and self.timer_scope is not None and deadline < self.timer_scope.deadline:
            self.timer_scope.deadline = deadline

    def _drop(self, conn: int, io: _ConnIO, reason: str) -> None:
        log.info("conn %d %s: dropping: %s", conn, io.addr, reason)
        io.read_scope.cancel()
        io.write_scope.cancel()
        io.close()
        if conn in self.state.conns:
            self.state.connection_lost(conn, trio.current_time())

    async def timer_loop(self) -> None:
        while True:
            deadline = self.state.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            try:
                self.state.tick(trio.current_time())
            except Exception:
                log.exception("internal error in the timer tick; carrying on")
                await trio.sleep(0.1)  # a tick that keeps failing must not spin
            self.run()


async def serve_rendezvous(
    host: str | None,
    port: int,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
    state: RendezvousServer | None = None,
    max_connections: int = 10_000,
    fd_reserve: int = 64,
    pause_reading: int = 256 * 1024,
    max_queued: int = 1024 * 1024,
    write_timeout: float = 10.0,
    **state_options,
) -> None:
    """Run the rendezvous server forever on host:port (port 0 picks one).

    ``task_status.started`` gets the bound (host, port) of the first listener. ``state`` lets a
    caller (tests, benchmarks) keep a handle on the registry; otherwise one is built from
    ``state_options`` (keepalive_timeout, offer_timeout, start_margin, max_conns_per_source, ... of
    RendezvousServer). ``max_connections`` is lowered to what the file-descriptor limit allows once
    its soft value is raised to the hard one (``fd_reserve`` descriptors are left for the rest of the
    process); a connection beyond it gets a ``busy`` error and is closed.
    """
    state = state if state is not None else RendezvousServer(**state_options)
    max_connections = fit_connections(max_connections, fd_reserve)
    full = encode(make("error", code=ErrorCode.BUSY.value,
                       message=f"the server is full ({max_connections} connections)"))
    disp = _Dispatcher(state)
    ids = itertools.count(1)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def writer(conn: int, stream: trio.SocketStream, io: _ConnIO):
        with io.write_scope:
            try:
                while True:
                    while io.queue:
                        data = io.queue.popleft()
                        with trio.fail_after(write_timeout):
                            await stream.send_all(data)
                        io.taken(data)
                    if io.closing:
                        return
                    io.has_data = trio.Event()
                    await io.has_data.wait()
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                disp._drop(conn, io, f"write failed: {type(exc).__name__}")
                disp.run()

    async def handler(stream: trio.SocketStream) -> None:
        conn = next(ids)
        try:
            addr = stream.socket.getpeername()[:2]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        if len(disp.conns) >= max_connections:
            log.warning("refusing %s: %d connections open", addr, len(disp.conns))
            with trio.move_on_after(1):  # a fresh socket's send buffer is empty: this does not block
                try:
                    await stream.send_all(full)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        io = _ConnIO(tuple(addr), pause_reading, max_queued)
        disp.conns[conn] = io
        try:
            state.connection_made(conn, addr, trio.current_time())
            disp.run()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, conn, stream, io)
                with io.read_scope:
                    try:
                        while True:
                            await io.below_pause.wait()
                            data = await stream.receive_some(READ_SIZE)
                            if not data:
                                break
                            if conn not in state.conns:
                                break
                            try:
                                state.receive_data(conn, data, trio.current_time())
                            except Exception:
                                # A bug must cost one connection, never the server.
                                log.exception("conn %d %s: internal error; dropping it", conn, io.addr)
                                break
                            disp.run()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                if conn in state.conns:
                    state.connection_lost(conn, trio.current_time())
                    disp.run()
                io.close()  # the writer flushes what is queued (a final error frame), then ends
        except Exception:
            # Whatever went wrong belongs to this connection: it ends, the server carries on.
            log.exception("conn %d %s: internal error; dropping it", conn, io.addr)
        finally:
            disp.conns.pop(conn, None)
            if conn in state.conns:  # cancelled from outside, or an unexpected error
                state.connection_lost(conn, trio.current_time())
                disp.run()  # tell the others now (their pending offers with this peer end)
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(disp.timer_loop)
        await nursery.start(trio.serve_listeners, handler, listeners)
        sockname = listeners[0].socket.getsockname()[:2]
        log.info("rendezvous server listening on %s:%d", *sockname)
        task_status.started(tuple(sockname))
