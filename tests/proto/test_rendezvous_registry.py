"""One suite, two registries (issue 18): the in-memory registry (sans-IO, the default) and the Redis
registry (io/redis_registry.py) behave alike, seen through the fronts of two server instances that
share them. Peers on the same instance and on different ones; a fake clock drives every deadline
(the Redis scripts are handed the same time, so retention is tested without waiting)."""

from __future__ import annotations

import pytest

from nattrav.identity import Identity
from nattrav.proto.rendezvous.names import enroll_proof
from tests.proto.tier import memory_tier, redis_tier
from tests.redisd import redis_server  # noqa: F401  (a fixture)

A1, A2, A3 = ("203.0.113.10", 40001), ("203.0.113.20", 40002), ("203.0.113.30", 40003)


@pytest.fixture(params=["memory", "redis"])
async def make_tier(request):
    if request.param == "memory":
        yield memory_tier
        return
    from nattrav.io.redis_link import open_redis_link

    server = request.getfixturevalue("redis_server")
    async with open_redis_link(server.url) as client:
        yield lambda **options: redis_tier(client, **options)


@pytest.mark.parametrize("where", ["same", "across"])
async def test_a_peer_reaches_another_and_both_get_one_session(make_tier, where):
    async with make_tier(start_margin=0.5) as t:
        a = await t.open("A", A1)
        b = await t.open("A" if where == "same" else "B", A2)
        ra = await t.enroll(a, info={"nat": "symmetric-seq", "observed": "forged"})
        await t.enroll(b, name="bob", info={"nat": "full-cone"})
        await t.send(a, "connect", id=7, target="bob", timeout=5.0)
        assert t.pop(a) == []
        offer = t.one(b, "offer")
        assert offer["from"] == ra["peer"] and offer["expires"] == t.now + 5.0
        assert offer["info"] == {"nat": "symmetric-seq", "observed": list(A1)}  # the server's observation wins
        await t.send(b, "accept", id=3, offer=offer["offer"])
        sa, sb = t.one(a, "session"), t.one(b, "session")
        assert (sa["id"], sb["id"]) == (7, 3)
        assert sa["key"] == sb["key"] and len(sa["key"]) == 32 and sa["session"] == sb["session"] == offer["offer"]
        assert sa["start_at"] == sb["start_at"] == pytest.approx(t.now + 0.5)
        assert (sa["role"], sb["role"]) == ("first", "second")
        assert sa["peer"] == "bob" and sa["info"] == {"nat": "full-cone", "observed": list(A2)}
        assert sb["peer"] == ra["peer"] and sb["info"]["nat"] == "symmetric-seq"


@pytest.mark.parametrize("setup, target, code", [("none", "nobody", "unknown-peer"),
                                                 ("offline", "bob", "offline"), ("self", "alice", "bad-request")])
async def test_connect_errors(make_tier, setup, target, code):
    async with make_tier() as t:
        a = await t.open("A", A1)
        await t.enroll(a, name="alice")
        if setup == "offline":
            b = await t.open("B", A2)
            await t.enroll(b, name="bob")
            await t.lose(b)
        await t.send(a, "connect", id=9, target=target)
        err = t.one(a, "error")
        assert err["code"] == code and err["id"] == 9 and err["message"]


async def test_a_refusal_reaches_the_initiator_on_its_instance(make_tier):
    async with make_tier() as t:
        a, b = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"))
        await t.send(a, "connect", id=5, target="bob")
        await t.send(b, "refuse", id=6, offer=t.one(b, "offer")["offer"])
        assert t.one(b, "ok")["id"] == 6
        err = t.one(a, "error")
        assert (err["code"], err["id"]) == ("refused", 5)


