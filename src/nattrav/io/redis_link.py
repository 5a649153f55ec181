"""One connection to Redis on Trio, with automatic pipelining: the registry's hot path.

Why not coredis for this: measured on this machine, coredis 6.9 spends ~200 µs of client CPU per
command (its request objects, retry wrappers, telemetry and per-connection task hand-offs) where
the Lua script it runs costs Redis ~40 µs; an instance serving 10,000 connects at once was CPU-bound
inside the client. This module does only what the registry needs: RESP2 requests and replies,
bytes in and out, and every command issued while the writer was busy goes out in the next single
write (commands of many peers share one round trip and one syscall: ~7 µs each in a batch of 16,
~25 µs alone). Replies come back in order, so each caller just waits for its place in the queue.

Time bound: a connection with calls waiting and no reply for ``stall_timeout`` seconds is taken for
broken (LinkDown to every call on it, then a new connection). A call's own wait is not bounded:
behind a long queue that Redis is working through (an instance overloaded by a burst), a call
waits its turn instead of being abandoned, because the work Redis does for an abandoned call is
lost (a connect that ran, a session nobody hears of). The queue is bounded by its callers: the
rendezvous front has at most one call in flight per peer connection. A caller that gives up
anyway (its own cancel scope) leaves its place; its reply is read and dropped when it comes. A
broken connection fails every call waiting on it (LinkDown); the next call connects again, so an
unreachable Redis fails at once and a recovered one is used at once. Blocking commands
(XREAD BLOCK) need a link of their own: they would hold up every reply queued behind them.

Redis is trusted but checked: a reply that does not parse, or is larger than MAX_BULK / MAX_ITEMS,
breaks the connection (LinkDown), never the process.
"""

from __future__ import annotations

import collections
import logging
import select
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, unquote, urlsplit

import outcome
import trio

log = logging.getLogger("nattrav.redis")

MAX_BULK = 16 * 2**20  # bytes in one string reply
MAX_ITEMS = 1 << 20  # elements in one array reply
READ_SIZE = 1 << 16
CONNECT_TIMEOUT = 5.0
STALL_TIMEOUT = 5.0  # seconds without a reply while calls wait: the connection is broken


class LinkDown(OSError):
    """The connection to Redis failed (or never came up); the command may or may not have run."""


class ReplyError(Exception):
    """Redis answered the command with an error (the text after '-')."""


class _Incomplete(Exception):
    pass


def encode(words: tuple) -> bytes:
    """One command as a RESP array of bulk strings (str is sent as UTF-8, int as its digits)."""
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        if type(w) is str:
            w = w.encode()
        elif type(w) is int:
            w = b"%d" % w
        out.append(b"$%d\r\n%b\r\n" % (len(w), w))
    return b"".join(out)


class ReplyParser:
    """RESP2 replies from a byte stream, incrementally: feed() bytes, then take replies with next()
    until it returns the NOTHING sentinel. Errors become ReplyError values (the caller raises)."""

    NOTHING = object()

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0

    def next(self) -> Any:
        try:
            value, self._pos = self._one(self._pos, 0)
        except _Incomplete:
            return self.NOTHING
        return value

    def _one(self, p: int, depth: int) -> tuple[Any, int]:
        buf = self._buf
        e = buf.find(b"\r\n", p)
        if e < 0:
            if len(buf) - p > 64 * 1024:  # no line is that long
                raise LinkDown("malformed reply from Redis (no line end)")
            raise _Incomplete
        kind = buf[p]
        if kind == 36:  # $ bulk string
            n = self._count(buf, p, e, MAX_BULK)
            if n < 0:
                return None, e + 2
            end = e + 2 + n
            if end + 2 > len(buf):
                raise _Incomplete
            return buf[e + 2:end], end + 2
        if kind == 42:  # * array
            n = self._count(buf, p, e, MAX_ITEMS)
            if n < 0:
                return None, e + 2
            if depth > 8:
                raise LinkDown("malformed reply from Redis (nested too deep)")
            p, out = e + 2, []
            for _ in range(n):
                value, p = self._one(p, depth + 1)
                out.append(value)
            return out, p
        if kind == 58:  # : integer
            return self._count(buf, p, e, 1 << 63), e + 2
        if kind == 43:  # + simple string
            return buf[p + 1:e], e + 2
        if kind == 45:  # - error
            return ReplyError(buf[p + 1:e].decode("utf-8", "replace")[:500]), e + 2
        raise LinkDown(f"malformed reply from Redis (type byte {kind})")

    @staticmethod
    def _count(buf: bytes, p: int, e: int, most: int) -> int:
        text = buf[p + 1:e]
        try:
            n = int(text)
        except ValueError:
            raise LinkDown("malformed reply from Redis (a length is not a number)") from None
        if n > most or n < -(1 << 63):
            raise LinkDown("reply from Redis too large")
        return n


