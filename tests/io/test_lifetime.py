"""The mapping-lifetime measurement (io/lifetime.py) and what it drives (api/liveness.py): against our
own STUN server on loopback (no NAT: every mapping lives), with trials whose outcome a fake NAT
decides (the bracket, the cancelling of longer trials, the packet bound), and the keepalive it sets.
The real NAT with an 8 s timeout is tests/io/test_lifetime_lab.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

from nattrav.api.liveness import LifetimeWatch, wants_lifetime
from nattrav.api.secure import ASSUMED_LIFETIME, keepalive_interval, quic_settings
from nattrav.io import lifetime as lt
from nattrav.io.quic_conn import QuicSettings
from nattrav.proto.nat_behavior import NatBehavior


async def test_with_no_nat_every_trial_survives_and_the_cookie_is_shared(servers):
    with trio.fail_after(20):
        reading = await lt.measure_lifetime(servers["stun"], "127.0.0.1", waits=(0.2, 0.5, 0.3))
    assert (reading.alive, reading.expired, reading.trials) == (0.5, None, 3)
    assert reading.lifetime == 0.5
    # per trial one Binding and one RESPONSE-PORT request, plus one 438 round for the shared cookie
    # (two when trials ask for it at the same moment): nothing lost on loopback
    assert 3 * 2 + 1 <= reading.requests <= 3 * 2 + 3


def fake_nat(lifetime: float, log: list):
    async def trial(server, local_ip, wait, kw, cookie):
        log.append(("start", wait))
        cookie.sent += 3
        await trio.sleep(wait)
        log.append(("end", wait))
        return wait < lifetime
    return trial


async def test_the_first_expired_trial_cancels_the_longer_ones(monkeypatch, autojump_clock):
    log: list = []
    monkeypatch.setattr(lt, "_trial", fake_nat(8.0, log))
    t0 = trio.current_time()
    reading = await lt.measure_lifetime(("192.0.2.1", 3478))
    took = trio.current_time() - t0
    assert (reading.alive, reading.expired) == (7.0, 10.0)  # the bracket holds the 8 s
    assert reading.lifetime == 7.0 and keepalive_interval(reading.lifetime) < 8.0
    assert took < 10.5  # done when the 10 s trial died, not after the 110 s one
    ended = [w for what, w in log if what == "end"]
    assert max(ended) == 10.0 and len([w for what, w in log if what == "start"]) == len(lt.WAITS)
    assert reading.requests == 3 * len(lt.WAITS)  # bounded: the cancelled trials sent no more


async def test_a_lost_answer_below_the_first_death_does_not_stretch_the_bracket(monkeypatch, autojump_clock):
    async def trial(server, local_ip, wait, kw, cookie):
        await trio.sleep(wait)
        return wait in (2.0, 4.5)  # 3 s "expired" (its answer was lost), 4.5 s survived
    monkeypatch.setattr(lt, "_trial", trial)
    reading = await lt.measure_lifetime(("192.0.2.1", 3478))
    assert (reading.alive, reading.expired) == (2.0, 3.0)  # the cautious reading


async def test_a_server_that_never_answers_gives_no_lifetime(monkeypatch, autojump_clock):
    async def trial(server, local_ip, wait, kw, cookie):
        return None
    monkeypatch.setattr(lt, "_trial", trial)
    reading = await lt.measure_lifetime(("192.0.2.1", 3478))
    assert reading.lifetime is None and reading.trials == 0


def test_keepalive_is_half_the_measured_lifetime():
    assert keepalive_interval(None) == ASSUMED_LIFETIME / 2
    assert keepalive_interval(7.0) == 3.5
    assert keepalive_interval(1.0) == 1.0  # never below MIN_KEEPALIVE
    assert quic_settings(110.0).keepalive_interval == quic_settings().idle_timeout / 3  # below the idle timeout
    assert quic_settings(7.0).keepalive_interval == 3.5


@dataclass
class FakeEndpoint:
    behavior: NatBehavior
    sock: object = None
    cached: object = None


@dataclass
class FakePath:
    settings: QuicSettings


async def test_the_watch_retunes_the_running_path_and_remembers(monkeypatch):
    async def measured(server, local_ip=None, **kw):
        return lt.LifetimeReading(7.0, 10.0, 33, 5)
    monkeypatch.setattr("nattrav.api.liveness.measure_lifetime", measured)
    ep = FakeEndpoint(NatBehavior(nat=True))
    assert wants_lifetime(ep)
    events: list = []
    watch = LifetimeWatch(ep, ("192.0.2.1", 3478), None, lambda p, d: events.append((p, d)))
    path = FakePath(quic_settings(None))
    assert path.settings.keepalive_interval == 5.0
    watch.follow(path)
    await watch.run()
    assert path.settings.keepalive_interval == 3.5
    assert ep.behavior.lifetime == 7.0 and not wants_lifetime(ep)  # the next session knows
    assert [p for p, _ in events] == ["lifetime", "keepalive"]
    # a keepalive the caller chose stays
    fixed = LifetimeWatch(FakeEndpoint(NatBehavior(nat=True)), ("192.0.2.1", 3478), None, lambda p, d: None,
                          fixed_keepalive=True)
    own = FakePath(quic_settings(None, keepalive_interval=9.0))
    fixed.follow(own)
    await fixed.run()
    assert own.settings.keepalive_interval == 9.0


def test_no_measurement_without_a_nat_or_when_known():
    assert not wants_lifetime(FakeEndpoint(NatBehavior(nat=False)))
    assert not wants_lifetime(FakeEndpoint(NatBehavior(nat=True, lifetime=30.0)))
    assert not wants_lifetime(object())  # a TCP endpoint has no punch socket's mapping to keep