async def test_an_unanswered_offer_times_out_on_both_instances(make_tier):
    async with make_tier(offer_timeout=10) as t:
        a, b = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"))
        await t.send(a, "connect", id=5, target="bob", timeout=3.0)
        offer = t.one(b, "offer")
        await t.advance(2.9)
        assert t.pop(a) == []
        await t.advance(0.2)
        assert t.one(a, "error")["code"] == "timeout"
        assert t.one(b, "cancel")["offer"] == offer["offer"]
        await t.send(b, "accept", id=8, offer=offer["offer"])
        assert t.one(b, "error")["code"] == "unknown-offer"


async def test_vanishing_peers_end_their_offers_across_instances(make_tier):
    async with make_tier() as t:
        a, b, c = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"), ("A", A3, "carol"))
        await t.send(a, "connect", id=1, target="bob")
        offer = t.one(b, "offer")
        await t.lose(a)
        assert t.one(b, "cancel")["code"] == "offline"
        await t.send(b, "accept", id=2, offer=offer["offer"])
        assert t.one(b, "error")["code"] == "unknown-offer"
        await t.send(c, "connect", id=3, target="bob")
        t.one(b, "offer")
        await t.lose(b)
        err = t.one(c, "error")
        assert (err["code"], err["id"]) == ("offline", 3)


async def test_only_the_target_may_answer(make_tier):
    async with make_tier() as t:
        a, b, c = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"), ("B", A3, "mallory"))
        await t.send(a, "connect", id=1, target="bob")
        offer = t.one(b, "offer")
        await t.send(c, "accept", id=2, offer=offer["offer"])
        assert t.one(c, "error")["code"] == "unknown-offer"
        assert t.pop(a) == []


async def test_a_name_moves_to_another_instance_only_with_its_secret(make_tier):
    async with make_tier() as t:
        a, x = await t.open("A", A1), await t.open("A", A3)
        secret = (await t.enroll(a, name="alice"))["secret"]
        await t.enroll(x, name="xavier")
        await t.send(x, "connect", id=4, target="alice")
        t.one(a, "offer")
        other = await t.open("B", A2)
        await t.send(other, "enroll", id=1, name="alice")
        assert t.one(other, "error")["code"] == "name-taken"
        await t.send(other, "enroll", id=2, name="alice", secret="x" * 32)
        assert t.one(other, "error")["code"] == "name-taken"
        # the owner comes back at instance B: the old connection at A hears it and is closed, and the
        # offer it had pending ends for its initiator
        again = await t.open("B", ("203.0.113.99", 5))
        reply = await t.enroll(again, name="alice", secret=secret)
        assert reply["peer"] == "alice" and reply["secret"] == secret and reply["observed"] == ["203.0.113.99", 5]
        assert a in t.closed
        assert [(m["t"], m["code"]) for m in t.pop(a)] == [("cancel", "offline"), ("error", "name-taken")]
        err = t.one(x, "error")
        assert (err["code"], err["id"]) == ("offline", 4)
        # alice is reachable at B now
        await t.send(x, "connect", id=5, target="alice")
        assert t.one(again, "offer")["from"] == "xavier"


async def _key_enroll(t, conn: int, ident: Identity, name: str, **fields) -> dict:
    await t.send(conn, "challenge", id=1)
    nonce = t.one(conn, "challenge")["nonce"]
    await t.send(conn, "enroll", id=2, name=name, key=ident.peer_id.key_bytes,
                 sig=ident.sign(enroll_proof(nonce, name)), **fields)
    return t.pop(conn)[0]


