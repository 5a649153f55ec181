"""The rendezvous registry in Redis, shared by every nattrav-server instance that names the same URL.

It implements proto/rendezvous/registry.py's interface (the in-memory registry's twin; one test
suite runs on both): each operation is one Lua script (io/redis_scripts.py), atomic inside Redis and
one round trip. Notices for peers connected to other instances go through one Redis stream per
instance (`P n:INSTANCE`), read from the last ID read: a notice appended while an instance's reading
connection is down is read when it is back (a delay, not a loss). Every instance heartbeats, keeps
the leases of its own online peers fresh, and takes the peers of a dead instance offline in batches
(`maintain`).

The client is io/redis_link.py, one connection with automatic pipelining: the calls of many peers
share one write and one round trip. (coredis, used before, cost ~200 µs of instance CPU per call,
which is what capped 10,000 concurrent connects; docs/scale-out.md has the numbers.) Scripts are
never retried (a timed-out connect may have run; its retry would make a second offer): a failed
call raises RegistryUnavailable, the front answers the peer `busy`, and the peer retries. Replies
are checked (trusted, but validated): anything malformed is a RegistryUnavailable too, never a crash.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import msgpack
import trio

from ..errors import BadFrame, RegistryUnavailable, UsageError
from ..proto.rendezvous import Answered, Ended, Enrolled, Home, Offered, Refusal, check_info, hash_secret
from ..proto.rendezvous.memory import check_limits
from ..proto.rendezvous.names import NameBindings, as_peer_id
from ..proto.rendezvous.wire import MAX_INFO, MAX_MESSAGE, NAME_RE, ErrorCode
from ..proto.schema import cut
from .redis_link import LinkDown, RedisLink, ReplyError, open_redis_link
from .redis_scripts import SCRIPTS

log = logging.getLogger("nattrav.rendezvous.redis")

SCHEMES = ("redis", "rediss", "unix")
# Seconds Redis may leave calls without any reply before the connection is taken for broken and its
# calls are told busy. An unreachable Redis fails at once (connection refused); this bounds a stuck
# one. A call behind a long queue that Redis is answering is not cut off (a call cut off may have
# run all the same, and its work would be lost): it waits its turn (io/redis_link.py).
OP_TIMEOUT = 5.0
STREAM_MAX = 65536  # notices an instance's stream holds at most (about; MAXLEN ~)
NOTICE_READ = 512  # notices read in one XREAD
NOTICE_BLOCK_MS = 5000  # an XREAD waits this long for a notice, then asks again
BACKOFF = (0.1, 2.0)  # reconnect waits of the subscription: first, at most
# An instance whose heartbeat (every second) is this old is dead and its peers are reaped. Generous:
# its peers enroll again elsewhere on their own the moment its process dies (their TCP connections
# break), so reaping is only cleanup, while an instance taken for dead too early (an overloaded one
# that missed a few beats) must end all its connections: a late heartbeat must not cause that.
DEAD_AFTER = 15.0


def check_url(url: str) -> str:
    """The registry URL as typed, or a UsageError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(f"registry URL {cut(url, 80)}: the scheme must be redis://, rediss:// or unix://")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise UsageError(f"registry URL {cut(url, 80)}: no host (redis://HOST:PORT/DB)")
        try:
            parts.port
        except ValueError:
            raise UsageError(f"registry URL {cut(url, 80)}: the port must be 1..65535") from None
        db = parts.path.strip("/")
        if db and not (db.isdigit() and int(db) < 16384):
            raise UsageError(f"registry URL {cut(url, 80)}: the database must be a number (redis://HOST:PORT/DB)")
    elif not parts.path:
        raise UsageError(f"registry URL {cut(url, 80)}: no socket path (unix:///path/to/redis.sock)")
    return url


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    elif isinstance(value, str):
        return value
    raise RegistryUnavailable(f"malformed reply from Redis: {cut(value)}")


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    if not text.lstrip("-").isdigit():
        raise RegistryUnavailable(f"malformed number from Redis: {cut(text)}")
    return int(text)


def _home(inst: Any, conn: Any) -> Home | None:
    inst = _text(inst)
    return None if inst == "" else Home(inst, _int(conn))


