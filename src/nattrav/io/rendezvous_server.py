"""The rendezvous server on Trio: one task per connection around the sans-IO RendezvousServer.

With a shared registry (io/redis_registry.py) three more tasks run: the subscription that turns
notices relayed by other instances into frames, the publisher of this instance's notices for
theirs, and the registry's housekeeping every second (heartbeat, leases, dead instances' peers).
A registry call is shielded from the connection's cancellation (each is bounded by its own
timeout): an enroll cut off after Redis ran it would leave a peer online on a connection that is gone.

Every connection has a reader (feeds bytes into the state machine) and a writer (drains a bounded
queue of frames). A peer that does not read its frames fast enough is disconnected rather than
allowed to hold server memory or block anyone else; a peer that sends garbage gets a bad-frame error
and is disconnected when the stream cannot be resynchronised or it has not enrolled. Nobody else
notices either: one connection's frames are handled at most FRAMES_PER_TURN at a time, then the
others get their turn of the event loop.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import math
import os
import ssl
import resource
import time
from functools import partial

import trio

from ..core.limits import HEADROOM, ensure_fd_capacity, open_fd_count
from ..errors import BadMessage, FdLimitError, LocalProtocolError, RegistryUnavailable
from .observe_udp import beacons_beside, observe_beside, ticket_clock
from ..proto.rendezvous import Close, ErrorCode, Relay, RendezvousServer, Send, encode, make, pack_notice, unpack_notice

log = logging.getLogger("nattrav.rendezvous")

READ_SIZE = 65536
TICK_BATCH = 64  # deadlines handled between two turns of the event loop
FRAMES_PER_TURN = 16  # frames of one connection handled between two turns of the event loop
MAINTAIN_EVERY = 1.0  # seconds between two rounds of the registry's housekeeping
RELAY_QUEUE = 65536  # notices for other instances waiting to be published; more are dropped
# accept() failures that mean "out of descriptors or memory for now": wait, then accept again
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY = 0.1  # seconds
# accept() failures that concern that one connection only (it was aborted, or its network went away)
ACCEPT_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENETUNREACH,
                           errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


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
    """Outbound side of one connection, bounded in bytes.

    Frames are written inline with one non-blocking send when nothing is queued (the common case:
    no task switch, one syscall for everything a single event produced); only what the socket does
    not take at once goes to a writer task. A client's own requests are throttled by their replies:
    the reader stops reading while more than ``pause`` bytes wait. Frames caused by other peers
    (offers, cancels) cannot be throttled that way, so past ``limit`` bytes the connection is
    dropped: a peer that does not read cannot make the server hold memory for it.
    """

    __slots__ = ("addr", "stream", "fd", "pause", "limit", "queue", "queued", "writing", "write_since",
                 "idle", "below_pause", "read_scope", "write_scope", "running_scope")

    def __init__(self, stream: trio.abc.Stream, addr: tuple, pause: int, limit: int, fd: int | None):
        self.addr = addr
        self.stream = stream
        self.fd = fd  # None over TLS: every write goes through the stream (the writer task)
        self.pause = pause
        self.limit = limit
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0  # bytes waiting for the writer task, including the write in progress
        self.writing = False  # a writer task owns the sending side
        self.write_since: float | None = None  # when the write in progress started (the watchdog reads it)
        self.idle: trio.Event | None = None  # set when the writer task ends
        self.below_pause: trio.Event | None = None  # None: not paused
        self.read_scope = trio.CancelScope()
        self.write_scope = trio.CancelScope()  # cancelled: unsent frames are dropped
        self.running_scope: trio.CancelScope | None = None  # the writer task's, while it runs

    def cancel_writes(self) -> None:
        """Drop what is unsent, now and from now on (the running writer's scope and the next)."""
        self.write_scope.cancel()
        if self.running_scope is not None:
            self.running_scope.cancel()

    def queue_more(self, data: bytes) -> bool:
        if self.queued + len(data) > self.limit:
            return False
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.pause and self.below_pause is None:
            self.below_pause = trio.Event()
        return True

    def taken(self, n: int) -> None:
        self.queued -= n
        if self.queued <= self.pause and self.below_pause is not None:
            self.below_pause.set()
            self.below_pause = None


class _Dispatcher:
    def __init__(self, state: RendezvousServer, write_timeout: float):
        self.state = state
        self.write_timeout = write_timeout
        self.conns: dict[int, _ConnIO] = {}
        self.writers: dict[int, _ConnIO] = {}  # connections whose writer task is running
        self.timer_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        # a registry that can suspend (Redis) gets its calls shielded; the in-memory one never does
        self.shared = hasattr(state.registry, "serve_notices")
        self.relay_in, self.relay_out = trio.open_memory_channel(RELAY_QUEUE)

    def run(self) -> None:
        """Carry out everything the state machine asked for (which may ask for more)."""
        while actions := self.state.actions():
            out: dict[int, list[bytes]] = {}
            closes: list[Close] = []
            for act in actions:
                if type(act) is Relay:
                    self._relay(act)
                    continue
                io = self.conns.get(act.conn)
                if io is None:
                    continue
                if isinstance(act, Send):
                    kind = act.msg["t"]
                    if kind == "error":
                        log.info("conn %d %s: error %s: %s", act.conn, io.addr, act.msg["code"], act.msg["message"])
                    elif kind in ("enrolled", "session"):
                        log.info("conn %d %s: %s %s", act.conn, io.addr, kind, act.msg.get("peer"))
                    try:
                        frame = encode(act.msg)
                    except LocalProtocolError as exc:  # a bug: it costs this connection only
                        log.error("conn %d %s: cannot frame a %s reply: %s", act.conn, io.addr, kind, exc)
                        self._drop(act.conn, io, "internal error")
                        continue
                    out.setdefault(act.conn, []).append(frame)
                else:
                    closes.append(act)
            for conn, frames in out.items():
                io = self.conns.get(conn)
                if io is not None:
                    self._deliver(conn, io, frames[0] if len(frames) == 1 else b"".join(frames))
            for act in closes:  # after their final frames went out (or were queued)
                io = self.conns.get(act.conn)
                if io is not None:
                    log.info("conn %d %s: closing: %s", act.conn, io.addr, act.reason)
                    io.read_scope.cancel()
        deadline = self.state.next_deadline()
        if deadline is not None and self.timer_scope is not None and deadline < self.timer_scope.deadline:
            self.timer_scope.deadline = deadline

    def _relay(self, act: Relay) -> None:
        try:
            self.relay_in.send_nowait((act.instance, pack_notice(act.notice, time.time())))
        except trio.WouldBlock:  # Redis is not keeping up: this peer times out instead
            self.state.stats["relay_dropped"] = self.state.stats.get("relay_dropped", 0) + 1

    async def relay_loop(self) -> None:
        """Publish this instance's notices for the others, as many per pipeline as are waiting."""
        async for first in self.relay_out:
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self.relay_out.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self.state.registry.publish(batch)
            except RegistryUnavailable as exc:
                self.state.stats["relay_dropped"] = self.state.stats.get("relay_dropped", 0) + len(batch)
                log.warning("could not relay %d notices: %s", len(batch), exc)

    def on_notice(self, data: bytes) -> None:
        """A notice another instance relayed for one of our connections."""
        try:
            note = unpack_notice(data, time.time())
        except BadMessage as exc:
            self.state.stats["bad_notices"] = self.state.stats.get("bad_notices", 0) + 1
            log.warning("dropped a malformed notice from the registry: %s", exc)
            return
        self.state.deliver(note, trio.current_time())
        self.run()

    async def maintain_loop(self) -> None:
        down_since: float | None = None
        while True:
            await trio.sleep(MAINTAIN_EVERY)
            try:
                await self.call(self.state.amaintain(trio.current_time()))
            except RegistryUnavailable as exc:
                if down_since is None:
                    down_since = trio.current_time()
                    log.warning("the registry is unreachable (%s): peers get busy until it is back", exc)
                continue
            except Exception:
                log.exception("internal error in the registry's housekeeping; carrying on")
                continue
            finally:
                self.run()
            if down_since is not None:
                log.warning("the registry is back after %.1f s", trio.current_time() - down_since)
                down_since = None

    async def call(self, coro):
        """Await a state machine coroutine; shielded when the registry can suspend (see above)."""
        if not self.shared:
            return await coro
        with trio.CancelScope(shield=True):
            return await coro

    def _deliver(self, conn: int, io: _ConnIO, data: bytes) -> None:
        if io.writing:
            if not io.queue_more(data):
                self._drop(conn, io, f"peer does not read its frames ({io.queued} bytes queued)")
            return
        try:
            # a non-blocking socket: takes what fits, never waits (TLS: all of it to the writer)
            sent = os.write(io.fd, data) if io.fd is not None else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # reset or gone: the reader sees it too
            self._drop(conn, io, f"write failed: {exc.strerror or exc}")
            return
        if sent < len(data):
            io.writing = True
            io.idle = trio.Event()
            io.queue_more(data[sent:])
            self.writers[conn] = io
            self.nursery.start_soon(self._writer, conn, io)

    async def _writer(self, conn: int, io: _ConnIO) -> None:
        scope = io.write_scope  # a scope is entered once; a TLS connection runs a writer per burst
        if not scope.cancel_called:
            io.write_scope = trio.CancelScope()
        try:
            if scope.cancel_called:
                return  # the connection was dropped: its unsent frames go with it
            io.running_scope = scope
            with scope:
                while io.queue:
                    data = io.queue.popleft() if len(io.queue) == 1 else b"".join(io.queue)
                    io.queue.clear()
                    io.write_since = trio.current_time()
                    await io.stream.send_all(data)
                    io.write_since = None
                    io.taken(len(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._drop(conn, io, f"write failed: {type(exc).__name__}")
            self.run()
        finally:
            io.running_scope = None
            io.writing = False
            io.write_since = None
            self.writers.pop(conn, None)
            io.idle.set()

    def _drop(self, conn: int, io: _ConnIO, reason: str) -> None:
        log.info("conn %d %s: dropping: %s", conn, io.addr, reason)
        io.read_scope.cancel()
        io.cancel_writes()
        if conn in self.state.conns:
            if self.shared:  # the connection's own task tells the registry (it may take a round trip)
                return
            self.state.connection_lost(conn, trio.current_time())

    async def write_watchdog(self) -> None:
        # One sweep over the connections that are mid-write replaces a deadline per write (a cancel
        # scope with a deadline costs more than the send itself when there are thousands of them).
        while True:
            await trio.sleep(max(self.write_timeout / 4, 0.05))
            now = trio.current_time()
            stuck = [(conn, io) for conn, io in self.writers.items()
                     if io.write_since is not None and now - io.write_since > self.write_timeout]
            for conn, io in stuck:
                self._drop(conn, io, f"a write took more than {self.write_timeout:g} s")
            if stuck:
                self.run()

    async def timer_loop(self) -> None:
        while True:
            deadline = self.state.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            more = True
            while more:
                try:
                    more = await self.call(self.state.atick(trio.current_time(), TICK_BATCH))
                except Exception:
                    log.exception("internal error in the timer tick; carrying on")
                    await trio.sleep(0.1)  # a tick that keeps failing must not spin
                    more = False
                self.run()
                if more:
                    await trio.sleep(0)  # let the connections that are ready go first


async def receive_plain(fd: int) -> bytes:
    """The next bytes of a plain TCP connection (b"" at its end).

    Waits for readability first, then reads once: SocketStream.receive_some tries the read first
    (on a connection that has sent its frame that fails with an exception nearly every time, and
    the wait follows anyway) and yields to the scheduler once more after a read that worked. This
    wait is also the connection's yield between two reads: nobody can keep the loop to itself."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:  # readiness reported but gone again: wait once more
            continue


async def _shared_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """trio.open_tcp_listeners' sockets, plus SO_REUSEPORT: the other processes of this instance
    listen on the same port, each with its own accept queue (no lock, no thundering herd)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE)
    out: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _name, addr in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(addr)
                sock.listen(0xFFFF)  # the kernel clips it to somaxconn, as trio's own listeners do
            except BaseException:
                sock.close()
                raise
            out.append(trio.SocketListener(sock))
    except BaseException:
        for lst in out:
            lst.socket.close()
        raise
    return out


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
    ssl_context: ssl.SSLContext | None = None,
    observe: bool = True,
    reuse_port: bool = False,
    beacons: bool = True,
    beacon_port: int = 0,
    **state_options,
) -> None:
    """Run the rendezvous server forever on host:port (port 0 picks one).

    ``task_status.started`` gets the bound (host, port) of the first listener. ``state`` lets a
    caller (tests, benchmarks) keep a handle on the registry; otherwise one is built from
    ``state_options`` (keepalive_timeout, offer_timeout, start_margin, max_conns_per_source, ... of
    RendezvousServer). ``max_connections`` is lowered to what the file-descriptor limit allows once
    its soft value is raised to the hard one (``fd_reserve`` descriptors are left for the rest of the
    process); a connection beyond it gets a ``busy`` error and is closed. ``ssl_context``: serve
    over TLS (io/rendezvous_tls.py's server_context). ``observe``: answer punch sockets'
    observation requests on the same port number over UDP (io/observe_udp.py). ``reuse_port``: bind
    both with SO_REUSEPORT, one of an instance's several processes (cli/workers.py): the kernel
    spreads connections and datagrams over the processes bound there. ``beacons``: take accepting
    listeners' sample beacons on a UDP port of their own (proto/rendezvous/beacon.py), one process
    only: with ``reuse_port`` a beacon could reach a process that does not hold its session, so an
    instance of several processes offers none and its listeners sample through STUN as before.
    """
    state = state if state is not None else RendezvousServer(**state_options)
    max_connections = fit_connections(max_connections, fd_reserve)
    full = encode(make("error", code=ErrorCode.BUSY.value,
                       message=f"the server is full ({max_connections} connections)"))
    disp = _Dispatcher(state, write_timeout)
    ids = itertools.count(1)
    listeners = await (_shared_listeners(host, port) if reuse_port else trio.open_tcp_listeners(port, host=host))
    state.ticket_clock_offset = ticket_clock() - trio.current_time() if reuse_port else 0.0
    if state.wall_clock is None:  # what clients' timed enroll proofs are dated in (timed_proof.py)
        state.wall_clock = time.time

    async def handler(stream: trio.SocketStream, addr: tuple) -> None:
        # Closed with a plain close() at the end, not aclose_forcefully: that one skips TLS's goodbye
        # by cancelling a scope, and delivering the Cancelled cost more than the whole rest of a
        # garbage connection's life (a quarter of the server's samples under the bench's attack mix).
        # Closing the TCP socket under an SSLStream skips the goodbye the same way.
        sock = stream.socket
        conn = next(ids)
        if len(disp.conns) >= max_connections:
            log.info("refusing %s: %d connections open", addr, len(disp.conns))
            state.stats["refused"] += 1
            try:
                os.write(sock.fileno(), full)  # a fresh socket's send buffer takes it whole
            except OSError:
                pass
            sock.close()
            return
        if ssl_context is not None:
            # the handshake runs on the first read, inside the enroll deadline the state machine keeps
            stream = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=False)
            io = _ConnIO(stream, addr, pause_reading, max_queued, None)
        else:
            io = _ConnIO(stream, addr, pause_reading, max_queued, sock.fileno())
        disp.conns[conn] = io
        try:
            try:  # the address the client dialed, as a timed enroll proof names it
                local = sock.getsockname()[:2]
            except OSError:
                local = None
            state.connection_made(conn, addr, trio.current_time(), local=local)
            disp.run()
            with io.read_scope:
                try:
                    while conn in state.conns:  # (checked before reading: a close we asked for needs no cancel)
                        if io.below_pause is not None:
                            await io.below_pause.wait()
                        data = await (stream.receive_some(READ_SIZE) if io.fd is None else receive_plain(io.fd))
                        if not data or conn not in state.conns:
                            break
                        try:
                            more = await disp.call(state.areceive_data(conn, data, trio.current_time(),
                                                                       FRAMES_PER_TURN))
                            disp.run()
                            while more and conn in state.conns:
                                # the other connections' turn first (and this peer's replies drained,
                                # if it is slow to read them), then the next frames
                                if io.below_pause is not None:
                                    await io.below_pause.wait()
                                else:
                                    await trio.sleep(0)
                                more = await disp.call(state.aprocess_more(conn, trio.current_time(),
                                                                           FRAMES_PER_TURN))
                                disp.run()
                        except Exception:
                            # A bug must cost one connection, never the server.
                            log.exception("conn %d %s: internal error; dropping it", conn, io.addr)
                            break
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                    pass  # (a failed TLS handshake arrives as BrokenResourceError)
            if conn in state.conns:
                await disp.call(state.aconnection_lost(conn, trio.current_time()))
                disp.run()
            if io.writing:  # a final error frame still on its way: give it the write timeout
                with trio.move_on_after(write_timeout):
                    await io.idle.wait()
        except Exception:
            # Whatever went wrong belongs to this connection: it ends, the server carries on.
            log.exception("conn %d %s: internal error; dropping it", conn, io.addr)
        finally:
            disp.conns.pop(conn, None)
            io.cancel_writes()
            if conn in state.conns:  # cancelled from outside, or an unexpected error
                with trio.CancelScope(shield=True):
                    await state.aconnection_lost(conn, trio.current_time())
                disp.run()  # tell the others now (their pending offers with this peer end)
            sock.close()

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # trio.serve_listeners, minus what costs per connection: its getpeername() (accept returns
        # the address) and the aclose_forcefully it runs after every handler (see handler)
        lsock = listener.socket
        try:
            while True:
                try:
                    sock, peer = await lsock.accept()
                except OSError as exc:
                    if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                        log.error("accept failed: %s; trying again in %g s", os.strerror(exc.errno), ACCEPT_RETRY)
                        await trio.sleep(ACCEPT_RETRY)
                        continue
                    if exc.errno in ACCEPT_TRANSIENT_ERRNOS:
                        continue
                    raise
                nursery.start_soon(handler, trio.SocketStream(sock), tuple(peer[:2]))
        finally:
            lsock.close()

    async with trio.open_nursery() as nursery:
        disp.nursery = nursery
        nursery.start_soon(disp.timer_loop)
        nursery.start_soon(disp.write_watchdog)
        if disp.shared:  # subscribed before the first peer can be offered anything
            await nursery.start(state.registry.serve_notices, disp.on_notice)
            nursery.start_soon(disp.relay_loop)
            nursery.start_soon(disp.maintain_loop)
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        sockname = listeners[0].socket.getsockname()[:2]
        log.info("rendezvous server listening on %s:%d", *sockname)
        if observe:  # the same port number on UDP: where peers' punch sockets are seen (observe_udp.py)
            nursery.start_soon(partial(observe_beside, host, sockname[1], state.observe_key, reuse_port=reuse_port))
            if beacons and not reuse_port:
                def beacon(data: bytes, src: tuple, now: float) -> None:
                    if state.beacon_received(data, src, now):
                        disp.run()

                state.beacon_port = await beacons_beside(host, nursery, beacon, beacon_port)
        task_status.started(tuple(sockname))