async def test_keys_proved_at_enroll_travel_with_offers_and_sessions_across_instances(make_tier):
    alice, mallory = Identity.generate(), Identity.generate()
    async with make_tier() as t:
        a, b = await t.open("A", A1), await t.open("B", A2)
        assert (await _key_enroll(t, a, alice, "alice"))["t"] == "enrolled"
        await t.enroll(b, name="bob")  # no key: sessions tell its peer none
        await t.send(a, "connect", id=4, target="bob")
        offer = t.one(b, "offer")
        assert offer["from_key"] == alice.peer_id.key_bytes
        await t.send(b, "accept", id=5, offer=offer["offer"])
        sa, sb = t.one(a, "session"), t.one(b, "session")
        assert sb["peer_key"] == alice.peer_id.key_bytes and "peer_key" not in sa
        # the name is held by the key: neither another key nor a secret takes it, on either instance
        await t.lose(a)
        other = await t.open("B", A3)
        reply = await _key_enroll(t, other, mallory, "alice")
        assert (reply["t"], reply["code"]) == ("error", "name-taken")
        await t.send(other, "enroll", id=3, name="alice", secret="x" * 32)
        assert t.one(other, "error")["code"] == "name-taken"
        back = await t.open("B", ("203.0.113.99", 5))
        reply = await _key_enroll(t, back, alice, "alice")
        assert reply["t"] == "enrolled" and reply["peer"] == "alice"
        await t.send(b, "connect", id=6, target="alice")
        assert "from_key" not in t.one(back, "offer")


async def test_a_name_bound_to_a_key_at_one_instance_is_refused_to_other_keys_at_every_instance(make_tier):
    """The binding is the registry's, shared by the instances: instance B's front never saw alice's
    claim, and alice's peer is long forgotten, yet B refuses her name to another key and to a
    secret, and gives it back to her key."""
    alice, mallory = Identity.generate(), Identity.generate()
    async with make_tier(retain=60, keepalive_timeout=1000) as t:
        a = await t.open("A", A1)
        assert (await _key_enroll(t, a, alice, "alice"))["t"] == "enrolled"
        await t.lose(a)
        await t.advance(61)  # alice's peer is forgotten; her binding is not
        other = await t.open("B", A2)
        reply = await _key_enroll(t, other, mallory, "alice")
        assert (reply["t"], reply["code"]) == ("error", "name-taken") and "another key" in reply["message"]
        await t.send(other, "enroll", id=3, name="alice", secret="x" * 32)
        assert t.one(other, "error")["code"] == "name-taken"
        await t.send(other, "enroll", id=4, name="alice")
        assert t.one(other, "error")["code"] == "name-taken"
        m = await t.open("B", A3)  # mallory binds a name of her own at B: A refuses it to alice
        assert (await _key_enroll(t, m, mallory, "mallory"))["t"] == "enrolled"
        await t.lose(m)
        x = await t.open("A", ("203.0.113.40", 1))
        assert (await _key_enroll(t, x, alice, "mallory"))["code"] == "name-taken"
        back = await t.open("B", ("203.0.113.99", 5))
        reply = await _key_enroll(t, back, alice, "alice")
        assert reply["t"] == "enrolled" and reply["peer"] == "alice"


async def test_offline_peers_are_forgotten_after_retention(make_tier):
    async with make_tier(retain=60, keepalive_timeout=1000) as t:
        a, b = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"))
        await t.lose(b)
        await t.advance(59)
        await t.send(a, "connect", id=2, target="bob")
        assert t.one(a, "error")["code"] == "offline"
        await t.advance(2)
        await t.send(a, "connect", id=3, target="bob")
        assert t.one(a, "error")["code"] == "unknown-peer"
        c = await t.open("A", A3)
        assert (await t.enroll(c, name="bob"))["peer"] == "bob"  # the name is free again


async def test_one_source_evicts_its_own_offline_peers_then_is_refused(make_tier):
    async with make_tier(max_peers_per_source=3) as t:
        conns = [await t.open("A" if i % 2 else "B", ("198.18.0.1", 1000 + i)) for i in range(3)]
        for i, c in enumerate(conns):
            await t.enroll(c, name=f"p{i}")
        late = await t.open("A", ("198.18.0.1", 2000))
        await t.send(late, "enroll", id=1, name="p3")
        assert t.one(late, "error")["code"] == "busy"
        await t.lose(conns[1])
        assert (await t.enroll(late, name="p3"))["peer"] == "p3"  # p1, offline, made room
        probe = await t.open("B", A2)
        await t.enroll(probe, name="probe")
        await t.send(probe, "connect", id=1, target="p1")
        assert t.one(probe, "error")["code"] == "unknown-peer"
        await t.send(probe, "connect", id=2, target="p0")
        assert t.one(conns[0], "offer")["from"] == "probe"


