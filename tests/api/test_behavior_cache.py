"""The NAT behaviour cache (api/behavior_cache.py): what names a network, what is kept, and that a
file that is not our own valid one -- corrupt, oversized, another version, another owner, a
symlink, writable by others -- is ignored, never an error."""

from __future__ import annotations

import json
import os
import stat

import pytest

from nattrav.api.behavior_cache import MAX_FILE, BehaviorCache, Entry, Key, confirmed, default_path, trace_of
from nattrav.proto.hops import read_trace
from nattrav.proto.nat_behavior import NatBehavior
from nattrav.proto.vocab import Allocation, Filtering, Mapping

STUN = ("198.51.100.1", 3478)
KEY = Key.of(("10.0.1.2", 40000), ("203.0.113.10", 50000), STUN)


def behavior(**kw) -> NatBehavior:
    fields = dict(mapping=Mapping.APDM, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=2,
                  nat=True, classic="symmetric", public_ip="203.0.113.10", local=("10.0.1.2", 40000),
                  server=STUN, other_address=("198.51.100.2", 3479), findings=["a finding"])
    fields.update(kw)
    return NatBehavior(**fields)


@pytest.fixture
def cache(tmp_path) -> BehaviorCache:
    return BehaviorCache(tmp_path / "nattrav" / "behavior.json")


def test_a_saved_behaviour_comes_back_under_its_key(cache):
    assert cache.lookup(KEY) is None
    assert cache.save(KEY, behavior(), now=1000.0)
    entry = cache.lookup(KEY, now=1060.0)
    assert entry is not None and entry.age(1060.0) == pytest.approx(60.0)
    b = entry.behavior
    assert (b.mapping, b.filtering, b.allocation, b.delta) == (Mapping.APDM, Filtering.APDF, Allocation.SEQUENTIAL, 2)
    assert b.server == STUN and b.other_address == ("198.51.100.2", 3479) and b.findings == ["a finding"]


def test_the_key_is_local_ip_public_ip_and_stun_server(cache):
    cache.save(KEY, behavior(), now=1000.0)
    # ports of the local and public address do not matter: every socket has its own
    assert cache.lookup(Key.of(("10.0.1.2", 1), ("203.0.113.10", 2), STUN), now=1000.0) is not None
    for other in (Key.of("10.0.1.3", "203.0.113.10", STUN), Key.of("10.0.1.2", "203.0.113.11", STUN),
                  Key.of("10.0.1.2", "203.0.113.10", ("198.51.100.9", 3478)),
                  Key.of("10.0.1.2", "203.0.113.10", ("198.51.100.1", 3479))):
        assert cache.lookup(other, now=1000.0) is None, other
    with pytest.raises(ValueError):
        Key.of("not an ip", "203.0.113.10", STUN)


def test_file_and_directory_are_private(cache):
    cache.save(KEY, behavior())
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache.path.parent).st_mode) == 0o700
    assert json.loads(cache.path.read_text())["version"] == 1
    assert [p.name for p in cache.path.parent.iterdir()] == ["behavior.json"]  # no temporary left


def test_incomplete_measurements_are_not_kept(cache):
    assert not cache.save(KEY, behavior(filtering=None))
    assert not cache.save(KEY, behavior(mapping=None))
    assert not cache.save(KEY, behavior(public_ip=None))
    assert not cache.path.exists()


def test_old_entries_are_ignored(cache):
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.lookup(KEY, now=1000.0 + cache.max_age + 1) is None
    assert cache.lookup(KEY, now=999.0 - 3600) is None  # saved "in the future": the clock moved back


def test_forget_drops_one_entry(cache):
    other = Key.of("10.0.2.2", "203.0.113.20", STUN)
    cache.save(KEY, behavior(), now=1000.0)
    cache.save(other, behavior(mapping=Mapping.EIM), now=1000.0)
    assert cache.forget(KEY) and not cache.forget(KEY)
    assert cache.lookup(KEY, now=1000.0) is None and cache.lookup(other, now=1000.0) is not None


def test_entries_are_bounded_oldest_out(tmp_path):
    cache = BehaviorCache(tmp_path / "b.json", max_entries=4)
    keys = [Key.of(f"10.0.0.{i}", "203.0.113.10", STUN) for i in range(10)]
    for i, key in enumerate(keys):
        cache.save(key, behavior(), now=1000.0 + i)
    kept = [k for k in keys if cache.lookup(k, now=1010.0) is not None]
    assert kept == keys[-4:]
    assert cache.path.stat().st_size <= MAX_FILE


