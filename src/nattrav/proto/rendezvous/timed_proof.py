"""Enrollment by key without the challenge round trip: a proof the client makes on its own.

The challenge flow (names.py) costs a round trip before the enroll: the server must first hand out
the nonce the client signs. Here the client signs, under its own context string:

- a fresh random nonce of its own (NONCE_BYTES),
- its wall-clock time in milliseconds (`at`),
- the server it dialed, as the address its TCP connection reached (`audience`: "IP:PORT"),
- the name it enrolls under.

The server takes it when `at` is within WINDOW seconds of its own wall clock, the audience is the
address the connection arrived at (its socket's local address), the signature verifies, and the
(key, nonce) pair was not used within the window. The last check is shared by whatever shares the
peers: the worker processes of one instance (SO_REUSEPORT, one port) and the instances of a tier
all see one registry (Redis: SET NX with an expiry); one process alone keeps them in a bounded
ReplayGuard. A proof therefore enrolls once, at one address, within a minute of its making.

Any failure (clock skew, a replayed or foreign proof, a full guard, an unreachable registry)
is answered with a challenge instead of an error: the client signs that, one round trip later,
exactly as an older client does. Behind a load balancer or a DNAT the address the client dialed is
not the one the server sees, so those clients always take that second round trip.

Pure: the caller passes the clocks and the randomness.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from ...errors import WrongPeer
from ...identity import KEY_LEN, PeerId
from .names import SIG_BYTES

NONCE_BYTES = 16
WINDOW = 30.0  # seconds either side of the server's clock a proof's time may be
GUARD_SLACK = 5.0  # seconds a replay entry outlives its proof's window: instances' clocks differ a little
_CONTEXT = b"nattrav rendezvous timed enroll v1\0"
_MAX_AT = 2**53  # milliseconds: far beyond any real clock, and exact in a float


def audience(host: str, port: int) -> str:
    """The canonical "IP:PORT" of a server address (an IPv4-mapped IPv6 address reads as IPv4,
    IPv6 in brackets, scope IDs dropped): what both sides write for the same TCP connection."""
    ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def timed_message(nonce: bytes, at_ms: int, aud: str, name: str) -> bytes:
    """What a client signs to enroll under `name` at the server `aud` at time `at_ms` (Unix ms).
    Every variable part is length-prefixed: no two different proofs share their bytes."""
    parts = [nonce, int(at_ms).to_bytes(8, "big"), aud.encode(), name.encode()]
    return _CONTEXT + b"".join(len(p).to_bytes(2, "big") + p for p in parts)


@dataclass(frozen=True)
class TimedProof:
    """The enroll frame's fields of a timed proof (besides the name)."""

    key: bytes
    sig: bytes
    nonce: bytes
    at: int  # Unix time in milliseconds, the client's clock

    def fields(self) -> dict:
        return {"key": self.key, "sig": self.sig, "nonce": self.nonce, "at": self.at}


def make_proof(sign, key: bytes, nonce: bytes, wall: float, aud: str, name: str) -> TimedProof:
    """A proof signed with `sign` (Identity.sign) by `key` at wall-clock time `wall` (seconds)."""
    at = int(round(wall * 1000))
    return TimedProof(key, sign(timed_message(nonce, at, aud, name)), nonce, at)


class StaleProof(WrongPeer):
    """A timed proof that may be genuine but is not good here and now: the client's clock is off,
    or it was made for another server. The client falls back to the challenge."""


def check_timed(key: bytes, sig: bytes, nonce: bytes, at: int, aud: str, name: str, wall: float,
                window: float = WINDOW) -> PeerId:
    """The key's PeerId when the proof is good at the server `aud` at wall-clock time `wall`.
    StaleProof for a time outside the window; WrongPeer for a bad shape or signature (which is
    also what a proof made for another server or name shows: the bytes signed differ). Replay is
    the caller's check (ReplayGuard or the registry), after this one: only proofs that verify may
    take room in the guard."""
    if len(key) != KEY_LEN or len(sig) != SIG_BYTES or len(nonce) != NONCE_BYTES:
        raise WrongPeer(f"a key is {KEY_LEN} bytes, a signature {SIG_BYTES}, a nonce {NONCE_BYTES}")
    if not 0 <= at < _MAX_AT:
        raise StaleProof("the proof's time is out of range")
    skew = at / 1000 - wall
    if abs(skew) > window:
        raise StaleProof(f"the proof's time is {skew:+.1f} s from the server's (window ±{window:g} s)")
    peer = PeerId.from_public_key(key)
    peer.verify(sig, timed_message(nonce, at, aud, name))
    return peer


def replay_token(key: bytes, nonce: bytes) -> bytes:
    """The replay guard's entry for a proof: per key, so one key's nonces never block another's."""
    return hashlib.sha256(key + nonce).digest()[:20]


def guard_ttl(at: int, wall: float, window: float = WINDOW) -> float:
    """How long a proof's guard entry must live: until its time leaves the window (at most 2x the
    window), plus GUARD_SLACK for the other instances of a tier, whose clocks may be that far behind
    ours and so take the proof a little longer."""
    return max(at / 1000 + window - wall, 0.0) + GUARD_SLACK


class ReplayGuard:
    """The (key, nonce) pairs seen recently, in one process: at most `capacity` of them.

    A full guard refuses new entries rather than forgetting live ones (forgetting would let a
    proof replay): its callers then fall back to the challenge. Expired entries are dropped from
    the oldest on; one that expires before an older one waits behind it (lifetimes differ by at
    most the window), harmless: a lookup compares the expiry."""

    def __init__(self, capacity: int = 100_000):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._until: OrderedDict[bytes, float] = OrderedDict()  # token -> expiry, oldest entry first

    def __len__(self) -> int:
        return len(self._until)

    def first_use(self, token: bytes, ttl: float, now: float) -> bool | None:
        """True the first time `token` is seen within `ttl` seconds of `now` (a monotonic clock);
        False for a replay; None when the guard is full (the caller must not accept the proof)."""
        until = self._until
        while until:
            expiry = next(iter(until.values()))
            if expiry > now:
                break
            until.popitem(last=False)
        expiry = until.get(token)
        if expiry is not None:
            if expiry > now:
                return False
            del until[token]
        if len(until) >= self.capacity:
            return None
        until[token] = now + ttl
        return True


__all__ = ["GUARD_SLACK", "NONCE_BYTES", "WINDOW", "ReplayGuard", "StaleProof", "TimedProof", "audience", "check_timed",
           "guard_ttl", "make_proof", "replay_token", "timed_message"]
