"""STUN messages, sans-IO: RFC 5389/8489 (magic cookie, 96-bit transaction ID) and classic RFC 3489
(no cookie, 128-bit transaction ID), IPv4 and IPv6.

`parse(data)` turns untrusted bytes into a `Message` or raises `BadPacket` -- never anything else, and
its work is linear in len(data) (the datagram is capped at MAX_MESSAGE bytes before anything else) and
bounded by MAX_ATTRIBUTES attributes.
`Message.encode()` builds the bytes, optionally with MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.

Attributes live in a table (`ATTRIBUTE_CODECS`): one line maps a type to its decoder and encoder, so
adding an attribute is one line. Unknown attributes are kept as raw bytes so a server can answer
comprehension-required unknowns with 420 and a relay can pass them on.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import BadPacket, LocalProtocolError

MAGIC_COOKIE = 0x2112A442
MAGIC_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
FINGERPRINT_XOR = 0x5354554E
HEADER_LEN = 20
# a STUN message over UDP must fit one datagram; anything larger is not ours to parse
MAX_MESSAGE = 65535 + HEADER_LEN
MAX_SOFTWARE_BYTES = 763
MAX_REASON_BYTES = 763
MAX_USERNAME_BYTES = 513
# A Binding exchange carries a handful of attributes (ICE checks ~10). Hundreds in one datagram are
# an attack on whoever walks them, not a message: refused as malformed.
MAX_ATTRIBUTES = 32


class Method(enum.IntEnum):
    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489 only


class Class(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(enum.IntEnum):
    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489
    CHANGE_REQUEST = 0x0003  # RFC 3489, RFC 5780
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027  # RFC 5780
    XOR_MAPPED_ADDRESS_OLD = 0x8020  # pre-RFC 5389 drafts; still sent by some servers
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780


class ChangeRequest(NamedTuple):
    ip: bool = False
    port: bool = False


class ErrorCode(NamedTuple):
    code: int
    reason: str = ""


Address = tuple[str, int]

FAMILY_V4 = 0x01
FAMILY_V6 = 0x02


def comprehension_required(attr_type: int) -> bool:
    return attr_type < 0x8000


# ---- attribute value codecs. Decoders get (value bytes, header bytes 4..20) and raise BadPacket.


def _dec_address(value: bytes, _hdr: bytes) -> Address:
    if len(value) < 4:
        raise BadPacket("address attribute shorter than 4 bytes")
    family = value[1]
    port = int.from_bytes(value[2:4], "big")
    if family == FAMILY_V4 and len(value) == 8:
        return (str(ipaddress.IPv4Address(value[4:8])), port)
    if family == FAMILY_V6 and len(value) == 20:
        return (str(ipaddress.IPv6Address(value[4:20])), port)
    raise BadPacket(f"address attribute: family {family} with {len(value)} bytes")


def _enc_address(addr: Address, _hdr: bytes) -> bytes:
    ip, port = _check_address(addr)
    if ip.version == 4:
        return struct.pack("!BBH", 0, FAMILY_V4, port) + ip.packed
    return struct.pack("!BBH", 0, FAMILY_V6, port) + ip.packed


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key))


# The XOR key is header bytes 4..20 (cookie + transaction ID in RFC 5389). For a classic 128-bit ID
# those same bytes are the first part of the ID, which is what pre-5389 servers that sent 0x8020 used.
def _dec_xor_address(value: bytes, hdr: bytes) -> Address:
    if len(value) < 4:
        raise BadPacket("address attribute shorter than 4 bytes")
    head = value[:2] + _xor(value[2:4], hdr[:2])
    return _dec_address(head + _xor(value[4:], hdr), hdr)


def _enc_xor_address(addr: Address, hdr: bytes) -> bytes:
    plain = _enc_address(addr, hdr)
    return plain[:2] + _xor(plain[2:4], hdr[:2]) + _xor(plain[4:], hdr)


def _check_address(addr: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    try:
        ip_s, port = addr
        ip = ipaddress.ip_address(ip_s)
    except (TypeError, ValueError):
        raise LocalProtocolError(f"not an (ip, port) address: {addr!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise LocalProtocolError(f"port out of range: {port!r}")
    return ip, port


def _dec_change_request(value: bytes, _hdr: bytes) -> ChangeRequest:
    if len(value) != 4:
        raise BadPacket("CHANGE-REQUEST must be 4 bytes")
    flags = value[3]
    return ChangeRequest(ip=bool(flags & 0x04), port=bool(flags & 0x02))


def _enc_change_request(cr: Any, _hdr: bytes) -> bytes:
    ip, port = cr
    return struct.pack("!I", (0x04 if ip else 0) | (0x02 if port else 0))


def _dec_text(limit: int) -> Callable[[bytes, bytes], str]:
    def dec(value: bytes, _hdr: bytes) -> str:
        if len(value) > limit:
            raise BadPacket(f"text attribute longer than {limit} bytes")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPacket("text attribute is not UTF-8") from None

    return dec


def _enc_text(limit: int) -> Callable[[Any, bytes], bytes]:
    def enc(text: Any, _hdr: bytes) -> bytes:
        if not isinstance(text, str):
            raise LocalProtocolError(f"text attribute must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        if len(data) > limit:
            raise LocalProtocolError(f"text attribute longer than {limit} bytes")
        return data

    return enc


def _dec_error_code(value: bytes, _hdr: bytes) -> ErrorCode:
    if len(value) < 4 or len(value) > 4 + MAX_REASON_BYTES:
        raise BadPacket("ERROR-CODE length")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise BadPacket(f"ERROR-CODE {klass}{number:02d} out of range")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise BadPacket("ERROR-CODE reason is not UTF-8") from None
    return ErrorCode(klass * 100 + number, reason)


def _enc_error_code(err: Any, _hdr: bytes) -> bytes:
    code, reason = err
    if not isinstance(code, int) or not 300 <= code <= 699:
        raise LocalProtocolError(f"error code out of range: {code!r}")
    return struct.pack("!HBB", 0, code // 100, code % 100) + _enc_text(MAX_REASON_BYTES)(reason, b"")


def _dec_unknown_attributes(value: bytes, _hdr: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise BadPacket("UNKNOWN-ATTRIBUTES length is odd")
    return tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))


def _enc_unknown_attributes(types: Any, _hdr: bytes) -> bytes:
    return b"".join(int(t).to_bytes(2, "big") for t in types)


def _dec_response_port(value: bytes, _hdr: bytes) -> int:
    if len(value) != 4:
        raise BadPacket("RESPONSE-PORT must be 4 bytes")
    return int.from_bytes(value[:2], "big")


def _enc_response_port(port: Any, _hdr: bytes) -> bytes:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise LocalProtocolError(f"RESPONSE-PORT out of range: {port!r}")
    return struct.pack("!HH", port, 0)


def _dec_fixed(size_min: int, size_max: int) -> Callable[[bytes, bytes], bytes]:
    def dec(value: bytes, _hdr: bytes) -> bytes:
        if not size_min <= len(value) <= size_max:
            raise BadPacket(f"attribute must be {size_min}..{size_max} bytes, got {len(value)}")
        return value

    return dec


def _dec_u32(value: bytes, _hdr: bytes) -> int:
    if len(value) != 4:
        raise BadPacket("32-bit attribute must be 4 bytes")
    return int.from_bytes(value, "big")


def _enc_u32(v: Any, _hdr: bytes) -> bytes:
    return int(v).to_bytes(4, "big")


def _raw(value: bytes, _hdr: bytes) -> bytes:
    return bytes(value)


def _enc_raw(value: Any, _hdr: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"raw attribute must be bytes, got {type(value).__name__}")
    return bytes(value)


Decoder = Callable[[bytes, bytes], Any]
Encoder = Callable[[Any, bytes], bytes]

ATTRIBUTE_CODECS: dict[int, tuple[Decoder, Encoder]] = {
    Attr.MAPPED_ADDRESS: (_dec_address, _enc_address),
    Attr.RESPONSE_ADDRESS: (_dec_address, _enc_address),
    Attr.CHANGE_REQUEST: (_dec_change_request, _enc_change_request),
    Attr.SOURCE_ADDRESS: (_dec_address, _enc_address),
    Attr.CHANGED_ADDRESS: (_dec_address, _enc_address),
    Attr.USERNAME: (_dec_text(MAX_USERNAME_BYTES), _enc_text(MAX_USERNAME_BYTES)),
    Attr.PASSWORD: (_raw, _enc_raw),
    Attr.MESSAGE_INTEGRITY: (_dec_fixed(20, 20), _enc_raw),
    Attr.ERROR_CODE: (_dec_error_code, _enc_error_code),
    Attr.UNKNOWN_ATTRIBUTES: (_dec_unknown_attributes, _enc_unknown_attributes),
    Attr.REFLECTED_FROM: (_dec_address, _enc_address),
    Attr.REALM: (_dec_text(763), _enc_text(763)),
    Attr.NONCE: (_dec_text(763), _enc_text(763)),
    Attr.MESSAGE_INTEGRITY_SHA256: (_dec_fixed(16, 32), _enc_raw),
    Attr.XOR_MAPPED_ADDRESS: (_dec_xor_address, _enc_xor_address),
    Attr.XOR_MAPPED_ADDRESS_OLD: (_dec_xor_address, _enc_xor_address),
    Attr.PADDING: (_raw, _enc_raw),
    Attr.RESPONSE_PORT: (_dec_response_port, _enc_response_port),
    Attr.SOFTWARE: (_dec_text(MAX_SOFTWARE_BYTES), _enc_text(MAX_SOFTWARE_BYTES)),
    Attr.ALTERNATE_SERVER: (_dec_address, _enc_address),
    Attr.FINGERPRINT: (_dec_u32, _enc_u32),
    Attr.RESPONSE_ORIGIN: (_dec_address, _enc_address),
    Attr.OTHER_ADDRESS: (_dec_address, _enc_address),
}
KNOWN_ATTRIBUTES = frozenset(ATTRIBUTE_CODECS)


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
        data = codec[1](value, hdr) if codec else _enc_raw(value, hdr)
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


__all__ = [
    "ATTRIBUTE_CODECS",
    "Address",
    "Attr",
    "ChangeRequest",
    "Class",
    "ErrorCode",
    "HEADER_LEN",
    "KNOWN_ATTRIBUTES",
    "MAGIC_COOKIE",
    "MAX_ATTRIBUTES",
    "MAX_MESSAGE",
    "Message",
    "Method",
    "binding_request",
    "comprehension_required",
    "is_stun",
    "long_term_key",
    "new_transaction_id",
    "parse",
    "short_term_key",
]
