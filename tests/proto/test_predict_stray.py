"""A sample off the counter (predict.without_stray): a sequential NAT whose next port is still held
by an older flow to the same destination hands out another one, and its counter goes on."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.proto.predict import WRAP_STEPS, Kind, Observation, predict, without_stray
from nattrav.proto.report import Sample
from nattrav.proto.vocab import Allocation


def _obs(ports, delta=1, allocation=Allocation.SEQUENTIAL):
    return Observation(tuple(Sample(p, i * 0.001) for i, p in enumerate(ports)), allocation, delta)


def test_a_stray_anywhere_in_the_series_is_left_out_and_the_counter_read_on():
    # seen in the lab once the counter wrapped: 22415, 22416, 21517, 22417
    for ports in ([22415, 22416, 21517, 22417], [21517, 22415, 22416, 22417], [22415, 22416, 22417, 21517]):
        p = predict(_obs(ports))
        assert p.kind is Kind.SEQUENTIAL and p.model.last == 22417 and p.ports[0] == 22418
    # Δ = 7: the stray is off the grid and far off the run
    p = predict(_obs([30000, 30007, 24001, 30014], delta=7))
    assert p.kind is Kind.SEQUENTIAL and p.model.delta == 7 and p.ports[0] == 30021


def test_nothing_is_left_out_without_discoverys_word_or_with_more_than_one_stray():
    assert predict(_obs([22415, 22416, 21517, 22417], allocation=None)).kind is Kind.RANDOM
    assert predict(_obs([22415, 21000, 21517, 22417])).kind is Kind.RANDOM
    assert predict(_obs([22415, 22416, 21517])).kind is Kind.RANDOM  # two left say too little
    clean = _obs([22415, 22416, 22417, 22418])
    assert without_stray(clean) is clean


def test_a_sample_far_ahead_on_the_grid_is_a_wait_not_a_stray():
    # a listener's re-sample after 2 s on a busy NAT: the counter ran on 800 steps; the series is
    # read as a wait by fit(), and the newest sample is where prediction starts
    waited = Observation((Sample(22415, 0.0), Sample(22416, 0.001), Sample(22417, 0.002), Sample(23217, 2.0),
                          Sample(23218, 2.001)), Allocation.SEQUENTIAL, 1)
    assert without_stray(waited) is waited
    p = predict(waited)
    assert p.kind is Kind.SEQUENTIAL and p.model.last == 23218
    one_after = Observation(waited.samples[:4], Allocation.SEQUENTIAL, 1)
    assert without_stray(one_after) is one_after  # never thrown away as a stray


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(1024, 65535), min_size=4, max_size=4))
def test_a_series_is_read_as_a_counter_with_a_stray_only_when_three_of_it_are_one(ports):
    # four ports of a random NAT pass only when leaving one out leaves a small forward run on the
    # grid (each gap 1..256 steps of Δ = 1, wrapping inside the range): ~1 time in 10^4
    def run(rest):
        gaps = [(b - a) % (65535 - 1024 + 1) for a, b in zip(rest, rest[1:])]
        return all(0 < g <= 256 for g in gaps)

    # or when a suffix on the grid starts far below every port before it (since_wrap: a counter that
    # started its block again; discovery's word that the NAT is sequential is what makes that likely)
    wrapped = any(ports[i] < min(ports[:i]) - WRAP_STEPS and (len(ports[i:]) == 1 or run(ports[i:]))
                  for i in range(1, 4))
    possible = run(ports) or any(run(ports[:i] + ports[i + 1:]) for i in range(4)) or wrapped
    assert predict(_obs(ports)).kind is not Kind.SEQUENTIAL or possible


def test_a_counter_that_started_its_block_again_is_read_from_the_bottom():
    # the lab's sequential NATs count through 4,096 ports: 24094, 24095, then 20000 (since_wrap)
    for ports in ([24094, 24095, 20000], [24093, 24094, 24095, 20000], [24094, 24095, 20000, 20001]):
        p = predict(_obs(ports))
        assert p.kind is Kind.SEQUENTIAL and p.model.last == ports[-1] and p.ports[0] == ports[-1] + 1
    p = predict(_obs([30000, 30007, 30014, 2000], delta=7))  # Δ = 7: a block of 4,000 steps
    assert p.kind is Kind.SEQUENTIAL and p.ports[0] == 2007
    # not a wrap: a step back of fewer than WRAP_STEPS (a stray), without discovery's word, or a
    # series that goes on off the grid after it
    assert predict(_obs([22415, 22416, 22417, 21517])).model.last == 22417
    assert predict(_obs([24094, 24095, 20000], allocation=None)).kind is Kind.RANDOM
    assert predict(_obs([24094, 24095, 20000, 20900])).kind is Kind.RANDOM


def test_a_named_block_needs_no_cut():
    from dataclasses import replace

    named = replace(_obs([24094, 24095, 20000]), port_range=(20000, 24095))
    p = predict(named)
    assert p.kind is Kind.SEQUENTIAL and p.model.last == 20000 and len(p.model.port_range) == 2
    assert p.model.extra == 0  # the wrap's step is one step on the block: no background read into it
