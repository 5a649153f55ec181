"""The integrated STUN server (Trio): RFC 5780 behaviour discovery, long-lived, stateless per request.

Two layouts:
- "rfc5780": one host owns both IPs; 2 IPs x 2 ports = 4 sockets. CHANGE-REQUEST is answered from
  the socket of the requested address.
- "two-host": this host owns one IP (2 ports); the other IP belongs to a peer host running the same
  server. A request asking for change-IP is handed to the peer over a small UDP control link; the peer
  answers from its own address. Both hosts are symmetric: each is the other's "alternate".
With only one IP and no peer ("single"), change-IP requests get 420 and no OTHER-ADDRESS is sent;
its second port is named in OTHER-PORT (nattrav's attribute), so our clients still measure APDM and
port-dependent filtering against it.

Bare Binding requests (the bulk of the load) are answered in C, in batches (recvmmsg/sendmmsg, see
core/mmsg.py); everything else goes through proto/stun_server.py's `decide()`, which is pure and
sans-IO. Every request is
first charged to its source (core/mmsg.SourceLimiter, in C): a byte budget per source IP and a cap on
reply bytes per request byte, so the server can be neither taken over nor used as an amplifier by one
source.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..core.mmsg import SourceLimiter, StunFastPath
from ..errors import BadPacket
from ..proto.stun import parse
from ..proto.stun_attrs import Address
from ..proto.stun_control import ControlReceiver, ControlSender
from ..proto.stun_server import Decision, StunServerConfig, decide, fast_tail

log = logging.getLogger(__name__)


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
            self._control.sendto(frame, (self.config.link_ip, self.config.control_port))
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
        if src[0] not in (peer_ip, self.config.link_ip) or self._control_rx is None:
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


def _bind(ip: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
                s = _bind(config.bind_ip(ip), port, config.reuse_port)
                at = (ip, s.getsockname()[1])  # the address clients see, not the one bound behind a 1:1 NAT
                srv._socks[at] = s
                srv.addresses.append(at)
                tail = fast_tail(at, config) if config.fast_path else None
                srv._fast[at] = StunFastPath(
                    tail, n=config.batch, replay_window_ms=config.replay_window_ms,
                    limiter=srv.limiter,
                )
        if config.peer:
            srv._control = _bind(config.bind_ip(config.ip), config.control_port, config.reuse_port)
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


__all__ = ["StunServer", "open_stun_server", "serve_stun"]
