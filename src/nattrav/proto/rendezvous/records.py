"""What the rendezvous server keeps and emits: its actions (Send, Close, Relay), the in-memory
registry's records of peers and pending offers, the front's record of a connection, and whom a
connection counts against in per-source limits."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from .wire import FrameDecoder


@dataclass(frozen=True)
class Send:
    conn: int
    msg: dict


@dataclass(frozen=True)
class Close:
    conn: int
    reason: str


@dataclass(frozen=True)
class Relay:
    """A notice for a peer connected to another instance (the I/O layer publishes it there)."""

    instance: str
    notice: dict


@dataclass(slots=True)
class _Peer:
    peer_id: str
    secret_hash: bytes
    info: bytes  # packed public node info (the peer's map plus "observed"), forwarded as is
    observed: list
    source: str
    conn: int | None  # the connection at `instance`; None: offline
    instance: str = ""
    offline_since: float | None = None
    offers: set = field(default_factory=set)  # pending offer ids this peer is part of
    key: bytes | None = None  # the identity key it proved at enroll (names.py), if it used one


@dataclass(slots=True)
class _Conn:
    addr: list
    source: str
    decoder: FrameDecoder
    peer: str | None = None
    last_seen: float = 0.0
    busy: bool = False  # an enroll is waiting for the registry
    challenge: bytes | None = None  # the nonce an enroll with a key must sign (one use)
    local: tuple | None = None  # the address the connection reached (a timed proof names it: timed_proof.py)
    udp: list = field(default_factory=list)  # [ip, port] of its punch sockets, as observed (observe.py)


@dataclass(slots=True)
class _Offer:
    offer_id: str
    initiator: str
    target: str
    source: str  # the initiator's source: a target's slots are shared out per source
    request_id: int | None
    expires: float


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def source_key(addr: tuple | list) -> str:
    """Whom a connection counts against in per-source limits: its IPv4 address, or its IPv6 /64
    (one subscriber gets a whole /64, so single IPv6 addresses would cost an attacker nothing)."""
    text = str(addr[0])
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
