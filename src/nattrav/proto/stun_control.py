"""Frames of the two-host STUN control link, sans-IO: authenticated, fresh, never accepted twice.

In the two-host layout a host hands a change-IP request to its peer, which answers the client from its
own address. Whoever can make a host accept such a frame makes it send a STUN answer to any address
it likes, so every frame is:
- authenticated: HMAC-SHA256 (truncated to 16 bytes) with a key derived from the shared secret both
  hosts must be given (there is no unauthenticated mode);
- addressed: it names the receiving host's IP, so a frame cannot be reflected back to its sender;
- fresh: it carries the sender's wall-clock time, refused more than MAX_SKEW seconds away from the
  receiver's (both hosts need NTP);
- unique: it carries a counter, checked against a sliding replay window (proto.handshake.ReplayWindow).
  The counter starts at the sender's start time in ms, shifted left 20 bits, and counts up by one a
  frame, so a restarted sender still counts above its previous life (unless it sent more than 2^20
  frames per ms of uptime). A receiver that restarts forgets its window: a frame captured in the last
  MAX_SKEW seconds could then be replayed once, which makes the peer repeat one answer to the client
  that asked for it.

No clock here: callers pass `now` (seconds since the epoch).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

import msgpack

from ..errors import BadPacket, ControlKeyError
from .handshake import ReplayWindow
from .stun_attrs import Address

VERSION = 2
MAC_LEN = 16
MIN_SECRET = 16
MAX_FRAME = 4096
MAX_SKEW = 10.0
COUNTER_SHIFT = 20


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """One key per use of the shared secret (control frames, RESPONSE-PORT cookies)."""
    return hmac.new(secret, b"nattrav stun " + purpose, hashlib.sha256).digest()


def control_key(secret: bytes | None) -> bytes:
    """The MAC key of the control link, derived from the shared secret (checked here)."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET:
        raise ControlKeyError(
            f"the two-host control link needs a shared secret of at least {MIN_SECRET} bytes"
        )
    return derive_key(bytes(secret), b"control v2")


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


@dataclass(frozen=True)
class Forward:
    """A request handed over by the peer: answer it from our `port`, as if received at `recv_at`."""

    port: int
    recv_at: Address
    src: Address
    request: bytes


class ControlSender:
    """Builds the frames one host sends to its peer."""

    def __init__(self, secret: bytes | None, peer_ip: str, start: float) -> None:
        self._key = control_key(secret)
        self._to = str(ipaddress.ip_address(peer_ip))
        self._counter = int(start * 1000) << COUNTER_SHIFT

    def forward(self, port: int, recv_at: Address, src: Address, request: bytes, now: float) -> bytes:
        self._counter += 1
        body = msgpack.packb(
            {"v": VERSION, "t": "fwd", "to": self._to, "ts": round(now * 1000), "ctr": self._counter,
             "port": port, "at": list(recv_at), "src": list(src), "req": request},
            use_bin_type=True,
        )
        return body + _mac(self._key, body)


def _addr(value: object) -> Address:
    if not isinstance(value, list) or len(value) != 2:
        raise BadPacket("control: address must be [ip, port]")
    ip, port = value
    if not isinstance(ip, str) or not isinstance(port, int) or not 0 < port <= 65535:
        raise BadPacket("control: bad address")
    try:
        return (str(ipaddress.ip_address(ip)), port)
    except ValueError:
        raise BadPacket("control: bad IP") from None


class ControlReceiver:
    """Checks the frames one host receives from its peer. `accept` raises BadPacket (and only that)
    for anything not authentic, not for us, stale, replayed or malformed."""

    def __init__(self, secret: bytes | None, own_ip: str, max_skew: float = MAX_SKEW) -> None:
        self._key = control_key(secret)
        self._own = str(ipaddress.ip_address(own_ip))
        self.max_skew = max_skew
        self._window = ReplayWindow()

    def accept(self, data: bytes, now: float) -> Forward:
        if not MAC_LEN < len(data) <= MAX_FRAME:
            raise BadPacket("control frame: bad length")
        body, mac = bytes(data[:-MAC_LEN]), bytes(data[-MAC_LEN:])
        if not hmac.compare_digest(mac, _mac(self._key, body)):
            raise BadPacket("control frame: bad MAC")
        try:
            obj = msgpack.unpackb(body, raw=False, max_bin_len=2048, max_str_len=64,
                                  max_array_len=2, max_map_len=10)
        except Exception:
            raise BadPacket("control frame is not msgpack") from None
        if not isinstance(obj, dict) or obj.get("v") != VERSION or obj.get("t") != "fwd":
            raise BadPacket("control frame: unknown version or type")
        if obj.get("to") != self._own:
            raise BadPacket("control frame: addressed to another host")
        ts, ctr = obj.get("ts"), obj.get("ctr")
        if not isinstance(ts, int) or not isinstance(ctr, int) or ctr < 0:
            raise BadPacket("control frame: bad time or counter")
        if abs(ts / 1000 - now) > self.max_skew:
            raise BadPacket(f"control frame: stale ({ts / 1000 - now:+.1f} s from our clock)")
        if not self._window.check(ctr):
            raise BadPacket("control frame: replayed")
        port, req = obj.get("port"), obj.get("req")
        if not isinstance(port, int) or not 0 < port <= 65535 or not isinstance(req, bytes):
            raise BadPacket("control frame: bad port or request")
        fwd = Forward(port, _addr(obj.get("at")), _addr(obj.get("src")), req)
        self._window.accept(ctr)  # only a frame that is acted upon moves the window
        return fwd


__all__ = [
    "ControlReceiver",
    "ControlSender",
    "Forward",
    "MAX_SKEW",
    "MIN_SECRET",
    "control_key",
    "derive_key",
]
