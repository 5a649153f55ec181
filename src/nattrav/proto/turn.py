"""The client side of TURN (RFC 8656), sans-IO: one allocation on one server, with the long-term
credential mechanism, permissions, channels and refreshes; TCP allocations (RFC 6062) for the TCP
mode. It builds on the STUN codec (proto/stun.py, proto/stun_attrs.py's tables).

`TurnClient` is fed every datagram (or stream message) that came from the server (`receive`) and
the time (`tick`); it says what to send (`take_outgoing`) and what happened (`take_events`). It
never touches a socket or a clock: io/turn.py drives it over UDP or a TCP connection.

The server is one of ours (its credentials come from our rendezvous server, proto/turn_rest.py), but
its packets travel the Internet: a success response must carry a valid MESSAGE-INTEGRITY, anything
that does not parse is dropped (and counted), and nothing it says makes us send anywhere but to it.
Data from peers (Data indications, ChannelData) is not authenticated by TURN; what rides on it is
(the punch handshake's MACs, QUIC, TLS).
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadPacket, LocalProtocolError
from .stun import Message, is_stun, long_term_key, new_transaction_id, parse
from .stun_attrs import Address, Attr, Class, ErrorCode, Method

UDP, TCP = 17, 6  # REQUESTED-TRANSPORT's protocol numbers
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF  # RFC 8656 §12
CHANNEL_HEADER = struct.Struct("!HH")
DEFAULT_LIFETIME = 600  # seconds asked for an allocation (the server may grant less)
PERMISSION_LIFETIME = 300.0  # RFC 8656 §9: fixed by the protocol
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
REFRESH_MARGIN = 60.0  # refresh this long before something expires (at least half-way)
SOFTWARE = "nattrav"
MAX_NONCE_RETRIES = 2  # 438 (stale nonce) or a new realm: retry this often, then fail


class Kind(enum.StrEnum):
    """What a request was for (its answer's event says it)."""

    ALLOCATE = "allocate"
    REFRESH = "refresh"
    PERMISSION = "permission"
    CHANNEL = "channel"
    CONNECTION_BIND = "connection-bind"


_METHOD = {Kind.ALLOCATE: Method.ALLOCATE, Kind.REFRESH: Method.REFRESH, Kind.PERMISSION: Method.CREATE_PERMISSION,
           Kind.CHANNEL: Method.CHANNEL_BIND, Kind.CONNECTION_BIND: Method.CONNECTION_BIND}


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocated:
    relayed: Address  # XOR-RELAYED-ADDRESS: where peers send to reach us
    mapped: Address  # XOR-MAPPED-ADDRESS: our address as the server saw it
    lifetime: int


@dataclass(frozen=True)
class Refreshed:
    lifetime: int  # 0: the allocation is released


@dataclass(frozen=True)
class PermissionInstalled:
    ips: tuple[str, ...]


@dataclass(frozen=True)
class ChannelBound:
    peer: Address
    channel: int


@dataclass(frozen=True)
class PeerData:
    peer: Address
    data: bytes
    channel: int | None = None  # None: a Data indication


@dataclass(frozen=True)
class ConnectionAttempt:
    """RFC 6062: a peer connected to our TCP relayed address (bind it on a new connection)."""

    connection_id: int
    peer: Address


@dataclass(frozen=True)
class Failed:
    """A request failed: an error response, too many retries, or no answer at all."""

    kind: Kind
    reason: str
    code: int | None = None
    fatal: bool = False  # the allocation is gone (or never was)


# ---- ChannelData ---------------------------------------------------------------------------------


def is_channel_data(data: bytes) -> bool:
    """RFC 7983's demultiplexing: ChannelData starts with 0b01 (0x40..0x4F for valid channels)."""
    return len(data) >= CHANNEL_HEADER.size and 0x40 <= data[0] <= 0x4F


def encode_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """One ChannelData message; `pad` to 4 bytes for a stream transport (RFC 8656 §12.5)."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise LocalProtocolError(f"channel {channel:#x} outside {CHANNEL_MIN:#x}..{CHANNEL_MAX:#x}")
    if len(payload) > 0xFFFF:
        raise LocalProtocolError("ChannelData payload longer than 65535 bytes")
    out = CHANNEL_HEADER.pack(channel, len(payload)) + bytes(payload)
    return out + b"\0" * (-len(out) % 4) if pad else out


def parse_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel, payload); BadPacket for anything else. Over UDP the datagram may carry padding
    after the payload (RFC 8656 §12.5 allows it), so only a payload longer than the datagram is bad."""
    if len(data) < CHANNEL_HEADER.size:
        raise BadPacket("ChannelData shorter than its header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise BadPacket(f"channel {channel:#x} outside {CHANNEL_MIN:#x}..{CHANNEL_MAX:#x}")
    if CHANNEL_HEADER.size + length > len(data):
        raise BadPacket(f"ChannelData says {length} bytes, carries {len(data) - CHANNEL_HEADER.size}")
    return channel, bytes(data[CHANNEL_HEADER.size:CHANNEL_HEADER.size + length])


def stream_message_length(buf: bytes | bytearray) -> int | None:
    """How long the STUN or ChannelData message at the start of a TCP stream is (padding included),
    None when more bytes are needed; BadPacket when the stream is not TURN (it cannot resync)."""
    if len(buf) < 4:
        return None
    if buf[0] < 0x04:  # STUN: 20-byte header + length (a multiple of 4)
        length = (buf[2] << 8) | buf[3]
        if length % 4:
            raise BadPacket("STUN length is not a multiple of 4")
        return 20 + length
    if 0x40 <= buf[0] <= 0x4F:
        length = (buf[2] << 8) | buf[3]
        return 4 + length + (-length % 4)
    raise BadPacket(f"byte {buf[0]:#04x} starts neither STUN nor ChannelData")


# ---- the client ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    kind: Kind
    request: Message
    wire: bytes
    sent: int = 0
    deadline: float = 0.0
    retries: int = 0  # nonce/realm retries
    info: Any = None  # the peer IPs, the channel and peer, the connection ID


@dataclass
class TurnClient:
    """One allocation's client side. `transport` is what the relay carries (UDP, or TCP for RFC
    6062); `reliable` says our link to the server is a stream (TCP: no retransmissions)."""

    username: str
    password: str
    transport: int = UDP
    reliable: bool = False
    lifetime: int = DEFAULT_LIFETIME
    rto: float = 0.25  # first retransmission (RFC 8489 says 0.5 s; ours are on known-good servers)
    rc: int = 7  # requests sent in all
    rm: int = 16  # the last request's wait, in RTOs
    stream_timeout: float = 39.5  # a request over TCP fails after this long (RFC 8489 Ti)
    software: str | None = SOFTWARE

    relayed: Address | None = field(default=None, init=False)
    mapped: Address | None = field(default=None, init=False)
    expires: float | None = field(default=None, init=False)  # when the allocation ends unless refreshed
    state: str = field(default="idle", init=False)  # idle | allocating | allocated | released | failed
    permissions: dict[str, float] = field(default_factory=dict, init=False)  # IP -> expiry
    channels: dict[Address, tuple[int, float]] = field(default_factory=dict, init=False)  # peer -> (number, expiry)
    stats: Counter = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        if self.transport not in (UDP, TCP):
            raise LocalProtocolError(f"transport must be UDP ({UDP}) or TCP ({TCP})")
        if not self.username or not self.password:
            raise LocalProtocolError("TURN needs a username and a password")
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._out: list[bytes] = []
        self._events: list[Any] = []
        self._peer_of_channel: dict[int, Address] = {}
        self._next_channel = CHANNEL_MIN
        self._wanted_permissions: set[str] = set()
        self._bind_requests: dict[bytes, int] = {}  # ConnectionBind transaction -> connection ID
        self.granted = 0  # the allocation's lifetime as the server granted it

    # -- outputs

    def take_outgoing(self) -> list[bytes]:
        """Messages to send to the server, in order."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Any]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """When tick() next has work: a retransmission, a request's timeout, a refresh."""
        times = [p.deadline for p in self._pending.values()]
        times += [t for t in self._refresh_times() if t is not None]
        return min(times) if times else None

    # -- requests

    def allocate(self, now: float) -> None:
        if self.state != "idle":
            raise LocalProtocolError(f"allocate() in state {self.state}")
        self.state = "allocating"
        self._request(Kind.ALLOCATE, now)

    def create_permission(self, ips: list[str] | tuple[str, ...], now: float) -> None:
        """Let packets from these IPs in (and ours out to them); kept fresh until release()."""
        self._need_allocation()
        ips = tuple(dict.fromkeys(ips))
        if not ips:
            return
        self._wanted_permissions.update(ips)
        self._request(Kind.PERMISSION, now, info=ips)

    def bind_channel(self, peer: Address, now: float) -> int:
        """A channel to `peer` (4-byte headers instead of a Send indication's 36); its number.
        Binding also installs the permission for the peer's IP (RFC 8656 §12.2)."""
        self._need_allocation()
        peer = (str(peer[0]), int(peer[1]))
        if peer in self.channels:
            return self.channels[peer][0]
        if any(p.kind is Kind.CHANNEL and p.info[1] == peer for p in self._pending.values()):
            return next(p.info[0] for p in self._pending.values() if p.kind is Kind.CHANNEL and p.info[1] == peer)
        if self._next_channel > CHANNEL_MAX:
            raise LocalProtocolError("no channel numbers left")
        number = self._next_channel
        self._next_channel += 1
        self._wanted_permissions.add(peer[0])
        self._request(Kind.CHANNEL, now, info=(number, peer))
        return number

    def refresh(self, now: float, lifetime: int | None = None) -> None:
        self._need_allocation()
        self._request(Kind.REFRESH, now, info=self.lifetime if lifetime is None else lifetime)

    def release(self, now: float) -> None:
        """Give the allocation back (a Refresh with LIFETIME 0), best effort."""
        if self.state == "allocated":
            self._wanted_permissions.clear()
            self._request(Kind.REFRESH, now, info=0)
            self.state = "released"

    def connection_bind(self, connection_id: int, now: float) -> bytes:
        """RFC 6062: the ConnectionBind request to send on a NEW connection to the server (its
        answer comes back on that connection: feed it to check_connection_bind)."""
        self._need_allocation()
        msg = self._message(Kind.CONNECTION_BIND, connection_id)
        self._authenticate(msg)
        wire = msg.encode(integrity_key=self._key, fingerprint=True)
        self._bind_requests[msg.transaction_id] = connection_id
        return wire

    def check_connection_bind(self, data: bytes) -> int:
        """The connection ID the answer bound (the data connection now carries the peer's bytes),
        or BadPacket when it is not a valid success for a request of ours."""
        msg = parse(data)
        cid = self._bind_requests.pop(msg.transaction_id, None)
        if cid is None or msg.method != Method.CONNECTION_BIND:
            raise BadPacket("not an answer to our ConnectionBind")
        if msg.cls == Class.ERROR:
            err = msg.get(Attr.ERROR_CODE) or ErrorCode(0, "")
            raise BadPacket(f"ConnectionBind refused: {err.code} {err.reason}")
        if msg.cls != Class.SUCCESS or self._key is None or not msg.check_integrity(self._key):
            raise BadPacket("ConnectionBind answer without valid MESSAGE-INTEGRITY")
        return cid

    # -- data to peers

    def wrap(self, peer: Address, payload: bytes) -> bytes:
        """What to send to the server so that `payload` reaches `peer`: ChannelData on a bound
        channel, else a Send indication (the peer's IP needs a permission either way)."""
        peer = (str(peer[0]), int(peer[1]))
        bound = self.channels.get(peer)
        if bound is not None:
            return encode_channel_data(bound[0], payload, pad=self.reliable)
        msg = Message(Method.SEND, Class.INDICATION, new_transaction_id())
        msg.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, bytes(payload))
        return msg.encode()

    # -- inputs

    def receive(self, data: bytes, now: float) -> None:
        """One message from the server (a datagram, or one message cut from the stream)."""
        if is_channel_data(data):
            try:
                channel, payload = parse_channel_data(data)
            except BadPacket:
                self.stats["bad_channel_data"] += 1
                return
            peer = self._peer_of_channel.get(channel)
            if peer is None:
                self.stats["unknown_channel"] += 1
                return
            self._events.append(PeerData(peer, payload, channel))
            return
        if not is_stun(data):
            self.stats["not_turn"] += 1
            return
        try:
            msg = parse(data)
        except BadPacket:
            self.stats["bad_packet"] += 1
            return
        if msg.fingerprint_present() and not msg.check_fingerprint():
            self.stats["bad_fingerprint"] += 1
            return
        if msg.cls == Class.INDICATION:
            self._indication(msg)
            return
        pending = self._pending.get(msg.transaction_id)
        if pending is None or msg.cls not in (Class.SUCCESS, Class.ERROR) or msg.method != pending.request.method:
            self.stats["unexpected"] += 1
            return
        if msg.cls == Class.ERROR:
            self._error(pending, msg, now)
            return
        if self._key is not None and not msg.check_integrity(self._key):
            self.stats["bad_integrity"] += 1  # a forged answer: keep waiting for the real one
            return
        del self._pending[msg.transaction_id]
        self._success(pending, msg, now)

    def tick(self, now: float) -> None:
        """Retransmit, time out, refresh what is about to expire."""
        for tid, p in list(self._pending.items()):
            if now < p.deadline:
                continue
            if self.reliable or p.sent >= self.rc:
                del self._pending[tid]
                self._fail(p.kind, f"no answer from the TURN server ({p.sent} requests)", None)
                continue
            p.sent += 1
            p.deadline = now + (self.rto * self.rm if p.sent >= self.rc else self.rto * 2 ** (p.sent - 1))
            self._out.append(p.wire)
        if self.state != "allocated":
            return
        alloc, perm, chan = self._refresh_times()
        if alloc is not None and now >= alloc:
            self.refresh(now)
        if perm is not None and now >= perm:
            due = [ip for ip in self._wanted_permissions if self.permissions.get(ip, 0.0) - REFRESH_MARGIN <= now
                   and not self._pending_for(Kind.PERMISSION, ip)]
            if due:
                self._request(Kind.PERMISSION, now, info=tuple(due))
        if chan is not None and now >= chan:
            for peer, (number, exp) in list(self.channels.items()):
                if exp - REFRESH_MARGIN <= now and not self._pending_for(Kind.CHANNEL, peer):
                    self._request(Kind.CHANNEL, now, info=(number, peer))

    # -- internals

    def _need_allocation(self) -> None:
        if self.state != "allocated":
            raise LocalProtocolError(f"no allocation (state {self.state})")

    def _pending_for(self, kind: Kind, key: Any = None) -> bool:
        for p in self._pending.values():
            if p.kind is kind and (key is None or (kind is Kind.CHANNEL and p.info[1] == key)
                                   or (kind is Kind.PERMISSION and key in p.info)):
                return True
        return False

    def _refresh_times(self) -> tuple[float | None, float | None, float | None]:
        if self.state != "allocated" or self.expires is None:
            return None, None, None
        alloc = None if self._pending_for(Kind.REFRESH) else self.expires - max(REFRESH_MARGIN, self.granted / 2)
        due = [self.permissions[ip] - REFRESH_MARGIN for ip in self._wanted_permissions
               if ip in self.permissions and not self._pending_for(Kind.PERMISSION, ip)]
        chans = [exp - REFRESH_MARGIN for peer, (_n, exp) in self.channels.items()
                 if not self._pending_for(Kind.CHANNEL, peer)]
        return alloc, min(due) if due else None, min(chans) if chans else None

    def _message(self, kind: Kind, info: Any) -> Message:
        msg = Message(_METHOD[kind], Class.REQUEST, new_transaction_id())
        if kind is Kind.ALLOCATE:
            msg.add(Attr.REQUESTED_TRANSPORT, self.transport)
            msg.add(Attr.LIFETIME, self.lifetime)
            if self.transport == UDP:
                msg.add(Attr.DONT_FRAGMENT, b"")
        elif kind is Kind.REFRESH:
            msg.add(Attr.LIFETIME, int(info))
        elif kind is Kind.PERMISSION:
            for ip in info:
                msg.add(Attr.XOR_PEER_ADDRESS, (ip, 0))
        elif kind is Kind.CHANNEL:
            number, peer = info
            msg.add(Attr.CHANNEL_NUMBER, number).add(Attr.XOR_PEER_ADDRESS, peer)
        elif kind is Kind.CONNECTION_BIND:
            msg.add(Attr.CONNECTION_ID, int(info))
        if self.software:
            msg.add(Attr.SOFTWARE, self.software)
        return msg

    def _authenticate(self, msg: Message) -> None:
        if self._key is not None:
            msg.add(Attr.USERNAME, self.username).add(Attr.REALM, self._realm).add(Attr.NONCE, self._nonce)

    def _request(self, kind: Kind, now: float, info: Any = None, retries: int = 0) -> None:
        msg = self._message(kind, info)
        self._authenticate(msg)
        wire = msg.encode(integrity_key=self._key, fingerprint=True) if self._key else msg.encode(fingerprint=True)
        first = self.stream_timeout if self.reliable else self.rto
        self._pending[msg.transaction_id] = _Pending(kind, msg, wire, 1, now + first, retries, info)
        self._out.append(wire)

    def _error(self, p: _Pending, msg: Message, now: float) -> None:
        err = msg.get(Attr.ERROR_CODE) or ErrorCode(0, "")
        if self._key is not None and Attr.MESSAGE_INTEGRITY in msg and not msg.check_integrity(self._key):
            self.stats["bad_integrity"] += 1  # a forged refusal: keep waiting for the real answer
            return
        del self._pending[msg.transaction_id]
        realm, nonce = msg.get(Attr.REALM), msg.get(Attr.NONCE)
        refused = err.code == 401 and Attr.USERNAME in p.request  # our credentials, not a challenge
        if (err.code in (401, 438) and not refused and isinstance(nonce, str) and p.retries < MAX_NONCE_RETRIES
                and (isinstance(realm, str) or self._realm is not None)):
            # 401 the first time (no credentials yet), 438 when the nonce went stale. The challenge
            # is unauthenticated, but all it can make us do is sign the same request again for it.
            if isinstance(realm, str):
                self._realm = realm
            self._nonce = nonce
            self._key = long_term_key(self.username, self._realm, self.password)
            self._request(p.kind, now, p.info, p.retries + 1)
            return
        why = f"{err.code} {err.reason}".strip()
        if refused:
            why += " (the relay credentials were refused: expired, or the server's secret differs)"
        self._fail(p.kind, why, err.code)

    def _fail(self, kind: Kind, reason: str, code: int | None) -> None:
        fatal = kind is Kind.ALLOCATE or (kind is Kind.REFRESH and code in (437, None))
        if fatal and self.state != "released":
            self.state = "failed"
        self._events.append(Failed(kind, reason, code, fatal))

    def _success(self, p: _Pending, msg: Message, now: float) -> None:
        if p.kind is Kind.ALLOCATE:
            relayed, mapped = msg.get(Attr.XOR_RELAYED_ADDRESS), msg.get(Attr.XOR_MAPPED_ADDRESS)
            lifetime = msg.get(Attr.LIFETIME)
            if relayed is None or mapped is None or not isinstance(lifetime, int) or lifetime <= 0:
                self._fail(Kind.ALLOCATE, "the server's Allocate answer lacks a relayed address or lifetime", None)
                return
            self.relayed, self.mapped, self.state = relayed, mapped, "allocated"
            self.granted = lifetime
            self.expires = now + lifetime
            self._events.append(Allocated(relayed, mapped, lifetime))
        elif p.kind is Kind.REFRESH:
            lifetime = msg.get(Attr.LIFETIME)
            lifetime = int(lifetime) if isinstance(lifetime, int) else int(p.info)
            self.expires, self.granted = now + lifetime, lifetime
            self._events.append(Refreshed(lifetime))
        elif p.kind is Kind.PERMISSION:
            for ip in p.info:
                self.permissions[ip] = now + PERMISSION_LIFETIME
            self._events.append(PermissionInstalled(tuple(p.info)))
        elif p.kind is Kind.CHANNEL:
            number, peer = p.info
            first = peer not in self.channels
            self.channels[peer] = (number, now + CHANNEL_LIFETIME)
            self._peer_of_channel[number] = peer
            self.permissions[peer[0]] = now + PERMISSION_LIFETIME
            if first:
                self._events.append(ChannelBound(peer, number))

    def _indication(self, msg: Message) -> None:
        if msg.method == Method.DATA:
            peer, data = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
            if peer is None or not isinstance(data, bytes):
                self.stats["bad_indication"] += 1
                return
            self._events.append(PeerData(peer, data))
        elif msg.method == Method.CONNECTION_ATTEMPT:
            cid, peer = msg.get(Attr.CONNECTION_ID), msg.get(Attr.XOR_PEER_ADDRESS)
            if not isinstance(cid, int) or peer is None:
                self.stats["bad_indication"] += 1
                return
            self._events.append(ConnectionAttempt(cid, peer))
        else:
            self.stats["unexpected"] += 1


__all__ = ["CHANNEL_MAX", "CHANNEL_MIN", "Allocated", "ChannelBound", "ConnectionAttempt",
           "Failed", "Kind", "PeerData", "PermissionInstalled", "Refreshed", "TCP", "TurnClient", "UDP",
           "encode_channel_data", "is_channel_data", "parse_channel_data", "stream_message_length"]