async def test_a_full_registry_forgets_its_longest_offline_peer(make_tier):
    async with make_tier(max_peers=3) as t:
        conns = [await t.open("AB"[i % 2], (f"198.18.1.{i + 1}", 1)) for i in range(3)]
        for i, c in enumerate(conns):
            await t.enroll(c, name=f"p{i}")
        extra = await t.open("A", ("198.18.2.1", 1))
        await t.send(extra, "enroll", id=1, name="extra")
        assert t.one(extra, "error")["code"] == "busy"
        await t.lose(conns[2])
        await t.advance(1)
        await t.lose(conns[0])
        assert (await t.enroll(extra, name="extra"))["peer"] == "extra"
        probe = conns[1]
        await t.send(probe, "connect", id=1, target="p2")
        assert t.one(probe, "error")["code"] == "unknown-peer"  # offline longest: forgotten
        await t.send(probe, "connect", id=2, target="p0")
        assert t.one(probe, "error")["code"] == "offline"


async def test_pending_offers_are_bounded_per_peer_and_per_source(make_tier):
    async with make_tier(max_offers_per_peer=3, max_offers_per_source=2) as t:
        a = await t.open("A", A1)
        await t.enroll(a, name="alice")
        targets = [await t.open("B", (f"198.18.3.{i + 1}", 1)) for i in range(4)]
        await t.enroll(targets[0], name="t0")
        await t.send(a, "connect", id=0, target="t0")
        await t.send(a, "connect", id=9, target="t0")
        assert "already asking" in t.one(a, "error")["message"]
        for i, c in enumerate(targets[1:], 1):
            await t.enroll(c, name=f"t{i}")
            await t.send(a, "connect", id=i, target=f"t{i}")
        err = t.one(a, "error")
        assert (err["code"], err["id"]) == ("busy", 3) and "at most 3" in err["message"]
        assert [len(t.pop(c)) for c in targets] == [1, 1, 1, 0]
        # two initiators behind one address fill that source's share of t3's slots, a third waits
        same = [await t.open("AB"[i % 2], ("198.18.4.1", 1000 + i)) for i in range(3)]
        for i, c in enumerate(same):
            await t.enroll(c, name=f"s{i}")
            await t.send(c, "connect", id=1, target="t3")
        assert [m["code"] for c in same for m in t.pop(c)] == ["busy"]
        assert len(t.pop(targets[3])) == 2


async def test_an_info_update_is_seen_by_later_connects_from_any_instance(make_tier):
    async with make_tier() as t:
        a, b = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"))
        await t.send(b, "info", id=1, info={"endpoints": [["203.0.113.20", 700]], "delta": 1})
        assert t.one(b, "ok")["id"] == 1
        await t.send(a, "connect", id=2, target="bob")
        await t.send(b, "accept", offer=t.one(b, "offer")["offer"])
        assert t.one(a, "session")["info"] == {"endpoints": [["203.0.113.20", 700]], "delta": 1,
                                               "observed": list(A2)}


