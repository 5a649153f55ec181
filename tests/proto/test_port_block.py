"""proto/port_block.py: a sequential NAT's block of ports, learned from our samples, and the
prediction that wraps where the NAT does once the report says so."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from nattrav.api import port_blocks
from nattrav.proto.port_block import MIN_WRAPS, TOP_EXTRA, TOP_REACH, PortBlock, to_top
from nattrav.proto.predict import Kind, predict
from nattrav.proto.report import PORT_RANGE, NatReport, Sample
from nattrav.proto.vocab import Allocation, Filtering, Mapping


def counter(lo: int, n: int, delta: int, start: int = 0):
    """The ports a NAT counting through n ports of step delta from lo hands out, from the start-th."""
    k = start
    while True:
        yield lo + (k % n) * delta
        k += 1


def take(gen, every: int, count: int) -> list[int]:
    """`count` of the counter's ports, one in `every` (the others went to other hosts)."""
    out = []
    for i in range(count * every):
        port = next(gen)
        if i % every == 0:
            out.append(port)
    return out


def test_a_block_is_published_once_it_wrapped():
    block = PortBlock().seen(take(counter(20000, 256, 1, start=100), 3, 50))  # 150 ports: no wrap yet
    assert block.wraps == 0 and block.port_range(1) is None
    block = block.seen(take(counter(20000, 256, 1, start=250), 3, 50))
    assert block.wraps == MIN_WRAPS and block.past_top == 0
    lo, hi = block.port_range(1)
    assert 20000 <= lo <= 20002 and 20253 <= hi <= 20255  # within one step of every 3rd port


def test_a_counter_a_little_past_the_top_it_wrapped_at_still_publishes_the_block():
    # every 7th port of the block 24096-28191: the first cycle's top sample is below the block's top
    block = PortBlock().seen([*range(26000, 28191, 7), *range(24098, 26000, 7)])
    assert block.wraps == 1 and block.wrap_top == 28184 and block.port_range(1) == (24098, 28184)
    block = block.seen(range(26005, 28191, 7))  # round again, to a sample past that top
    assert block.past_top == 5
    assert block.port_range(1) == (24098, 28189)  # the wrap is near: name it (twins cover a higher top)


def test_nothing_is_published_while_the_counter_is_far_past_the_top_it_wrapped_at():
    wrong = PortBlock().seen([20000, 20010, 20020, 20200, 20210, 20001, 20002])  # a wrap at 20210?
    assert wrong.port_range(1) == (20000, 20210)
    assert wrong.seen([20215, 20216]).port_range(1) == (20000, 20216)  # a few ports on: maybe its top
    later = wrong.seen(range(20215, 20300, 5))  # no: the counter goes on past it
    assert later.past_top > 0 and later.port_range(1) is None
    assert later.seen([20305]).port_range(1) is None  # measured from the top it wrapped at, not the last
    assert later.seen([20100, 20101]).port_range(1) is None  # a step back is no wrap yet
    again = later.seen([20001, 20002])  # a real wrap: from the top quarter to the bottom one
    assert again.wraps == 2 and again.port_range(1) == (20000, 20295)


def test_a_kept_block_is_measured_from_the_top_it_wrapped_at():
    port_blocks.forget_all()
    port_blocks.observe("203.0.113.9", [20000, 20010, 20020, 20200, 20210, 20001, 20002])
    port_blocks.observe("203.0.113.9", [20230])
    assert port_blocks.kept("203.0.113.9") == (20000, 20210, 1)


def test_a_step_of_delta_past_the_top_lands_on_the_bottom():
    gen = counter(20000, 100, 7)
    block = PortBlock().seen(take(gen, 1, 350))  # every port, three wraps
    assert block.port_range(7) == (20000, 20000 + 7 * 99 + 6)
    report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=7,
                       public=("203.0.113.20", 20000 + 7 * 98),
                       samples=(Sample(20000 + 7 * 97, 0.0), Sample(20000 + 7 * 98, 0.001)),
                       port_range=block.port_range(7))
    p = predict(report, elapsed=0.001)
    assert p.kind is Kind.SEQUENTIAL
    assert p.ports[:2] == (20000 + 7 * 99, 20000)  # the top, then the bottom again


