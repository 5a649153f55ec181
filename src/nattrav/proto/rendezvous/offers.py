"""The connect / offer / accept dance of the rendezvous server: an initiator's connect becomes an
offer to the target (bounded per initiator and per source), the target's accept becomes a session
(a fresh key, roles, a common start time) for both, a refusal or a timeout ends it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..schema import cut
from ..vocab import Role
from .records import _Offer, _Peer
from .wire import KEY_BYTES, ErrorCode, Packed

if TYPE_CHECKING:
    from .server import RendezvousServer


class Offers:
    """The offer handling RendezvousServer mixes in (it works on the server's registry, timers and
    outputs)."""

    def _connect(self: RendezvousServer, conn: int, peer: _Peer, msg: dict, rid: int | None, now: float) -> None:
        target_id = msg["target"]
        target = self.peers.get(target_id)
        if target_id == peer.peer_id:
            self._error(conn, ErrorCode.BAD_REQUEST, "cannot connect to yourself", rid)
            return
        if target is None:
            self._error(conn, ErrorCode.UNKNOWN_PEER, f"no peer {cut(target_id)}", rid)
            return
        if target.conn is None:
            self._error(conn, ErrorCode.OFFLINE, f"peer {cut(target_id)} is offline", rid)
            return
        busy = self._offer_refusal(peer, target)
        if busy is not None:
            self._error(conn, ErrorCode.BUSY, busy, rid)
            return
        timeout = msg.get("timeout", self.offer_timeout)
        timeout = float(timeout)
        if not math.isfinite(timeout):
            timeout = self.offer_timeout
        timeout = min(max(timeout, 0.0), self.max_offer_timeout)
        offer_id = self._token(12)
        while offer_id in self.offers:
            offer_id = self._token(12)
        offer = _Offer(offer_id, peer.peer_id, target_id, peer.source, rid, now + timeout)
        self.offers[offer_id] = offer
        peer.offers.add(offer_id)
        target.offers.add(offer_id)
        self._timers.set(("offer", offer_id), offer.expires)
        self._send(target.conn, "offer", offer=offer_id, **{"from": peer.peer_id}, info=Packed(peer.info),
                   expires=offer.expires)

    def _offer_refusal(self: RendezvousServer, peer: _Peer, target: _Peer) -> str | None:
        """Why this connect may not add a pending offer (None: it may). A target's slots are shared
        out per initiator and per source, so no single source can make a target unreachable."""
        if len(peer.offers) >= self.max_offers_per_peer:
            return f"you have {len(peer.offers)} pending offers (at most {self.max_offers_per_peer})"
        from_source = 0
        for offer_id in target.offers:
            offer = self.offers[offer_id]
            if offer.initiator == peer.peer_id:
                return f"already asking {target.peer_id}: wait for its answer"
            from_source += offer.source == peer.source
        if from_source >= self.max_offers_per_source:
            return f"{from_source} offers to {target.peer_id} from {peer.source} are pending"
        if len(target.offers) >= self.max_offers_per_peer:
            return f"{target.peer_id} has too many pending offers"
        return None

    def _answer(self: RendezvousServer, conn: int, peer: _Peer, msg: dict, rid: int | None, now: float) -> None:
        offer = self.offers.get(msg["offer"])
        if offer is None or offer.target != peer.peer_id:
            self._error(conn, ErrorCode.UNKNOWN_OFFER, "no such pending offer", rid)
            return
        self._drop_offer(offer)
        initiator = self.peers.get(offer.initiator)
        if msg["t"] == "refuse":
            if initiator is not None:
                self._error(initiator.conn, ErrorCode.REFUSED, f"{peer.peer_id} refused", offer.request_id)
            self._send(conn, "ok", id=rid)
            return
        if initiator is None or initiator.conn is None:
            self._error(conn, ErrorCode.OFFLINE, f"{offer.initiator} went offline", rid)
            return
        key = self._key(KEY_BYTES)
        start_at = now + self.margin_for(initiator, peer)
        self.stats["sessions"] += 1
        common = dict(session=offer.offer_id, key=key, start_at=start_at, now=now)
        self._send(initiator.conn, "session", id=offer.request_id, peer=peer.peer_id, info=Packed(peer.info),
                   role=Role.FIRST.value, **common)
        self._send(conn, "session", id=rid, peer=initiator.peer_id, info=Packed(initiator.info),
                   role=Role.SECOND.value, **common)

    def _drop_offer(self: RendezvousServer, offer: _Offer) -> None:
        self.offers.pop(offer.offer_id, None)
        self._timers.cancel(("offer", offer.offer_id))
        for pid in (offer.initiator, offer.target):
            p = self.peers.get(pid)
            if p is not None:
                p.offers.discard(offer.offer_id)

    def _end_offer(self: RendezvousServer, offer: _Offer, code: ErrorCode, message: str) -> None:
        self._drop_offer(offer)
        initiator = self.peers.get(offer.initiator)
        target = self.peers.get(offer.target)
        if initiator is not None:
            self._error(initiator.conn, code, message, offer.request_id)
        if target is not None:
            self._send(target.conn, "cancel", offer=offer.offer_id, code=code.value, message=message)
