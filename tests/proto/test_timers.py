"""proto.timers: one deadline per key, replaceable and cancellable, heap bounded by live keys."""

from __future__ import annotations

import random

from nattrav.proto.timers import SLACK, Timers


def test_due_keys_come_out_in_deadline_order_once():
    t = Timers()
    t.set("b", 2.0)
    t.set("a", 1.0)
    t.set("c", 3.0)
    assert t.next_deadline() == 1.0
    assert t.pop_due(0.5) is None
    assert [t.pop_due(2.5), t.pop_due(2.5), t.pop_due(2.5)] == ["a", "b", None]
    assert "c" in t and "a" not in t


def test_set_replaces_and_cancel_forgets():
    t = Timers()
    t.set("a", 1.0)
    t.set("a", 5.0)  # later: the old deadline must not fire
    t.set("b", 2.0)
    t.cancel("b")
    t.cancel("nothing")
    assert t.pop_due(4.0) is None and t.next_deadline() == 5.0
    assert t.pop_due(5.0) == "a" and t.next_deadline() is None


def test_heap_stays_proportional_to_live_keys():
    t = Timers()
    rng = random.Random(1)
    for i in range(50_000):
        t.set(("offer", i), rng.uniform(0, 100))
        if i % 100:
            t.cancel(("offer", i))  # 99 in 100 end early
        t.set("peer", rng.uniform(0, 100))  # one key, replaced over and over
    assert t.pending() == 501
    assert len(t) <= 2 * t.pending() + SLACK + 1
    fired = []
    while (k := t.pop_due(100.0)) is not None:
        fired.append(k)
    assert len(fired) == 501 and fired.count("peer") == 1
