"""discover()'s schedule on a simulated network under trio's MockClock: the filtering tests leave
with test I and wait a few of its RTTs (not seconds), the tests after test I run at once, the first
packets leave in the order the classification needs (a sequential NAT's Δ comes out right), and the
cache hook ends discovery after test I. Virtual time only: nothing here depends on how busy the
machine is."""

from __future__ import annotations

import heapq
import itertools
import math

import pytest
import trio
import trio.testing

from nattrav.io.stun_discover import DUPLICATE_GAP, FIRST_RTO, MIN_SILENCE, discover, schedules_for, silence_for
from nattrav.proto.nat_behavior import NatBehavior
from nattrav.proto.stun import parse
from nattrav.proto.stun_server import StunServerConfig, decide
from nattrav.proto.vocab import Allocation, Filtering, Mapping

HOST = "10.0.0.2"
PUBLIC = "203.0.113.5"
S1, S2 = ("198.51.100.1", 3478), ("198.51.100.2", 3479)
STUN = StunServerConfig(ip=S1[0], alt_ip=S2[0], port=S1[1], alt_port=S2[1], software=None)


class Nat:
    """One NAT in front of HOST: EIM or APDM mapping with sequential ports (step `delta`), EIF, ADF
    or APDF filtering."""

    def __init__(self, mapping: Mapping, filtering: Filtering, delta: int = 1) -> None:
        self.mapping, self.filtering, self.delta = mapping, filtering, delta
        self.next_port = 40000
        self.out: dict[tuple, int] = {}  # (local port[, destination]) -> public port
        self.back: dict[int, int] = {}  # public port -> local port
        self.contacted: dict[int, set] = {}  # public port -> destinations it sent to

    def outbound(self, local_port: int, dest: tuple[str, int]) -> int:
        key = (local_port,) if self.mapping is Mapping.EIM else (local_port, dest)
        if key not in self.out:
            self.out[key] = self.next_port
            self.back[self.next_port] = local_port
            self.next_port += self.delta
        port = self.out[key]
        self.contacted.setdefault(port, set()).add(dest)
        return port

    def inbound(self, public_port: int, src: tuple[str, int]) -> int | None:
        seen = self.contacted.get(public_port, set())
        if self.filtering is Filtering.ADF and src[0] not in {d[0] for d in seen}:
            return None
        if self.filtering is Filtering.APDF and src not in seen:
            return None
        return self.back.get(public_port)


class FakeNet:
    """HOST's sockets behind `nat`, our STUN server at S1/S2, `rtt` seconds between them; the
    socket factory trio.socket.socket() uses while it is installed."""

    def __init__(self, nat: Nat, rtt: float, config: StunServerConfig = STUN, changed_after: float = 0.0) -> None:
        self.nat, self.rtt, self.config = nat, rtt, config
        self.changed_after = changed_after  # extra seconds an answer from another address takes
        self.sockets: dict[int, FakeSocket] = {}
        self.ports = itertools.count(50000)
        self.sent: list[tuple[float, int, tuple[str, int]]] = []  # (time, local port, destination)

    def is_trio_socket(self, obj) -> bool:
        return isinstance(obj, FakeSocket)

    def socket(self, family=trio.socket.AF_INET, type=trio.socket.SOCK_DGRAM, proto=0):
        return FakeSocket(self, family)

    def deliver(self, local_port: int, data: bytes, dest: tuple[str, int]) -> None:
        now = trio.current_time()
        self.sent.append((now, local_port, dest))
        public = self.nat.outbound(local_port, dest)
        d = decide(parse(data), (PUBLIC, public), dest, self.config, now=0.0)
        if d.response is None:
            return
        target = self.nat.inbound(d.dest[1], d.send_from)
        sock = self.sockets.get(target) if target is not None else None
        if sock is not None:
            late = self.changed_after if d.send_from != dest else 0.0
            sock.arrive(now + self.rtt + late, d.response, d.send_from)


