"""The rendezvous server as a sans-IO state machine: the front of one server instance (its
connections, frames, keepalives, per-source connection caps and offer deadlines) over a registry of
peers and offers (registry.py) that is either this process's own (memory.py, the default) or shared
by several instances (io/redis_registry.py). It never touches a socket or a clock: the I/O layer
(io/rendezvous_server.py) feeds it bytes and the current time, and drains the list of actions (send
this frame on that connection, close that connection, relay this notice to that instance).

Two ways to drive it. The async methods (areceive_data, aconnection_lost, atick) await the
registry and serve any registry. The synchronous ones (receive_data, connection_lost, tick) run the
same coroutines inline, which works because the in-memory registry never suspends: the tests, the
fuzzer and the benchmark drive it like that, with no event loop at all.

The server only exchanges node information. There is no message that carries payload from one peer
to another except the size-limited node info, so it can never be used as a relay itself; when a TURN
server is configured, each enrollment hands the peer its own short-lived credentials for it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Any, Callable, Coroutine

import msgpack

from ...errors import BadFrame, LocalProtocolError, RegistryUnavailable, WrongPeer
from ..schema import cut
from ..timers import Timers
from ..vocab import Role
from .clock import reported_rtt, start_margin
from .memory import MemoryRegistry, check_limits
from .notices import notice
from .held import RESAMPLE_AFTER, TAKES_RESAMPLE, HoldBook, fresh_wanted
from ..planner.horizon import AGE, HELD
from .beacon import (SECRET_BYTES as BEACON_SECRET_BYTES, BadBeacon, BeaconBook, Expected, add_to_packed_map,
                     strip_server_keys)
from .observe import KEY_BYTES as OBSERVE_KEY_BYTES, BadTicket, _norm_ip, check_ticket, note_observed
from .names import CHALLENGE_BYTES, NameBindings, verify_enroll
from .timed_proof import WINDOW, audience, check_timed, guard_ttl, replay_token
from .records import Close, Relay, Send, _Conn, source_key
from .registry import Answered, Ended, Home, Refusal, Registry
from .wire import (
    CLIENT_MESSAGES, KEY_BYTES, MAX_MESSAGE, NAME_RE, SECRET_MAX, SECRET_MIN, ErrorCode, FrameDecoder, Packed,
    make,
)


MAX_OWED = 100_000  # offline reports kept for a registry that is away
# An accept that says a beacon is on its way (beacon.py) holds the session this long for it: the
# beacon left with the accept, so only jitter and one retransmission (20 ms later) separate them
BEACON_HOLD = 0.06
# then the listener is asked for STUN samples (a round trip of its own to its STUN server): the
# session waits this long for them before it ends (a listener that never sends them is broken)
SAMPLES_WAIT = 5.0
# a connect held past RESAMPLE_AFTER (held.py) asks the initiator for fresh samples at the accept: one
# round trip to it and one of its own to its STUN server, and, for a counter near its block's top,
# the crossing's batches (api/block_edge.py: up to ~5 more round trips; over wan50 one took 1.06 s,
# past the 1 s this was, and the session started on the old samples: a miss in 16,000). Past this
# wait the session goes on with the samples it connected with (and the whole hold in HELD, as
# before): a slow or silent initiator costs the session this much, never the session itself
INITIATOR_WAIT = 2.0


@dataclass(slots=True)
class _Held:
    """A session accepted but not started: waiting for the listener's beacon, then its samples."""

    conn: int
    peer: str
    got: Answered
    rid: int | None
    stage: str = "beacon"  # then "samples" (resample asked); "initiator": the initiator's samples first
    late: bool = False  # the initiator's samples did not come in time: its session answers its connect


