"""Trio executor of a punch Plan: send what the plan says, run the handshake, return the path.

The socket whose mapping STUN learned is used as is (never closed or replaced before punching: its
NAT mapping is the whole point). Bursts open extra sockets, here with the socket module (or, when a
burst coordinator from nattrav.workers is given, in its worker processes). Attempts race the
happy-eyeballs way in one nursery: each starts after its delay, the first authenticated ACK/CONFIRM
wins, everything else is cancelled and every socket we opened that did not win is closed.
"""

from __future__ import annotations

import errno
import random
import resource
import socket
from typing import Any

import trio

from ..core.errors import ICMP_ERRNOS
from ..errors import BadPacket, PunchFailed
from ..proto.handshake import MAGIC, Event, Handshake
from ..proto.planner.horizon import published_rtt
from ..proto.planner.udp import Attempt, Part, Plan
from ..proto.vocab import Strategy
from .path import RECV_SIZE, PunchedPath, now_ns
from .session import Session

BURST_CHUNK = 16384  # packets per coordinator fire between looks for a hit
MAX_LOW_TTL = 64
CONFIRM_RESEND = 0.2  # seconds between ACK resends while the peer has not confirmed
# An opening that hears nothing from the peer for this long may have died inside our own NATs (a
# trace that missed a silent NAT layer, or no trace at all): its resends go one hop further, twice
# at most. They resend the same flows, so no new mapping is made on the way.
# The wait scales with the round trips both peers published (their packets meet within about one
# of them once both openings are up, a lost talker packet costs one resend interval more):
# a trace whose hop replies a router rate-limited (back-to-back connects: Linux sends one ICMP
# time-exceeded a second per destination after a burst of 6) read one NAT layer too few, and a
# fixed second of silence before the next hop was most of such a connect's time at zero delay.
ESCALATE_AFTER = 1.0  # at most, and when a round trip is unknown
ESCALATE_MIN = 0.3
ESCALATE_SLACK = 0.3
MAX_ESCALATION = 2
MAX_PEER_ADDRS = 16  # addresses a socket remembers the peer authenticating from (path.also)


def escalate_after(session: Session) -> float:
    """Seconds of silence from the peer after which an opening goes one hop further: twice the two
    published round trips to the server (a bound on the peers' own) plus a resend's slack, within
    [ESCALATE_MIN, ESCALATE_AFTER]."""
    rtts = [published_rtt(info.get("rtt")) if isinstance(info, dict) else None
            for info in (session.own_info, session.peer_info)]
    if None in rtts:
        return ESCALATE_AFTER
    return min(ESCALATE_AFTER, max(ESCALATE_MIN, ESCALATE_SLACK + 2.0 * sum(rtts)))  # type: ignore[arg-type]


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _random_ports(part: Part, rng: random.Random) -> list[int]:
    lo, hi = part.peer_range
    span = hi - lo + 1
    count = min(part.random_probes, span)
    return [lo + i for i in rng.sample(range(span), count)]


