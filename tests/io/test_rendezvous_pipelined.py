"""The initiator's connect in the enroll's flight, over real sockets (io/rendezvous_client.py's
EarlyConnect): written right behind the enroll frame it gets its session like an ordinary connect;
its info carries the round trip the TCP connect measured (plain or TLS); when the server doubts the timed proof
(a skewed clock) the frames it refused go again after the challenge, and the target sees one offer;
an unknown peer is the connect's own UnknownPeer; info given after the enroll reply makes an
ordinary connect."""

from __future__ import annotations

import pytest
import trio

from nattrav.errors import UnknownPeer
from nattrav.identity import Identity
from nattrav.io import rendezvous_client
from nattrav.io.rendezvous_client import EarlyConnect, open_rendezvous
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.io.rendezvous_tls import client_context, server_context
from nattrav.proto.rendezvous import RendezvousServer
from tests.secure_lab import self_signed

REPORT = {"report": {"x": 1}}


async def _serve(nursery) -> tuple[RendezvousServer, tuple[str, int]]:
    state = RendezvousServer(keepalive=5.0)
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    return state, addr


async def _accepting(addr, offers: list, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """bob: takes every offer (noted in `offers`)."""
    async with open_rendezvous(addr, name="bob", info=REPORT) as bob:
        task_status.started()
        while True:
            offer = await bob.next_offer()
            offers.append(offer)
            await bob.accept(offer)


def _info(seen: list):
    def info(rtt: float) -> dict:
        seen.append(rtt)
        return {**REPORT, "rtt": rtt}
    return info


async def test_a_connect_behind_the_enroll_gets_its_session(nursery):
    state, addr = await _serve(nursery)
    offers: list = []
    await nursery.start(_accepting, addr, offers)
    early = EarlyConnect("bob", timeout=5.0)
    rtts: list = []
    early.ready(_info(rtts))  # ready before the enroll is written: it goes in the same flight
    with trio.fail_after(10):
        async with open_rendezvous(addr, identity=Identity.generate(), early=early) as client:
            assert client.early_went and client.challenged == 0
            session = await client.connect("bob", timeout=5.0)
    assert session.peer_id == "bob" and len(offers) == 1
    # its info went before the enroll reply: the TCP connect's round trip stood in for the reply's
    assert len(rtts) == 1 and 0 < rtts[0] < 1.0 and offers[0].peer_info["rtt"] == rtts[0]
    assert state.stats["sessions"] == 1 and state.stats["timed_enrolls"] >= 1


async def test_a_doubted_enroll_sends_the_refused_connect_again_once(nursery, monkeypatch):
    state, addr = await _serve(nursery)
    offers: list = []
    await nursery.start(_accepting, addr, offers)
    real = rendezvous_client.time.time
    monkeypatch.setattr(rendezvous_client.time, "time", lambda: real() + 120.0)  # a challenge
    early = EarlyConnect("bob", timeout=5.0)
    rtts: list = []
    early.ready(_info(rtts))
    with trio.fail_after(10):
        async with open_rendezvous(addr, identity=Identity.generate(), early=early) as client:
            assert client.challenged == 1 and client.early_went and early.refused
            session = await client.connect("bob", timeout=5.0)
    assert session.peer_id == "bob"
    assert len(offers) == 1 and state.stats["sessions"] == 1
    # sent again with the round trip the enroll reply measured
    assert len(rtts) == 2 and offers[0].peer_info["rtt"] == rtts[1]


async def test_an_unknown_peer_behind_the_enroll_is_the_connects_error(nursery):
    _, addr = await _serve(nursery)
    early = EarlyConnect("nobody", timeout=5.0)
    early.ready(_info([]))
    with trio.fail_after(10):
        async with open_rendezvous(addr, identity=Identity.generate(), early=early) as client:
            assert client.early_went
            with pytest.raises(UnknownPeer, match="nobody"):
                await client.connect("nobody", timeout=5.0)
            assert await client.ping() >= 0  # the connection goes on


async def test_info_given_after_the_enroll_reply_makes_an_ordinary_connect(nursery):
    state, addr = await _serve(nursery)
    offers: list = []
    await nursery.start(_accepting, addr, offers)
    early = EarlyConnect("bob", timeout=5.0)
    with trio.fail_after(10):
        async with open_rendezvous(addr, identity=Identity.generate(), early=early) as client:
            rtts: list = []
            early.ready(_info(rtts))  # too late: nothing goes on its own
            await trio.sleep(0.1)
            assert not client.early_went and rtts == []
            session = await client.connect("bob", timeout=5.0, info={**REPORT, "rtt": client.rtt})
    assert session.peer_id == "bob" and len(offers) == 1 and offers[0].peer_info["rtt"] == client.rtt


async def test_a_connect_behind_the_enroll_over_tls(nursery, tmp_path):
    cert, key = self_signed(tmp_path, "rv")
    state = RendezvousServer(keepalive=5.0)
    addr = await nursery.start(lambda task_status: serve_rendezvous(
        "127.0.0.1", 0, state=state, ssl_context=server_context(cert, key), task_status=task_status))
    offers: list = []

    async def bob(task_status=trio.TASK_STATUS_IGNORED):
        async with open_rendezvous(addr, name="bob", info=REPORT, tls=client_context(cert)) as rv:
            task_status.started()
            while True:
                offer = await rv.next_offer()
                offers.append(offer)
                await rv.accept(offer)

    await nursery.start(bob)
    early = EarlyConnect("bob", timeout=5.0)
    rtts: list = []
    early.ready(_info(rtts))
    with trio.fail_after(10):
        async with open_rendezvous(addr, identity=Identity.generate(), early=early, tls=client_context(cert)) as client:
            assert client.early_went and client.challenged == 0
            session = await client.connect("bob", timeout=5.0)
    assert session.peer_id == "bob" and len(offers) == 1 and state.stats["sessions"] == 1
    assert len(rtts) == 1 and 0 < rtts[0] < 1.0
