"""A sequential counter about to reach the top of its published block is taken through it before
the report leaves (api/block_edge.py), on a simulated NAT whose block goes higher than the one our
samples published: the crossing finds the NAT's own top and bottom, the report's last sample is
the counter after the wrap, and the flows it spent are in the ledger. Virtual time only."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from nattrav.api import block_edge, port_blocks, udp
from nattrav.proto.nat_behavior import NatBehavior
from nattrav.proto.planner.side import side_from_report
from nattrav.proto.port_block import MAX_CROSSING, TOP_EXTRA, TOP_REACH
from nattrav.proto.rendezvous.beacon import SECRET_BYTES, TAKES_BEACON
from nattrav.proto.report import NatReport, Sample
from nattrav.proto.vocab import Allocation, Filtering, Mapping
from tests.io.test_discover_timing import PUBLIC, S1, S2, FakeNet, FakeSocket, Nat

LO, HI = 20000, 24095  # the NAT's block


class BlockNat(Nat):
    """A symmetric NAT counting by `delta` through [LO, HI] and starting again at LO."""

    def __init__(self, start: int, delta: int = 1, lo: int = LO, hi: int = HI) -> None:
        super().__init__(Mapping.APDM, Filtering.APDF, delta)
        self.next_port, self.lo, self.hi = start, lo, hi

    def outbound(self, local_port: int, dest: tuple[str, int]) -> int:
        port = super().outbound(local_port, dest)
        if self.next_port > self.hi:
            self.next_port = self.lo + (self.next_port - self.hi - 1)
        return port


@pytest.fixture(autouse=True)
def _fresh_process():
    port_blocks.forget_all()
    udp.LEDGER.bursts.clear()
    yield
    port_blocks.forget_all()
    udp.LEDGER.bursts.clear()


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def _crossing(nat: Nat, published: tuple[int, int], last: int, delta: int = 1,
                    most: int = MAX_CROSSING) -> block_edge.Crossing:
    net = FakeNet(nat, 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        return await block_edge.cross_top(S1, None, PUBLIC, published, last, delta, most)
    finally:
        trio.socket.set_custom_socket_factory(previous)


async def test_a_top_published_below_the_nats_is_crossed_where_the_nat_wraps(mock_clock):
    # our samples met 24,063 at most: that is the published top; the NAT's is 24,095
    port_blocks.seed(PUBLIC, 20010, 24063, 1)
    got = await _crossing(BlockNat(24051), (20010, 24063), 24050)
    assert got.wrapped
    i = got.ports.index(HI)
    assert got.ports[:i + 1] == list(range(24051, HI + 1)) and got.ports[i + 1] == LO
    # each flow took the next port: the last one answered is the counter, the others were ours
    assert got.flows == len(got.ports) and got.before_last == got.flows - 1
    # batches: to the published top and TOP_EXTRA on (22), then 2·TOP_EXTRA (16), then twice that:
    # the flows after the wrap are at most the last batch's
    assert got.flows == 22 + 16 + 32 and len(got.ports) - (i + 1) <= 32
    block = port_blocks.observe(PUBLIC, [])
    assert block.port_range(1) == (LO, HI)  # the NAT's own block, bottom and top


async def test_a_counter_out_of_reach_of_its_top_costs_nothing(mock_clock):
    port_blocks.seed(PUBLIC, 20000, 24095, 1)
    nat = BlockNat(22001)
    got = await _crossing(nat, (20000, 24095), 22000)
    assert got.flows == 0 and got.ports == [] and nat.next_port == 22001


async def test_a_crossing_keeps_within_the_flows_it_may_spend(mock_clock):
    port_blocks.seed(PUBLIC, 20010, 24063, 1)
    nat = BlockNat(24051)
    # 13 flows to the published top and TOP_EXTRA past it do not fit in 12: nothing is spent
    got = await _crossing(nat, (20010, 24063), 24050, most=12)
    assert got.flows == 0 and nat.next_port == 24051
    # 21 fit in 30, and 9 more: the crossing stops there, short of the NAT's top (24,095)
    got = await _crossing(nat, (20010, 24063), 24050, most=30)
    assert got.flows == 30 and not got.wrapped and got.ports == list(range(24051, 24081))


async def test_a_counter_that_goes_on_far_past_the_top_was_no_block_and_the_crossing_stops(mock_clock):
    # two stale samples read as a wrap published a block the counter is not bound by
    port_blocks.seed(PUBLIC, 20010, 20300, 1)
    got = await _crossing(BlockNat(20291, hi=40000), (20010, 20300), 20290)
    assert not got.wrapped and got.flows < MAX_CROSSING
    assert port_blocks.observe(PUBLIC, []).port_range(1) is None  # nothing published now


async def test_the_report_names_the_counter_after_the_wrap_and_the_ledger_holds_the_flows(mock_clock):
    nat = BlockNat(24051, delta=1)
    net = FakeNet(nat, 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        port_blocks.seed(PUBLIC, 20010, 24063, 1)
        behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                               delta=1, nat=True, server=S1, other_address=S2)
        report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                           delta=1, public=(PUBLIC, 24050), samples=(Sample(24049, 0.0), Sample(24050, 0.01)),
                           port_range=(20010, 24063))
        sock = FakeSocket(net, trio.socket.AF_INET)
        await sock.bind(("10.0.0.2", 0))
        ep = udp.Endpoint(sock, behavior, report, trio.current_time(), trio.current_time(), local_ip="10.0.0.2")
        events: list = []
        await udp.cross_block_top(ep, lambda phase, detail: events.append((phase, detail)))
    finally:
        trio.socket.set_custom_socket_factory(previous)
    last = ep.report.samples[-1]
    assert ep.report.samples[:2] == report.samples
    assert LO <= last.port < LO + 2 * TOP_EXTRA * 4 and last.port == nat.next_port - 1
    assert ep.report.port_range == (LO, HI)
    top = [d for p, d in events if p == "block-top"]
    assert len(top) == 1 and top[0]["wrapped"] and top[0]["flows"] == last.own + 1
    assert udp.LEDGER.held("10.0.0.2", time.monotonic()) == top[0]["flows"]


@pytest.mark.parametrize("mapping, allocation", [(Mapping.APDM, Allocation.RANDOM),
                                                  (Mapping.EIM, Allocation.SEQUENTIAL)])
async def test_a_counter_not_counting_or_a_mapping_kept_for_every_destination_is_left_alone(
        mock_clock, mapping, allocation):
    port_blocks.seed(PUBLIC, 20010, 24063, 1)
    behavior = NatBehavior(mapping=mapping, filtering=Filtering.APDF, allocation=allocation, delta=1,
                           nat=True, server=S1, other_address=S2)
    report = NatReport(mapping=mapping, filtering=Filtering.APDF, allocation=allocation, delta=1,
                       public=(PUBLIC, 24050), samples=(Sample(24050, 0.0),), port_range=(20010, 24063))
    ep = udp.Endpoint(None, behavior, report, local_ip="10.0.0.2")
    net = FakeNet(BlockNat(24051), 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        await udp.cross_block_top(ep)
    finally:
        trio.socket.set_custom_socket_factory(previous)
    assert ep.report is report and net.sent == []


def test_an_accept_whose_counter_may_have_come_near_its_top_refreshes_instead_of_a_beacon():
    # the refresh's samples say where the counter is now, and cross_block_top takes it through
    behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                           delta=1, nat=True, server=S1, other_address=S2)
    offer = {TAKES_BEACON: True, "beacon_key": b"k" * SECRET_BYTES, "beacon_port": 7411}

    def at(last: int) -> udp.Endpoint:
        report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                           delta=1, public=(PUBLIC, last), samples=(Sample(last, 0.0),), port_range=(20010, 24063))
        return udp.Endpoint(None, behavior, report, local_ip="10.0.0.2")

    assert udp.beacon_wanted(at(22000), offer) == (b"k" * SECRET_BYTES, 7411)
    assert udp.beacon_wanted(at(24063 - TOP_REACH - 10), offer) is None  # beyond the crossing's own reach
    assert udp.beacon_wanted(at(24063 - 2 * TOP_REACH - 10), offer) is not None


async def test_a_second_refresh_samples_the_counter_with_fresh_flows_not_the_old_ones_again(mock_clock):
    # A listener that refreshed at its accept and is asked for samples again: the first refresh
    # used the two server addresses its socket had not sent to; sending there again answers with
    # the same mappings, which read as a step back round the block (random ports, a 0.2 % plan)
    nat = BlockNat(22000)
    net = FakeNet(nat, 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    events: list = []
    try:
        behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                               delta=1, nat=True, server=S1, other_address=S2)
        sock = FakeSocket(net, trio.socket.AF_INET)
        await sock.bind(("10.0.0.2", 0))
        first = [await _bind_port(sock, S1), await _bind_port(sock, S2)]
        report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                           delta=1, public=(PUBLIC, first[-1]),
                           samples=(Sample(first[0], 0.0), Sample(first[1], 0.01)), port_range=(LO, HI))
        ep = udp.Endpoint(sock, behavior, report, trio.current_time(), trio.current_time(), local_ip="10.0.0.2")
        hook = lambda phase, detail: events.append((phase, detail))  # noqa: E731
        await udp.refresh_mappings(ep, hook)
        assert [s.port for s in ep.report.samples] == [22000, 22001, 22002, 22003]
        nat.next_port += 5  # other hosts' flows meanwhile
        await udp.refresh_mappings(ep, hook)
    finally:
        trio.socket.set_custom_socket_factory(previous)
    last = ep.report.samples[-1]
    # two fresh flows took 22009 and 22010: the last is the counter, one of ours before it
    assert (last.port, last.own) == (22010, 1) and nat.next_port == 22011
    assert [s.port for s in ep.report.samples[:-1]] == [22000, 22001, 22002, 22003]
    assert [d["ports"] for p, d in events if p == "counter"] == [[22009, 22010]]
    assert [d["ports"] for p, d in events if p == "mapping"] == [[22002, 22003]]
    side = side_from_report(ep.report)
    assert side.sequential and side.next_port(0) == 22011
    assert udp.LEDGER.held("10.0.0.2", time.monotonic()) == udp.COUNTER_FLOWS


async def test_a_second_refresh_of_a_nat_that_does_not_count_sends_nothing(mock_clock):
    nat = Nat(Mapping.APDM, Filtering.APDF, 1)
    net = FakeNet(nat, 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.RANDOM,
                               nat=True, server=S1, other_address=S2)
        report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.RANDOM,
                           public=(PUBLIC, 40000), samples=(Sample(40000, 0.0), Sample(31234, 0.01)))
        sock = FakeSocket(net, trio.socket.AF_INET)
        await sock.bind(("10.0.0.2", 0))
        ep = udp.Endpoint(sock, behavior, report, trio.current_time(), trio.current_time(), local_ip="10.0.0.2")
        await udp.refresh_mappings(ep)
        sent, samples = len(net.sent), ep.report.samples
        await udp.refresh_mappings(ep)
    finally:
        trio.socket.set_custom_socket_factory(previous)
    assert sent == 2 and len(net.sent) == sent and ep.report.samples == samples


async def _bind_port(sock, server) -> int:
    """One Binding from `sock` to `server`: the port the NAT mapped."""
    from nattrav.io.stun_client import run_transaction
    from nattrav.proto.stun import binding_request
    from nattrav.proto.stun_client import Transaction

    return (await run_transaction(sock, Transaction(binding_request(), server))).mapped[1]


async def test_an_address_of_the_pool_first_seen_at_a_refresh_joins_the_pool_block(mock_clock, monkeypatch):
    # the opening's flows left from PUBLIC only; a refresh's flow leaves from the pool's other
    # address, whose block the cache kept narrower: from then on the two are one counter's block
    other = "198.51.100.99"
    port_blocks.seed(PUBLIC, LO, HI, 1)
    port_blocks.seed(other, LO + 40, HI - 300, 1)

    async def sample(sock, targets, t0, *args, **kwargs):
        return udp._Sampled([Sample(22000, 0.0), Sample(22001, 0.01)], (other, 22001), {PUBLIC, other})

    monkeypatch.setattr(udp, "_sample", sample)
    behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                           delta=1, nat=True, server=S1, other_address=S2)
    report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                       delta=1, public=(PUBLIC, 21999), samples=(Sample(21998, 0.0), Sample(21999, 0.01)),
                       port_range=(LO, HI))
    net = FakeNet(BlockNat(22000), 0.05)
    previous = trio.socket.set_custom_socket_factory(net)
    try:
        sock = FakeSocket(net, trio.socket.AF_INET)
        await sock.bind(("10.0.0.2", 0))
        ep = udp.Endpoint(sock, behavior, report, trio.current_time(), trio.current_time(), local_ip="10.0.0.2",
                          seen_ips={PUBLIC})
        await udp.refresh_mappings(ep)
    finally:
        trio.socket.set_custom_socket_factory(previous)
    assert ep.seen_ips == {PUBLIC, other}
    assert port_blocks.kept(other) == port_blocks.kept(PUBLIC) == (LO, HI, 1)
