"""Finding a NAT's address pool ("arbitrary" pooling with a mapping per destination, RFC 4787 §4.1)
before a plan needs it: the punch socket's own 3 flows (observation + 2 samples) all left from one
address of a pool of 4 one connect in 16, and then no survey ran and the plan aimed at one address
with 99.9 % odds (really 1 in 4). Discovery's flows are draws from the pool too (NatBehavior.
mapped_ips), and the behaviour cache keeps what they showed (a warm connect runs no discovery)."""

from __future__ import annotations

import json
import os

import pytest
import trio

from nattrav.api import udp
from nattrav.api.behavior_cache import MAX_POOL_IPS, BehaviorCache, Key
from nattrav.api.pool_survey import Survey, needs_survey
from nattrav.io.stun_discover import discover
from nattrav.proto.hops import DEFAULT_HOPS
from nattrav.proto.nat_behavior import BindingSample, NatBehavior
from nattrav.proto.vocab import Allocation, Filtering, Mapping

STUN = ("198.51.100.1", 3478)
LOCAL = ("10.0.1.2", 40000)
KEY = Key.of(LOCAL, ("203.0.113.20", 50000), STUN)


def _sample(ip: str, port: int, socket: int = 0, server=STUN) -> BindingSample:
    return BindingSample(socket, LOCAL, server, (ip, port))


def _behavior(ips=("203.0.113.20",), mapping=Mapping.APDM, **kw) -> NatBehavior:
    fields = dict(mapping=mapping, filtering=Filtering.APDF, allocation=Allocation.SEQUENTIAL, delta=1,
                  nat=True, classic="symmetric", public_ip=ips[0], local=LOCAL, server=STUN,
                  other_address=("198.51.100.2", 3479),
                  samples=[_sample(ip, 20000 + i, socket=i) for i, ip in enumerate(ips)])
    fields.update(kw)
    return NatBehavior(**fields)


# --- when a survey is due (pure) -------------------------------------------------------------------

def test_discovery_flows_that_showed_a_pool_call_for_a_survey_when_the_punch_sockets_did_not():
    one = {"203.0.113.20"}
    assert not needs_survey(Mapping.APDM, one)
    assert needs_survey(Mapping.APDM, one, {"203.0.113.20", "203.0.113.22"})
    assert needs_survey(Mapping.ADM, one, {"203.0.113.21"})  # another address than the punch socket's


def test_one_address_everywhere_or_a_mapping_kept_for_every_destination_calls_for_none():
    one = {"203.0.113.20"}
    assert not needs_survey(Mapping.APDM, one, one)  # a non-pooled symmetric NAT: no extra flows
    assert not needs_survey(Mapping.APDM, one, set())  # no discovery samples: as before
    # EIM keeps one address per socket however many the pool has: the punch socket's is observed
    assert not needs_survey(Mapping.EIM, one, {"203.0.113.20", "203.0.113.22"})
    assert not needs_survey(None, one, {"203.0.113.20", "203.0.113.22"})


def test_mapped_ips_are_what_the_tests_flows_showed_and_survive_a_round_trip():
    b = _behavior(("203.0.113.20", "203.0.113.23", "203.0.113.20"))
    assert b.mapped_ips() == {"203.0.113.20", "203.0.113.23"}
    back = NatBehavior.from_dict(json.loads(json.dumps(b.to_dict())))
    assert back == b and back.mapped_ips() == b.mapped_ips()
    # a cached behaviour has no samples: its kept addresses stand for them
    kept = NatBehavior(mapping=Mapping.APDM, pool_ips=["203.0.113.21", "203.0.113.22"])
    assert kept.mapped_ips() == {"203.0.113.21", "203.0.113.22"}
    assert NatBehavior.from_dict(json.loads(json.dumps(kept.to_dict()))).pool_ips == kept.pool_ips


# --- the behaviour cache keeps the pool ------------------------------------------------------------

@pytest.fixture
def cache(tmp_path) -> BehaviorCache:
    return BehaviorCache(tmp_path / "nattrav" / "behavior.json")


def _raw(cache: BehaviorCache) -> dict:
    return json.loads(cache.path.read_text())["entries"][KEY.text()]


def test_the_cache_keeps_the_addresses_a_pooled_measurement_showed(cache):
    assert cache.save(KEY, _behavior(("203.0.113.20", "203.0.113.22", "203.0.113.20")), now=1000.0)
    assert _raw(cache)["pool"] == ["203.0.113.20", "203.0.113.22"]
    entry = cache.lookup(KEY, now=1010.0)
    assert entry is not None and entry.behavior.samples == []  # raw samples are still not kept
    assert needs_survey(entry.behavior.mapping, {"203.0.113.20"}, entry.behavior.mapped_ips())
    # and across the writes that keep an entry's age
    assert cache.set_lifetime(KEY, 60.0)
    assert cache.lookup(KEY, now=1010.0).behavior.mapped_ips() == {"203.0.113.20", "203.0.113.22"}


def test_a_non_pooled_measurement_writes_no_pool(cache):
    assert cache.save(KEY, _behavior(("203.0.113.20", "203.0.113.20")), now=1000.0)
    assert "pool" not in _raw(cache)
    assert cache.lookup(KEY, now=1010.0).behavior.mapped_ips() == set()


def test_a_new_measurement_whose_flows_all_left_from_one_address_keeps_the_pool_seen_before(cache):
    cache.save(KEY, _behavior(("203.0.113.20", "203.0.113.21")), now=1000.0)
    cache.save(KEY, _behavior(("203.0.113.20", "203.0.113.20")), now=1100.0)
    assert cache.lookup(KEY, now=1110.0).behavior.mapped_ips() == {"203.0.113.20", "203.0.113.21"}