def test_a_long_findings_list_cannot_grow_the_file_past_its_limit(tmp_path):
    cache = BehaviorCache(tmp_path / "b.json")
    for i in range(32):
        cache.save(Key.of(f"10.0.0.{i}", "203.0.113.10", STUN), behavior(findings=["x" * 3000]), now=1000.0 + i)
    assert cache.path.stat().st_size <= MAX_FILE
    assert cache.lookup(Key.of("10.0.0.31", "203.0.113.10", STUN), now=1040.0) is not None


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe garbage", b"[]", b"null", b'{"version": 2, "entries": {}}',
    b'{"version": 1}', b'{"version": 1, "entries": []}', b"[" * 100_000 + b"]" * 100_000,
])
def test_a_corrupt_file_is_ignored_and_replaced(cache, content):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(content[:MAX_FILE])
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY) is None
    assert cache.save(KEY, behavior())
    assert cache.lookup(KEY) is not None


@pytest.mark.parametrize("entry", [
    "not a map", {"saved": "yesterday", "behavior": {}}, {"saved": 1000.0},
    {"saved": 1000.0, "behavior": {"mapping": "APDM"}},  # no filtering, no server
    {"saved": 1000.0, "behavior": {"mapping": "sideways", "filtering": "APDF", "server": ["198.51.100.1", 3478]}},
    {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": ["nowhere", 3478]}},
    {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": ["198.51.100.1", 70000]}},
    {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": ["198.51.100.1", 3478],
                                   "delta": "two"}},
    {"saved": 1000.0, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": ["198.51.100.1", 3478],
                                   "samples": [1, 2, 3]}},  # a field we never write
    {"saved": True, "behavior": {"mapping": "APDM", "filtering": "APDF", "server": ["198.51.100.1", 3478]}},
])
def test_a_malformed_entry_is_ignored(cache, entry):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(json.dumps({"version": 1, "entries": {KEY.text(): entry}}))
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY, now=1000.0) is None


def test_an_oversized_file_is_not_read(cache):
    cache.save(KEY, behavior(), now=1000.0)
    doc = json.loads(cache.path.read_text())
    doc["padding"] = "x" * MAX_FILE
    cache.path.write_text(json.dumps(doc))
    assert cache.lookup(KEY, now=1000.0) is None


def test_a_file_others_may_write_is_ignored(cache):
    cache.save(KEY, behavior(), now=1000.0)
    os.chmod(cache.path, 0o622)
    assert cache.lookup(KEY, now=1000.0) is None
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY, now=1000.0) is not None


def test_a_symlink_is_not_followed(cache, tmp_path):
    real = BehaviorCache(tmp_path / "elsewhere.json")
    real.save(KEY, behavior(), now=1000.0)
    cache.path.parent.mkdir(parents=True)
    cache.path.symlink_to(real.path)
    assert cache.lookup(KEY, now=1000.0) is None


def test_a_file_owned_by_someone_else_is_ignored(cache):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    cache.save(KEY, behavior(), now=1000.0)
    os.chown(cache.path, 65534, 65534)
    assert cache.lookup(KEY, now=1000.0) is None


def test_an_unwritable_place_is_no_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    cache = BehaviorCache(blocker / "nattrav" / "behavior.json")  # its parent cannot be a directory
    assert not cache.save(KEY, behavior())
    assert cache.lookup(KEY) is None


def test_default_path_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "nattrav" / "behavior.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/paths/are/ignored")  # as the XDG spec says
    assert default_path().parent.parent.name == ".cache"


# --- the mapping lifetime, measured after the rest (io/lifetime.py, api/liveness.py) ---

def test_a_measured_lifetime_joins_the_entry_and_keeps_its_age(cache):
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.lookup(KEY, now=1000.0).behavior.lifetime is None
    assert cache.set_lifetime(KEY, 7.0)
    entry = cache.lookup(KEY, now=1100.0)
    assert entry.behavior.lifetime == 7.0 and entry.saved == 1000.0  # not measured again: same age
    assert entry.behavior.mapping is Mapping.APDM  # the rest untouched


def test_a_new_discovery_keeps_the_lifetime_measured_before(cache):
    cache.save(KEY, behavior(), now=1000.0)
    cache.set_lifetime(KEY, 22.0)
    cache.save(KEY, behavior(filtering=Filtering.EIF), now=2000.0)  # discovery measures no lifetime
    b = cache.lookup(KEY, now=2000.0).behavior
    assert b.lifetime == 22.0 and b.filtering is Filtering.EIF
    cache.save(KEY, behavior(lifetime=4.5), now=2100.0)  # a new measurement of it wins
    assert cache.lookup(KEY, now=2100.0).behavior.lifetime == 4.5


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, 1e9, "7"])
def test_a_lifetime_that_is_not_a_measurement_is_refused(cache, value):
    cache.save(KEY, behavior(), now=1000.0)
    assert not cache.set_lifetime(KEY, value)
    assert cache.lookup(KEY, now=1000.0).behavior.lifetime is None
    # and read from a file, such an entry is ignored whole
    doc = json.loads(cache.path.read_text())
    doc["entries"][KEY.text()]["behavior"]["lifetime"] = value if value == value and value not in (
        float("inf"),) else 0
    cache.path.write_text(json.dumps(doc))
    assert cache.lookup(KEY, now=1000.0) is None


