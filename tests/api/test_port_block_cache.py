"""The port block a sequential NAT's counter goes round, kept per network in the behaviour cache
(api/behavior_cache.py set_block, api/port_blocks.py): a new process's report
names the block an earlier process saw, without a wrap of its own."""

from __future__ import annotations

import json
import os

import pytest

from nattrav.api import port_blocks
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
@pytest.mark.parametrize("proto,field", [("udp", "port_block"), ("tcp", "tcp_port_block")])
def test_a_malformed_block_makes_the_entry_unread(cache, block, proto, field):
    cache.path.parent.mkdir(parents=True)
    entry = {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": list(STUN)},
             field: block}
    cache.path.write_text(json.dumps({"version": 1, "entries": {KEY.text(): entry}}))
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY, now=1000.0) is None
    if isinstance(block, list):
        assert not cache.set_block(KEY, tuple(block), proto)  # refused as written, too


def test_a_new_process_names_the_block_an_earlier_one_saw(cache):
    assert cache.save(KEY, behavior())
    use = CacheUse(cache, KEY, age=None)
    # the earlier process: its counter went round 20000-24095 once (a wrap, then on from the bottom)
    port_blocks.observe(PUBLIC, [20000, 22000, 24095])
    port_blocks.observe(PUBLIC, [20001, 20002])
    assert port_blocks.kept(PUBLIC) is not None
    port_blocks.keep_in(use)
    assert cache.lookup(KEY).block == port_blocks.kept(PUBLIC)
    # a new process: nothing in memory, until the cache seeds it; then its first samples near the
    # top are read inside the block at once
    port_blocks.forget_all()
    assert port_blocks.observe(PUBLIC, [24093, 24094]).port_range(1) is None
    port_blocks.forget_all()
    entry = cache.lookup(KEY)
    port_blocks.seed_from(CacheUse(cache, KEY, entry.age(), entry.blocks()))
    assert port_blocks.observe(PUBLIC, [24093, 24094]).port_range(1) == (20000, 24095)


def test_tcp_and_udp_blocks_are_learned_and_kept_apart(cache):
    """A NAT counts each protocol apart: a TCP wrap says nothing of the UDP counter, nor back."""
    assert cache.save(KEY, behavior())
    port_blocks.observe(PUBLIC, [28000, 28100, 28190], proto="tcp")
    port_blocks.observe(PUBLIC, [20000, 20002], proto="tcp")
    assert port_blocks.kept(PUBLIC, "tcp") == (20000, 28190, 1)
    assert port_blocks.kept(PUBLIC) is None
    port_blocks.keep_in(CacheUse(cache, KEY, age=None), "tcp")
    entry = cache.lookup(KEY)
    assert entry.tcp_block == (20000, 28190, 1) and entry.block is None
    assert entry.blocks() == {"tcp": (20000, 28190, 1)}
    # the UDP block written later keeps the TCP one, and a new measurement keeps both
    assert cache.set_block(KEY, (20000, 24095, 2))
    assert cache.save(KEY, behavior())
    assert cache.lookup(KEY).blocks() == {"udp": (20000, 24095, 2), "tcp": (20000, 28190, 1)}
    port_blocks.forget_all()
    port_blocks.seed_from(CacheUse(cache, KEY, 0.0, cache.lookup(KEY).blocks()), "tcp")
    assert port_blocks.kept(PUBLIC, "tcp") == (20000, 28190, 1) and port_blocks.kept(PUBLIC) is None
    with pytest.raises(ValueError):
        port_blocks.observe(PUBLIC, [1], proto="sctp")
    assert not cache.set_block(KEY, (20000, 24095, 2), "sctp")



def test_a_block_not_yet_seen_to_wrap_is_not_kept(cache):
    assert cache.save(KEY, behavior())
    port_blocks.observe(PUBLIC, [20000, 22000, 24095])
    assert port_blocks.kept(PUBLIC) is None
    port_blocks.keep_in(CacheUse(cache, KEY, age=None))
    assert cache.lookup(KEY).block is None


