"""io.gc_policy: long-lived objects leave the collector's reach; cycles among them are still freed."""

from __future__ import annotations

import gc

import trio

from nattrav.io.gc_policy import keep_collections_short


class Node:
    def __init__(self):
        self.other = None


async def test_survivors_are_frozen_and_the_full_collection_still_frees_their_cycles(autojump_clock):
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that will be garbage once frozen
    async with trio.open_nursery() as n:
        n.start_soon(keep_collections_short, 1.0, 10.0)
        await trio.sleep(1.5)
        assert gc.get_freeze_count() > 0
        assert not any(o is a for o in gc.get_objects(2))  # out of the collector's reach
        gone = [False]

        class Watched(Node):
            def __del__(self):
                gone[0] = True

        c = Watched()
        c.other = a
        a.other = c
        await trio.sleep(1.0)  # c is frozen too
        del a, b, c
        gc.collect()
        assert not gone[0]  # a frozen cycle is not collected by an ordinary collection...
        await trio.sleep(10)
        assert gone[0]  # ...but by the periodic full one
        n.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # the process is left as it was found