def test_no_entry_no_lifetime(cache):
    assert not cache.set_lifetime(KEY, 7.0)
    assert cache.lookup(KEY) is None


# -- the warm path's guess (api/udp.py: sample first, then confirm by the public address) --

def test_the_guess_is_the_newest_entry_for_the_local_ip_and_server_whatever_the_public_ip(cache):
    home = Key.of("10.0.1.2", "203.0.113.10", STUN)
    cafe = Key.of("10.0.1.2", "192.0.2.77", STUN)
    assert cache.guess("10.0.1.2", STUN) is None
    cache.save(home, behavior(), now=1000.0)
    cache.save(cafe, behavior(public_ip="192.0.2.77", mapping=Mapping.EIM), now=1100.0)
    key, entry = cache.guess("10.0.1.2", STUN, now=1200.0)
    assert key == cafe and entry.behavior.mapping is Mapping.EIM
    cache.save(home, behavior(), now=1150.0)  # measured again: now the newest
    key, _ = cache.guess("10.0.1.2", STUN, now=1200.0)
    assert key == home


def test_the_guess_never_crosses_local_ip_or_server_and_skips_old_entries(cache):
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.guess("10.0.1.3", STUN, now=1000.0) is None  # another local address
    assert cache.guess("10.0.1.2", ("198.51.100.1", 3479), now=1000.0) is None  # another server port
    assert cache.guess("10.0.1.20", STUN, now=1000.0) is None  # a prefix of the key text is not the IP
    assert cache.guess("10.0.1.2", STUN, now=1000.0 + 25 * 3600) is None
    assert cache.guess("not an ip", STUN) is None


def test_a_guess_stands_only_for_an_entry_under_the_sampled_name_with_the_same_second_server():
    guess = Entry(behavior(), 1000.0)
    other = ("198.51.100.2", 3479)
    assert confirmed(guess, Entry(behavior(), 900.0), other)
    assert not confirmed(guess, None, other)  # the public address names no known network
    assert not confirmed(guess, Entry(behavior(other_address=("198.51.100.9", 3479)), 900.0), other)
    assert not confirmed(guess, Entry(behavior(), 900.0), ("198.51.100.9", 3479))  # the server moved it
    assert not confirmed(guess, Entry(behavior(), 900.0), None)  # the server names none any more
    alone = Entry(behavior(other_address=None), 900.0)
    assert confirmed(Entry(behavior(other_address=None), 1000.0), alone, None)


# -- the hop trace kept with the behaviour (a warm connect runs none) --

TRACED = read_trace({1: "10.0.1.1", 2: "192.0.2.254"}, 3, 8)


def test_a_measured_trace_joins_the_entry_keeps_its_age_and_reads_back_the_same(cache):
    assert TRACED.measured and TRACED.low_ttl == 2
    assert not cache.set_hops(KEY, TRACED)  # no entry yet: nothing to join
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.set_hops(KEY, TRACED)
    entry = cache.lookup(KEY, now=1010.0)
    assert entry.saved == 1000.0 and entry.hops() == TRACED
    assert not cache.set_hops(KEY, TRACED)  # the same trace: the file is not written again
    cache.save(KEY, behavior(delta=3), now=2000.0)  # measured again: the trace stays
    assert cache.lookup(KEY, now=2000.0).hops() == TRACED


def test_a_later_trace_with_a_silent_hop_keeps_what_the_path_showed_before(cache):
    # a home NAT behind a CGN: hop 2 answers from the shared space, hop 3 is past our NATs
    full = read_trace({1: "10.0.1.1", 2: "100.64.0.1", 3: "192.0.2.254"}, 4, 8)
    assert full.low_ttl == 3 and full.cgn
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.set_hops(KEY, full)
    # a refresh whose CGN and router answers were rate-limited reads one layer: it must not undo the
    # second one (every warm connect would open at TTL 2 and wait for the escalation)
    silent = read_trace({1: "10.0.1.1"}, 4, 8)
    assert silent.low_ttl == 2
    assert not cache.set_hops(KEY, silent)  # nothing new: the file is not written
    assert cache.lookup(KEY, now=1000.0).hops() == full
    # what did answer this time stands over what answered before; another path length starts anew
    moved = read_trace({1: "10.0.1.1", 2: "100.64.0.9"}, 4, 8)
    assert cache.set_hops(KEY, moved)
    assert dict(cache.lookup(KEY, now=1000.0).hops().hops)[2] == "100.64.0.9"
    shorter = read_trace({1: "10.0.1.1", 2: "192.0.2.254"}, 3, 8)
    assert cache.set_hops(KEY, shorter)
    assert cache.lookup(KEY, now=1000.0).hops() == shorter


