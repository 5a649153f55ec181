"""TCP traversal on Trio: low-TTL SYN, simultaneous open, authentication; the winner as a Stream.

Every socket of a traversal shares ONE local port (SO_REUSEADDR + SO_REUSEPORT): the port the TCP
STUN probes measured (held meanwhile by a listening socket), the low-TTL SYN sockets and the
connect() sockets.

Simultaneous open, against the agreed start time T (see proto/planner/tcp.py for who does what):
  T           the first side connect()s with a low IP TTL: the SYN leaves its NAT (which now maps
              exactly that flow) and dies one hop short of the peer's NAT, which never sees it.
              The TTL is restored at once, so the SYN-ACK and any retransmission go out normally.
  T + 0.1 s   the second side connect()s: its SYN passes the first side's opened NAT and meets the
              socket still in SYN_SENT, which answers with a SYN-ACK: simultaneous open.
The low-TTL socket must survive the ICMP time-exceeded its SYN provokes: Linux turns that ICMP into
EHOSTUNREACH and destroys a SYN_SENT socket. IP_MINTTL=2 on the socket makes TCP drop ICMP errors
whose quoted header carries a TTL below 2 (an expired packet is quoted with TTL 1, or 0), while real
segments from the peer arrive with TTLs far above 2. So the first side's NAT opens and its socket
waits, and the peer's NAT sees nothing before the peer's own SYN: this works even against NATs that
answer unsolicited SYNs with a RST.
Why no listener during a simultaneous open: a peer SYN taken by a listener is answered with a new
initial sequence number that the first side's conntrack (which saw our SYN) rejects as out of window,
and the half-open request then owns the 4-tuple (connect() gets EADDRNOTAVAIL). The listener is kept
only on a side the plan says the peer connects to (no NAT, or a full cone).
Errors from the probes (RST -> ECONNREFUSED, ICMP -> EHOSTUNREACH, EADDRINUSE/EADDRNOTAVAIL,
ETIMEDOUT) are counted and retried within the window.

Inside one network (plan.lan, proto/planner/lan.py) both sides also connect() from fresh ports to the
peer's LAN listener (a listener of its own on another port, opened with the report) and accept on
theirs, from the start time on, racing the strategy. Not the shared port: a listener there would take
the peer's SYNs meant for a simultaneous open (see above), and two connect()s between the shared
ports would cross no NAT to hold them: the first SYN meets no socket and is answered with a RST.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from dataclasses import dataclass, field

import trio

from ..core.errors import ICMP_ERRNOS
from ..core.limits import ensure_fd_capacity
from ..errors import BadPacket, FdLimitError, TcpPunchFailed
from ..proto.planner.lan import LAN_CONNECTS, LAN_INTERVAL
from ..proto.planner.tcp import TcpPlan
from ..proto.tcp_auth import StreamAuth
from ..proto.vocab import TcpStrategy
# RST on close: a dead attempt must not leave a TIME_WAIT that pins the shared port's 4-tuple
from .stun_tcp import close_with_rst as _abort
from .stun_tcp import reuse_socket

SECOND_DELAY = 0.1
# The cone side's guesses leave after the random side's low-TTL burst (a thousand connects take tens of
# ms); a guess that arrives before its mapping exists is dropped and its SYN retransmitted a second
# later on the same flow, so being early costs time, not the hit.
BIRTHDAY_DELAY = 0.15
IP_MINTTL = getattr(socket, "IP_MINTTL", 21)  # Linux <netinet/in.h>; Python does not export it
RETRY_PAUSE = 0.2
# a probe that met an ICMP error, a RST, a timeout or a 4-tuple still in use: try again
TOLERATED = ICMP_ERRNOS | {errno.ETIMEDOUT, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ECONNRESET,
                           errno.ECONNABORTED}


class PunchedStream(trio.abc.HalfCloseableStream):
    """The winning connection: a trio.SocketStream (as `socket_stream`) plus what the punch learned.
    Bytes the peer sent right behind the handshake come out of the first receive_some()."""

    def __init__(self, stream: trio.SocketStream, *, peer_addr: tuple[str, int], rtt: float,
                 strategy: TcpStrategy, via: str, leftover: bytes = b"") -> None:
        self.socket_stream = stream
        self.peer_addr = peer_addr
        self.local_addr = tuple(stream.socket.getsockname()[:2])
        self.rtt = rtt
        self.strategy = strategy
        self.via = via  # "connect" or "listener": which socket won
        self._leftover = leftover

    async def send_all(self, data) -> None:
        await self.socket_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.socket_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.socket_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._leftover:
            n = len(self._leftover) if max_bytes is None else max_bytes
            out, self._leftover = self._leftover[:n], self._leftover[n:]
            await trio.lowlevel.checkpoint()
            return out
        return await self.socket_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.socket_stream.aclose()


@dataclass
class _Race:
    plan: TcpPlan
    key: bytes
    deadline: float
    errors: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    winner: PunchedStream | None = None
    claimed: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    def error(self, exc: OSError, dest: tuple[str, int] | None = None) -> None:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        if dest is not None:  # by address: a window or a birthday aims at hundreds of ports
            name += f" from {dest[0]}"
        self.errors[name] = self.errors.get(name, 0) + 1

    def summary(self) -> str:
        errs = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{self.attempts} connect attempts, {self.accepted} accepted, {self.rejected} failed "
                f"authentication; errors: {errs}")


def _now_ns() -> int:
    return int(trio.current_time() * 1e9)


def open_listener(local: tuple[str, int]) -> socket.socket:
    """The listener on the shared local port (bound first: it also holds the port)."""
    s = reuse_socket()
    try:
        s.bind(local)
        s.listen(16)
    except OSError:
        s.close()
        raise
    return s


def low_ttl_connect(local: tuple[str, int], dest: tuple[str, int], ttl: int) -> socket.socket:
    """A non-blocking connect() from `local` to `dest` whose SYN carries IP TTL `ttl`; the socket
    stays in SYN_SENT (the ICMP time-exceeded is dropped by IP_MINTTL) with its TTL restored.
    Port 0 in `local` means a fresh port of its own (no port sharing). The caller owns the socket."""
    s = reuse_socket() if local[1] else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.bind(local)
        normal = s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        s.setsockopt(socket.IPPROTO_IP, IP_MINTTL, 2)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        rc = s.connect_ex(dest)  # the SYN is sent inside this call
        if rc not in (0, errno.EINPROGRESS):
            raise OSError(rc, os.strerror(rc))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, normal)
    except BaseException:
        _abort(s)
        raise
    return s


async def _authenticate(race: _Race, sock: trio.socket.SocketType, via: str,
                        strategy: TcpStrategy | None = None) -> None:
    stream = trio.SocketStream(sock)
    auth = StreamAuth(race.key, race.plan.role)  # a fresh nonce per connection
    try:
        peer = tuple(sock.getpeername()[:2])  # ENOTCONN when a RST beat us here
        await stream.send_all(auth.opening(_now_ns()))
        while not auth.done:
            data = await stream.receive_some(4096)
            if not data:
                raise BadPacket("connection closed during the handshake")
            reply = auth.feed(data, _now_ns())
            if reply:
                await stream.send_all(reply)
        if race.claimed:
            raise BadPacket("another connection already won")
        race.claimed = True  # before any await: two connections finishing together cannot both win
        if race.plan.role == "first":
            await stream.send_all(auth.select())
        rtt = (auth.rtt or 0) / 1e9
        race.winner = PunchedStream(stream, peer_addr=peer, rtt=rtt, strategy=strategy or race.plan.strategy,
                                    via=via, leftover=auth.leftover)
        race.done.set()
    except BadPacket:
        race.rejected += 1
        _abort(sock._sock)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if isinstance(exc, OSError):
            race.error(exc)
        _abort(sock._sock)
    except BaseException:
        if race.winner is None or race.winner.socket_stream is not stream:
            _abort(sock._sock)
        raise


async def _accept_loop(race: _Race, listener: socket.socket, nursery: trio.Nursery,
                       strategy: TcpStrategy | None = None) -> None:
    lst = trio.socket.from_stdlib_socket(listener)
    while True:
        conn, _ = await lst.accept()
        race.accepted += 1
        nursery.start_soon(_authenticate, race, conn, "listener", strategy)


async def _lan_connect(race: _Race, src_ip: str, dest: tuple[str, int], nursery: trio.Nursery) -> None:
    """connect() from a fresh port to the peer's LAN listener: at most LAN_CONNECTS tries, the next
    only after a refusal or an error (a SYN left unanswered is the kernel's to retransmit)."""
    for i in range(LAN_CONNECTS):
        if i:
            await trio.sleep(LAN_INTERVAL)
        race.attempts += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.bind((src_ip, 0))
            rc = s.connect_ex(dest)
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
            await trio.lowlevel.wait_writable(s)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            race.error(exc, dest)
            _abort(s)
            continue
        except BaseException:
            _abort(s)
            raise
        nursery.start_soon(_authenticate, race, trio.socket.from_stdlib_socket(s), "connect", TcpStrategy.LAN)
        return


def _start_connect(race: _Race, local: tuple[str, int], dest: tuple[str, int],
                   ttl: int | None = None) -> socket.socket | None:
    """Bind to the shared port and send the SYN now (non-blocking; low TTL when `ttl` is given):
    callers fire several in a fixed order, because a sequential NAT numbers new flows in the order
    their first packets arrive."""
    race.attempts += 1
    try:
        if ttl is not None:
            return low_ttl_connect(local, dest, ttl)
        s = reuse_socket()
        try:
            s.bind(local)
            rc = s.connect_ex(dest)
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
        except BaseException:
            _abort(s)
            raise
        return s
    except OSError as exc:
        race.error(exc, dest)
        return None


async def _connect(race: _Race, s: socket.socket | None, local: tuple[str, int], dest: tuple[str, int],
                   nursery: trio.Nursery, retry: bool = True) -> None:
    """Wait for one connect() to finish; on a tolerated error try again until the deadline (unless
    `retry` is off: a birthday probe that failed was a miss, and a retry would not be low-TTL)."""
    while trio.current_time() < race.deadline:
        if s is not None:
            sock = trio.socket.from_stdlib_socket(s)
            try:
                await trio.lowlevel.wait_writable(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    s.setsockopt(socket.IPPROTO_IP, IP_MINTTL, 0)  # ICMP errors matter again
                    # authentication runs in the race's nursery, so this task can end here
                    nursery.start_soon(_authenticate, race, sock, "connect")
                    return
                exc = OSError(err, os.strerror(err))
                race.error(exc, dest)
                _abort(s)
                if err not in TOLERATED or not retry:
                    return
            except BaseException:
                _abort(s)
                raise
        await trio.sleep(RETRY_PAUSE)
        s = _start_connect(race, local, dest)


async def _birthday(race: _Race, local: tuple[str, int], start_at: float, low_ttl: int,
                    nursery: trio.Nursery) -> None:
    """The TCP birthday attack (proto/planner/tcp.py): the random side opens `plan.sockets` mappings with
    low-TTL connects from fresh ports at the start time; the cone side, a little later, connect()s
    from the shared port to `plan.random_probes` distinct random ports of the peer's range. No probe
    is retried: its SYN is retransmitted by the kernel on the same flow, which is what a late hit
    needs, and a new socket would be a new, unopened flow."""
    plan = race.plan
    if plan.low_ttl:
        at, ttl, local = start_at, low_ttl, (local[0], 0)  # port 0: a fresh port per connect
        dests = [plan.targets[0]] * plan.sockets
    else:
        assert plan.peer is not None
        lo, hi = plan.peer_range
        at, ttl = start_at + BIRTHDAY_DELAY, None
        ports = random.SystemRandom().sample(range(lo, hi + 1), plan.random_probes)
        dests = [(plan.peer.public_ip, port) for port in ports]
    await trio.sleep_until(at)
    for i, dest in enumerate(dests):
        sock = _start_connect(race, local, dest, ttl)
        if sock is not None:
            nursery.start_soon(_connect, race, sock, local, dest, nursery, False)
        if i % 64 == 63:
            await trio.lowlevel.checkpoint()  # let early winners authenticate meanwhile


async def _strategy(race: _Race, local: tuple[str, int], start_at: float, low_ttl: int,
                    nursery: trio.Nursery) -> None:
    """The plan's own connects (an infeasible plan, which only the LAN can connect, has none)."""
    plan = race.plan
    if plan.strategy is TcpStrategy.BIRTHDAY:
        await _birthday(race, local, start_at, low_ttl, nursery)
    elif plan.targets:
        # the side that does not open waits for the opener's low-TTL SYN to leave first
        late = plan.strategy in (TcpStrategy.SIMULTANEOUS, TcpStrategy.ADDRESS_OPEN) and not plan.low_ttl
        await trio.sleep_until(start_at + (SECOND_DELAY if late else 0.0))
        ttl = low_ttl if plan.low_ttl else None
        for dest in plan.targets:  # in order, synchronously: see _start_connect
            sock = _start_connect(race, local, dest, ttl)
            nursery.start_soon(_connect, race, sock, local, dest, nursery)


async def _lan(race: _Race, src_ip: str, start_at: float, nursery: trio.Nursery) -> None:
    await trio.sleep_until(start_at)
    for dest in race.plan.lan:
        nursery.start_soon(_lan_connect, race, src_ip, dest, nursery)


async def tcp_punch(listener: socket.socket, plan: TcpPlan, key: bytes, start_at: float, *,
                    low_ttl: int = 2, timeout: float = 10.0,
                    lan_listener: socket.socket | None = None) -> PunchedStream:
    """Run the plan from the listener's local port; returns the authenticated winner. The listener
    (and `lan_listener`, this side's LAN listener, used when plan.lan names the peer's) is closed
    when this returns (the winner's socket is independent of it)."""
    lan = plan.lan if lan_listener is not None else ()

    def close() -> None:
        listener.close()
        if lan_listener is not None:
            lan_listener.close()

    if not plan.feasible and not lan:
        close()
        raise TcpPunchFailed(plan.reason)
    local = listener.getsockname()[:2]
    try:
        ensure_fd_capacity(plan.sockets + plan.random_probes + len(plan.targets) + 2 * len(lan))
    except FdLimitError as exc:
        close()
        raise TcpPunchFailed(f"{plan.strategy.value}: {exc.strerror}") from None
    race = _Race(plan, bytes(key), start_at + timeout)
    try:
        async with trio.open_nursery() as nursery:
            if plan.accept:
                nursery.start_soon(_accept_loop, race, listener, nursery)
            else:
                listener.close()
            if lan:
                assert lan_listener is not None
                nursery.start_soon(_accept_loop, race, lan_listener, nursery, TcpStrategy.LAN)
                nursery.start_soon(_lan, race, lan_listener.getsockname()[0], start_at, nursery)
            elif lan_listener is not None:
                lan_listener.close()
            # a task, so that a LAN winner does not wait for the strategy's own start
            nursery.start_soon(_strategy, race, local, start_at, low_ttl, nursery)
            with trio.move_on_at(race.deadline):
                await race.done.wait()
            nursery.cancel_scope.cancel()
    finally:
        close()
    if race.winner is None:
        tried = f" and the LAN listener(s) {', '.join(f'{h}:{p}' for h, p in lan)}" if lan else ""
        raise TcpPunchFailed(f"no authenticated TCP connection within {timeout:g} s "
                             f"({plan.strategy.value}{tried}; {plan.reason}); {race.summary()}")
    return race.winner


__all__ = ["PunchedStream", "TcpPunchFailed", "low_ttl_connect", "open_listener", "tcp_punch"]
