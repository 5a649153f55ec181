"""Authenticating a punched TCP connection with the session key, sans-IO.

A TCP traversal may end with several connections (the listener and connect() can both win, a window
of predicted ports can connect more than once), and any host that guesses our port can connect to
us. So each connection runs the punch handshake of proto/handshake.py over the stream: HELLO, then an
ACK that echoes the peer's nonce. Both directions are MACed with per-role keys from the rendezvous
session key, so a stranger, or our own bytes reflected, never pass. Then the "first" side picks one
authenticated connection and says so with a SELECT frame; the "second" side takes the connection the
SELECT arrives on. After that the stream belongs to the user, unframed.

Stream framing: length (2 bytes, big endian) | punch frame. The CONFIRM reply to an ACK is not sent:
each side reads exactly HELLO and ACK (and the second side the SELECT), so no handshake byte is left
for the user to trip over; bytes that follow in the same read are handed back as `leftover`.
"""

from __future__ import annotations

import enum
import secrets
import struct

from ..errors import BadPacket, LocalProtocolError
from .handshake import MAX_FRAME, NONCE_LEN, Event, Handshake

LENGTH = struct.Struct(">H")
SELECT = b"nattrav tcp select v1"


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AUTHENTICATED = "authenticated"  # the peer holds the key and saw our HELLO
    SELECTED = "selected"  # (second side) the first side chose this connection


class StreamAuth:
    """One connection's handshake. `opening()` first, then `feed()` what the stream delivers."""

    def __init__(self, key: bytes, role: str, nonce: bytes | None = None) -> None:
        # A nonce per CONNECTION, never per race: the peer's ACK echoes it, so frames captured on one
        # connection of a race cannot complete the handshake on another (the replay window is per
        # connection too). The 4-tuple cannot be bound instead: behind NATs the two sides never see
        # the same one.
        self.session = Handshake(key, role, secrets.token_bytes(NONCE_LEN) if nonce is None else nonce)
        self.role = self.session.role
        self.state = State.HANDSHAKE
        self.rtt: int | None = None
        self.leftover = b""
        self._buf = bytearray()
        self._peer_hello = False

    def opening(self, now: int) -> bytes:
        return self._framed(self.session.hello(now))

    def select(self) -> bytes:
        """(first side) the frame that makes this connection the one."""
        if self.role != "first":
            raise LocalProtocolError("only the first side selects")
        if self.state is not State.AUTHENTICATED:
            raise LocalProtocolError("select before the connection is authenticated")
        self.state = State.SELECTED
        return self._framed(self.session.data(SELECT))

    @staticmethod
    def _framed(frame: bytes) -> bytes:
        return LENGTH.pack(len(frame)) + frame

    @property
    def done(self) -> bool:
        """Nothing more to read for the handshake on this connection."""
        if self.role == "first":
            return self.state is not State.HANDSHAKE
        return self.state is State.SELECTED

    def feed(self, data: bytes, now: int) -> bytes:
        """Consume stream bytes; returns bytes to send back. Raises BadPacket on anything that is
        not the peer's authentic handshake (drop the connection then)."""
        self._buf += data
        out = bytearray()
        while not self.done and len(self._buf) >= LENGTH.size:
            (n,) = LENGTH.unpack_from(self._buf)
            if not 0 < n <= MAX_FRAME:
                raise BadPacket(f"frame length {n} on the stream")
            if len(self._buf) < LENGTH.size + n:
                break
            frame = bytes(self._buf[LENGTH.size:LENGTH.size + n])
            del self._buf[:LENGTH.size + n]
            out += self._frame(frame, now)
        if self.done:
            self.leftover = bytes(self._buf)
            self._buf.clear()
        elif len(self._buf) > LENGTH.size + MAX_FRAME:
            raise BadPacket("handshake overflow")
        return bytes(out)

    def _frame(self, frame: bytes, now: int) -> bytes:
        got = self.session.receive(frame, now)
        if got.event is Event.HELLO:
            if self._peer_hello:
                raise BadPacket("a second HELLO on one connection")
            self._peer_hello = True
            return self._framed(got.replies[0])  # the ACK
        if got.event is Event.ESTABLISHED:
            if not self._peer_hello:
                raise BadPacket("ACK before the peer's HELLO")
            self.rtt = got.rtt
            self.state = State.AUTHENTICATED
            return b""  # no CONFIRM on a stream: see the module docstring
        if got.event is Event.DATA and self.role == "second" and self.state is State.AUTHENTICATED:
            if got.payload != SELECT:
                raise BadPacket("data before SELECT")
            self.state = State.SELECTED
            return b""
        raise BadPacket(f"unexpected {got.event.value} during the TCP handshake")


__all__ = ["SELECT", "State", "StreamAuth"]
