"""The rendezvous server as a sans-IO state machine: a registry of peers (bounded per source) and the
connect/offer/accept dance (offers.py). It never touches a socket or a clock: the I/O layer
(io/rendezvous_server.py) feeds it bytes and the current time, and drains the list of actions (send
this frame on that connection, close that connection). The same object therefore serves the Trio
server, the tests and the benchmark.

The server only exchanges node information. There is no message that carries payload from one peer
to another except the size-limited node info, so it can never be used as a relay itself; when a TURN
server is configured, each enrollment hands the peer its own short-lived credentials for it.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Callable

import msgpack

from ...errors import BadFrame, LocalProtocolError
from ..schema import cut
from ..timers import Timers
from .clock import reported_rtt, start_margin
from .offers import Offers
from .records import Close, Send, _Conn, _hash_secret, _Offer, _Peer, source_key
from .wire import CLIENT_MESSAGES, MAX_MESSAGE, NAME_RE, SECRET_MAX, SECRET_MIN, ErrorCode, FrameDecoder, make


class RendezvousServer(Offers):
    """Registry of peers and the connect/offer/accept dance, driven by the I/O layer.

    Call connection_made / receive_data / connection_lost / tick with the current time, then take the
    resulting actions with ``actions()``. ``next_deadline()`` says when tick() next has work to do.

    What one source (an IPv4 address or IPv6 /64) can hold is bounded: ``max_conns_per_source``
    connections, ``max_peers_per_source`` registered peers (its own oldest disconnected peer makes
    room first), and ``max_offers_per_source`` of a target's ``max_offers_per_peer`` pending-offer
    slots, one per initiator; a full registry forgets its oldest disconnected peer before it says busy.
    """

    def __init__(
        self, *,
        # seconds
        keepalive: float = 15.0, keepalive_timeout: float = 45.0, retain: float = 300.0,
        enroll_timeout: float = 10.0, offer_timeout: float = 10.0, max_offer_timeout: float = 60.0,
        start_margin: float = 0.5, min_start_margin: float = 0.02, start_margin_factor: float = 1.0,
        max_start_margin: float = 2.0,
        # what the registry and one source may hold
        max_peers: int = 100_000, max_peers_per_source: int = 256, max_conns_per_source: int = 128,
        max_offers_per_peer: int = 16, max_offers_per_source: int = 2,
        # randomness (tests pass deterministic ones)
        token: Callable[[int], str] = secrets.token_urlsafe, key: Callable[[int], bytes] = secrets.token_bytes,
        # a relay grant (TURN credentials, proto/turn_rest.py) for a peer ID, sent with its enrollment;
        # the I/O layer supplies it (it reads the wall clock the credentials' expiry is written in)
        relay: Callable[[str], dict] | None = None,
    ):
        limits = dict(max_peers=max_peers, max_peers_per_source=max_peers_per_source,
                      max_conns_per_source=max_conns_per_source, max_offers_per_peer=max_offers_per_peer,
                      max_offers_per_source=max_offers_per_source)
        for name, value in limits.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.retain = retain
        self.enroll_timeout = enroll_timeout
        self.offer_timeout = offer_timeout
        self.max_offer_timeout = max_offer_timeout
        # start = accept + margin: start_margin_factor x the larger of the two peers' round trips to
        # us (as their node info says), within [min_start_margin, max_start_margin]; start_margin
        # when either peer did not say (an older client)
        self.start_margin = start_margin
        self.min_start_margin = min_start_margin
        self.start_margin_factor = start_margin_factor
        self.max_start_margin = max_start_margin
        self.max_peers = max_peers
        self.max_peers_per_source = max_peers_per_source
        self.max_conns_per_source = max_conns_per_source
        self.max_offers_per_peer = max_offers_per_peer
        self.max_offers_per_source = max_offers_per_source
        self._token = token
        self._key = key
        self._relay = relay
        self.peers: dict[str, _Peer] = {}
        self.conns: dict[int, _Conn] = {}
        self.offers: dict[str, _Offer] = {}
        self._out: list[Send | Close] = []
        # one deadline per connection (enroll), per peer (keepalive, then expiry) and per offer
        self._timers = Timers()
        self._conns_of: dict[str, int] = {}  # source -> open connections
        self._peers_of: dict[str, dict[str, None]] = {}  # source -> its peer ids, oldest first
        self._offline: dict[str, None] = {}  # disconnected peer ids, longest offline first
        self.stats = {"enrolled": 0, "sessions": 0, "bad_frames": 0, "expired": 0, "evicted": 0,
                      "refused": 0}

    # -- outputs --
    def actions(self) -> list[Send | Close]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def _send(self, conn: int | None, kind: str, **fields: Any) -> None:
        if conn is not None and conn in self.conns:
            self._out.append(Send(conn, make(kind, **fields)))

    def _error(self, conn: int, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        self._send(conn, "error", id=request_id, code=code.value, message=message)

    def _close(self, conn: int, reason: str, now: float) -> None:
        if conn in self.conns:
            self._out.append(Close(conn, reason))
            self.connection_lost(conn, now)

    # -- inputs --
    def connection_made(self, conn: int, addr: tuple | list, now: float) -> None:
        if conn in self.conns:
            raise LocalProtocolError(f"connection {conn} already open")
        source = source_key(addr)
        self.conns[conn] = _Conn(list(addr[:2]), source, FrameDecoder(CLIENT_MESSAGES))
        count = self._conns_of[source] = self._conns_of.get(source, 0) + 1
        if count > self.max_conns_per_source:
            self.stats["refused"] += 1
            self._error(conn, ErrorCode.BUSY,
                        f"too many connections from {source} (at most {self.max_conns_per_source})")
            self._close(conn, "too many connections from one source", now)
            return
        self._timers.set(("conn", conn), now + self.enroll_timeout)

    def connection_lost(self, conn: int, now: float) -> None:
        c = self.conns.pop(conn, None)
        if c is None:
            return
        self._timers.cancel(("conn", conn))
        left = self._conns_of[c.source] - 1
        if left:
            self._conns_of[c.source] = left
        else:
            del self._conns_of[c.source]
        if c.peer is None:
            return
        peer = self.peers.get(c.peer)
        if peer is not None and peer.conn == conn:
            self._go_offline(peer, now, "the peer disconnected")

    def receive_data(self, conn: int, data: bytes, now: float) -> None:
        c = self.conns.get(conn)
        if c is None:
            raise LocalProtocolError(f"data for unknown connection {conn}")
        try:
            c.decoder.feed(data)
        except BadFrame as exc:
            self._bad_frame(conn, c, exc, now)
            return
        while conn in self.conns:
            try:
                msg = c.decoder.next_message()
            except BadFrame as exc:
                self._bad_frame(conn, c, exc, now)
                if c.decoder.broken:
                    return
                continue
            if msg is None:
                return
            self._handle(conn, c, msg, now)

    def _bad_frame(self, conn: int, c: _Conn, exc: BadFrame, now: float) -> None:
        self.stats["bad_frames"] += 1
        self._error(conn, ErrorCode.BAD_FRAME, str(exc))
        if c.decoder.broken:
            self._close(conn, f"bad frame: {exc}", now)

    def tick(self, now: float, limit: int | None = None) -> bool:
        """Fire the deadlines due at `now`, at most `limit` of them; True when more are due.

        A limit lets the I/O layer serve other connections between batches: a thousand slowloris
        connections opened together all reach their enroll timeout in the same instant."""
        fired = 0
        while (due := self._timers.pop_due(now)) is not None:
            fired += 1
            kind, key = due
            if kind == "conn":
                c = self.conns.get(key)
                if c is not None and c.peer is None:
                    self._error(key, ErrorCode.TIMEOUT, "no enroll in time")
                    self._close(key, "no enroll in time", now)
            elif kind == "peer":
                peer = self.peers.get(key)
                if peer is None:
                    continue
                if peer.conn is None:
                    self._forget(peer)  # its retention is over
                    self.stats["expired"] += 1
                elif peer.last_seen + self.keepalive_timeout <= now:
                    conn = peer.conn
                    self._error(conn, ErrorCode.TIMEOUT, "keepalive timeout")
                    self._close(conn, "keepalive timeout", now)
                else:  # heard from since: check again when its silence could be long enough
                    self._timers.set(due, peer.last_seen + self.keepalive_timeout)
            elif kind == "offer":
                offer = self.offers.get(key)
                if offer is not None:
                    self._end_offer(offer, ErrorCode.TIMEOUT, f"{offer.target} did not answer in time")
            if limit is not None and fired >= limit:
                deadline = self._timers.next_deadline()
                return deadline is not None and deadline <= now
        return False

    # -- handlers --
    def _handle(self, conn: int, c: _Conn, msg: dict, now: float) -> None:
        kind = msg["t"]
        rid = msg.get("id")
        if kind == "enroll":
            self._enroll(conn, c, msg, rid, now)
            return
        if c.peer is None:
            self._error(conn, ErrorCode.BAD_REQUEST, f"{kind} before enroll", rid)
            return
        peer = self.peers[c.peer]
        peer.last_seen = now
        if kind == "ping":
            self._send(conn, "pong", id=rid, now=now)
        elif kind == "info":
            peer.info = self._public_info(msg["info"], peer.observed)
            peer.rtt = reported_rtt(msg["info"])
            self._send(conn, "ok", id=rid)
        elif kind == "connect":
            self._connect(conn, peer, msg, rid, now)
        elif kind in ("accept", "refuse"):
            self._answer(conn, peer, msg, rid, now)

    @staticmethod
    def _public_info(info: dict | None, observed: list) -> bytes:
        # The server's own observation wins over anything the peer wrote under that key.
        out = dict(info or {})
        out["observed"] = list(observed)
        return msgpack.packb(out, use_bin_type=True)

    def _enroll(self, conn: int, c: _Conn, msg: dict, rid: int | None, now: float) -> None:
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
        existing = self.peers.get(name) if name is not None else None
        if existing is not None:
            if secret is None or not hmac.compare_digest(existing.secret_hash, _hash_secret(secret)):
                self._error(conn, ErrorCode.NAME_TAKEN, f"{cut(name)} belongs to another peer", rid)
                return
            if existing.source != c.source:
                refusal = self._make_room(c.source, new_peer=False)
                if refusal is not None:
                    self._error(conn, ErrorCode.BUSY, refusal, rid)
                    return
                self._unregister(existing)
                existing.source = c.source
                self._peers_of.setdefault(c.source, {})[existing.peer_id] = None
            # Ownership proven: this connection replaces the old one; what the old one had pending
            # cannot be answered on this connection, so it ends.
            for offer_id in list(existing.offers):
                offer = self.offers.get(offer_id)
                if offer is not None:
                    self._end_offer(offer, ErrorCode.OFFLINE, f"{existing.peer_id} enrolled again")
            if existing.conn is not None and existing.conn != conn:
                old = existing.conn
                existing.conn = None
                self._error(old, ErrorCode.NAME_TAKEN, "the same peer enrolled again elsewhere")
                self._close(old, "replaced by a new enrollment", now)
            peer = existing
            peer.offline_since = None
            self._offline.pop(peer.peer_id, None)
        else:
            refusal = self._make_room(c.source, new_peer=True)
            if refusal is not None:
                self._error(conn, ErrorCode.BUSY, refusal, rid)
                return
            peer_id = name
            # minted IDs follow the names' rule: an ID is typed after `-d` on a command line, and one
            # starting with "-" (1 in 64 of token_urlsafe's) would read as an option
            while peer_id is None or peer_id in self.peers or not NAME_RE.match(peer_id):
                peer_id = self._token(16)
            secret = secret if secret is not None else self._token(24)
            peer = _Peer(peer_id, _hash_secret(secret), b"", c.addr, c.source, None, now)
            self.peers[peer_id] = peer
            self._peers_of.setdefault(c.source, {})[peer_id] = None
        peer.conn = conn
        peer.last_seen = now
        peer.observed = c.addr
        peer.info = self._public_info(msg.get("info"), c.addr)
        peer.rtt = reported_rtt(msg.get("info"))
        c.peer = peer.peer_id
        self.stats["enrolled"] += 1
        self._timers.cancel(("conn", conn))
        self._timers.set(("peer", peer.peer_id), now + self.keepalive_timeout)
        relay = self._relay(peer.peer_id) if self._relay is not None else None
        self._send(conn, "enrolled", id=rid, peer=peer.peer_id, secret=secret, keepalive=self.keepalive,
                   now=now, observed=list(c.addr), relay=relay)

    def _make_room(self, source: str, *, new_peer: bool) -> str | None:
        """Make room for one more peer of `source` by forgetting disconnected ones (the source's own
        first, then the longest offline); the reason to refuse when only online peers are left."""
        mine = self._peers_of.get(source, {})
        if len(mine) >= self.max_peers_per_source:
            victim = next((pid for pid in mine if self.peers[pid].conn is None), None)
            if victim is None:
                return f"too many peers from {source} (at most {self.max_peers_per_source})"
            self._forget(self.peers[victim])
            self.stats["evicted"] += 1
        if new_peer and len(self.peers) >= self.max_peers:
            if not self._offline:
                return "too many peers"
            self._forget(self.peers[next(iter(self._offline))])
            self.stats["evicted"] += 1
        return None

    def _go_offline(self, peer: _Peer, now: float, why: str) -> None:
        peer.conn = None
        peer.offline_since = now
        self._offline[peer.peer_id] = None
        self._timers.set(("peer", peer.peer_id), now + self.retain)
        for offer_id in list(peer.offers):
            offer = self.offers.get(offer_id)
            if offer is not None:
                self._end_offer(offer, ErrorCode.OFFLINE, f"{peer.peer_id}: {why}")

    def _unregister(self, peer: _Peer) -> None:
        mine = self._peers_of.get(peer.source)
        if mine is not None:
            mine.pop(peer.peer_id, None)
            if not mine:
                del self._peers_of[peer.source]

    def _forget(self, peer: _Peer) -> None:
        """Drop a disconnected peer from the registry (its name is free again)."""
        del self.peers[peer.peer_id]
        self._offline.pop(peer.peer_id, None)
        self._timers.cancel(("peer", peer.peer_id))
        self._unregister(peer)

    def margin_for(self, *peers: _Peer) -> float:
        """Seconds from an accept to the agreed start for a session of `peers`."""
        return start_margin((p.rtt for p in peers), default=self.start_margin, floor=self.min_start_margin,
                            factor=self.start_margin_factor, ceiling=self.max_start_margin)

    # -- introspection for the I/O layer and tests --
    def online(self) -> list[str]:
        return [p.peer_id for p in self.peers.values() if p.conn is not None]
