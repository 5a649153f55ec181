"""The integrated STUN server (Trio): RFC 5780 behaviour discovery, long-lived, stateless per request.

Two layouts:
- "rfc5780": one host owns both IPs; 2 IPs x 2 ports = 4 sockets. CHANGE-REQUEST is answered from
  the socket of the requested address.
- "two-host": this host owns one IP (2 ports); the other IP belongs to a peer host running the same
  server. A request asking for change-IP is handed to the peer over a small UDP control link; the peer
  answers from its own address. Both hosts are symmetric: each is the other's "alternate".
With only one IP and no peer ("single"), change-IP requests get 420 and no OTHER-ADDRESS is sent.

Bare Binding requests (the bulk of the load) are answered in C, in batches (recvmmsg/sendmmsg, see
core/mmsg.py); everything else goes through `decide()`, which is pure and sans-IO. Every request is
first charged to its source (core/mmsg.SourceLimiter, in C): a byte budget per source IP and a cap on
reply bytes per request byte, so the server can be neither taken over nor used as an amplifier by one
source.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from ..core.mmsg import SourceLimiter, StunFastPath
from ..proto.stun import (
    Address,
    Attr,
    BadPacket,
    Class,
    ErrorCode,
    Message,
    Method,
    parse,
)
from ..proto.stun_control import ControlReceiver, ControlSender, derive_key
from ..proto.stun_cookie import check_cookie, make_cookie

log = logging.getLogger(__name__)

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

    ips[0] is this host's primary IP. ips[1], when given, is the alternate IP: owned by this host in
    the rfc5780 layout, by `peer` in the two-host layout. ports = (primary, alternate); alternate 0 means
    one port only (change-port gets 420).
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

    def __post_init__(self) -> None:
        if self.cookie_key is None:
            self.cookie_key = derive_key(self.secret, b"cookie v1") if self.secret else os.urandom(32)

    @property
    def layout(self) -> str:
        if self.alt_ip is None:
            return "single"
        return "two-host" if self.peer else "rfc5780"

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


def _error(req: Message, code: int, reason: str, extra: Iterable[tuple[int, object]] = ()) -> bytes:
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
    send_from: Address | None = None,
    now: float | None = None,
) -> Decision:
    """Answer one parsed request received at `recv_at` from `src`. `send_from` is forced when the
    peer forwarded the request to us (it already decided which of our addresses answers, and checked
    the RESPONSE-PORT cookie). `now`: wall-clock seconds, for the cookies."""
    forwarded = send_from is not None
    if req.cls != Class.REQUEST:
        return Decision(None, reason="not_request")
    if req.method != Method.BINDING:
        return Decision(_error(req, 400, "only Binding is served"), recv_at, src, "error_400")
    unknown = req.unknown_required()
    if unknown:
        return Decision(
            _error(req, 420, "Unknown Attribute", [(Attr.UNKNOWN_ATTRIBUTES, tuple(unknown))]),
            recv_at, src, "error_420",
        )
    if send_from is None:
        change = req.get(Attr.CHANGE_REQUEST)
        ip, port = recv_at
        if change is not None and change.ip:
            other = config.other_ip(ip)
            if other is None:
                return Decision(_error(req, 420, "cannot change IP: no alternate address"),
                                recv_at, src, "error_420")
            ip = other
        if change is not None and change.port:
            other_port = config.other_port(port)
            if other_port is None:
                return Decision(_error(req, 420, "cannot change port: no alternate port"),
                                recv_at, src, "error_420")
            port = other_port
        send_from = (ip, port)
    dest = src
    response_port = req.get(Attr.RESPONSE_PORT)
    if response_port is not None and not req.classic:
        if response_port == 0:
            return Decision(_error(req, 400, "RESPONSE-PORT 0"), recv_at, src, "error_400")
        if Attr.PADDING in req:  # RFC 5780 §6.1: a padded answer must not go elsewhere
            return Decision(_error(req, 400, "PADDING with RESPONSE-PORT"), recv_at, src, "error_400")
        t = time.time() if now is None else now
        if not forwarded and not check_cookie(config.cookie_key, src[0], req.get(Attr.NONCE), t):
            # answered where it came from, with a cookie only a receiver at that IP gets to see
            cookie = make_cookie(config.cookie_key, src[0], t)
            return Decision(_error(req, 438, "use this NONCE", [(Attr.NONCE, cookie)]),
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
    if config.software:
        m.add(Attr.SOFTWARE, config.software)
    return m.encode()[20:]


# ---- the Trio server


@dataclass
class StunServer:
    """Handle given to task_status.started(): live counters and the bound addresses."""

    config: StunServerConfig
    addresses: list[Address] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    _socks: dict[Address, socket.socket] = field(default_factory=dict)
    _fast: dict[Address, StunFastPath] = field(default_factory=dict)
    _control: socket.socket | None = None
    _control_tx: ControlSender | None = None
    _control_rx: ControlReceiver | None = None
    limiter: SourceLimiter | None = None
    clock: Callable[[], float] = time.monotonic  # the turn budget
    wall_clock: Callable[[], float] = time.time  # cookies and control-frame freshness

    def counters(self) -> dict[str, int]:
        out = Counter(self.stats)
        for fp in self._fast.values():
            for k, v in fp.stats.items():
                out[k] += v
        out["answered"] += out["answered_fast"]
        if self.limiter is not None:
            for k, v in self.limiter.stats.items():
                out["limiter_shared" if k == "shared" else k] += v
        return dict(out)

    # -- per-datagram handling (synchronous: no request ever waits on another)

    def handle(self, data: bytes, src: Address, recv_at: Address) -> None:
        try:
            req = parse(data)
        except BadPacket:
            self.stats["malformed"] += 1
            return
        d = decide(req, src, recv_at, self.config, now=self.wall_clock())
        self._carry_out(d, data, src, recv_at)

    def _carry_out(self, d: Decision, data: bytes, src: Address, recv_at: Address) -> None:
        if d.response is None or d.send_from is None or d.dest is None:
            self.stats[d.reason] += 1
            return
        if d.reason != "answered":
            self.stats[d.reason] += 1
        # the request was charged to its source in C; the reply is charged here, whoever sends it
        # (a forwarded request is answered by the peer without charging again)
        if self.limiter is not None and not self.limiter.reply(d.dest, len(d.response)):
            return
        sock = self._socks.get(d.send_from)
        if sock is not None:
            self._send(sock, d.response, d.dest)
            return
        # the answering address is the peer's: hand the request over the control link
        if self._control is None or self._control_tx is None:
            self.stats["send_errors"] += 1
            return
        frame = self._control_tx.forward(d.send_from[1], recv_at, src, data, self.wall_clock())
        try:
            self._control.sendto(frame, (d.send_from[0], self.config.control_port))
            self.stats["forwarded"] += 1
        except OSError:
            self.stats["send_errors"] += 1

    def _send(self, sock: socket.socket, data: bytes, dest: Address) -> None:
        try:
            sock.sendto(data, dest)
            self.stats["answered"] += 1
        except OSError:
            self.stats["send_errors"] += 1

    def handle_control(self, data: bytes, src: Address) -> None:
        peer_ip = self.config.alt_ip
        if src[0] != peer_ip or self._control_rx is None:
            self.stats["control_rejected"] += 1
            return
        try:
            fwd = self._control_rx.accept(data, self.wall_clock())
            req = parse(fwd.request)
        except BadPacket:
            self.stats["control_rejected"] += 1
            return
        send_from = (self.config.ip, fwd.port)
        if send_from not in self._socks or fwd.recv_at[0] != peer_ip:
            self.stats["control_rejected"] += 1
            return
        self.stats["forwarded_in"] += 1
        d = decide(req, fwd.src, fwd.recv_at, self.config, send_from=send_from, now=self.wall_clock())
        if d.response is not None and d.dest is not None:
            self._send(self._socks[send_from], d.response, d.dest)

    # -- loops

    def _handle_safely(self, data: bytes, src: Address, at: Address) -> None:
        try:
            self.handle(data, src, at)
        except Exception:
            # a bug on one odd request must not stop the service for everyone else
            self.stats["internal_error"] += 1
            log.exception("STUN request from %s:%s", *src)

    def serve_turn(self, at: Address, pending: deque) -> None:
        """One turn on the event loop for the socket at `at`: batches until it is drained or the
        time budget is spent. Datagrams received but not yet handled wait in `pending` (at most one
        batch) for the next turn."""
        sock, fast = self._socks[at], self._fast[at]
        deadline = self.clock() + self.config.turn_budget
        while True:
            while pending:
                self._handle_safely(*pending.popleft(), at)
                if self.clock() >= deadline:
                    return
            try:
                pending.extend(fast.serve(sock))
            except BlockingIOError:
                return
            except OSError:
                self.stats["recv_errors"] += 1
                return
            if self.clock() >= deadline:
                return

    async def _serve_socket(self, at: Address) -> None:
        pending: deque = deque()
        while True:
            if pending:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(self._socks[at])
            self.serve_turn(at, pending)

    def control_turn(self) -> None:
        """Control frames until none waits or the time budget is spent (the peer's IP can be
        spoofed: a flood of frames must not hold the loop either)."""
        sock = self._control
        assert sock is not None
        deadline = self.clock() + self.config.turn_budget
        while self.clock() < deadline:
            try:
                data, src = sock.recvfrom(4096)
            except BlockingIOError:
                return
            except OSError:
                self.stats["recv_errors"] += 1
                return
            try:
                self.handle_control(data, src[:2])
            except Exception:
                self.stats["internal_error"] += 1
                log.exception("control frame from %s:%s", *src[:2])

    async def _serve_control(self) -> None:
        assert self._control is not None
        while True:
            await trio.lowlevel.wait_readable(self._control)
            self.control_turn()

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        if self._control is not None:
            self._control.close()


def _bind(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((ip, port))
    except OSError:
        s.close()
        raise
    return s


def open_stun_server(config: StunServerConfig) -> StunServer:
    """Bind every socket of the layout (synchronously, so errors surface before serving)."""
    if config.peer and config.alt_ip is None:
        raise ValueError("two-host layout needs alt_ip (the peer's address)")
    # both raise ControlKeyError (a ValueError) without a usable secret: no unauthenticated link
    control = (ControlSender(config.secret, config.alt_ip, start=time.time()),
               ControlReceiver(config.secret, config.ip)) if config.peer else (None, None)
    if not 0 < config.port <= 65535 or not 0 <= config.alt_port <= 65535 or config.alt_port == config.port:
        # OTHER-ADDRESS names the ports, so they must be known before binding: no ephemeral ports
        raise ValueError(f"ports must be fixed and distinct, got {config.port}/{config.alt_port}")
    if config.rate_limit < 0 or (config.rate_limit and config.rate_burst <= 0):
        raise ValueError("rate_limit must be >= 0 (0: off) and rate_burst > 0")
    srv = StunServer(config)
    srv._control_tx, srv._control_rx = control
    if config.rate_limit:
        srv.limiter = SourceLimiter(config.rate_limit, config.rate_burst,
                                    max_amplification=config.max_amplification,
                                    slots=config.limiter_slots)
    try:
        for ip in config.local_ips:
            for port in config.ports:
                s = _bind(ip, port)
                at = (ip, s.getsockname()[1])
                srv._socks[at] = s
                srv.addresses.append(at)
                tail = fast_tail(at, config) if config.fast_path else None
                srv._fast[at] = StunFastPath(
                    tail, n=config.batch, replay_window_ms=config.replay_window_ms,
                    limiter=srv.limiter,
                )
        if config.peer:
            srv._control = _bind(config.ip, config.control_port)
    except BaseException:
        srv.close()
        raise
    return srv


async def serve_stun(config: StunServerConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve forever. task_status.started() receives the StunServer (counters, addresses)."""
    srv = open_stun_server(config)
    try:
        async with trio.open_nursery() as nursery:
            for at in srv.addresses:
                nursery.start_soon(srv._serve_socket, at)
            if srv._control is not None:
                nursery.start_soon(srv._serve_control)
            task_status.started(srv)
    finally:
        srv.close()


__all__ = [
    "DEFAULT_ALT_PORT",
    "DEFAULT_CONTROL_PORT",
    "DEFAULT_PORT",
    "Decision",
    "StunServer",
    "StunServerConfig",
    "decide",
    "fast_tail",
    "open_stun_server",
    "serve_stun",
]
