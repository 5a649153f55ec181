"""Return-routability cookies for RESPONSE-PORT (RFC 5780 §7.5), sans-IO.

RESPONSE-PORT asks the server to answer at another port of the requester's IP. UDP sources are easy
to forge, so the server honours it only from an IP that has shown it receives our packets: a request
with RESPONSE-PORT but no valid cookie is answered at its source address with 438 (Stale Nonce) and a
cookie in NONCE; the client repeats the request with that NONCE. The same idea as DTLS'
HelloVerifyRequest or QUIC's Retry: stateless on the server (an HMAC over the IP and a time epoch),
and the 438 is no larger than a plain Binding answer, so a forged request gains nothing.

A cookie is bound to one IP and valid for EPOCH to (VALID_EPOCHS + 1) x EPOCH seconds.
No clock here: callers pass `now` (seconds since the epoch).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

PREFIX = "rr1:"
EPOCH = 60
VALID_EPOCHS = 2  # the current epoch and the two before it
MAC_BYTES = 12


def _mac(key: bytes, ip: str, epoch: int) -> str:
    packed = ipaddress.ip_address(ip).packed
    return hmac.new(key, b"rr" + packed + epoch.to_bytes(8, "big"), hashlib.sha256).hexdigest()[
        : 2 * MAC_BYTES
    ]


def make_cookie(key: bytes, ip: str, now: float) -> str:
    """The cookie the server hands to `ip` (to be sent back in NONCE)."""
    epoch = int(now // EPOCH)
    return f"{PREFIX}{epoch:x}:{_mac(key, ip, epoch)}"


def check_cookie(key: bytes, ip: str, cookie: object, now: float) -> bool:
    """True when `cookie` was made by `key` for `ip` recently enough. Never raises on any input."""
    if not isinstance(cookie, str) or not cookie.startswith(PREFIX) or len(cookie) > 64:
        return False
    epoch_s, _, mac = cookie[len(PREFIX):].partition(":")
    try:
        epoch = int(epoch_s, 16)
        expected = _mac(key, ip, epoch)
    except (ValueError, OverflowError):
        return False
    age = int(now // EPOCH) - epoch
    return 0 <= age <= VALID_EPOCHS and hmac.compare_digest(mac.encode(), expected.encode())


__all__ = ["EPOCH", "check_cookie", "make_cookie"]