def _info(value: Any) -> bytes:
    """Node info as Redis holds it: the packed map, checked before it goes into anybody's frame."""
    if not isinstance(value, bytes) or len(value) > MAX_INFO + 64:
        raise RegistryUnavailable("malformed node info in Redis")
    try:
        check_info(msgpack.unpackb(value, raw=False, strict_map_key=True, max_ext_len=0))
    except BadFrame as exc:
        raise RegistryUnavailable(f"node info in Redis fails its schema: {exc}") from None
    except Exception as exc:  # msgpack raises a zoo of types
        raise RegistryUnavailable(f"undecodable node info in Redis: {type(exc).__name__}") from None
    return value


def _key(value: Any) -> bytes | None:
    """An identity key as Redis holds it ('' or absent: the peer enrolled without one)."""
    if value is None or value == b"" or value == "":
        return None
    if not isinstance(value, bytes) or len(value) != 32:
        raise RegistryUnavailable("malformed identity key in Redis")
    return value


def _ended(items: list) -> tuple[Ended, ...]:
    if len(items) % 8:
        raise RegistryUnavailable("malformed list of ended offers from Redis")
    out = []
    for i in range(0, len(items), 8):
        oid, ini, ii, ic, rid, tgt, ti, tc = items[i:i + 8]
        rid = _text(rid)
        out.append(Ended(_text(oid), _text(ini), _home(ii, ic), _int(rid) if rid else None, _text(tgt),
                         _home(ti, tc)))
    return tuple(out)


def _refusal(reply: list, **quote: str) -> Refusal:
    """A script's refusal; messages that quote the request say it the in-memory registry's way."""
    try:
        code = ErrorCode(_text(reply[1]))
    except ValueError:
        raise RegistryUnavailable(f"unknown error code from Redis: {cut(reply[1])}") from None
    message = _text(reply[2])
    if code is ErrorCode.NAME_TAKEN and "name" in quote and message.startswith("belongs"):
        message = f"{cut(quote['name'])} belongs to another peer"
    elif code is ErrorCode.UNKNOWN_PEER:
        message = f"no peer {cut(quote['target'])}"
    elif code is ErrorCode.OFFLINE and "target" in quote:
        message = f"peer {cut(quote['target'])} is offline"
    return Refusal(code, message[:MAX_MESSAGE])