class FakeSocket:
    def __init__(self, net: FakeNet, family) -> None:
        self.net, self.family, self.type = net, family, trio.socket.SOCK_DGRAM
        self.port: int | None = None
        self.ip = "0.0.0.0"
        self.queue: list = []
        self.seq = itertools.count()
        self.wake = trio.Event()

    async def bind(self, addr) -> None:
        await trio.lowlevel.checkpoint()  # as trio's own: a cancelled caller stops here
        self.port = addr[1] or next(self.net.ports)
        self.ip = addr[0]
        self.net.sockets[self.port] = self

    async def connect(self, addr) -> None:
        await trio.lowlevel.checkpoint()
        if self.port is None:
            await self.bind(("0.0.0.0", 0))
        self.ip = HOST  # what the kernel would pick towards addr

    def getsockname(self):
        return (self.ip, self.port)

    async def sendto(self, data, addr) -> int:
        await trio.lowlevel.checkpoint()
        self.net.deliver(self.port, bytes(data), (addr[0], int(addr[1])))
        return len(data)

    def arrive(self, at: float, data: bytes, src) -> None:
        heapq.heappush(self.queue, (at, next(self.seq), data, src))
        self.wake.set()

    async def recvfrom(self, n: int):
        while True:
            if self.queue and self.queue[0][0] <= trio.current_time():
                _, _, data, src = heapq.heappop(self.queue)
                await trio.lowlevel.checkpoint()
                return data, src
            self.wake = trio.Event()
            with trio.move_on_at(self.queue[0][0] if self.queue else math.inf):
                await self.wake.wait()

    def close(self) -> None:
        if self.net.sockets.get(self.port) is self:
            del self.net.sockets[self.port]


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def run(nat: Nat, rtt: float, config: StunServerConfig = STUN, changed_after: float = 0.0,
              **kw) -> tuple[NatBehavior, float, FakeNet]:
    net = FakeNet(nat, rtt, config, changed_after)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        t0 = trio.current_time()
        b = await discover(S1, **kw)
        return b, trio.current_time() - t0, net
    finally:
        trio.socket.set_custom_socket_factory(previous)


@pytest.mark.parametrize("rtt", [0.001, 0.1])
async def test_a_port_restricted_cone_costs_test_one_and_a_few_rtts_of_silence(mock_clock, rtt):
    b, took, net = await run(Nat(Mapping.EIM, Filtering.APDF), rtt, hairpin=False)
    assert (b.mapping, b.filtering) == (Mapping.EIM, Filtering.APDF)
    # the filtering requests leave with test I, twice, and their silence counts from the second:
    # it overlaps test I and the tests after it instead of following them
    assert took >= DUPLICATE_GAP + silence_for(rtt)
    assert took <= max(DUPLICATE_GAP + silence_for(rtt), 2 * rtt + 0.01) + 0.001
    assert took < 0.6  # the old one-after-another schedule took 2.2 s here


async def test_answered_tests_end_when_their_answers_come(mock_clock):
    rtt = 0.05
    b, took, _ = await run(Nat(Mapping.EIM, Filtering.EIF), rtt, hairpin=False)
    assert (b.mapping, b.filtering, b.classic) == (Mapping.EIM, Filtering.EIF, "full cone")
    assert took == pytest.approx(2 * rtt, abs=0.02)  # test I, then one round of everything


async def test_address_dependent_filtering_is_told_apart(mock_clock):
    b, _, _ = await run(Nat(Mapping.EIM, Filtering.ADF), 0.01, hairpin=False)
    assert (b.mapping, b.filtering) == (Mapping.EIM, Filtering.ADF)


@pytest.mark.parametrize("delta", [1, 3])
async def test_a_sequential_symmetric_nat_shows_its_step(mock_clock, delta):
    b, _, net = await run(Nat(Mapping.APDM, Filtering.APDF, delta), 0.02, hairpin=False)
    assert (b.mapping, b.filtering, b.allocation, b.delta) == (Mapping.APDM, Filtering.APDF,
                                                                Allocation.SEQUENTIAL, delta)
    # the filtering requests and test I left at once; every other test's first packet within a few
    # ms of the others, right after test I's answer
    firsts = sorted({(port, dest): t for t, port, dest in reversed(net.sent)}.values())
    assert firsts[2] < 0.001 and firsts[3] >= 0.02
    assert firsts[-1] - firsts[3] < 0.02


