"""io.gc_policy: survivors of a young collection leave the collector's reach at once; what dies is
still freed (by reference counting, by the young collection, or by the periodic full one)."""

from __future__ import annotations

import gc
import weakref

import trio

from nattrav.io.gc_policy import keep_collections_short


class Node:
    def __init__(self):
        self.other = None


def tracked_anywhere(obj) -> bool:
    return any(o is obj for g in range(3) for o in gc.get_objects(g))


async def test_a_young_collection_freezes_its_survivors_so_later_ones_do_not_walk_them(autojump_clock):
    async with trio.open_nursery() as n:
        n.start_soon(keep_collections_short, 100.0)
        await trio.sleep(0.1)
        survivor = Node()
        assert tracked_anywhere(survivor)  # young, walked by the next collection
        gc.collect(0)  # what the allocator triggers by itself every ~700 allocations
        assert not tracked_anywhere(survivor)  # frozen by the collection's end
        assert gc.get_count()[1:] == (0, 0)  # the older generations are empty: nothing to walk there
        n.cancel_scope.cancel()


async def test_frozen_objects_still_die_by_reference_count(autojump_clock):
    gone = []
    async with trio.open_nursery() as n:
        n.start_soon(keep_collections_short, 100.0)
        await trio.sleep(0.1)
        obj = Node()
        weakref.finalize(obj, gone.append, True)
        gc.collect(0)
        assert not tracked_anywhere(obj)
        del obj  # no cycle: freed right away, frozen or not
        assert gone == [True]
        n.cancel_scope.cancel()


async def test_a_cycle_that_dies_young_is_collected_by_the_young_collection(autojump_clock):
    gone = []
    async with trio.open_nursery() as n:
        n.start_soon(keep_collections_short, 100.0)
        await trio.sleep(0.1)
        a, b = Node(), Node()
        a.other, b.other = b, a
        weakref.finalize(a, gone.append, True)
        del a, b
        gc.collect(0)
        assert gone == [True]
        n.cancel_scope.cancel()


async def test_a_frozen_cycle_is_freed_by_the_periodic_full_collection_and_the_process_is_left_as_found(
        autojump_clock):
    callbacks = list(gc.callbacks)
    gone = []
    async with trio.open_nursery() as n:
        n.start_soon(keep_collections_short, 10.0)
        await trio.sleep(0.1)
        a, b = Node(), Node()
        a.other, b.other = b, a
        weakref.finalize(a, gone.append, True)
        gc.collect(0)  # the cycle is alive here: frozen
        del a, b
        gc.collect()
        assert gone == []  # a frozen cycle is not collected by an ordinary collection...
        await trio.sleep(10)
        assert gone == [True]  # ...but by the periodic full one
        n.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0
    assert gc.callbacks == callbacks
