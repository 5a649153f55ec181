"""A peer cannot aim a listener's packets at a third party (issue 14, item 2).

The attacker enrolls, publishes a made-up report that names a victim's address, and asks for the
listener. The listener must aim only at the address the rendezvous server observed for the attacker
(here 127.0.0.1), never at the one the report names (the "victim", 127.0.0.3 on loopback).
"""

from __future__ import annotations

import socket

import pytest
import trio

from nattrav.api import AcceptPolicy, listen, listen_tcp
from nattrav.errors import ConnectError, Refused
from nattrav.identity import Identity
from nattrav.io import rendezvous_client as rv
from nattrav.proto.handshake_kx import KeyAgreement
from nattrav.proto.report import NatReport
from tests.reports import tcp, udp, wire

VICTIM_IP = "127.0.0.3"


def _bound_pair(kind: int) -> tuple[socket.socket, socket.socket]:
    """The victim on VICTIM_IP and a sink of ours on the same port of 127.0.0.1, the address the
    server observes for the attacker: the listener's packets land in the sink, never in a socket of
    another test running in parallel."""
    while True:
        victim = socket.socket(socket.AF_INET, kind)
        victim.bind((VICTIM_IP, 0))
        sink = socket.socket(socket.AF_INET, kind)
        try:
            sink.bind(("127.0.0.1", victim.getsockname()[1]))
        except OSError:
            victim.close()
            sink.close()
            continue
        for s in (victim, sink):
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            s.setblocking(False)
        return victim, sink


def _received(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(2048)
        except BlockingIOError:
            return n
        n += 1


def _udp_report(victim_port: int) -> dict:
    # "no NAT at the victim's address": a listener would send its opening packets straight there
    return wire(udp("EIM", "EIF", [victim_port, victim_port], times=[0.0, 0.01], nat=False, ip=VICTIM_IP))


def _tcp_report(victim_port: int) -> dict:
    report = tcp([victim_port] * 3, public=VICTIM_IP, local=(VICTIM_IP, victim_port), filtering="EIF",
                 dests=["127.0.0.1"] * 3)
    return wire(NatReport(tcp=report))


def _peer(servers):
    """A bare rendezvous client with a key of its own, as an attacker would have."""
    return rv.open_rendezvous(servers["server"], identity=Identity.generate())


def _with_half(client, target: str, info: dict) -> dict:
    """`info` with a well-signed half of the punch-key agreement: the listener gets as far as the punch."""
    return {**info, **KeyAgreement().offer(client.identity, target).to_info()}


async def _attack(servers, listener_id: str, info: dict) -> None:
    async with _peer(servers) as attacker:
        await attacker.update_info(_with_half(attacker, listener_id, info))
        await attacker.connect(listener_id, timeout=5)
        await trio.sleep(3)  # the listener punches meanwhile; the attacker never answers


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_made_up_report_cannot_aim_the_listener_at_a_third_party(servers, transport):
    if transport == "udp":
        victim, sink = _bound_pair(socket.SOCK_DGRAM)
        info = {"report": _udp_report(victim.getsockname()[1])}
        listen_ = listen
    else:
        victim, sink = _bound_pair(socket.SOCK_STREAM)
        info = {"report": _tcp_report(victim.getsockname()[1])}
        listen_ = listen_tcp
    events: list[tuple[str, dict]] = []
    with victim, sink, trio.fail_after(40):
        async with listen_(servers["server"], stun=servers["stun"], secure=False,
                           on_event=lambda ph, d: events.append((ph, d))) as lst:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_attack, servers, lst.peer_id, info)
                with pytest.raises(ConnectError):
                    async with lst.accept():
                        pass
        if transport == "udp":
            hits = _received(victim)
        else:
            hits = 0
            while True:
                try:
                    victim.accept()[0].close()
                except BlockingIOError:
                    break
                hits += 1
    assert hits == 0, f"the listener sent {hits} packets/connections to the victim"
    plans = [d for ph, d in events if ph == "plan"]
    assert plans, events
    # the plan names the observed address, and says it ignored the one in the report
    warned = [d for ph, d in events if ph == "peer-address"]
    assert warned and warned[0]["observed"] == "127.0.0.1" and warned[0]["reported"] == VICTIM_IP


