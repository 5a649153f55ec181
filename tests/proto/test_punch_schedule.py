"""The talker's send schedule, sans-IO (proto/planner/schedule.py): no fixed head start behind the
opener, quick first resends that back off to the attempt's interval, the same flows throughout."""

from __future__ import annotations

import pytest

from nattrav.proto.planner.schedule import RAMP_FIRST, RAMP_MAX_PACKETS, gap_after, ramp, send_times
from nattrav.proto.planner.udp import Part, plan
from nattrav.proto.vocab import Strategy
from tests.proto.test_planner_udp import CLASSES


def test_ramp_doubles_up_to_the_interval():
    assert ramp(0.1, first=0.002) == pytest.approx((0.002, 0.004, 0.008, 0.016, 0.032, 0.064))
    assert ramp(0.25, first=0.002)[-1] == pytest.approx(0.128)
    assert all(g < 0.1 for g in ramp(0.1))
    assert ramp(0.001, first=0.002) == ()  # a part that resends faster than the ramp has none
    with pytest.raises(ValueError):
        ramp(0.1, first=0.0)


def test_gaps_after_the_ramp_are_the_interval():
    gaps = ramp(0.1)
    assert [gap_after(k, gaps, 0.1) for k in range(len(gaps))] == list(gaps)
    assert gap_after(len(gaps), gaps, 0.1) == 0.1 and gap_after(100, gaps, 0.1) == 0.1
    assert gap_after(3, (), 0.25) == 0.25


@pytest.mark.parametrize("late", [0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.09, 0.13, 0.3, 0.77])
def test_a_late_opener_costs_the_talker_at_most_about_the_lateness(late):
    """The opener's NAT opens `late` seconds after the talker's first packet would reach it: the
    next packet after that comes within max(RAMP_FIRST, late) + ... never more than one interval
    late, where the old schedule (one packet per interval after a fixed delay) lost a whole one."""
    times = send_times(ramp(0.1), 0.1, 2.0)
    first_in = min(t for t in times if t >= late)
    wait = first_in - late
    assert wait <= max(RAMP_FIRST, late) + 1e-9
    assert wait <= 0.1


def test_extra_packets_are_few_and_counted():
    # over a 2 s attempt the talker's one target gets 6 quick resends more than one per interval
    assert len(send_times(ramp(0.1), 0.1, 2.0)) - len(send_times((), 0.1, 2.0)) <= 6
    assert len(send_times(ramp(0.25), 0.25, 3.0)) - len(send_times((), 0.25, 3.0)) <= 7


def test_part_gap_follows_its_ramp():
    p = Part("198.51.100.1", (4000,), interval=0.1, ramp=ramp(0.1))
    assert [p.gap(k) for k in range(8)] == pytest.approx([0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.1, 0.1])
    assert Part("198.51.100.1", (4000,), interval=0.2).gap(0) == 0.2


@pytest.mark.parametrize("a, b, strategy", [
    ("port-restricted", "port-restricted", Strategy.SIMULTANEOUS),
    ("port-restricted", "symmetric-seq", Strategy.PREDICTED),
    ("restricted-cone", "symmetric-seq", Strategy.ADDRESS_OPEN),
    ("full-cone", "port-restricted", Strategy.DIRECT),
])
def test_small_talkers_start_at_once_and_ramp_openers_do_not(a, b, strategy):
    for role in ("first", "second"):
        p = plan(CLASSES[a], CLASSES[b], role)
        att = p.primary
        assert att.strategy is strategy
        talker = att.remote if att.local.opens else att.local
        opener = att.local if att.local.opens else att.remote
        assert not talker.opens and opener.opens
        assert talker.delay == 0.0 and talker.ramp == ramp(talker.interval)
        # the opener's packets die inside its own NATs: resending them sooner helps nobody
        assert opener.ramp == () and opener.delay == 0.0
        # the summary shows the schedule
        assert p.summary()["attempts"][0]["local"]["ramp"] == list(att.local.ramp)


def test_a_big_talker_window_keeps_one_round_per_interval():
    from nattrav.proto.planner.udp import _talker

    big = _talker("198.51.100.1", tuple(range(1000, 1000 + RAMP_MAX_PACKETS + 1)), interval=0.25, big_delay=0.05)
    assert big.ramp == () and big.delay == 0.05
    small = _talker("198.51.100.1", tuple(range(1000, 1000 + RAMP_MAX_PACKETS)), interval=0.25)
    assert small.delay == 0.0 and small.ramp


def test_bursts_keep_their_delays():
    # birthday: the EIM side's probes wait for the random side's sockets (opened in workers)
    p = plan(CLASSES["port-restricted"], CLASSES["symmetric-random"], "first")
    assert p.strategy is Strategy.BIRTHDAY
    prober = p.primary.local if not p.primary.local.opens else p.primary.remote
    assert prober.delay > 0 and prober.ramp == ()
