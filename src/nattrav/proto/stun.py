"""STUN messages, sans-IO: RFC 5389/8489 (magic cookie, 96-bit transaction ID) and classic RFC 3489
(no cookie, 128-bit transaction ID), IPv4 and IPv6.

`parse(data)` turns untrusted bytes into a `Message` or raises `BadPacket` -- never anything else, and
its work is linear in len(data) (the datagram is capped at MAX_MESSAGE bytes before anything else) and
bounded by MAX_ATTRIBUTES attributes.
`Message.encode()` builds the bytes, optionally with MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.

Attributes live in a table (proto/stun_attrs.py's `ATTRIBUTE_CODECS`): one line maps a type to its
decoder and encoder, so adding an attribute is one line. Unknown attributes are kept as raw bytes so a server can answer
comprehension-required unknowns with 420 and a relay can pass them on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadPacket, LocalProtocolError
from .stun_attrs import (
    ATTRIBUTE_CODECS,
    KNOWN_ATTRIBUTES,
    Address,
    Attr,
    ChangeRequest,
    Class,
    Method,
    comprehension_required,
    encode_raw,
)

MAGIC_COOKIE = 0x2112A442
MAGIC_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
FINGERPRINT_XOR = 0x5354554E
HEADER_LEN = 20
# a STUN message over UDP must fit one datagram; anything larger is not ours to parse
MAX_MESSAGE = 65535 + HEADER_LEN
# A Binding exchange carries a handful of attributes (ICE checks ~10). Hundreds in one datagram are
# an attack on whoever walks them, not a message: refused as malformed.
MAX_ATTRIBUTES = 32


def new_transaction_id(classic: bool = False) -> bytes:
    return os.urandom(16 if classic else 12)


@dataclass
class Message:
    """One STUN message. `attributes` keeps wire order, duplicates and unknown types (as bytes).

    A 12-byte transaction_id means RFC 5389/8489 (magic cookie); 16 bytes means classic RFC 3489.
    """

    method: int = Method.BINDING
    cls: int = Class.REQUEST
    transaction_id: bytes = field(default_factory=new_transaction_id)
    attributes: list[tuple[int, Any]] = field(default_factory=list)
    # set by parse(): the exact bytes and where each attribute header starts, for integrity checks
    raw: bytes | None = field(default=None, repr=False, compare=False)
    offsets: list[int] = field(default_factory=list, repr=False, compare=False)

    @property
    def classic(self) -> bool:
        return len(self.transaction_id) == 16

    @property
    def header_key(self) -> bytes:
        """Header bytes 4..20: cookie + ID, or the classic 128-bit ID. The XOR key for addresses."""
        return self.transaction_id if self.classic else MAGIC_BYTES + self.transaction_id

    def get(self, attr_type: int, default: Any = None) -> Any:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return default

    def __contains__(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def add(self, attr_type: int, value: Any) -> Message:
        self.attributes.append((int(attr_type), value))
        return self

    def unknown_required(self) -> list[int]:
        """Comprehension-required attribute types this codec does not know (a server answers 420),
        each once, in wire order. A dict de-duplicates in O(k): a list did it in O(k²)."""
        seen = dict.fromkeys(
            t for t, _ in self.attributes if comprehension_required(t) and t not in KNOWN_ATTRIBUTES
        )
        return list(seen)

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS when present (NATs that rewrite payload addresses cannot touch it)."""
        return (
            self.get(Attr.XOR_MAPPED_ADDRESS)
            or self.get(Attr.XOR_MAPPED_ADDRESS_OLD)
            or self.get(Attr.MAPPED_ADDRESS)
        )

    # ---- encoding

    def encode(
        self,
        *,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Bytes for the wire. MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, when asked for, are computed
        and appended here (in that order, as RFC 8489 requires); do not put them in `attributes`."""
        tid = self.transaction_id
        if len(tid) not in (12, 16):
            raise LocalProtocolError("transaction_id must be 12 (RFC 5389) or 16 (RFC 3489) bytes")
        if not 0 <= int(self.method) <= 0xFFF or int(self.cls) not in (0, 1, 2, 3):
            raise LocalProtocolError(f"bad method/class {self.method!r}/{self.cls!r}")
        if self.classic and (integrity_sha256_key or fingerprint):
            raise LocalProtocolError("classic RFC 3489 messages have no FINGERPRINT/-SHA256")
        hdr = self.header_key
        body = bytearray()
        for t, v in self.attributes:
            body += _attr_bytes(int(t), v, hdr)
        head = struct.pack("!H", _message_type(int(self.method), int(self.cls))) + b"\0\0" + hdr
        if integrity_key is not None:
            mac = _hmac(hashlib.sha1, integrity_key, head, body, 24)
            body += _tlv(Attr.MESSAGE_INTEGRITY, mac)
        if integrity_sha256_key is not None:
            mac = _hmac(hashlib.sha256, integrity_sha256_key, head, body, 36)
            body += _tlv(Attr.MESSAGE_INTEGRITY_SHA256, mac)
        if fingerprint:
            crc = _crc(_with_length(head, len(body) + 8) + bytes(body))
            body += _tlv(Attr.FINGERPRINT, crc.to_bytes(4, "big"))
        if len(body) > MAX_MESSAGE - HEADER_LEN:
            raise LocalProtocolError("message too long")
        return _with_length(head, len(body)) + bytes(body)

    # ---- checks on parsed messages

    def check_integrity(self, key: bytes) -> bool:
        """True when MESSAGE-INTEGRITY is present and matches `key` (RFC 5389 §15.4)."""
        return self._check_mac(Attr.MESSAGE_INTEGRITY, hashlib.sha1, key)

    def check_integrity_sha256(self, key: bytes) -> bool:
        return self._check_mac(Attr.MESSAGE_INTEGRITY_SHA256, hashlib.sha256, key)

    def _check_mac(self, attr_type: int, digest: Any, key: bytes) -> bool:
        if self.raw is None:
            return False
        for (t, v), off in zip(self.attributes, self.offsets):
            if t == attr_type:
                # the length field covers everything up to and including this attribute
                head = _with_length(self.raw[:HEADER_LEN], off - HEADER_LEN + 4 + len(v))
                mac = hmac.new(key, head + self.raw[HEADER_LEN:off], digest).digest()
                return hmac.compare_digest(mac[: len(v)], v)
        return False

    def fingerprint_present(self) -> bool:
        return Attr.FINGERPRINT in self

    def check_fingerprint(self) -> bool:
        """True when the last attribute is FINGERPRINT and its CRC matches."""
        if self.raw is None or not self.attributes or self.attributes[-1][0] != Attr.FINGERPRINT:
            return False
        off = self.offsets[-1]
        return _crc(self.raw[:off]) == self.attributes[-1][1]


def _message_type(method: int, cls: int) -> int:
    # the class bits C1 C0 sit at bits 8 and 4, interleaved with the method's 12 bits
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def _split_type(mtype: int) -> tuple[int, int]:
    method = (mtype & 0x000F) | ((mtype >> 1) & 0x0070) | ((mtype >> 2) & 0x0F80)
    cls = ((mtype >> 4) & 0b01) | ((mtype >> 7) & 0b10)
    return method, cls


def _with_length(head: bytes, length: int) -> bytes:
    return head[:2] + length.to_bytes(2, "big") + head[4:HEADER_LEN]


def _hmac(digest: Any, key: bytes, head: bytes, body: bytes | bytearray, extra: int) -> bytes:
    return hmac.new(key, _with_length(head, len(body) + extra) + bytes(body), digest).digest()


def _crc(data: bytes) -> int:
    return (zlib.crc32(data) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def _tlv(attr_type: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("!HH", attr_type, len(value)) + value + b"\0" * pad


def _attr_bytes(attr_type: int, value: Any, hdr: bytes) -> bytes:
    if not 0 <= attr_type <= 0xFFFF:
        raise LocalProtocolError(f"attribute type out of range: {attr_type!r}")
    codec = ATTRIBUTE_CODECS.get(attr_type)
    try:
        data = codec[1](value, hdr) if codec else encode_raw(value, hdr)
    except LocalProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"attribute {attr_type:#06x}: {exc}") from None
    if len(data) > 0xFFFF:
        raise LocalProtocolError(f"attribute {attr_type:#06x} too long")
    return _tlv(attr_type, data)


# ---- parsing untrusted bytes


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 7983): could these bytes be a STUN message at all?"""
    return len(data) >= HEADER_LEN and data[0] < 4 and len(data) == HEADER_LEN + (
        (data[2] << 8) | data[3]
    )


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Decode one datagram. Raises BadPacket, and only BadPacket, on anything malformed."""
    try:
        return _parse(bytes(data))
    except BadPacket:
        raise
    except Exception as exc:  # a decoder bug must still surface as the one documented error
        raise BadPacket(f"undecodable: {type(exc).__name__}: {exc}") from None


def _parse(data: bytes) -> Message:
    n = len(data)
    if n < HEADER_LEN:
        raise BadPacket(f"{n} bytes is shorter than a STUN header")
    if n > MAX_MESSAGE:
        raise BadPacket(f"{n} bytes is longer than any STUN message")
    mtype, length = struct.unpack_from("!HH", data)
    if mtype & 0xC000:
        raise BadPacket("top two bits of the message type are not zero")
    if length % 4:
        raise BadPacket("message length is not a multiple of 4")
    if HEADER_LEN + length != n:
        raise BadPacket(f"length field says {length}, datagram carries {n - HEADER_LEN}")
    method, cls = _split_type(mtype)
    hdr = data[4:HEADER_LEN]
    tid = data[8:HEADER_LEN] if hdr[:4] == MAGIC_BYTES else hdr
    msg = Message(method=method, cls=cls, transaction_id=bytes(tid), raw=data)
    pos = HEADER_LEN
    while pos < n:
        if len(msg.attributes) == MAX_ATTRIBUTES:
            raise BadPacket(f"more than {MAX_ATTRIBUTES} attributes")
        if n - pos < 4:
            raise BadPacket("truncated attribute header")
        attr_type, alen = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        end = start + alen
        if end > n:
            raise BadPacket(f"attribute {attr_type:#06x} runs past the end of the message")
        value = data[start:end]
        codec = ATTRIBUTE_CODECS.get(attr_type)
        msg.attributes.append((attr_type, codec[0](value, hdr) if codec else value))
        msg.offsets.append(pos)
        pos = end + (-alen % 4)
        if pos > n:
            raise BadPacket("attribute padding runs past the end of the message")
    if Attr.FINGERPRINT in msg and msg.attributes[-1][0] != Attr.FINGERPRINT:
        raise BadPacket("FINGERPRINT is not the last attribute")
    return msg


# ---- keys (RFC 8489 §9.2.2); the caller applies OpaqueString/SASLprep when it matters


def long_term_key(username: str, realm: str, password: str, sha256: bool = False) -> bytes:
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.sha256(text).digest() if sha256 else hashlib.md5(text).digest()


def short_term_key(password: str) -> bytes:
    return password.encode("utf-8")


# ---- convenience constructors used by the client and the server


def binding_request(
    *,
    change_ip: bool = False,
    change_port: bool = False,
    response_port: int | None = None,
    classic: bool = False,
    transaction_id: bytes | None = None,
    extra: Iterable[tuple[int, Any]] = (),
) -> Message:
    msg = Message(
        Method.BINDING, Class.REQUEST, transaction_id or new_transaction_id(classic=classic)
    )
    if change_ip or change_port:
        msg.add(Attr.CHANGE_REQUEST, ChangeRequest(change_ip, change_port))
    if response_port is not None:
        msg.add(Attr.RESPONSE_PORT, response_port)
    for t, v in extra:
        msg.add(t, v)
    return msg


__all__ = ["HEADER_LEN", "MAGIC_COOKIE", "MAX_ATTRIBUTES", "MAX_MESSAGE", "Message", "binding_request", "is_stun",
           "long_term_key", "new_transaction_id", "parse", "short_term_key"]
