"""The sans-IO client transaction (RFC 8489 retransmission, reply validation) and its Trio driver on
trio.testing.MockClock, so every timeout test is instant."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nattrav.errors import StunErrorResponse, StunTimeout
from nattrav.io.stun_client import binding
from nattrav.proto.stun import Message, binding_request, parse
from nattrav.proto.stun_attrs import Attr, Class, ErrorCode, Method
from nattrav.proto.stun_client import State, Transaction, expected_source

SERVER = ("198.51.100.1", 3478)
OTHER = ("198.51.100.2", 3479)


def success(req: Message, mapped=("203.0.113.10", 40000), origin=SERVER, other=OTHER) -> bytes:
    r = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
    r.add(Attr.XOR_MAPPED_ADDRESS, mapped).add(Attr.RESPONSE_ORIGIN, origin).add(Attr.OTHER_ADDRESS, other)
    return r.encode()


def test_rfc8489_schedule_default():
    # RFC 8489 §6.2.1: RTO 500 ms, Rc 7, Rm 16 -> sends at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5; fail at 39.5
    tx = Transaction(binding_request(), SERVER)
    now = 0.0
    sends = [now]
    tx.start(now)
    while True:
        now = tx.deadline
        again = tx.timeout(now)
        if again is None:
            break
        sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == pytest.approx(39.5)
    assert tx.state is State.FAILED


def test_timeout_before_deadline_does_nothing():
    tx = Transaction(binding_request(), SERVER, rto=1.0)
    tx.start(10.0)
    assert tx.timeout(10.5) is None and tx.state is State.WAITING and tx.sent == 1


def test_an_answered_retransmission_keeps_the_first_send_time():
    # RTO 0.1 s below a 0.1-0.12 s round trip: the first request's answer comes after the
    # retransmission left. rtt counts from the retransmission (Karn: which one was answered is
    # unknown), but the NAT made the mapping for the first packet: first_sent_at dates it.
    req = binding_request()
    tx = Transaction(req, SERVER, rto=0.1)
    tx.start(5.0)
    assert tx.timeout(5.1) is not None and tx.sent == 2
    r = tx.receive(success(req), SERVER, 5.115)
    assert r is not None and r.attempts == 2
    assert r.rtt == pytest.approx(0.015) and r.received_at - r.rtt == pytest.approx(5.1)
    assert r.first_sent_at == 5.0


def test_reply_validation_counts_every_discard():
    req = binding_request()
    tx = Transaction(req, SERVER)
    tx.start(0.0)
    other_req = binding_request()
    assert tx.receive(b"garbage", SERVER, 0.1) is None
    assert tx.receive(success(other_req), SERVER, 0.1) is None  # another transaction's reply
    assert tx.receive(req.encode(), SERVER, 0.1) is None  # our own request reflected back
    assert tx.receive(success(req), ("192.0.2.66", 3478), 0.1) is None  # right ID, wrong source
    assert dict(tx.discarded) == {
        "bad_packet": 1, "wrong_transaction": 1, "not_a_response": 1, "wrong_source": 1,
    }
    assert tx.unexpected_sources == [("192.0.2.66", 3478)]
    r = tx.receive(success(req), SERVER, 0.25)
    assert r is not None and r.mapped == ("203.0.113.10", 40000)
    assert r.other_address == OTHER and r.response_origin == SERVER
    assert r.rtt == pytest.approx(0.25) and r.attempts == 1
    # a replay of the same reply after completion is dropped and counted
    assert tx.receive(success(req), SERVER, 0.3) is None
    assert tx.discarded["late"] == 1


def test_change_request_accepts_only_the_announced_address():
    req = binding_request(change_ip=True, change_port=True)
    exp = expected_source(SERVER, OTHER, True, True)
    assert exp == OTHER
    assert expected_source(SERVER, OTHER, False, True) == ("198.51.100.1", 3479)
    tx = Transaction(req, SERVER, accept_from=[exp])
    tx.start(0.0)
    # a server that ignores CHANGE-REQUEST answers from SERVER: that reply must not count
    assert tx.receive(success(req), SERVER, 0.1) is None
    assert tx.unexpected_sources == [SERVER]
    assert tx.receive(success(req, origin=OTHER), OTHER, 0.2) is not None


def test_bad_fingerprint_is_discarded():
    req = binding_request()
    r = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
    r.add(Attr.XOR_MAPPED_ADDRESS, ("203.0.113.10", 1))
    wire = bytearray(r.encode(fingerprint=True))
    wire[-1] ^= 0xFF
    tx = Transaction(req, SERVER)
    tx.start(0)
    assert tx.receive(bytes(wire), SERVER, 0.1) is None
    assert tx.discarded["bad_fingerprint"] == 1


class FakeNet:
    """A pair of connected in-memory UDP endpoints: the client's socket and a scripted server."""

    def __init__(self, drop_first: int = 0, respond=None) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.inbox_send, self.inbox = trio.open_memory_channel(100)
        self.drop_first = drop_first
        self.respond = respond or (lambda req: [(success(req), SERVER)])

    async def sendto(self, data, dest):
        self.sent.append((trio.current_time(), data))
        if len(self.sent) <= self.drop_first:
            return
        for reply, src in self.respond(parse(data)):
            self.inbox_send.send_nowait((reply, src))

    async def recvfrom(self, n):
        return await self.inbox.receive()


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_driver_retransmits_on_mock_clock(mock_clock):
    net = FakeNet(drop_first=3)
    t0 = trio.current_time()
    r = await binding(net, SERVER)
    times = [t - t0 for t, _ in net.sent]
    assert times == pytest.approx([0.0, 0.5, 1.5, 3.5])
    assert r.attempts == 4 and r.mapped == ("203.0.113.10", 40000)
    # every retransmission is the same bytes (same transaction ID)
    assert len({d for _, d in net.sent}) == 1