async def test_an_offer_deadline_the_registry_missed_is_tried_again():
    """The initiator's instance runs the offer's deadline; a registry away at that moment must not
    leave the initiator waiting forever (a raw client has no guard of its own)."""
    from nattrav.errors import RegistryUnavailable
    from nattrav.proto.rendezvous import MemoryRegistry, RendezvousServer
    from tests.proto.tier import Tier

    class AwayAtTheDeadline(MemoryRegistry):
        misses = 2

        async def expire_offer(self, offer_id, now):
            if self.misses:
                self.misses -= 1
                raise RegistryUnavailable("Redis did not answer within 2 s")
            return await super().expire_offer(offer_id, now)

    registry = AwayAtTheDeadline()
    t = Tier({name: RendezvousServer(registry=registry, instance=name) for name in "AB"})
    a, b = await t.enrolled(("A", A1, "alice"), ("B", A2, "bob"))
    await t.send(a, "connect", id=5, target="bob", timeout=3.0)
    offer = t.one(b, "offer")
    await t.advance(3.1)
    await t.advance(1.0)
    assert t.pop(a) == [] and registry.misses == 0  # missed twice
    await t.advance(1.0)
    err = t.one(a, "error")
    assert (err["code"], err["id"]) == ("timeout", 5)
    assert t.one(b, "cancel")["offer"] == offer["offer"]


async def test_an_enroll_whose_answer_was_lost_does_not_keep_the_name():
    """The registry ran an enroll but its answer never came (a timeout): the peer heard busy and
    never got its minted secret. Once the registry answers again the name is free, not held by a
    connection that is not enrolled."""
    from nattrav.errors import RegistryUnavailable
    from nattrav.proto.rendezvous import MemoryRegistry, RendezvousServer
    from tests.proto.tier import Tier

    class AnswerLost(MemoryRegistry):
        lose = 1

        async def enroll(self, *args, **kwargs):
            got = await super().enroll(*args, **kwargs)
            if self.lose:
                self.lose -= 1
                raise RegistryUnavailable("Redis did not answer within 2 s")
            return got

    t = Tier({"A": RendezvousServer(registry=AnswerLost(), instance="A")})
    c = await t.open("A", A1)
    await t.send(c, "enroll", id=1, name="alice")
    assert t.one(c, "error")["code"] == "busy"
    await t.fronts["A"].amaintain(t.now)  # the registry is back: the name goes offline there
    await t.lose(c)
    await t.advance(301)  # offline, then forgotten after retention: the name is free
    again = await t.open("A", A2)
    assert (await t.enroll(again, name="alice"))["peer"] == "alice"


@pytest.mark.parametrize("where", ["same", "across"])
async def test_a_beacon_reaches_an_initiator_on_any_instance(make_tier, where):
    """The listener's beacon goes to its own instance (the one that delivered the offer and takes
    its accept); the session it starts reaches the initiator wherever it is enrolled, with the
    beacon's sample in the listener's info (proto/rendezvous/beacon.py)."""
    from nattrav.proto.rendezvous.beacon import make_beacon, offer_beacon, session_beacon

    async with make_tier(beacon_port=7001) as t:
        a = await t.open("A", A1)
        b = await t.open("A" if where == "same" else "B", A2)
        await t.enroll(a, info={"takes_beacon": True})
        await t.enroll(b, name="bob", info={"beacon_at": 2.0})
        await t.send(a, "connect", id=7, target="bob", timeout=5.0)
        offer = t.one(b, "offer")
        secret, _ = offer_beacon(offer["info"])
        await t.send(b, "accept", id=3, offer=offer["offer"], beacon=True)
        assert t.pop(a) == [] and t.pop(b) == []  # held for the beacon
        assert t.front(b).beacon_received(make_beacon(secret, offer["offer"]), (A2[0], 50001), t.now)
        t._collect()
        sa, sb = t.one(a, "session"), t.one(b, "session")
        assert sb["sample"] == [A2[0], 50001]
        assert session_beacon(sa["info"]) == ((A2[0], 50001), 2.0)
        # the other instance never heard of the offer: a beacon there is refused (a tier's instances
        # have a beacon port each; a --processes instance offers none)
        other = t.fronts["B" if where == "same" else "A"]
        assert not other.beacon_received(make_beacon(secret, offer["offer"]), (A2[0], 50001), t.now)
