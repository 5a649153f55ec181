"""Issue 14, items 3 and 5: what one hostile source can make the rendezvous state machine hold.

Each test reproduces a way to exhaust the server found in review: node info that expands into
hundreds of kilobytes of objects, timers of ended offers piling up, one address filling a target's
pending-offer slots, the registry or the connection table."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest

import nattrav.proto.rendezvous as rvp
from nattrav.proto.rendezvous import MAX_INFO, RendezvousServer, encode, make
from tests.proto.test_rendezvous_state import Harness


def _ip(i: int) -> tuple[str, int]:
    return (f"198.18.{i // 250}.{i % 250 + 1}", 40000 + i % 1000)


# -- node info: packed in the registry, object count bounded --------------------------------------


def test_node_info_with_thousands_of_tiny_objects_is_refused():
    # 5,000 empty arrays pack into 5 KB (under MAX_INFO) but unpack into ~300 KB of list objects
    h = Harness()
    c = h.open()
    h.send(c, "enroll", id=1, info={f"k{j}": [[] for _ in range(1000)] for j in range(5)})
    err = h.one(c, "error")
    assert err["code"] == "bad-frame" and "objects" in err["message"]
    assert c in h.closed  # (garbage before enrolling closes the connection)
    c = h.open()
    h.send(c, "enroll", id=2, info={"report": {"mapping": "APDM", "ports": list(range(20000, 20200))}})
    assert h.one(c, "enrolled")["id"] == 2  # a real report of a couple of hundred values still fits


def test_registry_keeps_node_info_packed_not_as_objects():
    # floats: 9 bytes packed, 24 + 8 bytes as objects in a list; a retained peer must cost about its
    # packed size, whether it is online or disconnected and waiting out its retention
    info = {"t": [i + 0.5 for i in range(800)]}
    packed = len(msgpack.packb(info))
    assert 7000 < packed < MAX_INFO
    frames = [encode(make("enroll", id=1, info=info)) for _ in range(200)]
    server = RendezvousServer()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for conn, data in enumerate(frames, 1):
            server.connection_made(conn, _ip(conn), 0.0)
            server.receive_data(conn, data, 0.0)
            server.actions()
        for conn in range(1, 101):
            server.connection_lost(conn, 1.0)
        server.actions()
        per_peer = (tracemalloc.get_traced_memory()[0] - base) / len(frames)
    finally:
        tracemalloc.stop()
    assert len(server.peers) == 200
    assert per_peer < packed + 3000, f"{per_peer:.0f} bytes retained per peer for {packed} bytes of info"


def test_offers_and_sessions_still_carry_the_info_as_a_map():
    h = Harness()
    a, b = h.open(_ip(1)), h.open(_ip(2))
    h.enroll(a, name="alice", info={"report": {"ports": [1, 2, 3]}, "x": 1.5})
    h.enroll(b, name="bob", info={"nat": "cone"})
    h.send(b, "info", id=4, info={"nat": "symmetric"})
    h.one(b, "ok")
    h.send(a, "connect", id=2, target="bob")
    offer = h.one(b, "offer")
    assert offer["info"] == {"report": {"ports": [1, 2, 3]}, "x": 1.5, "observed": list(_ip(1))}
    h.send(b, "accept", id=3, offer=offer["offer"])
    assert h.one(a, "session")["info"] == {"nat": "symmetric", "observed": list(_ip(2))}


# -- timers: proportional to live offers, peers and connections -------------------------------------


def test_ended_offers_leave_no_timers_behind():
    h = Harness(offer_timeout=60)
    a, b = h.open(_ip(1)), h.open(_ip(2))
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    for i in range(2000):
        h.send(a, "connect", id=i, target="bob")
        h.send(b, "refuse", offer=h.one(b, "offer")["offer"])
        h.pop(a)
        h.pop(b)
    assert len(h.server._timers) < 100


def test_reconnecting_peers_and_short_connections_leave_no_timers_behind():
    h = Harness(retain=300, enroll_timeout=10)
    for i in range(2000):
        c = h.open(_ip(1))
        h.enroll(c, name="alice", secret="s" * 16)  # the same peer, again and again
        h.lose(c)
        h.pop(c)
    for i in range(2000):
        h.lose(h.open(_ip(2)))  # connections that never enroll
    assert len(h.server._timers) < 100
    h.advance(301)
    assert "alice" not in h.server.peers  # the one live expiry still fires


# -- per-source limits ------------------------------------------------------------------------------


def test_sixteen_peers_from_one_address_cannot_make_a_target_unreachable():
    h = Harness(offer_timeout=60)
    t = h.open(_ip(1))
    h.enroll(t, name="target")
    attackers = [h.open(("203.0.113.66", 1000 + i)) for i in range(16)]
    for i, c in enumerate(attackers):
        h.enroll(c, name=f"evil{i}")
        h.send(c, "connect", id=1, target="target")
    refused = sum(1 for c in attackers for m in h.pop(c) if m.get("code") == "busy")
    assert refused >= 14  # a couple of offers per source address at most
    h.pop(t)
    honest = h.open(_ip(2))
    h.enroll(honest, name="honest")
    h.send(honest, "connect", id=1, target="target")
    assert h.pop(honest) == []  # no busy: the offer is pending
    assert h.one(t, "offer")["from"] == "honest"


def test_one_initiator_has_one_pending_offer_per_target():
    h = Harness(offer_timeout=60)
    a, b, c = h.open(_ip(1)), h.open(_ip(2)), h.open(_ip(3))
    h.enroll(a, name="alice")
    h.enroll(b, name="bob")
    h.enroll(c, name="carol")
    h.send(a, "connect", id=1, target="bob")
    h.send(a, "connect", id=2, target="bob")
    err = h.one(a, "error")
    assert (err["id"], err["code"]) == (2, "busy") and "bob" in err["message"]
    h.send(a, "connect", id=3, target="carol")  # another target is fine
    assert h.pop(a) == [] and len(h.pop(b)) == 1 and len(h.pop(c)) == 1


def test_one_address_cannot_fill_the_registry():
    h = Harness(max_peers=50, retain=300)
    for i in range(200):  # enroll, vanish, repeat: each leaves a retained offline peer
        c = h.open(("203.0.113.66", 1000 + i))
        h.enroll(c)
        h.lose(c)
    assert len(h.server.peers) <= 50
    assert h.enroll(h.open(_ip(1)), name="honest")["peer"] == "honest"


def test_a_full_registry_of_online_peers_says_busy():
    h = Harness(max_peers=3)
    for i in range(3):
        h.enroll(h.open(_ip(i)))
    c = h.open(_ip(9))
    h.send(c, "enroll", id=1)
    assert h.one(c, "error")["code"] == "busy"


def test_connections_per_source_are_capped_with_a_clear_error():
    h = Harness(max_conns_per_source=3)
    conns = [h.open(("203.0.113.66", 1000 + i)) for i in range(4)]
    assert all(c not in h.closed for c in conns[:3])
    err = h.one(conns[3], "error")
    assert err["code"] == "busy" and "203.0.113.66" in err["message"]
    assert conns[3] in h.closed
    other = h.open(_ip(1))  # another address is not affected
    assert other not in h.closed and h.enroll(other)["peer"]
    h.lose(conns[0])  # a slot that frees up can be used again
    assert h.open(("203.0.113.66", 2000)) not in h.closed


def test_ipv6_sources_count_per_64():
    assert rvp.source_key(("2001:db8:1:2::1", 5)) == rvp.source_key(("2001:db8:1:2:ffff::9", 6))
    assert rvp.source_key(("2001:db8:1:3::1", 5)) != rvp.source_key(("2001:db8:1:2::1", 5))
    assert rvp.source_key(("::ffff:203.0.113.5", 5)) == rvp.source_key(("203.0.113.5", 7))
    assert rvp.source_key(("203.0.113.5", 5)) != rvp.source_key(("203.0.113.6", 5))


@pytest.mark.parametrize("option", ["max_conns_per_source", "max_offers_per_source", "max_peers_per_source"])
def test_limits_must_be_positive(option):
    with pytest.raises(ValueError, match=option):
        RendezvousServer(**{option: 0})


def test_a_wave_of_timeouts_can_be_handled_in_batches():
    # 1,000 slowloris connections opened together time out together; the I/O layer serves others
    # between batches instead of stalling for the whole wave
    h = Harness(enroll_timeout=10)
    conns = [h.open((f"198.18.{i // 100}.1", i)) for i in range(1000)]
    h.now += 10
    batches = 1
    while h.server.tick(h.now, limit=64):
        batches += 1
    h._collect()
    assert batches == 16 and all(c in h.closed for c in conns)
    assert not h.server.tick(h.now, limit=64)