def test_samples_across_the_wrap_read_as_sequential_with_the_block():
    rng = (20000, 24095)
    samples = (Sample(24094, 0.0), Sample(24095, 0.001), Sample(20000, 0.002), Sample(20001, 0.003))
    base = dict(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                public=("203.0.113.20", 20001), samples=samples)
    named = predict(NatReport(**base, port_range=rng), elapsed=0.001)
    assert named.next_port == 20002 and named.model.exposure == pytest.approx(0.003)  # every sample read
    cut = predict(NatReport(**base), elapsed=0.001)  # without it, only the samples since the wrap
    assert cut.next_port == 20002 and cut.model.exposure == pytest.approx(0.001)


def test_a_stale_sample_is_no_wrap():
    ports = list(range(30000, 30400, 4))
    ports.insert(60, 30010)  # an old flow's mapping, far behind the counter
    block = PortBlock().seen(ports)
    assert block.wraps == 0 and block.port_range(1) is None
    assert block.last == ports[-1]


def test_a_counter_that_has_barely_moved_is_not_a_block():
    block = PortBlock().seen([100, 101, 102, 100, 101, 102, 100, 101])
    assert block.port_range(1) is None


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(1024, 40000), n=st.integers(16, 3000), delta=st.integers(1, 7),
       every=st.integers(1, 6), count=st.integers(10, 400), stale=st.lists(st.integers(0, 399), max_size=5))