async def test_a_hostname_in_a_peer_report_is_never_resolved(servers):
    info = {"report": {**_udp_report(4000), "public": ["victim.example", 4000]}}  # from_wire must refuse it
    with trio.fail_after(40):
        async with listen(servers["server"], stun=servers["stun"], secure=False) as lst:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_attack, servers, lst.peer_id, info)
                with pytest.raises(ConnectError, match="malformed|not an IP"):
                    async with lst.accept():
                        pass


async def test_the_listener_policy_refuses_by_callback_and_by_rate(servers):
    refused: list[dict] = []

    def on_event(phase, detail):
        if phase == "refused":
            refused.append(detail)

    policy = AcceptPolicy(lambda offer: offer.peer_info.get("friend") is True, per_minute=0.0, burst=1)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the accepted friend's punch lands
    sink.bind(("127.0.0.1", 0))
    with sink, trio.fail_after(40):
        async with listen(servers["server"], stun=servers["stun"], policy=policy, on_event=on_event,
                          secure=False) as lst:
            async with trio.open_nursery() as nursery:

                async def take_one():
                    with pytest.raises(ConnectError):  # the friend never punches back
                        async with lst.accept():
                            pass

                nursery.start_soon(take_one)
                async with _peer(servers) as stranger:
                    await stranger.update_info(_with_half(stranger, lst.peer_id, {"friend": False}))
                    with pytest.raises(Refused):
                        await stranger.connect(lst.peer_id, timeout=5)
                async with _peer(servers) as friend:
                    await friend.update_info(_with_half(friend, lst.peer_id,
                                                        {"friend": True, "report": _udp_report(sink.getsockname()[1])}))
                    await friend.connect(lst.peer_id, timeout=5)  # accepted: a session
            # the bucket is empty now (burst 1, no refill): the next friend is refused
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _accept_nothing(lst))
                async with _peer(servers) as friend2:
                    await friend2.update_info(_with_half(friend2, lst.peer_id, {"friend": True}))
                    with pytest.raises(Refused):
                        await friend2.connect(lst.peer_id, timeout=5)
                nursery.cancel_scope.cancel()
    assert [r["reason"] for r in refused] == ["not allowed by the listener's policy",
                                              "too many sessions: the listener's rate limit"]


async def _accept_nothing(lst):
    async with lst.accept():
        raise AssertionError("the policy should have refused every offer")


def test_accept_policy_token_bucket_refills():
    offer = rv.Offer("o", "p", {}, 0.0)
    policy = AcceptPolicy(per_minute=60.0, burst=2)
    assert [policy.admits(offer, 0.0) for _ in range(3)] == [None, None, "too many sessions: the listener's rate limit"]
    assert policy.admits(offer, 0.5) is not None  # half a token back
    assert policy.admits(offer, 1.6) is None
    with pytest.raises(ValueError):
        AcceptPolicy(burst=0)


async def test_a_worker_failure_is_a_connect_error_not_a_traceback(servers, monkeypatch):
    import nattrav.api.udp as udp_api
    from nattrav.errors import WorkerDied

    async def broken_punch(*args, **kwargs):
        raise WorkerDied(0, 1, "killed by SIGKILL")

    monkeypatch.setattr(udp_api, "punch", broken_punch)
    with trio.fail_after(40):
        async with listen(servers["server"], stun=servers["stun"], secure=False) as lst:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_attack, servers, lst.peer_id, {"report": _udp_report(4000)})
                with pytest.raises(ConnectError, match="worker processes failed: worker 0"):
                    async with lst.accept():
                        pass