class RedisRegistry:
    """The registry for one instance (`instance` names it in Redis; a fresh random one by default:
    a restarted instance must not receive its predecessor's notices).

    ``clock_offset`` maps the front's clock into the registry's timeline, which all instances
    share: wall-clock seconds (their clocks must agree to well under ``dead_after``, as NTP keeps
    them). ``lease``: how long an online peer's record outlives its instance's last refresh.
    """

    def __init__(self, link: RedisLink, *, instance: str | None = None, prefix: str = "nattrav:",
                 retain: float = 300.0, lease: float = 600.0, dead_after: float = DEAD_AFTER,
                 max_peers: int = 100_000, max_peers_per_source: int = 256, max_offers_per_peer: int = 16,
                 max_offers_per_source: int = 2, clock_offset: float = 0.0, op_timeout: float = OP_TIMEOUT,
                 token: Callable[[int], str] = secrets.token_urlsafe, housekeeping: RedisLink | None = None):
        check_limits(max_peers=max_peers, max_peers_per_source=max_peers_per_source,
                     max_offers_per_peer=max_offers_per_peer, max_offers_per_source=max_offers_per_source)
        for name, value in (("retain", retain), ("lease", lease), ("dead_after", dead_after)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.link = link
        # the heartbeat on a connection of its own: behind a burst of peers' calls on `link`, it
        # would come late, and an instance whose heartbeat is late for dead_after is reaped
        self.housekeeping = housekeeping or link
        self.instance = instance or secrets.token_hex(6)
        self.prefix = prefix
        self.stream = self.notice_stream(self.instance)
        self.retain, self.lease, self.dead_after = retain, lease, dead_after
        self.clock_offset = clock_offset
        self.op_timeout = op_timeout
        self._fixed = (repr(lease), repr(retain), repr(dead_after), str(max_peers), str(max_peers_per_source),
                       str(max_offers_per_peer), str(max_offers_per_source))
        self._token = token
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}
        self._cursor = "0"
        self._beaten = False  # a heartbeat got through once: a missing one later means we were reaped
        self.stats = {"expired": 0, "evicted": 0, "registry_errors": 0, "reaped": 0}

    def notice_stream(self, instance: str) -> str:
        """The Redis stream an instance reads its relayed notices from."""
        return f"{self.prefix}n:{instance}"

    # -- plumbing --
    async def _run(self, name: str, now: float, *args: str | bytes, link: RedisLink | None = None) -> list:
        # no timeout of its own: the link fails every call when Redis stops answering (op_timeout),
        # while a call behind a long queue Redis is working through waits its turn (io/redis_link.py)
        argv = (self.prefix, repr(now + self.clock_offset), *self._fixed, *args)
        link = link or self.link
        try:
            try:
                reply = await link.call("EVALSHA", self._shas[name], 0, *argv)
            except ReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # Redis restarted or its script cache was flushed: EVAL runs it and caches it again
                reply = await link.call("EVAL", SCRIPTS[name], 0, *argv)
        except (LinkDown, ReplyError) as exc:
            raise self._unavailable(exc) from None
        if not isinstance(reply, list):
            raise RegistryUnavailable(f"malformed reply from Redis to {name}")
        return reply

    def _fresh_id(self) -> str:
        while True:  # the names' rule: an ID is typed after `-d`, so none may start with "-"
            peer_id = self._token(16)
            if NAME_RE.match(peer_id):
                return peer_id

    # -- the Registry interface --
    async def enroll(self, home: Home, source: str, observed: list, info: bytes, name: str | None,
                     secret: str | None, now: float, key: bytes | None = None) -> Enrolled | Refusal:
        ordinary = ""
        if name is not None:
            # a peer ID as a name belongs to its key (nothing to store); an ordinary name is bound in
            # Redis to the first key that claims it, for every instance
            why = NameBindings().check(name, key) if as_peer_id(name) is not None else None
            if why is not None:
                return Refusal(ErrorCode.NAME_TAKEN, why)
            ordinary = "" if as_peer_id(name) is not None else "1"
        given = hash_secret(secret) if secret is not None else b""
        obs = msgpack.packb(list(observed), use_bin_type=True)
        for _ in range(8):
            minted = self._token(24)
            reply = await self._run("enroll", now, home.instance, str(home.conn), source, obs, info, name or "",
                                    given, self._fresh_id(), hash_secret(minted), key or b"", ordinary)
            kind = _text(reply[0]) if reply else ""
            if kind == "again":
                continue
            if kind == "no" and len(reply) == 3:
                return _refusal(reply, name=name or "")
            if kind != "ok" or len(reply) < 6:
                raise RegistryUnavailable("malformed reply from Redis to enroll")
            self.stats["evicted"] += _int(reply[2])
            renewed = _text(reply[5]) == "1"
            return Enrolled(_text(reply[1]), secret if secret is not None and not renewed else minted,
                            _home(reply[3], reply[4]), _ended(reply[6:]))
        raise RegistryUnavailable("could not mint an unused peer ID")

    async def publish_info(self, peer_id: str, home: Home, info: bytes, now: float) -> None:
        await self._run("publish_info", now, peer_id, home.instance, str(home.conn), info)

    async def offline(self, peer_id: str, home: Home, now: float) -> tuple[Ended, ...]:
        return _ended(await self._run("offline", now, peer_id, home.instance, str(home.conn)))

    async def connect(self, peer_id: str, home: Home, target: str, timeout: float, request_id: int | None,
                      now: float) -> Offered | Refusal:
        for _ in range(8):
            offer_id = self._token(12)
            reply = await self._run("connect", now, peer_id, home.instance, str(home.conn), target, repr(timeout),
                                    "" if request_id is None else str(request_id), offer_id)
            kind = _text(reply[0]) if reply else ""
            if kind == "again":
                continue
            if kind == "no" and len(reply) == 3:
                return _refusal(reply, target=target)
            if kind != "ok" or len(reply) != 5:
                raise RegistryUnavailable("malformed reply from Redis to connect")
            target_home = _home(reply[1], reply[2])
            if target_home is None:
                raise RegistryUnavailable("Redis offered to a peer with no connection")
            return Offered(offer_id, target_home, _info(reply[3]), timeout, _key(reply[4]))
        raise RegistryUnavailable("could not mint an unused offer ID")

    async def answer(self, peer_id: str, home: Home, offer_id: str, accept: bool, now: float) -> Answered | Refusal:
        reply = await self._run("answer", now, peer_id, home.instance, str(home.conn), offer_id)
        kind = _text(reply[0]) if reply else ""
        if kind == "no" and len(reply) == 3:
            return _refusal(reply)
        if kind != "ok" or len(reply) != 9:
            raise RegistryUnavailable("malformed reply from Redis to answer")
        rid = _text(reply[4])
        initiator_home = _home(reply[2], reply[3])
        initiator_info = _info(reply[5]) if initiator_home is not None else b""
        return Answered(offer_id, _text(reply[1]), initiator_home, _int(rid) if rid else None, initiator_info,
                        _info(reply[6]), _key(reply[7]), _key(reply[8]))

    async def expire_offer(self, offer_id: str, now: float) -> Ended | None:
        ended = _ended(await self._run("expire_offer", now, offer_id))
        return ended[0] if ended else None

    def next_deadline(self) -> float | None:
        return None  # retention is Redis's TTLs (and a lazy check of the caller's clock)

    async def tick(self, now: float, limit: int | None = None) -> bool:
        return False

    async def maintain(self, now: float, batch: int = 1000) -> tuple[tuple[Ended, ...], bool]:
        """One round: heartbeat, refresh a batch of our peers' leases, reap a batch of a dead
        instance's peers. Returns the offers the reaped peers had (to be told) and whether this
        instance was itself taken for dead (its peers must enroll again)."""
        reply = await self._run("maintain", now, self.instance, self._cursor, str(batch), link=self.housekeeping)
        if len(reply) < 3:
            raise RegistryUnavailable("malformed reply from Redis to maintain")
        before, self._cursor, reaped = _text(reply[0]), _text(reply[1]), _text(reply[2])
        ended = _ended(reply[3:])
        registry_now = now + self.clock_offset
        lost = self._beaten and (before == "" or float(before) < registry_now - self.dead_after)
        self._beaten = True
        if reaped:
            self.stats["reaped"] += 1
            log.info("instance %s stopped heartbeating: its peers go offline", cut(reaped))
        return ended, lost

    async def first_use(self, token: bytes, ttl: float, now: float) -> bool | None:
        # SET NX: atomic across every instance and process on this Redis; the expiry bounds what
        # the proofs of the last minute can hold
        try:
            reply = await self.link.call("SET", f"{self.prefix}np:{token.hex()}", "1", "NX", "PX",
                                         str(max(int(ttl * 1000), 1)))
        except (LinkDown, ReplyError) as exc:
            raise self._unavailable(exc) from None
        return reply is not None

    def _unavailable(self, exc: Exception) -> RegistryUnavailable:
        """A failed Redis call, counted, as the one error the server handles."""
        self.stats["registry_errors"] += 1
        return RegistryUnavailable(f"Redis: {str(exc)[:160]}")

    async def counts(self) -> dict[str, int]:
        reply = await self._run("counts", 0.0)
        return {"peers": _int(reply[0]), "offline": _int(reply[1]), "instances": _int(reply[2])}

    # -- notices between instances --
    async def publish(self, notes: list[tuple[str, bytes]]) -> None:
        """Append (instance, packed notice) pairs to those instances' streams, in one write. A
        stream holds at most STREAM_MAX notices (its reader trims what it has read; this bounds
        the stream of an instance that stopped reading)."""
        commands = [("XADD", self.notice_stream(instance), "MAXLEN", "~", STREAM_MAX, "*", "n", data)
                    for instance, data in notes]
        try:
            replies = await self.link.calls(commands)
        except LinkDown as exc:
            raise RegistryUnavailable(f"Redis: {str(exc)[:160]}") from None
        failed = [r for r in replies if isinstance(r, ReplyError)]
        if failed:
            raise RegistryUnavailable(f"Redis refused {len(failed)} notices: {str(failed[0])[:120]}")

    async def serve_notices(self, deliver: Callable[[bytes], None], *,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hand every notice appended to this instance's stream to `deliver`, forever, in order.

        The stream is read on a connection of its own (XREAD BLOCK holds it) from the last ID
        read, so a notice appended while that connection is down is read once it is back: losing
        the connection delays notices, it does not lose them. Read notices are trimmed away.
        `task_status.started()` once the starting point is fixed (notices from then on are read)."""
        started = False
        wait = BACKOFF[0]
        last: bytes | None = None  # the last ID read; None: not known yet
        while True:
            try:
                # XREAD BLOCK holds its connection up to NOTICE_BLOCK_MS: a stall is that and more
                async with open_redis_link(self.link.url, name=f"nattrav-notices-{self.instance}",
                                           stall_timeout=NOTICE_BLOCK_MS / 1000 + self.op_timeout) as sub:
                    if last is None:
                        # a restarted instance of the same name skips its predecessor's notices
                        newest = await sub.call("XREVRANGE", self.stream, "+", "-", "COUNT", 1)
                        last = newest[0][0] if newest else b"0-0"
                    if not started:
                        task_status.started()
                        started = True
                    elif wait > BACKOFF[0]:
                        log.warning("notice stream of Redis is back")
                    self.stats["notice_links"] = self.stats.get("notice_links", 0) + 1
                    wait = BACKOFF[0]
                    while True:
                        # trimmed after reading; the stream outlives a dead instance by its lease
                        replies = await sub.calls([
                            ("XTRIM", self.stream, "MINID", last),
                            ("PEXPIRE", self.stream, int(self.lease * 1000)),
                            ("XREAD", "COUNT", NOTICE_READ, "BLOCK", NOTICE_BLOCK_MS, "STREAMS", self.stream, last),
                        ])
                        for r in replies:
                            if isinstance(r, ReplyError):
                                raise r
                        for entry_id, data in self._entries(replies[2]):
                            last = entry_id
                            self.stats["notices_in"] = self.stats.get("notices_in", 0) + 1
                            if data is not None:
                                deliver(data)
            except (LinkDown, ReplyError, RegistryUnavailable) as exc:
                (log.warning if wait == BACKOFF[0] else log.debug)(
                    "notice stream of Redis lost (%s); again in %.1f s", str(exc)[:160], wait)
            await trio.sleep(wait)
            wait = min(wait * 2, BACKOFF[1])

    def _entries(self, reply: Any) -> list[tuple[bytes, bytes | None]]:
        """(id, notice) pairs of an XREAD reply (a notice None: an entry of another shape)."""
        if reply is None:
            return []
        try:
            (_, entries), = reply
            out = []
            for entry_id, fields in entries:
                if not isinstance(entry_id, bytes):
                    raise TypeError
                data = fields[1] if isinstance(fields, list) and len(fields) == 2 else None
                out.append((entry_id, data if isinstance(data, bytes) else None))
            return out
        except (TypeError, ValueError):
            raise RegistryUnavailable("malformed XREAD reply from Redis") from None


@asynccontextmanager
async def open_redis_registry(url: str, *, wait: float = 10.0, **options: Any) -> AsyncIterator[RedisRegistry]:
    """A RedisRegistry on `url` (redis://HOST:PORT/DB, rediss://..., unix:///path); its first
    heartbeat must get through within `wait` seconds (a wrong URL fails here, with the reason),
    later outages are survived. `options` go to RedisRegistry; the registry's timeline is the wall
    clock (clock_offset maps trio's clock into it)."""
    check_url(url)
    options.setdefault("clock_offset", time.time() - trio.current_time())
    async with open_redis_link(url, connect_timeout=OP_TIMEOUT, stall_timeout=OP_TIMEOUT) as link, \
            open_redis_link(url, connect_timeout=OP_TIMEOUT, stall_timeout=OP_TIMEOUT) as beat:
        registry = RedisRegistry(link, housekeeping=beat, **options)
        deadline = trio.current_time() + wait
        while True:
            try:
                await registry.maintain(trio.current_time())
                break
            except RegistryUnavailable as exc:
                if trio.current_time() >= deadline:
                    raise RegistryUnavailable(f"cannot reach the registry {cut(url, 80)}: {exc}") from None
                await trio.sleep(0.2)
        yield registry
