"""The STUN server's decisions, sans-IO: its configuration (layout, alternate address, limits) and,
for one parsed request, what to answer, from which of our addresses, to where (`decide`), or the
constant tail of the C fast path's answers (`fast_tail`). The Trio server (io/stun_server.py) and
STUN over TCP (io/stun_tcp.py) carry the decisions out."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .stun import Message
from .stun_attrs import Address, Attr, ChangeRequest, Class, ErrorCode, Method
from .stun_control import derive_key
from .stun_cookie import check_cookie, make_cookie

DEFAULT_PORT = 3478
DEFAULT_ALT_PORT = 3479
DEFAULT_CONTROL_PORT = 3480
SOFTWARE = "nattrav"
MAX_PADDING = 1024
# per source IP (IPv6: /64), both directions, IP+UDP headers included: ~900 bare Binding exchanges at
# once, then ~900/s. Far above what a client needs (a full probe is ~20 requests), and an address
# whose IP is spoofed receives at most this much from us.
DEFAULT_RATE_LIMIT = 128 * 1024
DEFAULT_MAX_AMPLIFICATION = 3.0


@dataclass
class StunServerConfig:
    """Where the server listens and what its alternate address is.

    ip is this host's primary IP. alt_ip, when given, is the alternate IP: owned by this host in
    the rfc5780 layout, by `peer` in the two-host layout. ports = (primary, alternate); alternate 0 means
    one port only (change-port gets 420). With one IP ("single") and two ports, the second port is
    named in OTHER-PORT (stun_attrs.py says why not in OTHER-ADDRESS).

    Every address here is the one clients see. A host behind a 1:1 NAT (a cloud VM's public IP is
    the provider's, the VM holds a private one) binds elsewhere: `bind` maps such a public IP to the
    local address its sockets bind to (coturn's --external-ip), so RESPONSE-ORIGIN, OTHER-ADDRESS and
    the two-host link all speak of the public addresses.
    """

    ip: str = "127.0.0.1"
    alt_ip: str | None = None
    port: int = DEFAULT_PORT
    alt_port: int = DEFAULT_ALT_PORT
    # two-host layout: the alternate IP lives on a peer reached over the control link, which is
    # authenticated with `secret` (required, >= 16 bytes, the same on both hosts)
    peer: bool = False
    control_port: int = DEFAULT_CONTROL_PORT
    secret: bytes | None = None
    # where control frames to the peer go and come from, when not its public alt_ip (a private
    # address inside the provider's network); None: alt_ip
    peer_link: str | None = None
    # public IP -> the local IP its sockets bind to (1:1 NAT); an IP not named binds as itself
    bind: dict[str, str] = field(default_factory=dict)
    # keys the RESPONSE-PORT cookies; derived from `secret` when there is one, so that both hosts of
    # the two-host layout accept each other's cookies
    cookie_key: bytes | None = None
    software: str | None = SOFTWARE
    fast_path: bool = True
    batch: int = 64
    replay_window_ms: int = 50
    # the longest a socket keeps the (shared) event loop before yielding, in seconds: work is
    # bounded by time, not by a count of requests whose cost an attacker chooses
    turn_budget: float = 0.002
    # per-source limits (bytes/s and bytes; 0 = no limiter) and the reply/request byte ratio cap
    rate_limit: int = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_LIMIT
    max_amplification: float = DEFAULT_MAX_AMPLIFICATION
    limiter_slots: int = 65536
    # every socket bound with SO_REUSEPORT: one of an instance's several processes (nattrav-server
    # --processes), each with the whole layout (a change-IP answer leaves from the alternate socket
    # of whichever process got the request); they share cookie_key, and each limits sources alone
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.cookie_key is None:
            self.cookie_key = derive_key(self.secret, b"cookie v1") if self.secret else os.urandom(32)

    @property
    def layout(self) -> str:
        if self.alt_ip is None:
            return "single"
        return "two-host" if self.peer else "rfc5780"

    def bind_ip(self, ip: str) -> str:
        """The local address to bind for the public address `ip`."""
        return self.bind.get(ip, ip)

    @property
    def link_ip(self) -> str | None:
        """The peer's address on the control link (two-host layout)."""
        return self.peer_link or self.alt_ip

    def other_port_attr(self, at: Address) -> int | None:
        """OTHER-PORT for a request received at `at`: only a one-IP server with two ports sends it
        (with a second IP, OTHER-ADDRESS says it all)."""
        return self.other_port(at[1]) if self.alt_ip is None else None

    @property
    def ports(self) -> list[int]:
        return [self.port] + ([self.alt_port] if self.alt_port else [])

    @property
    def local_ips(self) -> list[str]:
        if self.alt_ip is not None and not self.peer:
            return [self.ip, self.alt_ip]
        return [self.ip]

    def other_ip(self, ip: str) -> str | None:
        if self.alt_ip is None:
            return None
        return self.alt_ip if ip == self.ip else self.ip

    def other_port(self, port: int) -> int | None:
        if not self.alt_port:
            return None
        return self.alt_port if port == self.port else self.port

    def answering(self, at: Address, change: ChangeRequest | None) -> tuple[Address | None, str]:
        """The address that answers a request received at `at` asking for `change` (RFC 5780's
        CHANGE-REQUEST), or (None, why not) when this layout has none."""
        ip, port = at
        if change is not None and change.ip:
            ip = self.other_ip(ip)
            if ip is None:
                return None, "cannot change IP: no alternate address"
        if change is not None and change.port:
            port = self.other_port(port)
            if port is None:
                return None, "cannot change port: no alternate port"
        return (ip, port), ""

    def other_address(self, at: Address) -> Address | None:
        """RFC 5780 OTHER-ADDRESS for a request received at `at`: differs in both IP and port, so
        it can never name the address the request came in on."""
        ip, port = self.other_ip(at[0]), self.other_port(at[1])
        return (ip, port) if ip is not None and port is not None else None


# ---- the pure part: request in, response (or nothing) out


@dataclass
class Decision:
    """What to do with one request: send `response` from `send_from` to `dest`, or drop it."""

    response: bytes | None
    send_from: Address | None = None
    dest: Address | None = None
    reason: str = "answered"


def error_response(req: Message, code: int, reason: str, extra: Iterable[tuple[int, object]] = ()) -> bytes:
    resp = Message(req.method, Class.ERROR, req.transaction_id)
    resp.add(Attr.ERROR_CODE, ErrorCode(code, reason))
    for t, v in extra:
        resp.add(t, v)
    return resp.encode(fingerprint=not req.classic and Attr.FINGERPRINT in req)


def decide(
    req: Message,
    src: Address,
    recv_at: Address,
    config: StunServerConfig,
    *,
    now: float,
    send_from: Address | None = None,
) -> Decision:
    """Answer one parsed request received at `recv_at` from `src`. `send_from` is forced when the
    peer forwarded the request to us (it already decided which of our addresses answers, and checked
    the RESPONSE-PORT cookie). `now`: wall-clock seconds (time.time()), for the cookies."""
    forwarded = send_from is not None
    if req.cls != Class.REQUEST:
        return Decision(None, reason="not_request")
    if req.method != Method.BINDING:
        return Decision(error_response(req, 400, "only Binding is served"), recv_at, src, "error_400")
    unknown = req.unknown_required()
    if unknown:
        return Decision(
            error_response(req, 420, "Unknown Attribute", [(Attr.UNKNOWN_ATTRIBUTES, tuple(unknown))]),
            recv_at, src, "error_420",
        )
    if send_from is None:
        send_from, why = config.answering(recv_at, req.get(Attr.CHANGE_REQUEST))
        if send_from is None:
            return Decision(error_response(req, 420, why), recv_at, src, "error_420")
    dest = src
    response_port = req.get(Attr.RESPONSE_PORT)
    if response_port is not None and not req.classic:
        if response_port == 0:
            return Decision(error_response(req, 400, "RESPONSE-PORT 0"), recv_at, src, "error_400")
        if Attr.PADDING in req:  # RFC 5780 §6.1: a padded answer must not go elsewhere
            return Decision(error_response(req, 400, "PADDING with RESPONSE-PORT"), recv_at, src, "error_400")
        if not forwarded and not check_cookie(config.cookie_key, src[0], req.get(Attr.NONCE), now):
            # answered where it came from, with a cookie only a receiver at that IP gets to see
            cookie = make_cookie(config.cookie_key, src[0], now)
            return Decision(error_response(req, 438, "use this NONCE", [(Attr.NONCE, cookie)]),
                            recv_at, src, "error_438")
        dest = (src[0], response_port)
    resp = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
    other = config.other_address(recv_at)
    if req.classic:
        resp.add(Attr.MAPPED_ADDRESS, src)
        resp.add(Attr.SOURCE_ADDRESS, send_from)
        if other is not None:
            resp.add(Attr.CHANGED_ADDRESS, other)
    else:
        resp.add(Attr.XOR_MAPPED_ADDRESS, src)
        resp.add(Attr.RESPONSE_ORIGIN, send_from)
        if other is not None:
            resp.add(Attr.OTHER_ADDRESS, other)
        other_port = config.other_port_attr(recv_at)
        if other_port is not None:
            resp.add(Attr.OTHER_PORT, other_port)
    # RFC 3489 clients (pystun3 among them) walk attributes without padding: give them only the
    # 3489 attributes, all multiples of 4 bytes long
    if config.software and not req.classic:
        resp.add(Attr.SOFTWARE, config.software)
    padding = req.get(Attr.PADDING)
    if isinstance(padding, bytes) and not req.classic:
        # never larger than what the client sent: no amplification
        resp.add(Attr.PADDING, b"\0" * min(len(padding), MAX_PADDING))
    fingerprint = not req.classic and Attr.FINGERPRINT in req
    return Decision(resp.encode(fingerprint=fingerprint), send_from, dest)


def fast_tail(recv_at: Address, config: StunServerConfig) -> bytes:
    """Attributes after XOR-MAPPED-ADDRESS for a bare request received at recv_at (constant per
    socket), for the C fast path."""
    m = Message(Method.BINDING, Class.SUCCESS, b"\0" * 12)
    m.add(Attr.RESPONSE_ORIGIN, recv_at)
    other = config.other_address(recv_at)
    if other is not None:
        m.add(Attr.OTHER_ADDRESS, other)
    other_port = config.other_port_attr(recv_at)
    if other_port is not None:
        m.add(Attr.OTHER_PORT, other_port)
    if config.software:
        m.add(Attr.SOFTWARE, config.software)
    return m.encode()[20:]


__all__ = ["DEFAULT_ALT_PORT", "DEFAULT_CONTROL_PORT", "DEFAULT_MAX_AMPLIFICATION", "DEFAULT_PORT",
           "DEFAULT_RATE_LIMIT", "Decision", "StunServerConfig", "decide", "error_response", "fast_tail"]
