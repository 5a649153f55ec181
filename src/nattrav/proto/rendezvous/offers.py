"""The in-memory registry's offers: a connect becomes a pending offer to the target (bounded per
initiator, per target and per source), an answer or a deadline takes it away again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..schema import cut
from .records import _Offer, _Peer
from .registry import Answered, Ended, Home, Offered, Refusal
from .wire import ErrorCode

if TYPE_CHECKING:
    from .memory import MemoryRegistry


def home_of(peer: _Peer | None) -> Home | None:
    return None if peer is None or peer.conn is None else Home(peer.instance, peer.conn)


class OfferBook:
    """The offer half MemoryRegistry mixes in (it works on the registry's peers and offers)."""

    async def connect(self: MemoryRegistry, peer_id: str, home: Home, target_id: str, timeout: float,
                      request_id: int | None, now: float) -> Offered | Refusal:
        peer = self._at(peer_id, home)
        if peer is None:
            return Refusal(ErrorCode.NAME_TAKEN, "this peer enrolled again elsewhere")
        if target_id == peer_id:
            return Refusal(ErrorCode.BAD_REQUEST, "cannot connect to yourself")
        target = self.peers.get(target_id)
        if target is None:
            return Refusal(ErrorCode.UNKNOWN_PEER, f"no peer {cut(target_id)}")
        if target.conn is None:
            return Refusal(ErrorCode.OFFLINE, f"peer {cut(target_id)} is offline")
        busy = self._offer_refusal(peer, target)
        if busy is not None:
            return Refusal(ErrorCode.BUSY, busy)
        offer_id = self._token(12)
        while offer_id in self.offers:
            offer_id = self._token(12)
        self.offers[offer_id] = _Offer(offer_id, peer_id, target_id, peer.source, request_id, now + timeout)
        peer.offers.add(offer_id)
        target.offers.add(offer_id)
        return Offered(offer_id, home_of(target), peer.info, timeout, peer.key)

    def _offer_refusal(self: MemoryRegistry, peer: _Peer, target: _Peer) -> str | None:
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

    async def answer(self: MemoryRegistry, peer_id: str, home: Home, offer_id: str, accept: bool,
                     now: float) -> Answered | Refusal:
        peer = self._at(peer_id, home)
        offer = self.offers.get(offer_id)
        if peer is None or offer is None or offer.target != peer_id:
            return Refusal(ErrorCode.UNKNOWN_OFFER, "no such pending offer")
        self._drop_offer(offer)
        initiator = self.peers.get(offer.initiator)
        return Answered(offer_id, offer.initiator, home_of(initiator), offer.request_id,
                        initiator.info if initiator is not None else b"", peer.info,
                        initiator.key if initiator is not None else None, peer.key)

    async def expire_offer(self: MemoryRegistry, offer_id: str, now: float) -> Ended | None:
        offer = self.offers.get(offer_id)
        return None if offer is None else self._end(offer)

    def _drop_offer(self: MemoryRegistry, offer: _Offer) -> None:
        self.offers.pop(offer.offer_id, None)
        for pid in (offer.initiator, offer.target):
            p = self.peers.get(pid)
            if p is not None:
                p.offers.discard(offer.offer_id)

    def _end(self: MemoryRegistry, offer: _Offer) -> Ended:
        initiator, target = self.peers.get(offer.initiator), self.peers.get(offer.target)
        ended = Ended(offer.offer_id, offer.initiator, home_of(initiator), offer.request_id,
                      offer.target, home_of(target))
        self._drop_offer(offer)
        return ended