def test_an_entry_learns_the_pool_a_later_connects_flows_showed_and_keeps_its_age(cache):
    # its measurement's flows all left from one address (or an older version wrote it)
    cache.save(KEY, _behavior(("203.0.113.20", "203.0.113.20")), now=1000.0)
    assert not cache.add_pool(KEY, {"203.0.113.20"})  # nothing new: no write
    assert cache.add_pool(KEY, {"203.0.113.20", "203.0.113.23"})
    entry = cache.lookup(KEY, now=1010.0)
    assert entry.saved == 1000.0 and entry.behavior.mapped_ips() == {"203.0.113.20", "203.0.113.23"}
    assert not cache.add_pool(KEY, {"203.0.113.23"})  # already kept
    assert cache.add_pool(KEY, {"203.0.113.21"})
    assert cache.lookup(KEY, now=1010.0).behavior.mapped_ips() == {"203.0.113.20", "203.0.113.21", "203.0.113.23"}
    assert not cache.add_pool(Key.of(LOCAL, ("203.0.113.99", 1), STUN), {"203.0.113.20", "203.0.113.21"})


@pytest.mark.parametrize("pool", ["203.0.113.20", [1, 2], ["203.0.113.20", "nowhere"],
                                  [f"203.0.113.{i}" for i in range(MAX_POOL_IPS + 1)]])
def test_an_entry_with_a_malformed_pool_is_ignored(cache, pool):
    cache.path.parent.mkdir(parents=True)
    entry = {"saved": 1000.0, "pool": pool,
             "behavior": {"mapping": "APDM", "filtering": "APDF", "server": list(STUN)}}
    cache.path.write_text(json.dumps({"version": 1, "entries": {KEY.text(): entry}}))
    os.chmod(cache.path, 0o600)
    assert cache.lookup(KEY, now=1000.0) is None


# --- the endpoint surveys on discovery's evidence (loopback) ---------------------------------------

def _instrument(monkeypatch) -> list:
    calls: list = []

    async def no_trace(stun, src_ip, emit, made=None):
        if made is not None:
            made()
        return DEFAULT_HOPS

    async def fake_survey(observe, src_ip, known_ips, sockets=0):
        calls.append(known_ips)
        return Survey(started=trio.current_time())

    monkeypatch.setattr(udp, "measure_hops", no_trace)
    monkeypatch.setattr(udp, "survey_pool", fake_survey)
    return calls


async def _open(servers, behavior, events: list) -> None:
    with trio.fail_after(20):
        ep = await udp.open_endpoint(servers["stun"], behavior=behavior, observe=servers["server"],
                                     on_event=lambda phase, d: events.append((phase, d)))
        ep.sock.close()


async def test_an_endpoint_whose_discovery_showed_a_pool_surveys_it(servers, monkeypatch):
    # as a listener behind a pooled symmetric NAT knows itself: its punch socket's flows on loopback
    # show one address, the tests' flows showed two
    known = await discover(servers["stun"])
    known.mapping, known.allocation, known.delta = Mapping.APDM, Allocation.SEQUENTIAL, 1
    known.samples.append(_sample("203.0.113.22", 20001, socket=3))
    calls, events = _instrument(monkeypatch), []
    await _open(servers, known, events)
    assert len(calls) == 1
    survey = [d for phase, d in events if phase == "pool-survey"]
    assert survey and survey[0]["discovery"] == sorted(known.mapped_ips()) and len(survey[0]["flows"]) == 1


async def test_an_endpoint_whose_flows_all_showed_one_address_surveys_nothing(servers, monkeypatch):
    """The control: a symmetric NAT without a pool pays no extra flows and no round trip."""
    known = await discover(servers["stun"])
    known.mapping, known.allocation, known.delta = Mapping.APDM, Allocation.SEQUENTIAL, 1
    assert len(known.mapped_ips()) == 1
    calls, events = _instrument(monkeypatch), []
    await _open(servers, known, events)
    assert calls == [] and not any(phase == "pool-survey" for phase, _ in events)


async def test_a_warm_endpoint_surveys_the_pool_its_cache_entry_kept(servers, tmp_path, monkeypatch):
    """A warm connect runs no discovery: the cache entry's kept addresses are its evidence."""
    path = tmp_path / "behavior.json"
    cache = BehaviorCache(path)
    with trio.fail_after(20):
        ep = await udp.open_endpoint(servers["stun"], cache=cache)  # cold: measures, keeps the entry
        ep.sock.close()
    doc = json.loads(path.read_text())
    ((key, entry),) = doc["entries"].items()
    # as a pooled symmetric NAT's measurement left it (loopback maps nothing: EIM, one address)
    entry["behavior"].update(mapping="APDM", allocation="sequential", delta=1)
    entry["pool"] = ["127.0.0.1", "127.0.0.9"]
    path.write_text(json.dumps(doc))
    calls, events = _instrument(monkeypatch), []
    with trio.fail_after(20):
        ep = await udp.open_endpoint(servers["stun"], cache=cache, observe=servers["server"],
                                     on_event=lambda phase, d: events.append((phase, d)))
        ep.sock.close()
    phases = [phase for phase, _ in events]
    assert "behavior-cached" in phases and "discovery-done" not in phases
    assert len(calls) == 1
    (survey,) = [d for phase, d in events if phase == "pool-survey"]
    assert survey["discovery"] == ["127.0.0.1", "127.0.0.9"] and survey["flows"] == ["127.0.0.1"]
