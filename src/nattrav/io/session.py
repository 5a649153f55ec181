"""The one Session type: what the rendezvous gives both peers for a session. The rendezvous client
makes it from the server's "session" frame; the punch (io/punch.py, io/tcp_punch.py via the API)
and the API read it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..proto.handshake import NONCE_LEN
from ..proto.vocab import Role


@dataclass(frozen=True)
class Session:
    # the key both peers' handshakes derive their MAC keys from: from the rendezvous frame it is the
    # server's (bare rendezvous clients use it); the API replaces it with the key the peers agreed
    # themselves (proto/handshake_kx.py), which the server never learns
    key: bytes
    role: Role  # FIRST sends the low-TTL packets first
    start_at: float | None = None  # when both start punching, in this process's trio clock (None: now)
    session_id: str = ""
    peer_id: str = ""
    peer_info: dict[str, Any] = field(default_factory=dict)  # the peer's node info (its report, ...)
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_LEN))  # ours, for the handshake
    peer_key: bytes | None = None  # the identity key the server says the peer proved (not trusted alone)
    # OUR address as the rendezvous server saw it (the peer's is in peer_info["observed"]): the two
    # decide whether the peers share a network (proto/planner/lan.py)
    observed: tuple[str, int] | None = None
    # the node info WE published for this session (its round trip), and the start margin the server
    # chose (seconds from its session frames to the start): with the peer's info, the ages both
    # sides' samples will have at the start (proto/planner/horizon.py), the same on both peers
    own_info: dict[str, Any] = field(default_factory=dict)
    margin: float | None = None
    # our sample beacon's source as the server saw it (proto/rendezvous/beacon.py), when it started
    # the session on it: our newest mapping, which the peer folds into our report as we do
    sample: tuple[str, int] | None = None

    @classmethod
    def from_frame(cls, msg: dict[str, Any], to_local: Callable[[float], float],
                   observed: tuple[str, int] | None = None, own_info: dict[str, Any] | None = None) -> Session:
        """From the rendezvous' (schema-checked) "session" frame; `to_local` maps the server's clock
        to ours (io/rendezvous_client.py's ClockMap); `observed`: where the server saw us; `own_info`:
        the node info we published."""
        key = msg.get("peer_key")
        margin = msg["start_at"] - msg["now"]  # both in the server's clock, as it sent the frame
        sample = msg.get("sample")
        return cls(bytes(msg["key"]), Role(msg["role"]), to_local(msg["start_at"]), msg["session"], msg["peer"],
                   msg["info"], observed=observed, peer_key=bytes(key) if key is not None else None,
                   own_info=dict(own_info or {}), margin=round(float(margin), 3),
                   sample=(str(sample[0]), int(sample[1])) if sample is not None else None)

    def start_in(self) -> float:
        """Seconds until the agreed start (negative once it passed)."""
        return 0.0 if self.start_at is None else self.start_at - trio.current_time()


__all__ = ["Session"]