async def test_driver_gives_up_after_rc_and_rm(mock_clock):
    net = FakeNet(drop_first=100)
    t0 = trio.current_time()
    with pytest.raises(StunTimeout):
        await binding(net, SERVER)
    assert trio.current_time() - t0 == pytest.approx(39.5)
    assert len(net.sent) == 7


async def test_driver_overall_timeout(mock_clock):
    net = FakeNet(drop_first=100)
    t0 = trio.current_time()
    with pytest.raises(StunTimeout):
        await binding(net, SERVER, timeout=2.0)
    assert trio.current_time() - t0 == pytest.approx(2.0)


async def test_driver_ignores_spoofed_and_reports_them(mock_clock):
    def respond(req):
        # an attacker races the server with a reply from elsewhere; the real one comes after
        return [(success(req, mapped=("192.0.2.99", 1)), ("192.0.2.99", 3478)), (success(req), SERVER)]

    net = FakeNet(respond=respond)
    r = await binding(net, SERVER)
    assert r.mapped == ("203.0.113.10", 40000)


async def test_driver_change_request_from_ignoring_server_times_out(mock_clock):
    # the server ignores CHANGE-REQUEST: replies come from SERVER, never from OTHER
    net = FakeNet()
    with pytest.raises(StunTimeout) as info:
        await binding(net, SERVER, change_ip=True, change_port=True, other_address=OTHER, rc=2, rm=2)
    assert info.value.discarded["wrong_source"] == 2
    assert SERVER in info.value.unexpected_sources


async def test_driver_error_response(mock_clock):
    def respond(req):
        r = Message(Method.BINDING, Class.ERROR, req.transaction_id)
        r.add(Attr.ERROR_CODE, ErrorCode(420, "cannot change IP"))
        return [(r.encode(), SERVER)]

    with pytest.raises(StunErrorResponse) as info:
        await binding(FakeNet(respond=respond), SERVER)
    assert info.value.error.code == 420


async def test_change_request_needs_a_known_source():
    with pytest.raises(ValueError):
        await binding(FakeNet(), SERVER, change_ip=True)
