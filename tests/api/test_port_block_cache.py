"""The port block a sequential NAT's counter goes round, kept per network in the behaviour cache
(api/behavior_cache.py set_block, api/port_blocks.py seed/kept, api/udp.py): a new process's report
names the block an earlier process saw, without a wrap of its own."""

from __future__ import annotations

import json
import os

import pytest

from nattrav.api import port_blocks, udp
from nattrav.api.behavior_cache import BehaviorCache
from nattrav.api.endpoint import CacheUse
from tests.api.test_behavior_cache import KEY, STUN, behavior

PUBLIC = KEY.public_ip


@pytest.fixture
def cache(tmp_path) -> BehaviorCache:
    return BehaviorCache(tmp_path / "nattrav" / "behavior.json")


@pytest.fixture(autouse=True)
def _fresh_process():
    port_blocks.forget_all()
    yield
    port_blocks.forget_all()


def test_a_block_is_kept_with_its_entry_and_survives_the_entrys_other_writes(cache):
    assert cache.save(KEY, behavior(), now=1000.0)
    assert cache.set_block(KEY, (20000, 24095, 1))
    assert not cache.set_block(KEY, (20000, 24095, 1))  # unchanged: no write
    assert cache.set_lifetime(KEY, 120.0)
    assert cache.save(KEY, behavior(), now=1100.0)  # a new discovery of the same network
    entry = cache.lookup(KEY, now=1100.0)
    assert entry is not None and entry.block == (20000, 24095, 1) and entry.behavior.lifetime == 120.0


def test_no_entry_no_block(cache):
    assert not cache.set_block(KEY, (20000, 24095, 1))


@pytest.mark.parametrize("block", [[20000, 20005, 1], [0, 24095, 1], [20000, 70000, 1], [20000, 24095, -1],
                                   [20000, 24095], ["20000", 24095, 1], [20000, 24095, True], {"lo": 1}])
def test_a_malformed_block_makes_the_entry_unread(cache, block):
    cache.path.parent.mkdir(parents=True)
    entry = {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": list(STUN)},
             "port_block": block}
    cache.path.write_text(json.dumps({"version": 1, "entries": {KEY.text(): entry}}))
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY, now=1000.0) is None
    if isinstance(block, list):
        assert not cache.set_block(KEY, tuple(block))  # refused as written, too


def test_a_new_process_names_the_block_an_earlier_one_saw(cache):
    assert cache.save(KEY, behavior())
    use = CacheUse(cache, KEY, age=None)
    # the earlier process: its counter went round 20000-24095 once (a wrap, then on from the bottom)
    port_blocks.observe(PUBLIC, [20000, 22000, 24095])
    port_blocks.observe(PUBLIC, [20001, 20002])
    assert port_blocks.kept(PUBLIC) is not None
    udp._keep_block(use)
    assert cache.lookup(KEY).block == port_blocks.kept(PUBLIC)
    # a new process: nothing in memory, until the cache seeds it; then its first samples near the
    # top are read inside the block at once
    port_blocks.forget_all()
    assert port_blocks.observe(PUBLIC, [24093, 24094]).port_range(1) is None
    port_blocks.forget_all()
    udp._seed_block(use)
    assert port_blocks.observe(PUBLIC, [24093, 24094]).port_range(1) == (20000, 24095)


def test_a_block_not_yet_seen_to_wrap_is_not_kept(cache):
    assert cache.save(KEY, behavior())
    port_blocks.observe(PUBLIC, [20000, 22000, 24095])
    assert port_blocks.kept(PUBLIC) is None
    udp._keep_block(CacheUse(cache, KEY, age=None))
    assert cache.lookup(KEY).block is None


def test_a_process_that_saw_its_own_block_keeps_it_over_the_caches(cache):
    port_blocks.observe(PUBLIC, [30000, 31000, 32000])
    port_blocks.seed(PUBLIC, 20000, 24095, 3)
    assert port_blocks.observe(PUBLIC, [32001]).lo == 30000
