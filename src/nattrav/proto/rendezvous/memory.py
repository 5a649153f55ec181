"""The in-memory registry: peers, names and pending offers of one server process, sans-IO.

The default when no shared registry is configured, and the reference the Redis registry is tested
against (the same suite runs on both). What one source (an IPv4 address or IPv6 /64) can hold is
bounded: ``max_peers_per_source`` registered peers (its own oldest disconnected peer makes room
first) and ``max_offers_per_source`` of a target's ``max_offers_per_peer`` pending-offer slots, one
per initiator; a full registry forgets its oldest disconnected peer before it says busy.

Given ``names`` (names.py's NameBindings), the registry itself keeps which key holds which name,
as the Redis registry does for all its instances: a name a key claimed is refused to any other
claimant, even after its peer is forgotten. Without it (one server process: the default) the
front's own NameBindings decides, before the registry is asked.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Callable

from ..schema import cut
from ..timers import Timers
from .names import NameBindings
from .offers import OfferBook, home_of
from .records import _Offer, _Peer, hash_secret
from .timed_proof import ReplayGuard
from .registry import Ended, Enrolled, Home, Refusal
from .wire import NAME_RE, ErrorCode

LIMITS = ("max_peers", "max_peers_per_source", "max_offers_per_peer", "max_offers_per_source")


def check_limits(**limits: int) -> None:
    for name, value in limits.items():
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class MemoryRegistry(OfferBook):
    def __init__(self, *, retain: float = 300.0, max_peers: int = 100_000, max_peers_per_source: int = 256,
                 max_offers_per_peer: int = 16, max_offers_per_source: int = 2,
                 token: Callable[[int], str] = secrets.token_urlsafe, names: NameBindings | None = None):
        check_limits(max_peers=max_peers, max_peers_per_source=max_peers_per_source,
                     max_offers_per_peer=max_offers_per_peer, max_offers_per_source=max_offers_per_source)
        self.retain = retain
        self.max_peers = max_peers
        self.max_peers_per_source = max_peers_per_source
        self.max_offers_per_peer = max_offers_per_peer
        self.max_offers_per_source = max_offers_per_source
        self._token = token
        self.names = names
        self.peers: dict[str, _Peer] = {}
        self.offers: dict[str, _Offer] = {}
        self._timers = Timers()  # one retention deadline per disconnected peer
        self._peers_of: dict[str, dict[str, None]] = {}  # source -> its peer ids, oldest first
        self._offline: dict[str, None] = {}  # disconnected peer ids, longest offline first
        self.stats = {"expired": 0, "evicted": 0}
        self._proofs_seen = ReplayGuard(max(max_peers, 1024))  # timed enroll proofs (timed_proof.py)

    def _at(self, peer_id: str, home: Home) -> _Peer | None:
        """The peer, if its registry entry says it is connected at `home`."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.conn != home.conn or peer.instance != home.instance:
            return None
        return peer

    async def first_use(self, token: bytes, ttl: float, now: float) -> bool | None:
        return self._proofs_seen.first_use(token, ttl, now)

    async def enroll(self, home: Home, source: str, observed: list, info: bytes, name: str | None,
                     secret: str | None, now: float, key: bytes | None = None) -> Enrolled | Refusal:
        if name is not None and self.names is not None:
            why = self.names.check(name, key)
            if why is not None:
                return Refusal(ErrorCode.NAME_TAKEN, why)
        existing = self.peers.get(name) if name is not None else None
        replaced, ended = None, ()
        if existing is not None:
            if existing.key is not None:
                proven = key is not None and hmac.compare_digest(existing.key, key)
            else:
                proven = secret is not None and hmac.compare_digest(existing.secret_hash, hash_secret(secret))
            if not proven:
                return Refusal(ErrorCode.NAME_TAKEN, f"{cut(name)} belongs to another peer")
        if name is not None and self.names is not None and key is not None:
            # bound once the claim is proven, before anything else changes: a store that fails
            # leaves nothing half done (a claim later refused for room keeps its name: the key proved it)
            try:
                self.names.claim(name, key)
            except OSError as exc:
                return Refusal(ErrorCode.BUSY, f"cannot store the name binding: {exc}")
        if existing is not None:
            if existing.source != source:
                refusal = self._make_room(source, new_peer=False)
                if refusal is not None:
                    return Refusal(ErrorCode.BUSY, refusal)
                self._unregister(existing)
                existing.source = source
                self._peers_of.setdefault(source, {})[existing.peer_id] = None
            # Ownership proven: this connection replaces the old one; what the old one had pending
            # cannot be answered on this connection, so it ends.
            ended = tuple(self._end(self.offers[o]) for o in list(existing.offers) if o in self.offers)
            old = home_of(existing)
            replaced = old if old is not None and old != home else None
            peer = existing
            if key is not None:
                # a key proves it each time; the secret (for key-less clients) is only renewed
                peer.key = key
                secret = self._token(24)
                peer.secret_hash = hash_secret(secret)
            peer.offline_since = None
            self._offline.pop(peer.peer_id, None)
            self._timers.cancel(("peer", peer.peer_id))
        else:
            refusal = self._make_room(source, new_peer=True)
            if refusal is not None:
                return Refusal(ErrorCode.BUSY, refusal)
            peer_id = name
            # minted IDs follow the names' rule: an ID is typed after `-d` on a command line, and one
            # starting with "-" (1 in 64 of token_urlsafe's) would read as an option
            while peer_id is None or peer_id in self.peers or not NAME_RE.match(peer_id):
                peer_id = self._token(16)
            secret = secret if secret is not None else self._token(24)
            peer = _Peer(peer_id, hash_secret(secret), b"", observed, source, None, key=key)
            self.peers[peer_id] = peer
            self._peers_of.setdefault(source, {})[peer_id] = None
        peer.conn, peer.instance = home.conn, home.instance
        peer.observed = observed
        peer.info = info
        return Enrolled(peer.peer_id, secret, replaced, ended)

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

    async def publish_info(self, peer_id: str, home: Home, info: bytes, now: float) -> None:
        peer = self._at(peer_id, home)
        if peer is not None:
            peer.info = info

    async def offline(self, peer_id: str, home: Home, now: float) -> tuple[Ended, ...]:
        peer = self._at(peer_id, home)
        if peer is None:
            return ()
        peer.conn = None
        peer.offline_since = now
        self._offline[peer.peer_id] = None
        self._timers.set(("peer", peer.peer_id), now + self.retain)
        return tuple(self._end(self.offers[o]) for o in list(peer.offers) if o in self.offers)

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    async def tick(self, now: float, limit: int | None = None) -> bool:
        fired = 0
        while (due := self._timers.pop_due(now)) is not None:
            fired += 1
            peer = self.peers.get(due[1])
            if peer is not None and peer.conn is None:  # its retention is over
                self._forget(peer)
                self.stats["expired"] += 1
            if limit is not None and fired >= limit:
                deadline = self._timers.next_deadline()
                return deadline is not None and deadline <= now
        return False

    async def maintain(self, now: float) -> tuple[tuple[Ended, ...], bool]:
        return (), False  # one process: nobody else to heartbeat to, no instance can die alone

    async def counts(self) -> dict[str, int]:
        return {"peers": len(self.peers), "offers": len(self.offers)}

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


__all__ = ["LIMITS", "MemoryRegistry", "check_limits"]