def test_a_counter_that_never_wraps_never_reads_as_a_block(lo, n, delta, every, count, stale):
    n = min(n, (65535 - lo) // delta)
    total = min(count * every, n)  # the counter stays below its top
    ports = [lo + k * delta for k in range(0, total, every)]
    # old flows' mappings, each alone somewhere behind the counter
    for i in sorted({i for i in stale if 2 < i < len(ports) and i + 1 not in stale}, reverse=True):
        ports.insert(i, ports[i // 3])
    assert PortBlock().seen(ports).wraps == 0


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(1024, 40000), n=st.integers(64, 3000), delta=st.integers(1, 7),
       every=st.integers(1, 4), start=st.integers(0, 2999))
def test_a_learned_block_lies_inside_the_nat_s(lo, n, delta, every, start):
    n = min(n, (65535 - lo) // delta)
    block = PortBlock().seen(take(counter(lo, n, delta, start % n), every, 4 * n // every + 4))
    rng = block.port_range(delta)
    assert block.wraps >= 3
    assert rng is not None and lo <= rng[0] and rng[1] <= lo + n * delta - 1


def test_the_process_keeps_a_block_per_public_address():
    port_blocks.forget_all()
    try:
        for start in (0, 300, 600):
            port_blocks.observe("203.0.113.20", take(counter(20000, 256, 1, start), 1, 300))
        assert port_blocks.observe("203.0.113.20", []).port_range(1) == (20000, 20255)
        assert port_blocks.observe("203.0.113.21", [20000]).port_range(1) is None
    finally:
        port_blocks.forget_all()


def test_a_report_says_the_block_once_the_process_saw_it():
    from nattrav.api.udp import _report
    from nattrav.proto.nat_behavior import NatBehavior

    class Sock:
        def getsockname(self):
            return ("127.0.0.1", 40000)

    behavior = NatBehavior(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1)
    events = []
    port_blocks.forget_all()
    try:
        reports = []
        for start in (0, 203, 406, 609):  # 200 ports a connect, every 4th ours: wraps at 256
            ports = take(counter(20000, 256, 1, start), 4, 50)
            reports.append(_report(Sock(), behavior, [Sample(p, i * 0.001) for i, p in enumerate(ports)],
                                   ("203.0.113.20", ports[-1]), lambda phase, d: events.append((phase, d))))
        assert reports[0].port_range == (1024, 65535)
        assert reports[-1].port_range == (20000, 20255)
        assert ("port-block", {"range": [20000, 20255]}) in events
    finally:
        port_blocks.forget_all()


def test_a_window_across_a_learned_top_also_holds_the_ports_past_it():
    # the block's top may be one the counter has not shown yet: the wrapped ports' twins past it go
    # in too (while the cap allows), the odds being the block's; so do the ports under its bottom
    base = dict(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                public=("203.0.113.20", 20254), samples=(Sample(20253, 0.0), Sample(20254, 0.001)))
    learned = predict(NatReport(**base, port_range=(20000, 20255)), elapsed=0.05)
    ports, odds = learned.mixture_window(0.999, 64)
    assert ports[0] == 20255 and 20000 in ports and odds >= 0.999
    wrapped = [p for p in ports if 20000 <= p < 20253]
    assert [20255 + 1 + (p - 20000) for p in wrapped] == [p for p in ports if p > 20255]
    # and the block's bottom may be lower than seen: the ports under it, one a wrapped port
    assert [p for p in ports if p < 20000] == [19999 - g for g in range(len(wrapped))]
    assert learned.mixture_window(0.999, len(ports) - 1)[0] == ports[:-1]  # the cap holds
    plain = predict(NatReport(**base), elapsed=0.05)  # no block: nothing to twin
    assert all(p > 20254 for p in plain.mixture_window(0.999, 64)[0])


def test_a_window_cut_by_its_cap_keeps_the_edges_of_the_likeliest_flows_before_its_tail():
    # the counter at its published top: every flow wraps, each with a twin past the top and a port
    # under the bottom; a cap that cannot take all three keeps the likeliest flows' edges and drops
    # the window's least likely ports (an arbitrary pool's peer lost connects at a bottom 10-33
    # ports under the one published, when every twin went first and the cap cut the rest)
    report = NatReport(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL,
                       delta=1, public=("203.0.113.20", 24095), port_range=(20033, 24095),
                       samples=(Sample(24067, 0.0), Sample(24068, 0.001), Sample(24095, 0.228, own=26)))
    pred = predict(report, elapsed=1.6)
    full, odds = pred.mixture_window(0.9999, 4096)
    window = [p for p in full if 20033 <= p <= 24095]
    assert odds >= 0.9999 and len(full) == 3 * len(window)
    cut, cut_odds = pred.mixture_window(0.9999, 70)
    assert len(cut) == 70 and set(cut) <= set(full)
    # the likeliest flow lands on the bottom published, or past the top, or under the bottom
    assert {20033, 24096, 20032} <= set(cut[:3])
    under = sorted((p for p in cut if p < 20033), reverse=True)
    assert under == list(range(20032, 20032 - len(under), -1)) and len(under) >= 20
    # what went is the window's tail; the odds say what of the window stayed
    dropped = [p for p in window if p not in cut]
    assert dropped and dropped == window[len(window) - len(dropped):]
    assert cut_odds < odds and cut_odds >= 0.99


# --- a counter about to reach its published top is taken through it (api/block_edge.py) -------------

def test_a_counter_near_its_published_top_is_taken_past_it_and_a_little_further():
    block = (20000, 24095)
    assert to_top(block, 24095, 1) == 1 + TOP_EXTRA  # at the top: the next flow wraps
    assert to_top(block, 24050, 1) == 46 + TOP_EXTRA
    assert to_top(block, 24086, 3) == 4 + TOP_EXTRA  # 24089, 24092, 24095, then past it


def test_a_counter_out_of_reach_or_a_range_that_is_no_block_takes_nothing():
    block = (20000, 24095)
    assert to_top(block, 24095 - TOP_REACH, 1) == 0  # TOP_REACH + 1 flows away
    assert to_top(block, 24095 - TOP_REACH + 1, 1) == TOP_REACH + TOP_EXTRA
    assert to_top(block, 21000, 1) == 0
    assert to_top(PORT_RANGE, 65530, 1) == 0  # nothing published
    assert to_top(block, 24100, 1) == 0  # not in the block (a stray)
    assert to_top(block, 24090, None) == 0 and to_top(block, 24090, 0) == 0


def test_a_small_blocks_reach_is_a_sixteenth_of_its_cycle():
    block = (30000, 30511)  # 512 ports: 32 flows at Δ = 1, 16 at Δ = 2
    assert to_top(block, 30511 - 31, 1) == 32 + TOP_EXTRA
    assert to_top(block, 30511 - 32, 1) == 0
    assert to_top(block, 30511 - 31, 2) == 16 + TOP_EXTRA
    assert to_top(block, 30511 - 33, 2) == 0