async def test_the_timeouts_follow_the_measured_rtt(mock_clock):
    fast = (await run(Nat(Mapping.EIM, Filtering.APDF), 0.001, hairpin=False))[1]
    slow = (await run(Nat(Mapping.EIM, Filtering.APDF), 0.2, hairpin=False))[1]
    assert fast < 0.05 and slow > 0.3
    assert slow < 2 * 0.2 + 0.02


async def test_a_fixed_rto_keeps_the_old_schedule(mock_clock):
    _, took, _ = await run(Nat(Mapping.EIM, Filtering.APDF), 0.001, hairpin=False, rto=0.2, rc=4, rm=4)
    assert took >= 0.2 * (1 + 2 + 4 + 4)  # a silent test: every retransmission, then rm x rto


async def test_a_known_network_ends_discovery_after_test_one(mock_clock):
    asked = []
    known = NatBehavior(mapping=Mapping.EIM, filtering=Filtering.APDF, public_ip=PUBLIC)

    def lookup(local, mapped):
        asked.append((local, mapped))
        return known

    b, took, net = await run(Nat(Mapping.EIM, Filtering.APDF), 0.05, hairpin=False, known=lookup)
    assert b is known
    # test I's socket, after the two filtering sockets' first requests
    assert asked == [((HOST, asked[0][0][1]), (PUBLIC, 40002))]
    assert took == pytest.approx(0.05, abs=0.005)
    # test I and the filtering requests (each twice): nothing after test I
    assert len(net.sent) == 5 and all(t < 0.05 for t, _, _ in net.sent)


async def test_mapped_is_called_once_the_tests_made_their_mappings(mock_clock):
    calls = []
    rtt = 0.1
    b, took, net = await run(Nat(Mapping.APDM, Filtering.APDF), rtt, hairpin=False,
                             mapped=lambda other: calls.append((trio.current_time(), other)))
    assert len(calls) == 1 and calls[0][1] == S2
    # after test I and every first packet, before their answers come
    assert calls[0][0] - rtt < 0.02 and took - calls[0][0] >= rtt
    last_first_packet = max({(port, dest): t for t, port, dest in reversed(net.sent)}.values())
    assert last_first_packet <= calls[0][0]


async def test_no_answer_at_all_is_blocked_after_the_first_schedule(mock_clock):
    class Deaf(Nat):
        def inbound(self, public_port, src):
            return None

    b, took, _ = await run(Deaf(Mapping.EIM, Filtering.APDF), 0.01, hairpin=False)
    assert b.public_ip is None and b.classic == "UDP blocked"
    assert took == pytest.approx(FIRST_RTO * (1 + 2 + 4 + 4))


async def test_an_rtt_behind_a_retransmission_counts_from_the_first_request(mock_clock):
    # test I's answer comes after its first retransmission (RTT 0.25 s > FIRST_RTO): the answer may
    # be to either request, so the filtering tests' silence counts from the first (Karn), not 0.05 s:
    # a full cone's answers, as slow as test I's, still arrive in time
    rtt = 0.25
    b, took, _ = await run(Nat(Mapping.EIM, Filtering.EIF), rtt, hairpin=False)
    assert b.filtering is Filtering.EIF
    b, took, _ = await run(Nat(Mapping.EIM, Filtering.APDF), rtt, hairpin=False)
    assert b.filtering is Filtering.APDF
    assert took >= DUPLICATE_GAP + silence_for(rtt)