def run_now(coro: Coroutine) -> Any:
    """Run a coroutine that never suspends (one over the in-memory registry) to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise LocalProtocolError("the registry suspended: drive this server through its async methods "
                             "(areceive_data, aconnection_lost, atick), as io/rendezvous_server.py does")


class RendezvousServer:
    """One instance's front, driven by the I/O layer.

    Call connection_made / receive_data / connection_lost / tick (or their async twins) with the
    current time, then take the resulting actions with ``actions()``; ``deliver()`` takes a notice
    relayed from another instance. ``next_deadline()`` says when tick() next has work to do.

    A source (an IPv4 address or IPv6 /64) may hold ``max_conns_per_source`` connections; what it
    may hold in the registry is the registry's limits (memory.py). ``stun`` is the list of STUN
    servers (host, port) handed to peers in ``enrolled``, rotated per enrollment to spread them.
    """

    def __init__(
        self, *,
        registry: Registry | None = None, instance: str = "local",
        # seconds
        keepalive: float = 15.0, keepalive_timeout: float = 45.0, retain: float = 300.0,
        enroll_timeout: float = 10.0, offer_timeout: float = 10.0, max_offer_timeout: float = 60.0,
        start_margin: float = 0.5, min_start_margin: float = 0.005, start_margin_factor: float = 0.5,
        max_start_margin: float = 2.0,
        # what one source may hold (the registry's limits go to the in-memory registry it builds)
        max_conns_per_source: int = 128, max_peers: int = 100_000, max_peers_per_source: int = 256,
        max_offers_per_peer: int = 16, max_offers_per_source: int = 2,
        stun: list[tuple[str, int]] | None = None,
        # randomness (tests pass deterministic ones)
        token: Callable[[int], str] = secrets.token_urlsafe, key: Callable[[int], bytes] = secrets.token_bytes,
        # which key holds which name (names.py); the I/O layer passes one that persists
        names: NameBindings | None = None,
        # a relay grant (TURN credentials, proto/turn_rest.py) for a peer ID, sent with its enrollment;
        # the I/O layer supplies it (it reads the wall clock the credentials' expiry is written in)
        relay: Callable[[str], dict] | None = None,
        observe_key: bytes | None = None,
        # the wall clock (Unix seconds) timed enroll proofs are checked against (timed_proof.py); the
        # I/O layer passes time.time. None: every timed proof is answered with a challenge
        wall_clock: Callable[[], float] | None = None, proof_window: float = WINDOW,
        # the UDP port beacons reach (beacon.py); the I/O layer sets it once it is bound (None: no
        # beacons offered, listeners sample through STUN before they accept, as before)
        beacon_port: int | None = None, beacon_hold: float = BEACON_HOLD, samples_wait: float = SAMPLES_WAIT,
        # a connect held longer than this at the accept asks its initiator for fresh samples (held.py;
        # None: never), waiting initiator_wait for them
        resample_after: float | None = RESAMPLE_AFTER, initiator_wait: float = INITIATOR_WAIT,
    ):
        check_limits(max_conns_per_source=max_conns_per_source)
        if registry is None:
            registry = MemoryRegistry(retain=retain, max_peers=max_peers, max_peers_per_source=max_peers_per_source,
                                      max_offers_per_peer=max_offers_per_peer,
                                      max_offers_per_source=max_offers_per_source, token=token)
        self.registry = registry
        self.instance = instance
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.enroll_timeout = enroll_timeout
        self.offer_timeout = offer_timeout
        self.max_offer_timeout = max_offer_timeout
        # start = accept + margin: start_margin_factor x the larger of the two peers' round trips to
        # us (as their node info says) + clock.START_SLACK, within [min_start_margin,
        # max_start_margin]; start_margin when either peer did not say (an older client)
        self.start_margin = start_margin
        self.min_start_margin = min_start_margin
        self.start_margin_factor = start_margin_factor
        self.max_start_margin = max_start_margin
        self.max_conns_per_source = max_conns_per_source
        self.stun = [[str(h), int(p)] for h, p in stun] if stun else None
        self._stun_turn = 0
        self._key = key
        # the MAC key of observation tickets: io/observe_udp.py answers with it at the rendezvous
        # port (UDP), this front checks the tickets its peers hand back (observe.py)
        self.observe_key = observe_key if observe_key is not None else secrets.token_bytes(OBSERVE_KEY_BYTES)
        # the tickets' clock minus `now`'s: the I/O layer mints tickets in a clock every process of
        # an instance shares (several processes may serve one port, and any may mint a ticket that
        # another checks), while `now` may be a clock of this process only
        self.ticket_clock_offset = 0.0
        self.names = names if names is not None else NameBindings()
        self.wall_clock = wall_clock
        self.proof_window = proof_window
        self._relay = relay
        self.beacon_port = beacon_port
        self.beacon_hold = beacon_hold
        self.samples_wait = samples_wait
        self.resample_after = resample_after
        self.initiator_wait = initiator_wait
        self._held: dict[str, _Held] = {}  # offer id -> its session waiting for fresh samples
        self.conns: dict[int, _Conn] = {}
        self._out: list[Send | Close | Relay] = []
        # one deadline per connection (enroll, then keepalive) and per offer one of our peers made
        self._timers = Timers()
        self._conns_of: dict[str, int] = {}  # source -> open connections
        # peers whose going offline the registry could not take (it was unreachable): told later
        self._owed: dict[str, int] = {}
        self.stats = registry.stats
        for name in ("enrolled", "sessions", "bad_frames", "refused", "relayed", "observed", "timed_enrolls",
                     "timed_fallbacks", "beacon_fallbacks", "initiator_resamples", "initiator_timeouts"):
            self.stats.setdefault(name, 0)
        self.beacons = BeaconBook(stats=self.stats)
        self.holds = HoldBook()  # when each offer delivered here arrived (held.py)

    # -- the in-memory registry's tables (tests, stats) --
    @property
    def peers(self) -> dict:
        return self.registry.peers

    @property
    def offers(self) -> dict:
        return self.registry.offers

    def online(self) -> list[str]:
        """Peers connected to this instance."""
        return [c.peer for c in self.conns.values() if c.peer is not None]

    # -- outputs --
    def actions(self) -> list[Send | Close | Relay]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        mine, theirs = self._timers.next_deadline(), self.registry.next_deadline()
        if mine is None or theirs is None:
            return theirs if mine is None else mine
        return min(mine, theirs)

    def _send(self, conn: int | None, kind: str, **fields: Any) -> None:
        if conn is not None and conn in self.conns:
            self._out.append(Send(conn, make(kind, **fields)))

    def _error(self, conn: int, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        self._send(conn, "error", id=request_id, code=code.value, message=message)

    def _home(self, conn: int) -> Home:
        return Home(self.instance, conn)

    # -- notices: to a peer here, or relayed to its instance --
    def _notify(self, home: Home | None, note: dict, now: float) -> None:
        if home is None:
            return
        if home.instance == self.instance:
            self.deliver(note, now)
        else:
            self.stats["relayed"] += 1
            self._out.append(Relay(home.instance, note))

    def deliver(self, note: dict, now: float) -> None:
        """Turn a notice for one of this instance's connections into its frame (or its close)."""
        kind = note["t"]
        if "ends" in note:
            self._timers.cancel(("offer", note["ends"]))
        elif kind == "session":
            self._timers.cancel(("offer", note["session"]))
        conn = note["conn"]
        c = self.conns.get(conn)
        if c is None or c.peer != note["to"]:
            return  # that connection ended, or is someone else's now
        if kind == "offer":
            info = note["info"]
            self.holds.offered(note["offer"], now, now + note["expires_in"])
            if self.beacon_port is not None:
                # the listener may answer with a beacon (beacon.py): a secret for this offer only,
                # in the offer only (the initiator's info never reaches the initiator back)
                secret = self._key(BEACON_SECRET_BYTES)
                self.beacons.expect(note["offer"], conn, note["to"], secret, now + note["expires_in"], now)
                info = Packed(add_to_packed_map(add_to_packed_map(info.data, "beacon_key", secret),
                                                "beacon_port", self.beacon_port))
            self._send(conn, "offer", offer=note["offer"], **{"from": note["from"]}, info=info,
                       expires=now + note["expires_in"], from_key=note.get("from_key"))
        elif kind == "session":
            self._send(conn, "session", id=note.get("id"), session=note["session"], key=note["key"],
                       start_at=now + note["start_in"], now=now, peer=note["peer"], info=note["info"],
                       role=note["role"], peer_key=note.get("peer_key"))
        elif kind == "error":
            self._error(conn, ErrorCode(note["code"]), note["message"], note.get("id"))
        elif kind == "cancel":
            self.holds.forget(note["offer"])
            self._send(conn, "cancel", offer=note["offer"], code=note["code"], message=note["message"])
        elif kind == "evict":
            # the registry already moved the peer to its new connection: this one just ends
            self._error(conn, ErrorCode.NAME_TAKEN, "the same peer enrolled again elsewhere")
            c.peer = None
            self._out.append(Close(conn, "replaced by a new enrollment"))
            self._forget_conn(conn)

    def _tell_ended(self, ended: Ended, code: ErrorCode, message: str, now: float) -> None:
        self._timers.cancel(("offer", ended.offer_id))
        message = message[:MAX_MESSAGE]
        if ended.initiator_home is not None:
            self._notify(ended.initiator_home, notice("error", ended.initiator, ended.initiator_home.conn,
                                                      id=ended.request_id, code=code.value, message=message,
                                                      ends=ended.offer_id), now)
        if ended.target_home is not None:
            self._notify(ended.target_home, notice("cancel", ended.target, ended.target_home.conn,
                                                   offer=ended.offer_id, code=code.value, message=message), now)

    # -- inputs --
    def connection_made(self, conn: int, addr: tuple | list, now: float, local: tuple | None = None) -> None:
        """`local`: the (ip, port) the connection reached on this side, which a timed enroll proof
        must name (None: every timed proof on it is answered with a challenge)."""
        if conn in self.conns:
            raise LocalProtocolError(f"connection {conn} already open")
        source = source_key(addr)
        self.conns[conn] = _Conn(list(addr[:2]), source, FrameDecoder(CLIENT_MESSAGES), last_seen=now,
                                 local=local)
        count = self._conns_of[source] = self._conns_of.get(source, 0) + 1
        if count > self.max_conns_per_source:
            self.stats["refused"] += 1
            self._error(conn, ErrorCode.BUSY,
                        f"too many connections from {source} (at most {self.max_conns_per_source})")
            self._out.append(Close(conn, "too many connections from one source"))
            self._forget_conn(conn)
            return
        self._timers.set(("conn", conn), now + self.enroll_timeout)

    def receive_data(self, conn: int, data: bytes, now: float, limit: int | None = None) -> bool:
        return run_now(self.areceive_data(conn, data, now, limit))

    def connection_lost(self, conn: int, now: float) -> None:
        run_now(self.aconnection_lost(conn, now))

    def tick(self, now: float, limit: int | None = None) -> bool:
        """Fire the deadlines due at `now`, at most `limit` of them; True when more are due.

        A limit lets the I/O layer serve other connections between batches: a thousand slowloris
        connections opened together all reach their enroll timeout in the same instant."""
        return run_now(self.atick(now, limit))

    def _forget_conn(self, conn: int):
        c = self.conns.pop(conn, None)
        if c is None:
            return None
        self._timers.cancel(("conn", conn))
        left = self._conns_of[c.source] - 1
        if left:
            self._conns_of[c.source] = left
        else:
            del self._conns_of[c.source]
        return c

    async def aconnection_lost(self, conn: int, now: float) -> None:
        self._drop_held(conn, now)
        c = self._forget_conn(conn)
        if c is not None and c.peer is not None:
            await self._offline(c.peer, conn, now)

    async def _offline(self, peer_id: str, conn: int, now: float) -> None:
        try:
            ended = await self.registry.offline(peer_id, self._home(conn), now)
        except RegistryUnavailable:
            self._owe(peer_id, conn)
            return
        for e in ended:
            self._tell_ended(e, ErrorCode.OFFLINE, f"{peer_id}: the peer disconnected", now)

    def _owe(self, peer_id: str, conn: int) -> None:
        # bounded: a registry that stays away long enough lets the oldest go (their leases expire)
        self._owed[peer_id] = conn
        if len(self._owed) > MAX_OWED:
            self._owed.pop(next(iter(self._owed)))

    async def amaintain(self, now: float, batch: int = 256) -> None:
        """The registry's housekeeping (io/ calls it every second or so; RegistryUnavailable when
        the registry cannot be reached). Tells whom the offers of reaped peers concern, retries the
        offline reports the registry missed, and, if the registry took this instance for dead (or
        lost its data), ends every enrolled connection here: those peers enroll again by themselves."""
        ended, lost = await self.registry.maintain(now)
        for e in ended:
            self._tell_ended(e, ErrorCode.OFFLINE, "a peer's server instance stopped", now)
        if lost:
            self._owed.clear()
            for conn, c in list(self.conns.items()):
                if c.peer is not None:
                    c.peer = None  # the registry no longer has it here: nothing to take offline
                    self._error(conn, ErrorCode.BUSY, "this server lost its registry entries: enroll again")
                    await self._close(conn, "registry entries lost", now)
            return
        for peer_id in list(self._owed)[:batch]:
            conn = self._owed.pop(peer_id)
            await self._offline(peer_id, conn, now)

    async def _close(self, conn: int, reason: str, now: float) -> None:
        if conn in self.conns:
            self._out.append(Close(conn, reason))
            await self.aconnection_lost(conn, now)

    async def areceive_data(self, conn: int, data: bytes, now: float, limit: int | None = None) -> bool:
        """Take bytes from a connection and handle the frames they complete, at most `limit` of them.
        True when it stopped at the limit (frames may be waiting): the I/O layer lets the other
        connections have a turn, then calls aprocess_more. A peer pipelining thousands of small
        frames in one read must not make everyone else wait for all of their replies."""
        c = self.conns.get(conn)
        if c is None:
            raise LocalProtocolError(f"data for unknown connection {conn}")
        try:
            c.decoder.feed(data)
        except BadFrame as exc:
            await self._bad_frame(conn, c, exc, now)
            return False
        return await self._handle_frames(conn, c, now, limit)

    async def aprocess_more(self, conn: int, now: float, limit: int | None = None) -> bool:
        """The frames areceive_data left waiting (same `limit` and answer); nothing for a closed one."""
        c = self.conns.get(conn)
        if c is None:
            return False
        return await self._handle_frames(conn, c, now, limit)

    def process_more(self, conn: int, now: float, limit: int | None = None) -> bool:
        return run_now(self.aprocess_more(conn, now, limit))

    async def _handle_frames(self, conn: int, c: _Conn, now: float, limit: int | None) -> bool:
        handled = 0
        while conn in self.conns:
            if limit is not None and handled >= limit:
                return True
            handled += 1
            try:
                msg = c.decoder.next_message()
            except BadFrame as exc:
                await self._bad_frame(conn, c, exc, now)
                continue
            if msg is None:
                return False
            await self._handle(conn, c, msg, now)
        return False

    async def _bad_frame(self, conn: int, c: _Conn, exc: BadFrame, now: float) -> None:
        self.stats["bad_frames"] += 1
        self._error(conn, ErrorCode.BAD_FRAME, str(exc))
        # A desynchronised stream cannot go on; nor does a connection that has not enrolled: it has
        # nothing to lose, and garbage senders are best made cheap (one reply, then gone).
        if c.decoder.broken or c.peer is None:
            why = "bad frame" if c.decoder.broken else "bad frame before enroll"
            await self._close(conn, f"{why}: {exc}", now)

    async def atick(self, now: float, limit: int | None = None) -> bool:
        fired = 0
        while (due := self._timers.pop_due(now)) is not None:
            fired += 1
            kind, key = due
            if kind == "conn":  # a connection's enroll deadline, then its keepalive
                c = self.conns.get(key)
                if c is None:
                    continue
                if c.peer is None:
                    self._error(key, ErrorCode.TIMEOUT, "no enroll in time")
                    await self._close(key, "no enroll in time", now)
                elif c.last_seen + self.keepalive_timeout <= now:
                    self._error(key, ErrorCode.TIMEOUT, "keepalive timeout")
                    await self._close(key, "keepalive timeout", now)
                else:  # heard from since: check again when its silence could be long enough
                    self._timers.set(due, c.last_seen + self.keepalive_timeout)
            elif kind == "beacon":
                self._held_timeout(key, now)
            elif kind == "offer":
                try:
                    ended = await self.registry.expire_offer(key, now)
                except RegistryUnavailable:
                    # again in a second: the initiator must hear the timeout (a raw client has no
                    # guard of its own); bounded, as the registry forgets the offer a minute on
                    self._timers.set(due, now + 1.0)
                    ended = None
                if ended is not None:
                    self._tell_ended(ended, ErrorCode.TIMEOUT, f"{ended.target} did not answer in time", now)
            if limit is not None and fired >= limit:
                deadline = self._timers.next_deadline()
                return deadline is not None and deadline <= now
        return await self.registry.tick(now, None if limit is None else max(limit - fired, 1))

    # -- handlers --
    async def _handle(self, conn: int, c: _Conn, msg: dict, now: float) -> None:
        try:
            await self._dispatch(conn, c, msg, now)
        except RegistryUnavailable:
            # the peer hears why and retries; the registry's adapter logs and counts the failure
            self._error(conn, ErrorCode.BUSY, "the server's registry is unreachable: try again shortly",
                        msg.get("id"))

    async def _dispatch(self, conn: int, c: _Conn, msg: dict, now: float) -> None:
        kind = msg["t"]
        rid = msg.get("id")
        if kind == "enroll":
            await self._enroll(conn, c, msg, rid, now)
            return
        if kind == "challenge":
            c.challenge = self._key(CHALLENGE_BYTES)
            self._send(conn, "challenge", id=rid, nonce=c.challenge)
            return
        if c.peer is None:
            self._error(conn, ErrorCode.BAD_REQUEST, f"{kind} before enroll", rid)
            return
        c.last_seen = now
        if kind == "ping":
            self._send(conn, "pong", id=rid, now=now)
        elif kind == "info":
            await self.registry.publish_info(c.peer, self._home(conn), self._public_info(msg["info"], c.addr, c.udp),
                                             now)
            self._send(conn, "ok", id=rid)
        elif kind == "observe":
            # recorded on the connection; the next info it publishes carries it (a client sends its
            # observations just before its info, in the same round trip)
            try:
                seen = check_ticket(self.observe_key, msg["addr"], msg["ticket"], now + self.ticket_clock_offset)
                if msg.get("fresh"):
                    # a new punch socket: the old one's addresses would read as one socket's flows
                    # spread over a pool (planner/udp.py's _scattered)
                    c.udp.clear()
                note_observed(c.udp, seen)
            except BadTicket as exc:
                self._send(conn, "observation", id=rid, recorded=False, reason=str(exc))
                return
            self.stats["observed"] += 1
            self._send(conn, "observation", id=rid, recorded=True)
        elif kind == "connect":
            await self._connect(conn, c.peer, msg, rid, now)
        elif kind in ("accept", "refuse"):
            await self._answer(conn, c.peer, msg, rid, now)
        elif kind == "sampled":
            self._sampled(conn, c, msg, rid, now)

    @staticmethod
    def _public_info(info: dict | None, observed: list, udp: list | None = None) -> bytes:
        # The server's own observations win over anything the peer wrote under those keys: a peer's
        # "observed_udp" of its own making would name where others aim.
        out = dict(info or {})
        out["observed"] = list(observed)
        out.pop("observed_udp", None)
        strip_server_keys(out)
        if udp:
            out["observed_udp"] = [list(a) for a in udp]
        return msgpack.packb(out, use_bin_type=True)

    async def _enroll(self, conn: int, c: _Conn, msg: dict, rid: int | None, now: float) -> None:
        if c.peer is not None:
            self._error(conn, ErrorCode.BAD_REQUEST, "already enrolled on this connection", rid)
            return
        name, secret = msg.get("name"), msg.get("secret")
        if secret is not None and not SECRET_MIN <= len(secret) <= SECRET_MAX:
            self._error(conn, ErrorCode.BAD_REQUEST, f"secret must be {SECRET_MIN}..{SECRET_MAX} chars", rid)
            return
        if name is not None and not NAME_RE.match(name):
            self._error(conn, ErrorCode.BAD_REQUEST, "name must be 1..64 of [A-Za-z0-9._-]", rid)
            return
        key = msg.get("key")
        if key is not None and "at" in msg:
            # a proof the client made without asking (timed_proof.py); any doubt about it costs the
            # client one round trip, never its enrollment: it gets a challenge to sign instead
            if not await self._timed_ok(c, msg, name, now):
                self.stats["timed_fallbacks"] += 1
                c.challenge = self._key(CHALLENGE_BYTES)
                self._send(conn, "challenge", id=rid, nonce=c.challenge)
                return
            self.stats["timed_enrolls"] += 1
        elif key is not None:
            # a claim by key: the proof is this connection's, so the front checks it, not the registry
            challenge, c.challenge = c.challenge, None  # one use
            try:
                pid = verify_enroll(challenge, name if name is not None else "", key, msg["sig"])
            except WrongPeer as exc:
                self._error(conn, ErrorCode.BAD_REQUEST, f"enroll refused: {exc}", rid)
                return
            if name is None:
                self._error(conn, ErrorCode.BAD_REQUEST, f"enroll with a key names itself ({pid})", rid)
                return
        if name is not None:
            # checked before the registry takes the name: an entry made for a claimant the bindings
            # refuse would hold the name against its key's owner until its retention ends
            why = self.names.check(name, key)
            if why is not None:
                self._error(conn, ErrorCode.NAME_TAKEN, cut(why), rid)
                return
        home = self._home(conn)
        try:
            got = await self.registry.enroll(home, c.source, c.addr, self._public_info(msg.get("info"), c.addr),
                                             name, secret, now, key=key)
        except RegistryUnavailable:
            # It may have run all the same (a reply lost or late): the name would then stay online
            # at a connection that is not enrolled here, and without the secret it never got, its
            # owner could not take it back. Take it offline there once the registry answers (a
            # minted ID nobody knows just waits for its lease).
            if name is not None:
                self._owe(name, conn)
            raise
        if isinstance(got, Refusal):
            self._error(conn, got.code, got.message, rid)
            return
        self._owed.pop(got.peer_id, None)  # enrolled after all: nothing to take back
        for ended in got.ended:
            self._tell_ended(ended, ErrorCode.OFFLINE, f"{got.peer_id} enrolled again", now)
        if got.replaced is not None:
            self._notify(got.replaced, notice("evict", got.peer_id, got.replaced.conn), now)
        refusal = self._bind_name(name, key) if key is not None else None
        if conn not in self.conns or refusal is not None:  # the connection ended while the registry was asked
            if refusal is not None:
                self._error(conn, refusal.code, refusal.message, rid)
            await self._offline(got.peer_id, conn, now)
            return
        c.peer = got.peer_id
        c.last_seen = now
        self.stats["enrolled"] += 1
        self._timers.set(("conn", conn), now + self.keepalive_timeout)
        fields = {}
        if self.stun:
            turn = self._stun_turn = (self._stun_turn + 1) % len(self.stun)
            fields["stun"] = self.stun[turn:] + self.stun[:turn]
        if self._relay is not None:
            fields["relay"] = self._relay(got.peer_id)
        self._send(conn, "enrolled", id=rid, peer=got.peer_id, secret=got.secret, keepalive=self.keepalive,
                   now=now, observed=list(c.addr), **fields)

    async def _timed_ok(self, c: _Conn, msg: dict, name: str | None, now: float) -> bool:
        """Whether the enroll's timed proof holds: made for this address and name, within the window
        of our clock, signed by its key, and (checked last, so only proofs that verify take room)
        not seen before by anyone sharing our registry."""
        if name is None or c.local is None or self.wall_clock is None:
            return False
        wall = self.wall_clock()
        try:
            check_timed(msg["key"], msg["sig"], msg["nonce"], msg["at"], audience(*c.local[:2]), name, wall,
                        self.proof_window)
        except (WrongPeer, ValueError):
            return False
        try:
            token = replay_token(msg["key"], msg["nonce"])
            return await self.registry.first_use(token, guard_ttl(msg["at"], wall, self.proof_window), now) is True
        except RegistryUnavailable:
            return False

    def _bind_name(self, name: str, key: bytes) -> Refusal | None:
        """Bind `name` to `key` once the registry took the enrollment (its proof of ownership came
        first); None when bound, else why not (a race with another key, or the store failed)."""
        try:
            why = self.names.claim(name, key)
        except OSError as exc:
            return Refusal(ErrorCode.BUSY, f"cannot store the name binding: {exc}")
        return None if why is None else Refusal(ErrorCode.NAME_TAKEN, cut(why))

    async def _connect(self, conn: int, peer_id: str, msg: dict, rid: int | None, now: float) -> None:
        timeout = float(msg.get("timeout", self.offer_timeout))
        if not math.isfinite(timeout):
            timeout = self.offer_timeout
        timeout = min(max(timeout, 0.0), self.max_offer_timeout)
        got = await self.registry.connect(peer_id, self._home(conn), msg["target"], timeout, rid, now)
        if isinstance(got, Refusal):
            self._error(conn, got.code, got.message, rid)
            return
        self._timers.set(("offer", got.offer_id), now + got.timeout)
        self._notify(got.target_home, notice("offer", msg["target"], got.target_home.conn, offer=got.offer_id,
                                             info=Packed(got.info), expires_in=got.timeout,
                                             from_key=got.key, **{"from": peer_id}), now)

    async def _answer(self, conn: int, peer_id: str, msg: dict, rid: int | None, now: float) -> None:
        got = await self.registry.answer(peer_id, self._home(conn), msg["offer"], msg["t"] == "accept", now)
        if isinstance(got, Refusal):
            self._error(conn, got.code, got.message, rid)
            return
        self._timers.cancel(("offer", got.offer_id))
        if msg["t"] == "refuse" or got.initiator_home is None:
            self.holds.forget(got.offer_id)
        if msg["t"] == "refuse":
            if got.initiator_home is not None:
                self._notify(got.initiator_home, notice("error", got.initiator, got.initiator_home.conn,
                                                        id=got.request_id, code=ErrorCode.REFUSED.value,
                                                        message=f"{peer_id} refused", ends=got.offer_id), now)
            self._send(conn, "ok", id=rid)
            return
        if got.initiator_home is None:
            self.beacons.forget(got.offer_id)
            self._error(conn, ErrorCode.OFFLINE, f"{got.initiator} went offline", rid)
            return
        # a listener that takes a "resample" (its beacon's fallback, or its info says so) samples
        # again after the initiator's fresh samples; an older one may not (its samples would age
        # meanwhile, uncounted), so its initiator is not asked
        takes = msg.get("beacon") or _unpacked(got.info).get(TAKES_RESAMPLE) is True
        if takes and self._initiator_fresh_wanted(got, now):
            self._ask_initiator(conn, peer_id, got, rid, now)
            return
        if msg.get("beacon"):
            self._hold(conn, peer_id, got, rid, now)
            return
        self.beacons.forget(got.offer_id)
        self._session(conn, peer_id, got, rid, now)

    def _session(self, conn: int, peer_id: str, got: Answered, rid: int | None, now: float,
                 sample: tuple[str, int] | None = None) -> None:
        """Start the session. `sample`: the listener's beacon as we saw it: the initiator finds it in
        the listener's info (beside the listener's word on when it left), the listener in its frame."""
        key = self._key(KEY_BYTES)
        infos = [_unpacked(got.initiator_info), _unpacked(got.info)]
        start_in = self.margin_for(*infos)
        self.stats["sessions"] += 1
        info = got.info if sample is None else add_to_packed_map(got.info, "beacon", list(sample))
        initiator_info = got.initiator_info
        held = self.holds.take(got.offer_id, now)
        # how long we held the connect (held.py), in both sessions alike: only for peers that say
        # how old their samples are (an older client reads the plan its own way)
        if held is not None and all(AGE in i for i in infos):
            info, initiator_info = add_to_packed_map(info, HELD, held), add_to_packed_map(initiator_info, HELD, held)
        self._notify(got.initiator_home, notice("session", got.initiator, got.initiator_home.conn,
                                                id=got.request_id, session=got.offer_id, key=key,
                                                peer=peer_id, info=Packed(info), role=Role.FIRST.value,
                                                start_in=start_in, peer_key=got.key), now)
        self._send(conn, "session", id=rid, session=got.offer_id, key=key, start_at=now + start_in, now=now,
                   peer=got.initiator, info=Packed(initiator_info), role=Role.SECOND.value,
                   peer_key=got.initiator_key, **({"sample": list(sample)} if sample is not None else {}))

    # -- fresh samples: the beacon (beacon.py), else the listener's STUN samples --
    def _hold(self, conn: int, peer_id: str, got: Answered, rid: int | None, now: float) -> None:
        """An accept whose listener sent a beacon with it: the session starts on the beacon if it is
        (or once it gets) here, else on the samples we then ask the listener for."""
        entry = self.beacons.get(got.offer_id)
        held = self._held[got.offer_id] = _Held(conn, peer_id, got, rid)
        if entry is None or entry.conn != conn or entry.peer != peer_id:
            self._ask_samples(got.offer_id, held, now)  # no beacon of ours to wait for (the book let it go)
        elif entry.sample is not None:
            self._release(got.offer_id, now, entry.sample)
        else:
            self._timers.set(("beacon", got.offer_id), now + self.beacon_hold)

    def _initiator_conn(self, got: Answered) -> int | None:
        """The initiator's connection when it is one of ours (a frame to it and its answer go over
        it; across instances the notices carry no such exchange, and the session starts as before)."""
        home = got.initiator_home
        if home is None or home.instance != self.instance:
            return None
        c = self.conns.get(home.conn)
        return home.conn if c is not None and c.peer == got.initiator else None

    def _initiator_fresh_wanted(self, got: Answered, now: float) -> bool:
        if self.resample_after is None or self._initiator_conn(got) is None:
            return False
        return fresh_wanted(self.holds.peek(got.offer_id, now), _unpacked(got.initiator_info),
                            _unpacked(got.info), self.resample_after)

    def _ask_initiator(self, conn: int, peer_id: str, got: Answered, rid: int | None, now: float) -> None:
        """Hold the accepted session for the initiator's fresh samples (its connect's answer is a
        "resample"), then the listener's (_ask_samples)."""
        self._held[got.offer_id] = _Held(conn, peer_id, got, rid, stage="initiator")
        entry = self.beacons.get(got.offer_id)
        if entry is not None:
            entry.closed = True  # the listener samples again after the initiator: its beacon will be old
        self.stats["initiator_resamples"] += 1
        self._send(self._initiator_conn(got), "resample", id=got.request_id, session=got.offer_id)
        self._timers.set(("beacon", got.offer_id), now + self.initiator_wait)

    def _ask_samples(self, offer_id: str, held: _Held, now: float, fallback: bool = True) -> None:
        entry = self.beacons.get(offer_id)
        if entry is not None:
            entry.closed = True  # decided: a late beacon must not move a port the samples will show
        held.stage = "samples"
        if fallback:
            self.stats["beacon_fallbacks"] += 1
        self._send(held.conn, "resample", id=held.rid, session=offer_id)
        self._timers.set(("beacon", offer_id), now + self.samples_wait)

    def _release(self, offer_id: str, now: float, sample: tuple[str, int] | None = None,
                 got: Answered | None = None, rid: int | None = None) -> None:
        held = self._held.pop(offer_id)
        self._timers.cancel(("beacon", offer_id))
        self.beacons.forget(offer_id)
        c = self.conns.get(held.conn)
        if c is None or c.peer != held.peer:
            return  # (connection_lost already told the initiator)
        self._session(held.conn, held.peer, got or held.got, held.rid if rid is None else rid, now, sample)

    def _held_timeout(self, offer_id: str, now: float) -> None:
        held = self._held.get(offer_id)
        if held is None:
            return
        if held.stage == "beacon":
            self._ask_samples(offer_id, held, now)
            return
        if held.stage == "initiator":  # no fresh samples: its old ones, the whole hold in HELD
            self.stats["initiator_timeouts"] += 1
            held.late = True
            self._ask_samples(offer_id, held, now, fallback=False)
            return
        del self._held[offer_id]
        self.beacons.forget(offer_id)
        got = held.got
        message = f"{held.peer} sent no fresh samples in time"
        if got.initiator_home is not None:
            self._notify(got.initiator_home, notice("error", got.initiator, got.initiator_home.conn,
                                                    id=got.request_id, code=ErrorCode.TIMEOUT.value,
                                                    message=message, ends=offer_id), now)
        self._send(held.conn, "cancel", offer=offer_id, code=ErrorCode.TIMEOUT.value, message=message)

    def _drop_held(self, conn: int, now: float) -> None:
        """The listener's connection ended with sessions held: their initiators hear it. (An
        initiator's, while we wait for its fresh samples: its listener hears it.)"""
        for offer_id, held in list(self._held.items()):
            if held.stage == "initiator" and held.conn != conn and self._initiator_conn(held.got) == conn:
                del self._held[offer_id]
                self._timers.cancel(("beacon", offer_id))
                self.beacons.forget(offer_id)
                # the answer to its accept, which waits for the session
                self._error(held.conn, ErrorCode.OFFLINE, f"{held.got.initiator}: the peer disconnected", held.rid)
                continue
            if held.conn != conn:
                continue
            del self._held[offer_id]
            self._timers.cancel(("beacon", offer_id))
            self.beacons.forget(offer_id)
            got = held.got
            if got.initiator_home is not None:
                self._notify(got.initiator_home, notice("error", got.initiator, got.initiator_home.conn,
                                                        id=got.request_id, code=ErrorCode.OFFLINE.value,
                                                        message=f"{held.peer}: the peer disconnected",
                                                        ends=offer_id), now)

    def _sampled(self, conn: int, c: _Conn, msg: dict, rid: int | None, now: float) -> None:
        """The listener's STUN samples, which we asked for: the session starts on them."""
        held = self._held.get(msg["offer"])
        if held is not None and held.stage == "initiator" and conn == self._initiator_conn(held.got):
            self._initiator_sampled(held, c, msg, rid, now)
            return
        if held is not None and held.late and conn == self._initiator_conn(held.got) and rid == held.got.request_id:
            return  # too late to count: the session (on its old samples) answers this id soon
        if held is None or held.conn != conn or held.peer != c.peer or held.stage != "samples":
            self._error(conn, ErrorCode.UNKNOWN_OFFER, "no session waits for samples of that offer", rid)
            return
        got = held.got
        info = self._public_info(msg["info"], c.addr, c.udp)
        self._release(msg["offer"], now, None, Answered(got.offer_id, got.initiator, got.initiator_home,
                                                        got.request_id, got.initiator_info, info,
                                                        got.initiator_key, got.key), rid)

    def _initiator_sampled(self, held: _Held, c: _Conn, msg: dict, rid: int | None, now: float) -> None:
        """The initiator's fresh info: the session carries it, and answers this request (its connect's
        was answered by the "resample"); the hold counts from here. Then the listener's turn."""
        offer_id = held.got.offer_id
        held.got = replace(held.got, initiator_info=self._public_info(msg["info"], c.addr, c.udp), request_id=rid)
        self.holds.restart(offer_id, now)
        self._timers.cancel(("beacon", offer_id))
        self._ask_samples(offer_id, held, now, fallback=False)

    def _observed_ips(self, entry: Expected) -> set[str]:
        c = self.conns.get(entry.conn)
        if c is None or c.peer != entry.peer:
            return set()
        ips = {str(ip) for ip, _ in c.udp}
        try:
            ips.add(_norm_ip(c.addr[0]))
        except ValueError:
            pass
        return ips

    def beacon_received(self, data: bytes, source: tuple, now: float) -> bool:
        """A datagram at the beacon port (io/ calls it; nothing is ever sent back). True when it was
        a valid beacon; a held session then starts at once."""
        try:
            entry = self.beacons.take(data, source, now, self._observed_ips)
        except BadBeacon:
            return False
        held = self._held.get(entry.offer_id)
        if held is not None and held.stage == "beacon" and held.conn == entry.conn:
            self._release(entry.offer_id, now, entry.sample)
        return True

    def margin_for(self, *infos: dict) -> float:
        """Seconds from an accept to the agreed start for a session of the peers with these node
        infos (_unpacked): from the round trips they say they have to us."""
        rtts = [reported_rtt(info) for info in infos]
        return start_margin(rtts, default=self.start_margin, floor=self.min_start_margin,
                            factor=self.start_margin_factor, ceiling=self.max_start_margin)


def _unpacked(info: bytes) -> dict:
    """A packed node info as a map ({} when it is none: a missing round trip means the default
    margin). The registry keeps only the info, which the front packed itself; a registry in Redis
    checked it on the way back."""
    try:
        out = msgpack.unpackb(info, raw=False)
    except Exception:  # msgpack's many error types
        return {}
    return out if isinstance(out, dict) else {}
