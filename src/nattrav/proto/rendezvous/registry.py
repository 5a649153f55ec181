"""What the rendezvous front (server.py) asks of the registry of peers and offers, and what it gets back.

The registry is the state several server instances may share: who is enrolled, under which secret,
with which node info, on which instance and connection (a Home), and the pending offers. The front
keeps what belongs to one process: TCP connections, their frame decoders, keepalive and offer
deadlines. Two registries implement this interface and pass one test suite
(tests/proto/test_rendezvous_registry.py): memory.py (one process, sans-IO, the default) and
io/redis_registry.py (Redis, shared by every instance).

Every operation is a coroutine so that a registry across the network fits; the in-memory one never
suspends, which is what lets RendezvousServer's synchronous methods drive it inline. Results are
plain data: the front turns them into frames, on this instance or relayed to the one a Home names.
Times given to a registry (`now`) are in the registry's timeline; deadlines it returns are durations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .wire import ErrorCode


@dataclass(frozen=True, slots=True)
class Home:
    """Where a peer's connection lives: the server instance and that instance's connection number."""

    instance: str
    conn: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The operation was not carried out; the error the requester gets."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Ended:
    """A pending offer that ended: its initiator gets an error, its target a cancel."""

    offer_id: str
    initiator: str
    initiator_home: Home | None  # None: no longer connected (nobody to tell)
    request_id: int | None
    target: str
    target_home: Home | None


@dataclass(frozen=True, slots=True)
class Enrolled:
    peer_id: str
    secret: str  # the peer's own, or one minted for it
    replaced: Home | None  # the connection this enrollment took the peer over from (told, then closed)
    ended: tuple[Ended, ...]  # offers the replaced connection had pending


@dataclass(frozen=True, slots=True)
class Offered:
    offer_id: str
    target_home: Home
    info: bytes  # the initiator's packed node info, for the offer frame
    timeout: float  # seconds the target has
    key: bytes | None = None  # the identity key the initiator proved at enroll (None: it used none)


@dataclass(frozen=True, slots=True)
class Answered:
    """An offer its target accepted or refused; the initiator's side of it."""

    offer_id: str
    initiator: str
    initiator_home: Home | None  # None: the initiator is gone (an accept then fails)
    request_id: int | None
    initiator_info: bytes
    info: bytes  # the answering peer's packed node info
    # the identity keys the two proved at enroll (None: enrolled without one); each side is told the
    # other's, and still checks it against what it asked for: the server only introduces
    initiator_key: bytes | None = None
    key: bytes | None = None


class Registry(Protocol):
    """The operations, all atomic. `home` names the requester's connection: an operation for a peer
    whose registry entry says it lives elsewhere (it enrolled again there) is refused."""

    stats: dict[str, int]

    async def enroll(self, home: Home, source: str, observed: list, info: bytes, name: str | None,
                     secret: str | None, now: float, key: bytes | None = None) -> Enrolled | Refusal:
        """`key`: the identity key the front checked the peer's proof of (names.py). A peer that
        enrolled with a key must show it again to take its name back (its secret is then renewed);
        one without a key shows its secret."""

    async def publish_info(self, peer_id: str, home: Home, info: bytes, now: float) -> None: ...

    async def offline(self, peer_id: str, home: Home, now: float) -> tuple[Ended, ...]:
        """The peer's connection at `home` ended; its pending offers end with it."""

    async def connect(self, peer_id: str, home: Home, target: str, timeout: float, request_id: int | None,
                      now: float) -> Offered | Refusal: ...

    async def answer(self, peer_id: str, home: Home, offer_id: str, accept: bool,
                     now: float) -> Answered | Refusal: ...

    async def expire_offer(self, offer_id: str, now: float) -> Ended | None:
        """End the offer if it is still pending (its initiator's instance runs its deadline)."""

    def next_deadline(self) -> float | None:
        """When tick() has work (retention expiry of a registry that keeps its own time), or None."""

    async def tick(self, now: float, limit: int | None = None) -> bool: ...

    async def maintain(self, now: float) -> tuple[tuple[Ended, ...], bool]:
        """Housekeeping a shared registry needs from every instance now and then (heartbeat, leases,
        the peers of dead instances): the offers that ended meanwhile, and whether this instance
        was taken for dead (its peers must enroll again)."""

    async def first_use(self, token: bytes, ttl: float, now: float) -> bool | None:
        """Whether `token` (a timed enroll proof's, timed_proof.py) is new to every instance and
        process sharing this registry: True, and it stays remembered for `ttl` seconds; False when
        seen within that time; None when it cannot be remembered (full). Atomic."""

    async def counts(self) -> dict[str, int]:
        """Peers known and offers pending, registry-wide (for the stats line)."""