def test_a_process_that_saw_its_own_block_keeps_it_over_the_caches(cache):
    port_blocks.observe(PUBLIC, [30000, 31000, 32000])
    port_blocks.seed(PUBLIC, 20000, 24095, 3)
    assert port_blocks.observe(PUBLIC, [32001]).lo == 30000


def test_a_tcp_report_names_its_counters_block_once_this_process_saw_it_wrap():
    from nattrav.api.tcp import _with_block
    from tests.reports import tcp as tcp_report

    events: list = []

    def emit(phase, detail):
        events.append((phase, detail))

    def sampled(ports):
        return _with_block(tcp_report(ports, public=PUBLIC), emit)

    # the counter going up to its top: nothing named yet (no wrap seen)
    assert sampled([28180, 28182, 28184]).port_range == tcp_report([1]).port_range
    assert sampled([28186, 28188, 28190]).port_range == tcp_report([1]).port_range
    # then from the bottom again: the block is the ports seen, + Δ - 1 at the top
    report = sampled([20000, 20002, 20004])
    assert report.port_range == (20000, 28191)
    assert events == [("tcp-port-block", {"range": [20000, 28191]})]
    assert port_blocks.kept(PUBLIC, "tcp") == (20000, 28190, 1) and port_blocks.kept(PUBLIC) is None
    # a cone's or a random NAT's report is left alone (no counter to learn)
    assert sampled([40000, 40000, 40000]).port_range == tcp_report([1]).port_range
    assert sampled([8586, 64041, 35105]).port_range == tcp_report([1]).port_range


def test_a_pools_addresses_share_one_block_and_its_entries_seed_it(cache):
    """One NAT's pool counts its ports once, whichever address a flow left from (the planner aims
    the same ports at every address): each address alone saw a thin sample of the counter."""
    a, b, c = "203.0.113.10", "203.0.113.11", "203.0.113.12"
    port_blocks.observe(a, [20040, 22000, 24095, 20050, 20060])  # wrapped, its lowest 20040
    port_blocks.observe(b, [20003, 20004])  # nearer the NAT's bottom, never saw a wrap
    assert port_blocks.observe(b, []).port_range(1) is None
    port_blocks.join([a, b, c])
    for ip in (a, b, c):
        assert port_blocks.observe(ip, []).port_range(1) == (20003, 24095)
    port_blocks.observe(c, [20001])  # a port any address shows moves the shared block
    assert port_blocks.kept(a) == (20001, 24095, 1)
    # kept per entry, each a pool address's: a new process seeds the pool's block from all of them
    key_b = type(KEY).of(KEY.local_ip, b, KEY.stun)
    assert cache.save(KEY, behavior()) and cache.save(key_b, behavior(public_ip=b))
    assert cache.set_block(KEY, (20030, 24095, 2)) and cache.set_block(key_b, (20002, 24090, 1))
    port_blocks.forget_all()
    entry = cache.lookup(KEY)
    port_blocks.seed_from(CacheUse(cache, KEY, entry.age(), entry.blocks()), pool=[a, b, c])
    assert port_blocks.kept(a) == port_blocks.kept(b) == port_blocks.kept(c) == (20002, 24095, 2)
    # an address seen alone keeps its own
    assert port_blocks.observe("203.0.113.99", [1500]).lo == 1500


def test_joining_pools_that_met_folds_them_into_one():
    port_blocks.join(["203.0.113.10", "203.0.113.11"])
    port_blocks.observe("203.0.113.10", [20010, 24000, 20005, 20006])
    port_blocks.join(["203.0.113.12", "203.0.113.13"])
    port_blocks.observe("203.0.113.13", [20001])
    port_blocks.join(["203.0.113.11", "203.0.113.12"])
    assert {port_blocks.observe(ip, []).lo for ip in ("203.0.113.10", "203.0.113.11", "203.0.113.12",
                                                      "203.0.113.13")} == {20001}
