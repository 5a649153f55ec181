"""Short-lived TURN credentials in the TURN REST scheme (draft-uberti-behave-turn-rest, what coturn's
--use-auth-secret checks): username = "<expiry>:<peer>", password = base64(HMAC-SHA1(secret,
username)). The rendezvous server shares only `secret` with coturn; every grant names one peer and
stops working at its expiry, so a leaked grant is worth one peer's relay for a bounded time.

A grant travels to the peer in the rendezvous' "session" frame (`RelayGrant.to_wire`); the peer
checks it with `from_wire`, which raises BadFrame and only BadFrame. Pure: callers pass the time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from ..errors import BadFrame
from .rendezvous.wire import NAME_RE

DEFAULT_TTL = 3600.0
MIN_TTL = 60.0
MAX_TTL = 7 * 86400.0
MAX_FIELD = 255  # bytes of a host name, username or password on the wire


def rest_password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True)
class RelayGrant:
    """Where the relay is and the credentials that open it for one peer until `expires` (Unix time)."""

    host: str
    port: int
    username: str
    password: str
    expires: float  # Unix time the username names

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "username": self.username, "password": self.password,
                "expires": self.expires}

    @classmethod
    def from_wire(cls, d: Any) -> RelayGrant:
        """The grant from a session frame's "relay" map; BadFrame for anything malformed."""
        if not isinstance(d, dict) or set(d) != {"host", "port", "username", "password", "expires"}:
            raise BadFrame("relay: want a map of host, port, username, password, expires")
        host, port, user, pw, exp = d["host"], d["port"], d["username"], d["password"], d["expires"]
        if not all(isinstance(x, str) and 0 < len(x.encode()) <= MAX_FIELD for x in (host, user, pw)):
            raise BadFrame("relay: host, username and password must be 1..255-byte strings")
        if type(port) is not int or not 0 < port < 65536:
            raise BadFrame("relay: port out of range")
        if type(exp) not in (int, float) or not math.isfinite(exp):
            raise BadFrame("relay: expires must be a finite number")
        return cls(host, port, user, pw, float(exp))


@dataclass(frozen=True)
class TurnRest:
    """The server side: mints a grant per peer with the secret it shares with coturn."""

    host: str
    port: int
    secret: bytes
    ttl: float = DEFAULT_TTL

    def __post_init__(self) -> None:
        if not MIN_TTL <= self.ttl <= MAX_TTL:
            raise ValueError(f"TURN credential lifetime must be {MIN_TTL:g}..{MAX_TTL:g} s, got {self.ttl!r}")
        if not self.secret:
            raise ValueError("the TURN REST secret is empty")

    def grant(self, peer: str, now: float) -> RelayGrant:
        """A grant for `peer` (a rendezvous peer ID: no ':' in it) valid from `now` for ttl seconds."""
        if not NAME_RE.match(peer):
            raise ValueError(f"not a peer ID: {peer!r}")
        expires = int(now + self.ttl)
        username = f"{expires}:{peer}"
        return RelayGrant(self.host, self.port, username, rest_password(self.secret, username), float(expires))


__all__ = ["DEFAULT_TTL", "MAX_TTL", "MIN_TTL", "RelayGrant", "TurnRest", "rest_password"]
