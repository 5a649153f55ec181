"""The RFC 5780 behaviour tests on Trio: `discover()` runs them (mapping, filtering, allocation,
hairpinning, optionally the mapping lifetime) against one STUN server, each from fresh sockets so no
test pollutes another, and hands the raw outcomes to proto/nat_behavior.classify()."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import StunErrorResponse, StunTimeout
from ..proto.nat_behavior import FRESH_SOCKETS, BindingSample, NatBehavior, classify
from ..proto.stun import Message, binding_request
from ..proto.stun_attrs import Address
from ..proto.stun_client import State, Transaction, expected_source
from . import prediscover
from .lifetime import measure_lifetime, open_udp as _open
from .stun_client import binding, on_trio_clock, run_binding, run_transactions


async def local_address(sock: trio.socket.SocketType, server: Address) -> Address:
    # the bound address is 0.0.0.0; the address the kernel would use towards the server is what a
    # "no NAT" comparison needs. A connect()ed twin socket tells it without sending anything.
    ip, port = sock.getsockname()[:2]
    if ip in ("0.0.0.0", "::"):
        probe = trio.socket.socket(sock.family, trio.socket.SOCK_DGRAM)
        try:
            await probe.connect(server)
            ip = probe.getsockname()[0]
        finally:
            probe.close()
    return (ip, port)


# Retransmission schedules, from the RTT test I measured. A test that expects an answer ends when it
# comes, so its schedule matters only under loss: it retransmits after 2 RTT. A test that may get no
# answer (filtering) costs its whole schedule, so it does not wait for a retransmission timer: its
# request goes twice, DUPLICATE_GAP apart (one lost packet costs nothing), and the answer is awaited
# 1.5 RTT + SILENCE_SLACK more, never less than MIN_SILENCE. The filtering requests leave just before
# test I's, to the same server address: the server reads them first, so test I's RTT already holds
# the server's and the path's delay at that moment (a busy server or machine shows there), and the
# slack covers what it cannot: the server's slower path for CHANGE-REQUEST, a second server host
# answering change-IP, jitter. In the lab, at load 2-3 an answer came at most 4.5 ms after 1.5 RTT
# (800 answers); at load 4-11, with the tests after test I awaited too, none of 1,500 runs missed
# 1.5 RTT + 10 ms (bench/results/cold-discovery.md). A lost answer reads as "filters", the cautious side.
FIRST_RTO = 0.2  # test I: nothing measured yet
MIN_RTO = 0.04
MAX_RTO = 1.0
DUPLICATE_GAP = 0.005
SILENCE_SLACK = 0.01
MIN_SILENCE = 0.015
MAX_SILENCE = 3.0
INBOX = 64  # replies with its ID a filtering test keeps before test I says which source to accept


@dataclass(frozen=True)
class Schedule:
    rto: float
    rc: int
    rm: int

    def total(self) -> float:
        """Seconds a transaction that never gets an answer lasts."""
        return self.rto * (2 ** (self.rc - 1) - 1 + self.rm)


def silence_for(rtt: float) -> float:
    """How long after its last request a filtering test waits for an answer before it reads "filters"."""
    return min(MAX_SILENCE, max(MIN_SILENCE, 1.5 * max(0.0, rtt) + SILENCE_SLACK))


def schedules_for(rtt: float) -> tuple[Schedule, Schedule]:
    """(for tests that expect an answer, for tests that may get none) from a measured RTT."""
    rtt = max(0.0, rtt)
    answered = Schedule(min(MAX_RTO, max(MIN_RTO, 2.0 * rtt)), 4, 4)
    silent = Schedule(DUPLICATE_GAP, 2, max(1, math.ceil(silence_for(rtt) / DUPLICATE_GAP)))
    return answered, silent


class FilterTest:
    """One filtering test, sent beside test I: before the server has named its second address, which
    the answer must come from. What arrives waits in `inbox` until expect() names the source to
    accept (replies from elsewhere then count as evidence of a server that ignores CHANGE-REQUEST,
    as in every transaction). Its retransmissions follow `schedule`; the caller decides when its
    silence is long enough (wait()), from the RTT test I measured meanwhile."""

    def __init__(self, sock: trio.socket.SocketType, server: Address, change: dict[str, bool],
                 schedule: Schedule, request: Message | None = None) -> None:
        self.sock, self.change = sock, change
        # `request`: the one already sent with this change (adopt())
        self.tx = Transaction(request or binding_request(**change), server, rto=schedule.rto, rc=schedule.rc,
                              rm=schedule.rm)
        self.inbox: list[tuple[bytes, Address, float]] = []
        self._id = bytes(self.tx.request.transaction_id[-12:])  # bytes 8..20 of a reply, classic too
        self.expecting = False
        self.last_sent = 0.0  # trio time of the latest request
        self.done = trio.Event()  # answered, or its schedule ran out

    async def start(self) -> None:
        await self._send(self.tx.start(trio.current_time()))

    def adopt(self, sent: list[float], replies: list[tuple[bytes, Address, float]]) -> None:
        """Instead of start(): the request already left at the trio times `sent` (each copy,
        io/prediscover.py), and `replies` came meanwhile (with their arrival times)."""
        self.tx.start(sent[0])
        for at in sent[1:]:
            assert self.tx.deadline is not None
            self.tx.timeout(max(at, self.tx.deadline))  # the copies its schedule sends, from when they left
        self.last_sent = sent[-1]
        for data, src, at in replies:
            self._keep(data, src, at)

    async def run(self) -> None:
        """After start(): retransmit on schedule and read until answered or the schedule ends."""
        while self.tx.state is State.WAITING and not self.done.is_set():
            assert self.tx.deadline is not None
            with trio.move_on_at(self.tx.deadline):
                await self._read()
            again = self.tx.timeout(trio.current_time())
            if again is not None:
                await self._send(again)
        self.done.set()

    async def wait(self, silence: float) -> None:
        """Until answered, or `silence` seconds passed since the latest request went."""
        while not self.done.is_set():
            end = self.last_sent + silence
            if trio.current_time() >= end:
                return
            with trio.move_on_at(end):
                await self.done.wait()

    async def _send(self, wire: bytes) -> None:
        self.last_sent = trio.current_time()
        try:
            await self.sock.sendto(wire, self.tx.dest)
        except OSError:
            self.tx.discarded["send_error"] += 1

    async def _read(self) -> None:
        while not self.done.is_set():
            try:
                data, src = await self.sock.recvfrom(65536)
            except OSError:
                self.tx.discarded["icmp_error"] += 1  # not an answer
                continue
            self._keep(data, src, trio.current_time())

    def _keep(self, data: bytes, src: Address, at: float) -> None:
        if not self.expecting and bytes(data[8:20]) != self._id:
            self.tx.discarded["wrong_transaction"] += 1  # cannot be our answer: not kept
        elif len(self.inbox) < INBOX:
            self.inbox.append((bytes(data), src, at))
        else:
            self.tx.discarded["overflow"] += 1
        self._feed()

    def expect(self, source: Address) -> None:
        self.tx.accept_from = {source}
        self.expecting = True
        self._feed()

    def _feed(self) -> None:
        while self.expecting and self.inbox and not self.done.is_set():
            if self.tx.receive(*self.inbox.pop(0)) is not None:
                self.done.set()


Known = Callable[[Address, Address], "NatBehavior | None"]


def second_address(r, server: Address) -> Address | None:
    """The server's second address an answer names: OTHER-ADDRESS, or a one-IP server's OTHER-PORT
    on its own IP (a second port is a second destination too, enough to see APDM and port-dependent
    filtering); None when it names neither."""
    if r.other_address is not None:
        return (str(r.other_address[0]), int(r.other_address[1]))
    if r.other_port is not None and r.other_port != server[1]:
        return (server[0], int(r.other_port))
    return None


async def discover(
    server: Address,
    local_ip: str | None = None,
    *,
    fresh_sockets: int = FRESH_SOCKETS,
    hairpin: bool = True,
    lifetime: bool = False,
    lifetime_max: float = 120.0,
    rto: float | None = None,
    rc: int = 4,
    rm: int = 4,
    stagger: float = 0.001,
    known: Known | None = None,
    mapped: Callable[[Address | None], None] | None = None,
) -> NatBehavior:
    """Find the NAT's mapping, filtering, port allocation (Δ), hairpinning (and optionally lifetime)
    with the RFC 5780 tests against `server`, whose OTHER-ADDRESS names the second IP and port.

    The two filtering tests' requests leave first, each from its own socket, then test I's (rto
    0.2 s, or `rto`), which measures the RTT; the filtering tests wait for their answers meanwhile
    and, since they may get none, are given up 1.5 RTT + slack after their last request
    (silence_for; with a fixed `rto` they run its whole schedule): their silence overlaps test I and
    the tests after it instead of following them. Once test I has answered every other test starts
    at once, each from its own socket or multiplexed on the main one, with retransmission timeouts
    from that RTT (or the fixed `rto`, `rc`, `rm`). Their first packets leave in the order the
    classification needs (the main socket's new mappings back to back, then the fresh sockets'
    run), `stagger` seconds apart.

    `known(local, mapped)`, called after test I with this socket's local and mapped address, may
    name a behaviour the caller already measured on this network (the behaviour cache): it is
    returned and no other test runs. `mapped(other_address)` is called once every test has made its
    mappings (their first packets left; what is left is waiting for answers): from then on a
    caller's own new mappings no longer land among the tests'.
    """
    server = (server[0], int(server[1]))
    t0 = trio.current_time()
    discarded: Counter[str] = Counter()
    first = Schedule(rto if rto is not None else FIRST_RTO, rc, rm)
    # with a fixed `rto` a filtering test runs the whole fixed schedule; else it sends twice and
    # its silence is cut short once test I's RTT says how long an answer can take
    filter_schedule = first if rto is not None else Schedule(DUPLICATE_GAP, 2, math.ceil(MAX_SILENCE / DUPLICATE_GAP) + 1)
    # nattrav-fast's first three requests, sent before its imports (io/prediscover.py), are this
    # run's when they went to this server from sockets bound as _open binds, on the default
    # schedule (they were sent on it); otherwise they are closed
    early = prediscover.take(local_ip, server, fits=rto is None)
    if early is not None:
        t0 = on_trio_clock(early.sent[0][0])

    main = await _open(local_ip, server) if early is None else trio.socket.from_stdlib_socket(early.main)
    socks: list[trio.socket.SocketType] = []
    try:
        # the filtering tests: sockets that talk to nobody else ask (A, P) for an answer from the
        # other IP and port, and from the other port only. Their requests leave first, then test
        # I's, to the same server address: the server reads them in that order, so test I's answer
        # shows it had theirs, and its RTT bounds how long their answers may take. (A one-IP
        # server refuses the first with 420: only the change-port one is read then.)
        filters: list[FilterTest] = []
        for i, change in enumerate(prediscover.FILTER_CHANGES):  # change-IP+port, then change-port
            socks.append(await _open(local_ip, server) if early is None
                         else trio.socket.from_stdlib_socket(early.filters[i]))
            filters.append(FilterTest(socks[-1], server, change, filter_schedule,
                                      None if early is None else early.requests[i]))
        async with trio.open_nursery() as nursery:
            for i, f in enumerate(filters):
                if early is None:
                    await f.start()
                else:
                    f.adopt([on_trio_clock(at) for at in early.sent[i]], _on_trio(early.queued(i)))
                nursery.start_soon(f.run)
            try:
                if early is None:
                    r1 = await binding(main, server, rto=first.rto, rc=first.rc, rm=first.rm)
                else:
                    r1 = await _adopted_test1(main, server, first, early)
            except (StunTimeout, StunErrorResponse) as exc:
                discarded.update(getattr(exc, "discarded", {}))
                local = await local_address(main, server)
                nursery.cancel_scope.cancel()  # no await after this: it would be cancelled too
                return classify(local=local, server=server, other_address=None,
                                samples=[], test1=None, test2=None, test3=None,
                                filter_change_both=None, filter_change_port=None, discarded=discarded)
            local = await local_address(main, server)
            if known is not None:
                cached = known(local, r1.mapped)
                if cached is not None:
                    nursery.cancel_scope.cancel()
                    return cached
            # a sample's time is when its first request left (_sent): the NAT made the mapping
            # then, and the spacing of those moments is what background flows had to land in
            # (replies come back bunched, even out of order: their times made ~1 ms gaps look like 0.1 ms)
            samples = [BindingSample(0, local, server, r1.mapped, _sent(r1) - t0)]
            other = second_address(r1, server)
            one_ip = other is not None and r1.other_address is None
            # after a retransmission the answer may be to either request (Karn): count from the first
            rtt = r1.rtt if r1.attempts == 1 else r1.received_at - t0
            answered = first if rto is not None else schedules_for(rtt)[0]
            # the tests whose answers we read: none without a second address; one IP: change-port only
            in_use = [] if other is None else filters[1:] if one_ip else filters
            for f in in_use:
                f.expect(expected_source(server, other, f.change.get("change_ip", False), True))

            def tx(dest: Address) -> Transaction:
                return Transaction(binding_request(), dest, accept_from=[dest],
                                   rto=answered.rto, rc=answered.rc, rm=answered.rm)

            # the main socket: the same destination again (a NAT always reuses the mapping there, which
            # is why one server address can never reveal APDM), test II (other IP, same port), test III
            # (other IP, other port), and one more (same IP, other port); one IP: only its other port
            if one_ip:
                main_dests = [server, other]
            else:
                main_dests = [server] + ([(other[0], server[1]), other, (server[0], other[1])] if other else [])
            jobs = [(main, tx(d)) for d in main_dests]
            # then the fresh sockets' run of back-to-back new mappings for the allocation (Δ)
            fresh = []
            for _ in range(fresh_sockets):
                socks.append(await _open(local_ip, server))
                fresh.append(socks[-1])
                jobs.append((socks[-1], tx(server)))
            results = await run_transactions(jobs, stagger=stagger,
                                             sent=None if mapped is None else lambda: mapped(other))
            # given up only after the tests above were answered too: on a busy machine they take
            # longer, and so does the window
            silence = math.inf if rto is not None else silence_for(rtt)
            for f in in_use:
                await f.wait(silence)
            nursery.cancel_scope.cancel()
        for _, job in jobs:
            discarded.update(job.discarded)
        for f in in_use:
            discarded.update(f.tx.discarded)

        mapped = [r.mapped if r is not None and r.ok else None for r in results[:len(main_dests)]]
        for dest, r, m in zip(main_dests, results, mapped):
            if m is not None:
                samples.append(BindingSample(0, local, dest, m, _sent(r) - t0))
        repeat_same_port = None if mapped[0] is None else mapped[0] == r1.mapped
        if one_ip:
            m2, m3 = None, mapped[1]  # same IP, other port: what test III can tell with one IP
        else:
            m2, m3 = (mapped[1], mapped[2]) if other is not None else (None, None)
        for i, (sock, r) in enumerate(zip(fresh, results[len(results) - len(fresh):])):
            if r is not None and r.ok:
                samples.append(BindingSample(2 + i, (local[0], sock.getsockname()[1]), server, r.mapped,
                                             _sent(r) - t0))

        outcome = [_filter_outcome(f.tx, server, discarded) for f in in_use]
        if one_ip:  # only the change-port test
            (f_both, ign1), (f_port, ign2) = (None, False), (outcome[0] if outcome else (None, False))
        else:
            f_both, ign1 = outcome[0] if outcome else (None, False)
            f_port, ign2 = outcome[1] if outcome else (None, False)
        ignored_change = bool(ign1 or ign2)
        if ignored_change:
            f_both = f_port = None
        elif f_both:
            f_port = None  # EIF already; the change-port answer adds nothing
        for sock in socks:
            sock.close()
        socks.clear()
        kw = {"rto": answered.rto, "rc": answered.rc, "rm": answered.rm}
        hp = await _hairpin_test(main, r1.mapped, server, local_ip, kw) if hairpin else None
        life = await _lifetime_test(server, local_ip, lifetime_max, kw) if lifetime else None
        report = classify(
            local=local, server=server, other_address=other, samples=samples,
            test1=r1.mapped, test2=m2, test3=m3,
            filter_change_both=f_both, filter_change_port=f_port,
            hairpin=hp, lifetime=None if life is None else life[0], server_ignored_change=ignored_change,
            repeat_same_port=repeat_same_port, discarded=discarded, one_ip=one_ip,
        )
        if life is not None:
            alive, expired = life
            report.findings.append(
                f"an idle mapping lived at least {alive:g} s"
                + (f" and was gone after {expired:g} s" if expired is not None else f" (tested up to {lifetime_max:g} s)")
            )
        if other is None:
            report.findings.append("the server sent no OTHER-ADDRESS (nor OTHER-PORT): mapping and "
                                   "filtering need a server with a second port, or a second IP and port "
                                   "(RFC 5780)")
        return report
    finally:
        main.close()
        for sock in socks:
            sock.close()


def _on_trio(replies: list[tuple[bytes, Address, float]]) -> list[tuple[bytes, Address, float]]:
    return [(data, src, on_trio_clock(at)) for data, src, at in replies]


async def _adopted_test1(main, server: Address, first: Schedule, early: prediscover.EarlyDiscovery):
    """Test I as binding() runs it, its request sent before the imports: its reply may be queued."""
    i = len(early.filters)
    tx = Transaction(early.requests[i], server, accept_from=[server], rto=first.rto, rc=first.rc, rm=first.rm)
    tx.start(on_trio_clock(early.sent[i][0]))
    for data, src, at in _on_trio(early.queued(i)):
        tx.receive(data, src, at)
    return await run_binding(main, tx)


def _filter_outcome(tx: Transaction, server: Address, discarded: Counter[str]) -> tuple[bool, bool]:
    """(answer arrived from the changed address, server answered from the unchanged one instead)."""
    r = tx.result
    if r is not None and r.error is None:
        return True, False
    if r is not None:  # an error response: the server would not change its address
        discarded["error_response"] += 1
        return False, True
    return False, any(src == server for src in tx.unexpected_sources)


async def _hairpin_test(main, mapped: Address, server: Address, local_ip, kw) -> bool | None:
    """Send from a second socket to the main socket's public address; hairpinning works when the
    main socket receives it. The main socket first sends to the second socket's public address so
    an address-and-port-dependent filter lets the hairpinned packet in."""
    helper = await _open(local_ip, server)
    try:
        try:
            rh = await binding(helper, server, **kw)
        except (StunTimeout, StunErrorResponse):
            return None
        probe = binding_request().encode()
        opener = binding_request().encode()
        got = False
        with trio.move_on_after(kw["rto"] * 8):
            for _ in range(3):
                try:
                    await main.sendto(opener, rh.mapped)
                    await helper.sendto(probe, mapped)
                except OSError:
                    pass
                with trio.move_on_after(kw["rto"] * 2):
                    while True:
                        try:
                            data, _src = await main.recvfrom(2048)
                        except OSError:
                            continue
                        if data == probe:
                            got = True
                            break
                if got:
                    break
        return got
    finally:
        helper.close()


async def _lifetime_test(server: Address, local_ip: str | None, limit: float, kw) -> tuple[float, float | None] | None:
    """Idle mapping lifetime (RFC 5780 §4.6), as (alive, expired): io/lifetime.py's trials of 1, 2,
    4, ... s up to `limit`, side by side; None when the server answered none of them."""
    waits, wait = [], 1.0
    while wait <= limit:
        waits.append(wait)
        wait *= 2
    reading = await measure_lifetime(server, local_ip, waits=tuple(waits), rto=kw["rto"], rc=kw["rc"])
    if reading.trials == 0:
        return None
    return reading.alive, reading.expired


__all__ = ["Schedule", "discover", "local_address", "schedules_for", "second_address"]


def _sent(r) -> float:
    """When the request that made the mapping left (its first transmission), on the driver's clock:
    an answered retransmission's time would count its RTO as background-free exposure."""
    return r.first_sent_at