class _Waiter:
    """One caller's place in a connection's reply queue (`count` replies: a batch's)."""

    __slots__ = ("task", "count", "replies", "gone")

    def __init__(self, count: int):
        self.task = trio.lowlevel.current_task()
        self.count = count
        self.replies: list = []
        self.gone = False  # the caller gave up: its replies are dropped


class _Conn:
    """One TCP/UNIX connection and its reply queue; replaced whole when it breaks."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.out: list[bytes] = []
        self.waiting: collections.deque[_Waiter] = collections.deque()
        self.wake = trio.Event()
        self.scope = trio.CancelScope()
        self.down: str | None = None
        self.progress = 0.0  # when a reply last came, or the queue last went from empty to waiting

    def fail(self, reason: str) -> None:
        if self.down is not None:
            return
        self.down = reason
        self.scope.cancel()
        while self.waiting:
            w = self.waiting.popleft()
            if not w.gone:
                trio.lowlevel.reschedule(w.task, outcome.Error(LinkDown(reason)))


def _readable(stream: trio.abc.Stream) -> bool:
    """Whether bytes (or the end) wait unread on the stream's socket."""
    inner = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return False
    try:
        return bool(select.select([sock.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def parse_url(url: str) -> dict:
    """redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix://[[user]:password@]/path[?db=N]."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    opts: dict[str, Any] = {"tls": parts.scheme == "rediss", "user": unquote(parts.username or "") or None,
                            "password": unquote(parts.password) if parts.password is not None else None}
    if parts.scheme == "unix":
        opts["path"] = parts.path
        db = query.get("db", ["0"])[0]
    else:
        opts["host"], opts["port"] = parts.hostname, parts.port or 6379
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
    opts["db"] = int(db) if db.isdigit() else 0
    return opts


class RedisLink:
    """Commands to one Redis server over one connection at a time (see the module's docstring).
    Run it inside ``open_redis_link`` (its reader and writer tasks live in that nursery)."""

    def __init__(self, url: str, nursery: trio.Nursery, *, name: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, stall_timeout: float = STALL_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None):
        self.url = url
        self.name = name
        self._opts = parse_url(url)
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self._ssl = ssl_context
        self._conn: _Conn | None = None
        self._connecting = trio.Lock()
        self.stats = {"connects": 0, "writes": 0, "commands": 0}

    # -- the commands --
    async def call(self, *words: Any) -> Any:
        """One command's reply (bytes, int, list or None); ReplyError for an error reply."""
        reply = (await self._send([encode(words)]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def calls(self, commands: list[tuple]) -> list[Any]:
        """Several commands in one write; their replies in order (ReplyError values, not raised)."""
        if not commands:
            return []
        return await self._send([encode(c) for c in commands])

    async def _send(self, frames: list[bytes]) -> list[Any]:
        conn = self._conn
        if conn is None or conn.down is not None:
            conn = await self._connect()
        waiter = _Waiter(len(frames))
        if not conn.waiting:
            conn.progress = trio.current_time()
        conn.out.extend(frames)
        conn.waiting.append(waiter)
        conn.wake.set()
        self.stats["commands"] += len(frames)

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            waiter.gone = True  # its replies still come, in their turn: the reader drops them
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.fail("link closed")

    # -- the connection --
    async def _connect(self) -> _Conn:
        async with self._connecting:
            if self._conn is not None and self._conn.down is None:
                return self._conn
            o = self._opts
            try:
                with trio.fail_after(self._connect_timeout):
                    if "path" in o:
                        stream: trio.abc.Stream = await trio.open_unix_socket(o["path"])
                    else:
                        stream = await trio.open_tcp_stream(o["host"], o["port"])
                        if o["tls"]:
                            stream = trio.SSLStream(stream, self._ssl or ssl.create_default_context(),
                                                    server_hostname=o["host"])
                            await stream.do_handshake()
                    hello = []
                    if o["password"] is not None:
                        hello.append(("AUTH", o["user"], o["password"]) if o["user"] else ("AUTH", o["password"]))
                    if o["db"]:
                        hello.append(("SELECT", o["db"]))
                    if self.name:
                        hello.append(("CLIENT", "SETNAME", self.name))
                    if hello:
                        await stream.send_all(b"".join(encode(h) for h in hello))
                        parser = ReplyParser()
                        for _ in hello:
                            while (reply := parser.next()) is ReplyParser.NOTHING:
                                data = await stream.receive_some(READ_SIZE)
                                if not data:
                                    raise LinkDown("Redis closed the connection during setup")
                                parser.feed(data)
                            if isinstance(reply, ReplyError):
                                raise LinkDown(f"Redis refused the connection's setup: {reply}")
            except trio.TooSlowError:
                raise LinkDown(f"no connection to Redis within {self._connect_timeout:g} s") from None
            except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                if isinstance(exc, LinkDown):
                    raise
                raise LinkDown(f"cannot connect to Redis: {exc}") from None
            conn = _Conn(stream)
            self._conn = conn
            self.stats["connects"] += 1
            self._nursery.start_soon(self._run, conn)
            return conn

    async def _run(self, conn: _Conn) -> None:
        try:
            with conn.scope:
                async with trio.open_nursery() as n:
                    n.start_soon(self._writer, conn)
                    n.start_soon(self._watchdog, conn)
                    await self._reader(conn)
                    n.cancel_scope.cancel()
        except Exception as exc:  # a bug here must cost this connection (its calls fail), not the process
            log.exception("Redis link: internal error; dropping the connection")
            conn.fail(f"internal error: {type(exc).__name__}")
        finally:
            conn.fail(conn.down or "connection to Redis closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn.stream)

    async def _writer(self, conn: _Conn) -> None:
        try:
            while True:
                await conn.wake.wait()
                conn.wake = trio.Event()
                if conn.out:
                    data = conn.out[0] if len(conn.out) == 1 else b"".join(conn.out)
                    conn.out.clear()
                    self.stats["writes"] += 1
                    await conn.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            conn.fail(f"write to Redis failed: {type(exc).__name__}: {exc}")

    async def _watchdog(self, conn: _Conn) -> None:
        # one sweep per connection, not a cancel scope per call (which costs more than the call)
        while True:
            await trio.sleep(self.stall_timeout / 4)
            if conn.waiting and trio.current_time() - conn.progress > self.stall_timeout:
                if _readable(conn.stream):
                    # Redis did answer: this process is too busy to have read it yet (an event loop
                    # with thousands of peers' work queued), which is no reason to drop the calls
                    conn.progress = trio.current_time()
                    continue
                conn.fail(f"Redis did not answer for {self.stall_timeout:g} s")
                return

    async def _reader(self, conn: _Conn) -> None:
        parser = ReplyParser()
        try:
            while True:
                data = await conn.stream.receive_some(READ_SIZE)
                if not data:
                    conn.fail("Redis closed the connection")
                    return
                conn.progress = trio.current_time()
                parser.feed(data)
                while (reply := parser.next()) is not ReplyParser.NOTHING:
                    if not conn.waiting:
                        conn.fail("a reply from Redis nobody asked for")
                        return
                    w = conn.waiting[0]
                    w.replies.append(reply)
                    if len(w.replies) == w.count:
                        conn.waiting.popleft()
                        if not w.gone:
                            trio.lowlevel.reschedule(w.task, outcome.Value(w.replies))
        except LinkDown as exc:
            conn.fail(str(exc))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            conn.fail(f"read from Redis failed: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def open_redis_link(url: str, **options: Any) -> AsyncIterator[RedisLink]:
    """A RedisLink on `url`; it connects on its first command (LinkDown if it cannot). What leaves
    the block leaves it as itself, not wrapped in the ExceptionGroup of the link's nursery."""
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        link = RedisLink(url, nursery, **options)
        try:
            yield link
        except BaseException as exc:
            failure = exc
        finally:
            link.close()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


__all__ = ["LinkDown", "RedisLink", "ReplyError", "ReplyParser", "encode", "open_redis_link", "parse_url"]