class _Race:
    def __init__(self, sock: Any, plan: Plan, session: Session, low_ttl: int,
                 coordinator: Any, rng: random.Random, on_event: Any = None, early: bool = False) -> None:
        self.on_event = on_event
        # the first authentic HELLO wins, once our ACK to it is out: for a caller whose own handshake
        # (QUIC) proves the path both ways anyway, the peer's CONFIRM would cost a round trip more
        self.early = early
        self.sock = sock
        self.plan = plan
        self.session = session
        self.low_ttl = low_ttl
        self.escalate_after = escalate_after(session)
        self.coordinator = coordinator
        self.rng = rng
        self.handshake = Handshake(session.key, session.role, session.nonce)
        self.normal_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        self.extra: list[socket.socket] = []  # burst sockets we opened (stdlib, non-blocking)
        self.taken: list[Any] = []  # trio sockets taken over from the coordinator's workers
        self.ttl_now: dict[int, int] = {}  # id(sock) -> the TTL it is set to now, when not normal
        self.winner: tuple[Any, tuple[str, int], int, Strategy] | None = None
        self.heard: dict[int, tuple[Any, tuple[str, int]]] = {}  # id(sock) -> peer addr it heard from
        self.peer_addrs: dict[int, set[tuple[str, int]]] = {}  # id(sock) -> every address that authenticated
        self.stats: dict[str, Any] = {"sent": 0, "received": 0, "rejected": 0, "attempts": []}
        self.strategy_of: dict[int, Strategy] = {}
        # LAN attempts share the punch socket with the planned one: their win is told by the address
        self.lan_addrs = {(a.local.peer_ip, port) for a in plan.attempts if a.strategy is Strategy.LAN
                          for port in a.local.targets}
        self.done = trio.Event()

    def _event(self, what: str, **info: Any) -> None:
        """Progress for the CLI/demo (phases: attempt, burst, hello, established); never raises."""
        if self.on_event is not None:
            try:
                self.on_event(what, info)
            except Exception:  # a display callback must not break the punch
                pass

    # sending ---------------------------------------------------------------------------------

    def _set_ttl(self, s: Any, ttl: int | None) -> None:
        """`ttl` for an opening packet, None for the normal TTL."""
        if self.ttl_now.get(id(s)) == ttl:
            return
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.normal_ttl if ttl is None else ttl)
        if ttl is None:
            self.ttl_now.pop(id(s), None)
        else:
            self.ttl_now[id(s)] = ttl

    async def _send_raw(self, s: socket.socket, frame: bytes, addr: tuple[str, int]) -> None:
        while True:
            try:
                s.sendto(frame, addr)
                self.stats["sent"] += 1
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(s)
            except OSError as exc:
                if exc.errno in ICMP_ERRNOS or exc.errno == errno.EPERM:
                    return  # ICMP error queued from an earlier packet, or a firewall: go on
                raise

    async def _send_many(self, socks: list[Any], frame: bytes, ip: str, ports: list[int],
                         rate: float, low: int | None) -> None:
        """Every socket sends the frame to every port; paced at `rate` packets/s when set.

        The TTL is (re)set right before each packet: raced attempts share the STUN socket, and one
        may have switched it between two of our packets."""
        if not ports or not socks:
            return
        start = trio.current_time()
        n = 0
        for port in ports:
            for s in socks:
                self._set_ttl(s, low)
                if isinstance(s, trio.socket.SocketType):
                    try:
                        await s.sendto(frame, (ip, port))
                        self.stats["sent"] += 1
                    except OSError as exc:
                        if exc.errno not in ICMP_ERRNOS:
                            raise
                else:
                    await self._send_raw(s, frame, (ip, port))
                n += 1
                if n % 256 == 0:
                    if rate:
                        await trio.sleep_until(start + n / rate)
                    else:
                        await trio.sleep(0)  # let receivers run during big bursts

    async def _attempt(self, attempt: Attempt) -> None:
        part = attempt.local
        if attempt.strategy is Strategy.LAN and not part.targets:
            return  # the peer has more candidates than we: its extra attempts have no twin here
        await trio.sleep(attempt.delay + part.delay)
        tried = {"strategy": attempt.strategy.value, "opens": part.opens, "sent": 0,
                 "ttl": [self.low_ttl] if part.opens else []}
        self.stats["attempts"].append(tried)
        self._event("attempt", strategy=attempt.strategy.value, opens=part.opens, sockets=part.sockets,
                    targets=len(part.targets), random_probes=part.random_probes,
                    ttl=self.low_ttl if part.opens else self.normal_ttl)
        if part.sockets > 1 and self.coordinator is not None:
            await self._attempt_with_coordinator(attempt)
            return
        socks: list[Any] = [self.sock]
        if part.sockets > 1:
            socks = await self._open_burst(part.sockets - 1, attempt.strategy) + [self.sock]
        if attempt.strategy is not Strategy.LAN:
            for s in socks:
                self.strategy_of.setdefault(id(s), attempt.strategy)
        # Random guesses: from the STUN socket only, or (spread) a fresh sample per socket.
        guessers = socks if part.spread else socks[-1:]
        probes = {id(s): _random_ports(part, self.rng) for s in guessers} if part.random_probes else {}
        began = trio.current_time()
        deadline = began + attempt.timeout
        # Small parts resend every interval (same flows, so no new mappings); big bursts go twice.
        rounds = 1_000_000 if part.packets <= 4096 else 2
        first_round = True
        round_no = 0
        ttl = self.low_ttl
        while trio.current_time() < deadline and rounds > 0:
            rounds -= 1
            if (part.opens and not self.heard and ttl < min(self.low_ttl + MAX_ESCALATION, MAX_LOW_TTL)
                    and trio.current_time() - began >= self.escalate_after * len(tried["ttl"])):
                ttl += 1
                tried["ttl"].append(ttl)
                self._event("ttl", strategy=attempt.strategy.value, ttl=ttl,
                            why=f"nothing from the peer for {trio.current_time() - began:.1f} s")
            # Openers send with the low TTL until a socket has heard the peer; a socket that heard
            # the peer has answered at the normal TTL and is left alone.
            fresh = [s for s in socks if id(s) not in self.heard]
            frame = self.handshake.hello(now_ns())
            sent0 = self.stats["sent"]
            low = ttl if part.opens else None
            for ip in part.addresses:
                await self._send_many(fresh, frame, ip, list(part.targets), part.rate, low)
            for s in fresh:
                if id(s) in probes:
                    await self._send_many([s], frame, part.peer_ip, probes[id(s)], part.rate, low)
            tried["sent"] += self.stats["sent"] - sent0
            if part.packets > 1 and first_round:
                self._event("burst", strategy=attempt.strategy.value, sent=self.stats["sent"] - sent0)
            first_round = False
            # a talker's first resends come quickly (its ramp), then one round per interval
            await trio.sleep(part.gap(round_no))
            round_no += 1

    async def _attempt_with_coordinator(self, attempt: Attempt) -> None:
        """The burst half of an attempt in the worker processes (C core, sendmmsg): the STUN socket
        does its part here as usual, the extra sockets live in the workers until one hears the peer
        and is taken over (SCM_RIGHTS) to finish the handshake and become the path."""
        from ..workers import Burst

        part = attempt.local
        coord = self.coordinator
        tried = {"strategy": attempt.strategy.value, "opens": part.opens, "sent": 0,
                 "ttl": [self.low_ttl] if part.opens else []}
        self.stats["attempts"].append(tried)
        self.strategy_of.setdefault(id(self.sock), attempt.strategy)
        base = coord.count
        await coord.open_sockets(part.sockets - 1, ip=self.sock.getsockname()[0])
        indices = list(range(base, base + part.sockets - 1))
        rng_ports = ({i: _random_ports(part, self.rng) for i in indices} if part.random_probes and part.spread
                     else {})
        deadline = trio.current_time() + attempt.timeout
        rounds = 1_000_000 if part.packets <= 4096 else 2
        pending: list[tuple[str, list[int], list[int]]] = []  # (address, sockets, ports) still to fire this round
        while trio.current_time() < deadline:
            if not pending and rounds > 0:
                rounds -= 1
                frame = self.handshake.hello(now_ns())
                # slot-major: every socket covers the most likely ports first
                src = [i for _ in part.targets for i in indices]
                ports = [port for port in part.targets for _ in indices]
                for i, own in rng_ports.items():
                    src.extend([i] * len(own))
                    ports.extend(own)
                # Fire in chunks and look for a hit between them: a big burst is bounded by how fast
                # the NAT creates flows, and the matching slot is usually an early one.
                pending = [(ip, src[k:k + BURST_CHUNK], ports[k:k + BURST_CHUNK])
                           for ip in part.addresses for k in range(0, len(src), BURST_CHUNK)]
                # the STUN socket takes part too (sends its share at the same TTL rules)
                for ip in part.addresses:
                    await self._send_many([self.sock], frame, ip, list(part.targets), part.rate,
                                          self.low_ttl if part.opens else None)
            wait = min(part.interval, max(0.0, deadline - trio.current_time()))
            if pending:
                chunk_ip, chunk_src, chunk_ports = pending.pop(0)
                await coord.fire(Burst(chunk_src, chunk_ip, chunk_ports, frame, rate=part.rate or None,
                                       ttl=self.low_ttl if part.opens else None))
                self.stats["sent"] += coord.last_fire.sent
                tried["sent"] += coord.last_fire.sent
                wait = 0.0
            hit = await coord.listen(match=MAGIC, timeout=wait)
            if hit is None:
                continue
            self.stats["received"] += 1
            try:
                got = self.handshake.receive(hit.payload, now_ns())
            except BadPacket:
                self.stats["rejected"] += 1
                continue
            # This worker socket's mapping is the one that works: bring it here and go on with it.
            tsock = await coord.take_socket(hit.index)
            self.taken.append(tsock)
            tsock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.normal_ttl)  # the burst's TTL was per packet
            self.strategy_of[id(tsock)] = attempt.strategy
            self.heard[id(tsock)] = (tsock, hit.src)
            for reply in got.replies:
                self._set_ttl(tsock, None)
                await tsock.sendto(reply, hit.src)
            if got.event is Event.HELLO and self.early and self.winner is None:
                self._win_early(tsock, hit.src, attempt.strategy)
                return
            if got.event is Event.HELLO and not self.handshake.established:
                self._nursery.start_soon(self._resend_ack, tsock, hit.src)
            if got.event is Event.ESTABLISHED and self.winner is None:
                self.winner = (tsock, hit.src, got.rtt or 0, attempt.strategy)
                self._event("established", peer=list(hit.src), rtt=(got.rtt or 0) / 1e9,
                            strategy=attempt.strategy.value)
                self.done.set()
                return
            self._nursery.start_soon(self._recv_loop, tsock)
            return

    async def _open_burst(self, count: int, strategy: Strategy) -> list[socket.socket]:
        _raise_fd_limit(len(self.extra) + count)
        ip = self.sock.getsockname()[0]
        opened = []
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                opened.append(s)
                s.setblocking(False)
                s.bind((ip, 0))
        except OSError:
            for s in opened:
                s.close()
            raise
        self.extra.extend(opened)
        for s in opened:
            self._nursery.start_soon(self._recv_loop, s)
        return opened

    # receiving -------------------------------------------------------------------------------

    async def _recv_loop(self, s: Any) -> None:
        trio_sock = isinstance(s, trio.socket.SocketType)
        while True:
            try:
                if trio_sock:
                    data, addr = await s.recvfrom(RECV_SIZE)
                else:
                    await trio.lowlevel.wait_readable(s)
                    try:
                        data, addr = s.recvfrom(RECV_SIZE)
                    except BlockingIOError:
                        continue
            except OSError as exc:
                if exc.errno in ICMP_ERRNOS:
                    continue  # the ICMP time-exceeded of our own low-TTL packet
                raise
            addr = (addr[0], addr[1])
            self.stats["received"] += 1
            try:
                got = self.handshake.receive(data, now_ns())
            except BadPacket:
                self.stats["rejected"] += 1
                continue
            known = self.peer_addrs.setdefault(id(s), set())
            if len(known) < MAX_PEER_ADDRS:
                known.add(addr)
            if got.event is Event.HELLO and id(s) not in self.heard:
                self._event("hello", peer=list(addr))
            if got.replies or got.event is Event.HELLO:
                # The peer's packet came in: our NAT's mapping and filter are open on this socket,
                # so answers go out at the normal TTL from now on.
                self._set_ttl(s, None)
                self.heard[id(s)] = (s, addr)
            for reply in got.replies:
                self._set_ttl(s, None)
                if trio_sock:
                    await s.sendto(reply, addr)
                else:
                    await self._send_raw(s, reply, addr)
            if got.event is Event.HELLO and self.early and self.winner is None:
                self._win_early(s, addr, self.strategy_of.get(id(s), self.plan.strategy))
                return
            if got.event is Event.HELLO and not self.handshake.established:
                self._nursery.start_soon(self._resend_ack, s, addr)
            if got.event in (Event.ESTABLISHED, Event.ACK) and self.winner is None:
                strategy = (Strategy.LAN if addr in self.lan_addrs
                            else self.strategy_of.get(id(s), self.plan.strategy))
                self.winner = (s, addr, got.rtt or 0, strategy)
                self._event("established", peer=list(addr), rtt=(got.rtt or 0) / 1e9,
                            strategy=self.winner[3].value)
                self.done.set()
                return

    def _win_early(self, s: Any, addr: tuple[str, int], strategy: Strategy) -> None:
        """`s` heard an authentic HELLO from `addr` and answered it: the path for an early caller
        (its RTT is not measured: 0). Should our ACK be lost, the caller's layer answers the peer's
        next HELLO (api/secure.py's late_punch) while its own handshake retransmits."""
        self.winner = (s, addr, 0, Strategy.LAN if addr in self.lan_addrs else strategy)
        self._event("established", peer=list(addr), rtt=None, strategy=self.winner[3].value, early=True)
        self.done.set()

    async def _resend_ack(self, s: Any, addr: tuple[str, int]) -> None:
        # Our ACK may be lost, or the peer's CONFIRM: ask again until a CONFIRM arrives.
        while not self.handshake.established:
            await trio.sleep(CONFIRM_RESEND)
            ack = self.handshake.ack(now_ns())
            if ack is None or self.handshake.established:
                return
            self._set_ttl(s, None)
            if isinstance(s, trio.socket.SocketType):
                await s.sendto(ack, addr)
            else:
                await self._send_raw(s, ack, addr)

    async def run(self) -> PunchedPath:
        try:
            if self.session.start_at is not None:
                await trio.sleep_until(self.session.start_at)
            with trio.move_on_after(self.plan.timeout):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._recv_loop, self.sock)
                    for attempt in self.plan.attempts:
                        nursery.start_soon(self._attempt, attempt)
                    await self.done.wait()
                    nursery.cancel_scope.cancel()
        except BaseException:
            # cancelled from outside or an unexpected error: nothing we opened may outlive us
            self._close_extra(keep=None)
            self._restore_ttl()
            raise
        # Worker sockets that did not win stay with the coordinator until the caller closes it.
        if self.winner is None:
            self._close_extra(keep=None)
            self._restore_ttl()
            raise PunchFailed(f"{self.plan.failure_message()}; tried: {self._evidence()}", self.plan)
        s, addr, rtt, strategy = self.winner
        self._close_extra(keep=s)
        self._restore_ttl()
        self.stats["rejected"] = self.handshake.rejected
        path_sock = s if isinstance(s, trio.socket.SocketType) else trio.socket.from_stdlib_socket(s)
        return PunchedPath(path_sock, addr, rtt / 1e9, strategy, self.handshake, self.stats,
                           also=frozenset(self.peer_addrs.get(id(s), ())) - {addr})

    def _evidence(self) -> str:
        """What each attempt did, for the failure message: which assumption may have broken."""
        heard = bool(self.heard) or self.stats["received"] > self.stats["rejected"]
        out = []
        for t in self.stats["attempts"]:
            ttl = f", opening TTL {'→'.join(map(str, t['ttl']))}" if t["ttl"] else ""
            out.append(f"{t['strategy']} ({t['sent']} packets{ttl})")
        return (", ".join(out) or "nothing (cancelled before the start)") + (
            "; the peer's packets reached us, ours did not reach it" if heard
            else "; nothing authentic came back from the peer")

    def _restore_ttl(self) -> None:
        if id(self.sock) in self.ttl_now:
            self._set_ttl(self.sock, None)

    def _close_extra(self, keep: Any) -> None:
        for s in self.extra + self.taken:
            if s is not keep:
                s.close()
        if keep is not None and keep is not self.sock:
            self._set_ttl(keep, None)


async def punch(sock: Any, plan: Plan, session: Session, *, low_ttl: int = 2, coordinator: Any = None,
                rng: random.Random | None = None, on_event: Any = None, early: bool = False) -> PunchedPath:
    """Run the plan's attempts on `sock` (a trio UDP socket, the one STUN used) and return the path.

    session: what the rendezvous gave both peers (io/session.py). Raises PunchFailed (message naming both NATs and the odds) on timeout.
    on_event(what, info): optional progress callback ("attempt", "burst", "hello", "established").
    early: the first authentic HELLO, answered, is the path (the caller's own handshake confirms it
    both ways: QUIC); its rtt is then 0, not measured.
    """
    if not 1 <= low_ttl <= 255:
        raise ValueError(f"low_ttl must be in 1..255, got {low_ttl!r}")
    race = _Race(sock, plan, session, low_ttl, coordinator, rng or random.SystemRandom(),
                 on_event, early)
    return await race.run()
