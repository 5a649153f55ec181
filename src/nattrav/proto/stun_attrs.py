"""STUN's tables: methods, classes, attribute types, and one codec (decoder, encoder) per attribute
type (`ATTRIBUTE_CODECS`), so adding an attribute is one line. Decoders get (value bytes, header
bytes 4..20: the XOR key) and raise BadPacket; encoders raise LocalProtocolError. proto/stun.py
builds and parses whole messages with them."""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import BadPacket, LocalProtocolError

MAX_SOFTWARE_BYTES = 763
MAX_REASON_BYTES = 763
MAX_USERNAME_BYTES = 513


class Method(enum.IntEnum):
    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489 only
    # TURN (RFC 8656) and TCP allocations (RFC 6062): proto/turn.py is their client
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


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
    CHANNEL_NUMBER = 0x000C  # RFC 8656 (TURN)
    LIFETIME = 0x000D  # RFC 8656
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656
    DATA = 0x0013  # RFC 8656
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656
    REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 8656
    EVEN_PORT = 0x0018  # RFC 8656
    REQUESTED_TRANSPORT = 0x0019  # RFC 8656
    DONT_FRAGMENT = 0x001A  # RFC 8656
    RESERVATION_TOKEN = 0x0022  # RFC 8656
    CONNECTION_ID = 0x002A  # RFC 6062 (TCP allocations)
    XOR_MAPPED_ADDRESS = 0x0020
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027  # RFC 5780
    XOR_MAPPED_ADDRESS_OLD = 0x8020  # pre-RFC 5389 drafts; still sent by some servers
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780
    # nattrav's own, comprehension-optional (unregistered, in the Expert Review range): a server with
    # ONE IP names its second port here. It cannot send OTHER-ADDRESS, which must differ in IP too:
    # an RFC 5780 client would then run test II against the primary address itself and call every
    # NAT endpoint-independent. Other clients ignore this attribute and see a server without RFC 5780.
    OTHER_PORT = 0xC4E1


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


def _dec_transport(value: bytes, _hdr: bytes) -> int:
    if len(value) != 4:
        raise BadPacket("REQUESTED-TRANSPORT must be 4 bytes")
    return value[0]


def _enc_transport(proto: Any, _hdr: bytes) -> bytes:
    if not isinstance(proto, int) or not 0 <= proto <= 255:
        raise LocalProtocolError(f"REQUESTED-TRANSPORT protocol out of range: {proto!r}")
    return bytes([proto, 0, 0, 0])


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


def encode_raw(value: Any, _hdr: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"raw attribute must be bytes, got {type(value).__name__}")
    return bytes(value)


Decoder = Callable[[bytes, bytes], Any]
Encoder = Callable[[Any, bytes], bytes]


def _text(limit: int) -> tuple[Decoder, Encoder]:
    return _dec_text(limit), _enc_text(limit)


_ADDRESS = (_dec_address, _enc_address)
_XOR_ADDRESS = (_dec_xor_address, _enc_xor_address)

ATTRIBUTE_CODECS: dict[int, tuple[Decoder, Encoder]] = {
    **dict.fromkeys([Attr.MAPPED_ADDRESS, Attr.RESPONSE_ADDRESS, Attr.SOURCE_ADDRESS, Attr.CHANGED_ADDRESS,
                     Attr.REFLECTED_FROM, Attr.ALTERNATE_SERVER, Attr.RESPONSE_ORIGIN, Attr.OTHER_ADDRESS], _ADDRESS),
    **dict.fromkeys([Attr.XOR_MAPPED_ADDRESS, Attr.XOR_MAPPED_ADDRESS_OLD, Attr.XOR_PEER_ADDRESS,
                     Attr.XOR_RELAYED_ADDRESS], _XOR_ADDRESS),
    **dict.fromkeys([Attr.PASSWORD, Attr.PADDING, Attr.DATA, Attr.DONT_FRAGMENT, Attr.EVEN_PORT],
                    (_raw, encode_raw)),
    Attr.RESERVATION_TOKEN: (_dec_fixed(8, 8), encode_raw),
    Attr.REQUESTED_TRANSPORT: (_dec_transport, _enc_transport),
    **dict.fromkeys([Attr.LIFETIME, Attr.CONNECTION_ID], (_dec_u32, _enc_u32)),
    Attr.USERNAME: _text(MAX_USERNAME_BYTES),
    Attr.REALM: _text(763),
    Attr.NONCE: _text(763),
    Attr.SOFTWARE: _text(MAX_SOFTWARE_BYTES),
    Attr.CHANGE_REQUEST: (_dec_change_request, _enc_change_request),
    Attr.MESSAGE_INTEGRITY: (_dec_fixed(20, 20), encode_raw),
    Attr.MESSAGE_INTEGRITY_SHA256: (_dec_fixed(16, 32), encode_raw),
    Attr.ERROR_CODE: (_dec_error_code, _enc_error_code),
    Attr.UNKNOWN_ATTRIBUTES: (_dec_unknown_attributes, _enc_unknown_attributes),
    # a 16-bit number and two reserved bytes, all three
    **dict.fromkeys([Attr.RESPONSE_PORT, Attr.OTHER_PORT, Attr.CHANNEL_NUMBER], (_dec_response_port, _enc_response_port)),
    Attr.FINGERPRINT: (_dec_u32, _enc_u32),
}
KNOWN_ATTRIBUTES = frozenset(ATTRIBUTE_CODECS)


__all__ = ["ATTRIBUTE_CODECS", "Address", "Attr", "ChangeRequest", "Class", "ErrorCode", "KNOWN_ATTRIBUTES",
           "Method", "comprehension_required", "encode_raw"]
