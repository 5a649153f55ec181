"""Several nattrav-server processes on one real Redis (issue 18), over loopback: a peer enrolled at
one instance reaches a peer enrolled at another; a killed instance's peers enroll again at another
one; a Redis outage gives peers busy answers, never a crashed server, and the tier recovers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from nattrav.errors import RendezvousError, RendezvousTimeout, ServerBusy, ServerGone
from nattrav.io.rendezvous_client import open_rendezvous
from tests.instances import SERVER, instances
from tests.redisd import free_port, running_redis

KEEPALIVE_TIMEOUT = 3.0  # the peers' keepalive is a third of it: 1 s


async def _session(a, b, target: str, timeout: float = 5.0):
    """a connects to b; the initiator's error comes out as itself (not in an ExceptionGroup)."""
    got, failed = {}, []

    async def answer():
        got["b"] = await b.accept(await b.next_offer())

    async with trio.open_nursery() as n:
        n.start_soon(answer)
        try:
            got["a"] = await a.connect(target, timeout=timeout)
        except RendezvousError as exc:
            failed.append(exc)
            n.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return got["a"], got["b"]


async def _until(predicate, timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - start


def test_registry_flags_are_checked():
    def run(*args, env=None):
        return subprocess.run([*SERVER, "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **(env or {})})

    for args, env, message in [
        (["--registry", "http://x"], None, "the scheme must be redis://"),
        (["--registry", "redis://:6379/0"], None, "no host"),
        (["--registry", "redis://h:6379/x"], None, "the database must be a number"),
        ([], {"NATTRAV_REGISTRY": "redis://h:99999/0"}, "the port must be 1..65535"),
        (["--stun-servers", "stun.example:0"], None, "--stun-servers"),
    ]:
        cp = run(*args, env=env)
        assert cp.returncode == 2 and message in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
    port = free_port()  # nobody listens there: one line, exit 1, no traceback
    cp = run("--registry", f"redis://127.0.0.1:{port}/0")
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"nattrav-server: cannot reach the registry 'redis://127.0.0.1:{port}/0'")
    assert "Traceback" not in cp.stderr


@pytest.fixture
def redisd():
    with running_redis() as server:
        yield server


async def test_peers_at_different_instances_connect_and_survive_a_killed_instance(redisd):
    flags = ("--registry", redisd.url, "--keepalive-timeout", str(KEEPALIVE_TIMEOUT),
             "--stun-servers", "stun1.example:3478,192.0.2.9:3479")
    with instances(3, *flags) as (i1, i2, i3):
        async with open_rendezvous(i1.addr, name="alice") as a, \
                open_rendezvous([i2.addr, i3.addr], name="bob") as b:
            assert a.stun and sorted(a.stun) == [("192.0.2.9", 3479), ("stun1.example", 3478)]
            sa, sb = await _session(a, b, "bob")
            assert sa.key == sb.key and sa.peer_id == "bob" and sb.peer_id == "alice"
            i2.kill()
            # bob's connection breaks at once; he enrolls again at i3, well within his keepalive
            took = await _until(lambda: b.enrollments == 2 and b.connected, 2 * b.keepalive)
            assert b.server == i3.addr and took < b.keepalive
            sa, sb = await _session(a, b, "bob")
            assert sa.key == sb.key
            sb, sa = await _session(b, a, "alice")  # and the other way round, from i3 to i1
            assert sa.key == sb.key
        for inst in (i1, i3):
            assert inst.stop() == 0


async def test_a_redis_outage_is_busy_then_over(redisd):
    flags = ("--registry", redisd.url, "--keepalive-timeout", str(KEEPALIVE_TIMEOUT))
    with instances(2, *flags) as (i1, i2):
        async with open_rendezvous(i1.addr, name="alice") as a, open_rendezvous(i2.addr, name="bob") as b:
            await _session(a, b, "bob")
            redisd.stop()
            with pytest.raises((ServerBusy, ServerGone)) as err:  # busy; gone once the instance drops us
                await a.connect("bob", timeout=2)
            assert "busy" in str(err.value) or "registry" in str(err.value)
            await trio.sleep(2 * KEEPALIVE_TIMEOUT)  # peers ping on; instances retry their housekeeping
            assert i1.proc.poll() is None and i2.proc.poll() is None
            # Redis returns empty (no persistence): every instance finds its entries gone, ends its
            # peers' connections, and they enroll again under their names
            redisd.start().wait()  # same port, same object: the fixture stops this one
            await _until(lambda: a.enrollments >= 2 and b.enrollments >= 2 and a.connected and b.connected,
                         20)
            # the first tries may meet an instance that has not noticed yet, or an offer published
            # before bob's instance subscribed again (lost: a timeout, as documented)
            for _ in range(20):
                try:
                    sa, sb = await _session(a, b, "bob", timeout=1.0)
                    break
                except (ServerBusy, ServerGone, RendezvousTimeout):
                    await trio.sleep(0.2)
            else:
                pytest.fail("no session after Redis came back")
            assert sa.key == sb.key
        assert i1.stop() == 0 and i2.stop() == 0
        logs = i1.log()
    msgs = [rec["msg"] for rec in logs]
    assert any("registry is unreachable" in m for m in msgs) and any("registry is back" in m for m in msgs)
    assert not any(rec["level"] in ("error", "critical") for rec in logs), logs


async def test_a_silent_instance_is_reaped_and_a_late_one_drops_its_peers(redisd):
    """Registry level (fake clock, no processes): instance B stops heartbeating; after dead_after,
    A's housekeeping takes B's peers offline and ends their offers (alice hears it); B, coming back
    late, finds itself reaped and ends its peers' connections so that they enroll again."""
    from nattrav.io.redis_link import open_redis_link

    from tests.proto.tier import redis_tier

    async with open_redis_link(redisd.url) as client:
        async with redis_tier(client, dead_after=15.0) as t:
            a, b = await t.open("A", ("203.0.113.10", 1)), await t.open("B", ("203.0.113.20", 2))
            await t.enroll(a, name="alice")
            secret = (await t.enroll(b, name="bob"))["secret"]
            await t.send(a, "connect", id=4, target="bob", timeout=60.0)
            t.one(b, "offer")
            await t.advance(14)
            await t.fronts["A"].amaintain(t.now)  # B is late but not dead yet
            t._collect()
            assert t.pop(a) == [] and t.pop(b) == []
            await t.advance(2)
            await t.fronts["A"].amaintain(t.now)  # now it is: bob goes offline, alice's offer ends
            t._collect()
            err = t.one(a, "error")
            assert (err["code"], err["id"]) == ("offline", 4)
            await t.send(a, "connect", id=5, target="bob")
            assert t.one(a, "error")["code"] == "offline"
            await t.fronts["B"].amaintain(t.now)  # B wakes up: it was taken for dead
            t._collect()
            assert b in t.closed
            assert [(m["t"], m["code"]) for m in t.pop(b)] == [("error", "busy")]
            again = await t.open("B", ("203.0.113.20", 3))  # bob enrolls again, is reachable again
            assert (await t.enroll(again, name="bob", secret=secret))["peer"] == "bob"
            await t.send(a, "connect", id=6, target="bob")
            assert t.one(again, "offer")["from"] == "alice"


async def _reader_id(link, name: str) -> int:
    """The Redis client ID of the connection named `name` (CLIENT LIST)."""
    for line in (await link.call("CLIENT", "LIST")).decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            return int(fields["id"])
    raise AssertionError(f"no client named {name}")


async def test_a_notice_appended_while_the_reader_reconnects_is_delivered(redisd, monkeypatch):
    """Redis kills the connection instance B reads its notices on; a notice for B appended before B
    is back is read once it is (streams from the last ID read: nothing lost, nothing twice)."""
    from nattrav.io import redis_registry
    from nattrav.io.redis_link import open_redis_link

    monkeypatch.setattr(redis_registry, "BACKOFF", (0.5, 0.5))  # B stays away half a second
    async with open_redis_link(redisd.url) as link:
        a = redis_registry.RedisRegistry(link, instance="A", prefix="tk:")
        b = redis_registry.RedisRegistry(link, instance="B", prefix="tk:")
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve_notices, got.append)
            await a.publish([("B", b"one")])
            await _until(lambda: got == [b"one"], 5)
            assert b.stats["notice_links"] == 1
            killed = await link.call("CLIENT", "KILL", "ID", await _reader_id(link, "nattrav-notices-B"))
            assert killed == 1
            await trio.sleep(0.1)  # B has seen its connection go and waits to reconnect
            await a.publish([("B", b"two"), ("B", b"three")])
            assert b.stats["notice_links"] == 1  # appended while B was away
            await _until(lambda: len(got) == 3, 5)
            assert got == [b"one", b"two", b"three"] and b.stats["notice_links"] == 2
            # read notices are trimmed away: B's stream keeps at most the last one read
            await a.publish([("B", b"four")])
            await _until(lambda: len(got) == 4, 5)
            await trio.sleep(0.1)
            assert await link.call("XLEN", b.stream) <= 2
            nursery.cancel_scope.cancel()


async def test_a_name_bound_in_redis_outlives_its_peer_and_binds_a_new_instance(redisd):
    """The binding lives in Redis, for good (no TTL): an instance that starts later, with a
    registry object of its own and an empty front, refuses the name to another key."""
    from nattrav.identity import Identity
    from nattrav.io.redis_link import open_redis_link
    from nattrav.io.redis_registry import RedisRegistry
    from nattrav.proto.rendezvous import Home, Refusal

    alice, mallory = Identity.generate(), Identity.generate()
    async with open_redis_link(redisd.url) as link:
        a = RedisRegistry(link, instance="A", prefix="tn:", dead_after=1e9)
        await a.maintain(1000.0)
        got = await a.enroll(Home("A", 1), "198.51.100.7", ["198.51.100.7", 1], b"\x80", "alice", None, 1000.0,
                             key=alice.peer_id.key_bytes)
        assert got.peer_id == "alice"
        assert await link.call("HGET", "tn:names", "alice") == alice.peer_id.key_bytes
        assert await link.call("PTTL", "tn:names") == -1  # no expiry
        await a.offline("alice", Home("A", 1), 1001.0)
        c = RedisRegistry(link, instance="C", prefix="tn:", dead_after=1e9)  # started later, elsewhere
        await c.maintain(1e6)
        # a million seconds on: alice's peer is long forgotten, her name is not
        refused = await c.enroll(Home("C", 1), "203.0.113.9", ["203.0.113.9", 2], b"\x80", "alice", None, 1e6,
                                 key=mallory.peer_id.key_bytes)
        assert isinstance(refused, Refusal) and refused.code.value == "name-taken"
        assert "another key" in refused.message
        back = await c.enroll(Home("C", 2), "198.51.100.7", ["198.51.100.7", 3], b"\x80", "alice", None, 1e6,
                              key=alice.peer_id.key_bytes)
        assert back.peer_id == "alice"


async def test_leases_are_refreshed_paced_and_all_within_a_fraction_of_the_lease(redisd):
    """Housekeeping refreshes a share of an instance's peers per round (about 8 refreshes per
    lease), not all of them every second; every peer is refreshed well within its lease."""
    from nattrav.io.redis_link import open_redis_link
    from nattrav.io.redis_registry import RedisRegistry
    from nattrav.proto.rendezvous import Home

    lease, peers = 400.0, 300
    async with open_redis_link(redisd.url) as link:
        a = RedisRegistry(link, instance="A", prefix="tl:", dead_after=1e9, lease=lease)
        await a.maintain(1000.0)
        for i in range(peers):
            got = await a.enroll(Home("A", i), f"198.51.100.{i % 200}", ["198.51.100.1", i], b"\x80", f"p{i}",
                                 None, 1000.0)
            assert got.peer_id == f"p{i}"

        async def refreshed() -> int:  # peers whose place in `all` was moved past their enroll's lease
            scores = [float(await link.call("ZSCORE", "tl:all", f"p{i}")) for i in range(peers)]
            return sum(s > 1000.0 + lease for s in scores)

        await a.maintain(1001.0)
        first = await refreshed()
        assert 0 < first < peers / 2  # a share, not everyone
        for k in range(2, int(lease / 8)):  # a full cycle fits in an eighth of the lease
            await a.maintain(1000.0 + k)
        assert await refreshed() == peers