def test_a_trace_that_showed_nothing_is_not_kept(cache):
    cache.save(KEY, behavior(), now=1000.0)
    blind = read_trace({}, None, 8)
    assert trace_of(blind) is None and not cache.set_hops(KEY, blind)
    assert cache.lookup(KEY, now=1000.0).trace is None


@pytest.mark.parametrize("trace", [
    "3 hops", {"answers": {}}, {"answers": {"1": "10.0.1.1"}, "server_ttl": 99},
    {"answers": {"x": "10.0.1.1"}, "server_ttl": 3}, {"answers": {"1": "not an ip"}, "server_ttl": 3},
    {"answers": {"1": 5}, "server_ttl": 3}, {"answers": {"0": "10.0.1.1"}, "server_ttl": 3},
    {"answers": {"1": "10.0.1.1"}, "server_ttl": True}, {"answers": [], "server_ttl": 3},
    {"answers": {"1": "10.0.1.1"}, "server_ttl": 3, "more": 1},
])
def test_a_malformed_trace_makes_the_entry_ignored(cache, trace):
    cache.save(KEY, behavior(), now=1000.0)
    doc = json.loads(cache.path.read_text())
    doc["entries"][KEY.text()]["trace"] = trace
    cache.path.write_text(json.dumps(doc))
    assert cache.lookup(KEY, now=1000.0) is None


def test_a_guess_whose_trace_stood_in_needs_the_same_trace_under_the_sampled_name():
    traced = Entry(behavior(), 1000.0, trace_of(TRACED))
    other = ("198.51.100.2", 3479)
    assert confirmed(traced, Entry(behavior(), 900.0, trace_of(TRACED)), other, same_trace=True)
    assert not confirmed(traced, Entry(behavior(), 900.0), other, same_trace=True)
    assert confirmed(traced, Entry(behavior(), 900.0), other)  # a trace of our own was taken


def test_a_server_relay_grant_is_remembered_per_server_beside_the_entries(cache):
    server = ("192.0.2.9", 8765)
    assert cache.relay_granted(server) is None  # never enrolled there: not known
    cache.save(KEY, behavior(), now=1000.0)
    assert cache.note_relay(server, False, now=1000.0)
    assert not cache.note_relay(server, False, now=1001.0)  # unchanged and fresh: no write
    assert cache.relay_granted(server, now=1001.0) is False
    assert cache.relay_granted(("192.0.2.9", 8766), now=1001.0) is None
    assert cache.note_relay(server, True, now=1002.0)  # the server's answer changed
    assert cache.relay_granted(server, now=1002.0) is True
    # the entries' writes keep it, and it keeps the entries
    cache.save(KEY, behavior(), now=1003.0)
    assert cache.relay_granted(server, now=1003.0) is True and cache.lookup(KEY, now=1003.0) is not None
    assert cache.relay_granted(server, now=1002.0 + cache.max_age + 1) is None  # too old to go by


@pytest.mark.parametrize("relay", [[], {"192.0.2.9:8765": True}, {"192.0.2.9:8765": [1000.0, "no"]},
                                   {"192.0.2.9:8765": [float("nan"), False]}, {"192.0.2.9:8765": [1000.0]}])
def test_a_malformed_relay_memory_reads_as_unknown(cache, relay):
    cache.save(KEY, behavior(), now=1000.0)
    doc = json.loads(cache.path.read_text())
    cache.path.write_text(json.dumps({**doc, "relay": relay}))
    assert cache.relay_granted(("192.0.2.9", 8765), now=1001.0) is None
    assert cache.lookup(KEY, now=1001.0) is not None  # the rest of the file still counts


def test_the_relay_memory_is_bounded(cache):
    for k in range(40):
        cache.note_relay(("192.0.2.9", 9000 + k), False, now=1000.0 + k)
    known = [k for k in range(40) if cache.relay_granted(("192.0.2.9", 9000 + k), now=1100.0) is not None]
    assert known == list(range(40 - 16, 40))