async def test_a_samples_time_is_when_its_request_left_not_when_the_answer_came(mock_clock):
    # the volley's requests leave `stagger` apart and their answers come back an RTT later, bunched
    # or not: the NAT made each mapping when its request passed, so that is the sample's time (the
    # background evidence discovery publishes spans those moments: predict.delta_posterior)
    rtt = 0.05
    b, _, net = await run(Nat(Mapping.APDM, Filtering.APDF, 1), rtt, hairpin=False)
    last_sent = {}
    for t, port, dest in net.sent:
        last_sent[(port, dest)] = t  # answered at once: the last transmission is the only one
    by_mapping = {s.mapped[1]: s for s in b.samples}
    offsets = [round(last_sent[(s.local[1], s.server)] - s.t, 9) for s in by_mapping.values()]
    assert len(offsets) >= 6 and len(set(offsets)) == 1  # every sample: its request's moment, one t0
    # test I's request left as discovery began: its sample is at 0, not an RTT later
    assert min(s.t for s in b.samples) < rtt / 2
    # and discovery's background spans those moments (no foreign flows behind this NAT)
    assert b.background is not None and b.background[0] == 0 and 0 < b.background[1] < 2 * rtt


@pytest.mark.parametrize("filtering", [Filtering.EIF, Filtering.ADF])
async def test_an_answer_from_the_second_address_later_than_test_one_still_counts(mock_clock, filtering):
    # a two-host server's change-IP answer comes from the other host, later than test I's: within
    # the silence it counts (and before test I's answer arrives it waits in the test's inbox)
    rtt = 0.001
    late = silence_for(rtt) - rtt - 0.002
    b, _, _ = await run(Nat(Mapping.EIM, filtering), rtt, changed_after=late, hairpin=False)
    assert b.filtering is filtering


async def test_an_answer_later_than_the_silence_reads_as_filtering(mock_clock):
    # the cautious side: an answer that never comes in time is a filter that dropped it
    b, took, _ = await run(Nat(Mapping.EIM, Filtering.EIF), 0.001, changed_after=MIN_SILENCE + 0.01, hairpin=False)
    assert b.filtering is Filtering.APDF
    assert took < MIN_SILENCE + 0.01


async def test_a_lost_filtering_answer_costs_nothing_when_its_duplicate_is_answered(mock_clock):
    class Lossy(Nat):
        """Drops the first answer from the server's second addresses."""
        dropped = False

        def inbound(self, public_port, src):
            if src != S1 and not self.dropped:
                self.dropped = True
                return None
            return super().inbound(public_port, src)

    b, _, _ = await run(Lossy(Mapping.EIM, Filtering.EIF), 0.001, hairpin=False)
    assert b.filtering is Filtering.EIF


@pytest.mark.parametrize("filtering", [Filtering.ADF, Filtering.APDF])
async def test_a_one_ip_server_reads_the_change_port_test_only(mock_clock, filtering):
    # one IP, two ports: the change-IP request gets 420, which is not a server ignoring the change
    one_ip = StunServerConfig(ip=S1[0], alt_ip=None, port=S1[1], alt_port=S2[1], software=None)
    b, _, _ = await run(Nat(Mapping.EIM, filtering), 0.001, config=one_ip, hairpin=False)
    assert b.filtering is filtering
    assert b.discarded.get("error_response", 0) == 0


async def test_a_flood_before_test_one_answers_is_not_kept_and_the_answer_still_counts(mock_clock):
    # junk to a filtering socket while test I is still out: not kept (it carries no ID of ours), and
    # copies of our ID from a wrong source are kept only up to INBOX; the server's real answer, once
    # expected, is still found
    from nattrav.io.stun_discover import INBOX, FilterTest
    net = FakeNet(Nat(Mapping.EIM, Filtering.EIF), 0.001)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("0.0.0.0", 0))
        f = FilterTest(sock, S1, {"change_port": True}, schedules_for(0.001)[1])
        for _ in range(3 * INBOX):
            sock.arrive(0.0, b"not stun, twenty bytes or more", ("192.0.2.9", 9))
        async with trio.open_nursery() as nursery:
            await f.start()
            nursery.start_soon(f.run)
            await trio.sleep(0.01)
            assert f.inbox and len(f.inbox) <= INBOX and f.tx.discarded["wrong_transaction"] == 3 * INBOX
            f.expect((S1[0], S2[1]))
            await f.wait(0.05)
            nursery.cancel_scope.cancel()
    finally:
        trio.socket.set_custom_socket_factory(previous)
    assert f.tx.result is not None and f.tx.result.source == (S1[0], S2[1])
