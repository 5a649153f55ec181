"""The rendezvous server on Trio: one task per connection around the sans-IO RendezvousServer.

Every connection has a reader (feeds bytes into the state machine) and a writer (drains a bounded
queue of frames). A peer that does not read its frames fast enough is disconnected rather than
allowed to hold server memory or block anyone else; a peer that sends garbage gets a bad-frame error
and, when the stream cannot be resynchronised, is disconnected. Nobody else notices either.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import trio

from ..proto.rendezvous import Close, RendezvousServer, Send, encode

log = logging.getLogger("nattrav.rendezvous")

READ_SIZE = 65536


@dataclass
class _ConnIO:
    send: trio.MemorySendChannel
    read_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    write_scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # cancelled: drop unsent frames
    addr: tuple = ()


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
                    try:
                        io.send.send_nowait(encode(act.msg))
                    except trio.WouldBlock:
                        self._drop(act.conn, io, "peer does not read its frames")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._drop(act.conn, io, "writer gone")
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
        if conn in self.state.conns:
            self.state.connection_lost(conn, trio.current_time())

    async def timer_loop(self) -> None:
        while True:
            deadline = self.state.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            self.state.tick(trio.current_time())
            self.run()


async def serve_rendezvous(
    host: str | None,
    port: int,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
    state: RendezvousServer | None = None,
    max_connections: int = 10_000,
    send_queue: int = 64,
    write_timeout: float = 10.0,
    **state_options,
) -> None:
    """Run the rendezvous server forever on host:port (port 0 picks one).

    ``task_status.started`` gets the bound (host, port) of the first listener. ``state`` lets a
    caller (tests, benchmarks) keep a handle on the registry; otherwise one is built from
    ``state_options`` (keepalive_timeout, offer_timeout, start_margin, ... of RendezvousServer).
    """
    state = state if state is not None else RendezvousServer(**state_options)
    disp = _Dispatcher(state)
    ids = itertools.count(1)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def writer(conn: int, stream: trio.SocketStream, frames: trio.MemoryReceiveChannel, io: _ConnIO):
        async with frames:
            with io.write_scope:
                try:
                    async for data in frames:
                        with trio.fail_after(write_timeout):
                            await stream.send_all(data)
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
            await trio.aclose_forcefully(stream)
            return
        send, frames = trio.open_memory_channel(send_queue)
        io = _ConnIO(send, addr=tuple(addr))
        disp.conns[conn] = io
        try:
            state.connection_made(conn, addr, trio.current_time())
            disp.run()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, conn, stream, frames, io)
                with io.read_scope:
                    try:
                        while True:
                            data = await stream.receive_some(READ_SIZE)
                            if not data:
                                break
                            if conn not in state.conns:
                                break
                            state.receive_data(conn, data, trio.current_time())
                            disp.run()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                if conn in state.conns:
                    state.connection_lost(conn, trio.current_time())
                    disp.run()
                send.close()  # the writer flushes what is queued (a final error frame), then ends
        finally:
            disp.conns.pop(conn, None)
            if conn in state.conns:  # cancelled from outside (server shutdown)
                state.connection_lost(conn, trio.current_time())
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(disp.timer_loop)
        await nursery.start(trio.serve_listeners, handler, listeners)
        sockname = listeners[0].socket.getsockname()[:2]
        log.info("rendezvous server listening on %s:%d", *sockname)
        task_status.started(tuple(sockname))
