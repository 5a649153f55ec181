"""The TURN client's state machine (proto/turn.py) without sockets: the long-term credential
dance, answers that must be signed, retransmissions, refresh timers, ChannelData framing, and that
whatever bytes arrive, receive() only counts them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nattrav.errors import BadPacket, LocalProtocolError
from nattrav.proto.stun import Message, long_term_key, parse
from nattrav.proto.stun_attrs import Attr, Class, ErrorCode, Method
from nattrav.proto.turn import (CHANNEL_MIN, Allocated, ChannelBound, Failed, Kind, PeerData, PermissionInstalled,
                                Refreshed, TurnClient, encode_channel_data, parse_channel_data,
                                stream_message_length)

USER, PASSWORD, REALM = "1700000000:peer", "c2VjcmV0", "nattrav.test"
KEY = long_term_key(USER, REALM, PASSWORD)
RELAYED, MAPPED = ("198.51.100.1", 49200), ("203.0.113.10", 40000)


def answer(req: bytes, cls=Class.SUCCESS, attrs=(), key=KEY) -> bytes:
    m = parse(req)
    r = Message(m.method, cls, m.transaction_id)
    for t, v in attrs:
        r.add(t, v)
    return r.encode(integrity_key=key, fingerprint=True) if key else r.encode(fingerprint=True)


def challenge(req: bytes, nonce="n1", code=401) -> bytes:
    return answer(req, Class.ERROR, [(Attr.ERROR_CODE, ErrorCode(code, "Unauthorized")), (Attr.REALM, REALM),
                                     (Attr.NONCE, nonce)], key=None)


def allocated(now: float = 0.0) -> TurnClient:
    c = TurnClient(USER, PASSWORD)
    c.allocate(now)
    c.receive(challenge(c.take_outgoing()[0]), now)
    req = c.take_outgoing()[0]
    c.receive(answer(req, attrs=[(Attr.XOR_RELAYED_ADDRESS, RELAYED), (Attr.XOR_MAPPED_ADDRESS, MAPPED),
                                 (Attr.LIFETIME, 600)]), now)
    assert c.take_events() == [Allocated(RELAYED, MAPPED, 600)]
    return c


def test_allocate_answers_the_challenge_with_long_term_credentials():
    c = TurnClient(USER, PASSWORD)
    c.allocate(0.0)
    first = parse(c.take_outgoing()[0])
    assert first.method == Method.ALLOCATE and first.get(Attr.REQUESTED_TRANSPORT) == 17
    assert Attr.USERNAME not in first and Attr.MESSAGE_INTEGRITY not in first
    c.receive(challenge(first.raw), 0.0)
    second = parse(c.take_outgoing()[0])
    assert (second.get(Attr.USERNAME), second.get(Attr.REALM), second.get(Attr.NONCE)) == (USER, REALM, "n1")
    assert second.check_integrity(KEY) and second.check_fingerprint()
    c.receive(answer(second.raw, attrs=[(Attr.XOR_RELAYED_ADDRESS, RELAYED), (Attr.XOR_MAPPED_ADDRESS, MAPPED),
                                        (Attr.LIFETIME, 300)]), 0.1)
    assert c.take_events() == [Allocated(RELAYED, MAPPED, 300)] and c.state == "allocated"


def test_an_unsigned_or_forged_success_is_not_believed():
    c = TurnClient(USER, PASSWORD)
    c.allocate(0.0)
    c.receive(challenge(c.take_outgoing()[0]), 0.0)
    req = c.take_outgoing()[0]
    attrs = [(Attr.XOR_RELAYED_ADDRESS, ("192.0.2.66", 1)), (Attr.XOR_MAPPED_ADDRESS, MAPPED), (Attr.LIFETIME, 600)]
    c.receive(answer(req, attrs=attrs, key=None), 0.0)
    c.receive(answer(req, attrs=attrs, key=b"x" * 16), 0.0)
    assert c.take_events() == [] and c.stats["bad_integrity"] == 2 and c.state == "allocating"
    c.receive(answer(req, attrs=[(Attr.XOR_RELAYED_ADDRESS, RELAYED), (Attr.XOR_MAPPED_ADDRESS, MAPPED),
                                 (Attr.LIFETIME, 600)]), 0.0)
    assert c.relayed == RELAYED


def test_refused_credentials_fail_once_without_looping():
    c = TurnClient(USER, PASSWORD)
    c.allocate(0.0)
    c.receive(challenge(c.take_outgoing()[0]), 0.0)
    c.receive(challenge(c.take_outgoing()[0], nonce="n2"), 0.0)  # our signed request refused
    [ev] = c.take_events()
    assert isinstance(ev, Failed) and ev.kind is Kind.ALLOCATE and ev.fatal and "refused" in ev.reason
    assert c.take_outgoing() == [] and c.state == "failed"


def test_a_stale_nonce_is_renewed_and_the_request_repeated():
    c = allocated()
    c.create_permission(["203.0.113.20"], 1.0)
    req = c.take_outgoing()[0]
    c.receive(challenge(req, nonce="n9", code=438), 1.0)
    again = parse(c.take_outgoing()[0])
    assert again.method == Method.CREATE_PERMISSION and again.get(Attr.NONCE) == "n9"
    c.receive(answer(again.raw), 1.1)
    assert c.take_events() == [PermissionInstalled(("203.0.113.20",))]


def test_retransmissions_back_off_then_give_up():
    c = TurnClient(USER, PASSWORD, rto=0.5, rc=3, rm=4)
    c.allocate(0.0)
    assert len(c.take_outgoing()) == 1
    sent_at = []
    t = 0.0
    while c.state == "allocating" and t < 20:
        t = c.next_deadline()
        c.tick(t)
        if c.take_outgoing():
            sent_at.append(t)
    assert sent_at == [0.5, 1.5]  # RTO, then 2 RTO later
    assert t == pytest.approx(1.5 + 0.5 * 4)  # the last one waits rm RTOs
    [ev] = c.take_events()
    assert isinstance(ev, Failed) and "no answer" in ev.reason and c.state == "failed"


def test_over_a_stream_nothing_is_retransmitted():
    c = TurnClient(USER, PASSWORD, reliable=True, stream_timeout=10.0)
    c.allocate(0.0)
    c.take_outgoing()
    c.tick(9.9)
    assert c.take_outgoing() == []
    c.tick(10.0)
    assert isinstance(c.take_events()[0], Failed)


def test_timers_refresh_the_allocation_permissions_and_channels():
    c = allocated(0.0)
    c.create_permission(["203.0.113.20"], 0.0)
    c.receive(answer(c.take_outgoing()[0]), 0.0)
    peer = ("203.0.113.30", 5000)
    assert c.bind_channel(peer, 0.0) == CHANNEL_MIN
    c.receive(answer(c.take_outgoing()[0]), 0.0)
    assert c.take_events()[-1] == ChannelBound(peer, CHANNEL_MIN)
    c.tick(200.0)
    assert c.take_outgoing() == []
    c.tick(240.0)  # permissions last 300 s: refreshed a minute before
    perm = parse(c.take_outgoing()[0])
    assert perm.method == Method.CREATE_PERMISSION
    # both IPs: the one asked for, and the channel peer's (a channel installs its permission too)
    assert {v for t, v in perm.attributes if t == Attr.XOR_PEER_ADDRESS} == {("203.0.113.20", 0), ("203.0.113.30", 0)}
    c.receive(answer(perm.raw), 240.0)
    c.tick(300.0)  # the allocation (600 s) half-way
    refresh = parse(c.take_outgoing()[0])
    assert refresh.method == Method.REFRESH and refresh.get(Attr.LIFETIME) == 600
    c.receive(answer(refresh.raw, attrs=[(Attr.LIFETIME, 600)]), 300.0)
    c.tick(540.0)  # the channel (600 s) a minute before it ends
    out = [parse(x) for x in c.take_outgoing()]
    assert any(m.method == Method.CHANNEL_BIND and m.get(Attr.CHANNEL_NUMBER) == CHANNEL_MIN for m in out)
    assert any(isinstance(e, Refreshed) for e in c.take_events())


def test_data_to_and_from_peers():
    c = allocated()
    peer = ("203.0.113.30", 5000)
    send = parse(c.wrap(peer, b"abc"))  # no channel yet: a Send indication
    assert (send.method, send.cls, send.get(Attr.XOR_PEER_ADDRESS), send.get(Attr.DATA)) == \
        (Method.SEND, Class.INDICATION, peer, b"abc")
    ind = Message(Method.DATA, Class.INDICATION).add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, b"xyz")
    c.receive(ind.encode(), 1.0)
    assert c.take_events() == [PeerData(peer, b"xyz")]
    number = c.bind_channel(peer, 1.0)
    c.receive(answer(c.take_outgoing()[0]), 1.0)
    assert c.wrap(peer, b"abc") == encode_channel_data(number, b"abc")
    c.receive(encode_channel_data(number, b"fast"), 1.0)
    c.receive(encode_channel_data(number + 1, b"who?"), 1.0)  # a channel we never bound
    assert [e for e in c.take_events() if isinstance(e, PeerData)] == [PeerData(peer, b"fast", number)]
    assert c.stats["unknown_channel"] == 1


def test_requests_need_an_allocation():
    c = TurnClient(USER, PASSWORD)
    with pytest.raises(LocalProtocolError):
        c.create_permission(["192.0.2.1"], 0.0)
    with pytest.raises(LocalProtocolError):
        TurnClient("", "")


def test_channel_data_framing():
    assert parse_channel_data(encode_channel_data(0x4001, b"abcde", pad=True)) == (0x4001, b"abcde")
    assert len(encode_channel_data(0x4001, b"abcde", pad=True)) == 12
    for bad in (b"\x40", b"\x50\x00\x00\x00", b"\x40\x00\x00\x05abc", b"\x3f\xff\x00\x00"):
        with pytest.raises(BadPacket):
            parse_channel_data(bad)
    with pytest.raises(LocalProtocolError):
        encode_channel_data(0x5000, b"")
    assert stream_message_length(b"\x40\x01\x00\x05") == 12
    assert stream_message_length(b"\x00\x01\x00\x08") == 28
    assert stream_message_length(b"\x00\x01") is None
    with pytest.raises(BadPacket):
        stream_message_length(b"\x80\x00\x00\x00")


@given(st.binary(max_size=200))
def test_any_bytes_from_the_server_are_counted_never_raised(data):
    c = allocated()
    c.receive(data, 1.0)
    c.receive(b"\x40\x00" + data, 1.0)
    for ev in c.take_events():
        assert isinstance(ev, (PeerData, Failed))
