"""The STUN server on loopback (127.0.0.0/8 addresses only): both layouts, CHANGE-REQUEST from the
right address, OTHER-ADDRESS/RESPONSE-ORIGIN, RESPONSE-PORT, 420, and robustness counters."""

from __future__ import annotations

import random
import socket
import time

import pytest
import trio

from nattrav.errors import BadPacket, StunErrorResponse, StunTimeout
from nattrav.io.stun_client import binding
from nattrav.io.stun_discover import discover
from nattrav.io.stun_server import open_stun_server, serve_stun
from nattrav.proto.stun import binding_request, parse
from nattrav.proto.stun_attrs import Attr, Class
from nattrav.proto.stun_server import StunServerConfig

P, PALT = 3478, 3479


def loopback_pair() -> tuple[str, str]:
    # a private pair of loopback addresses per test, so parallel workers never share a port
    x, y = random.randrange(1, 255), random.randrange(1, 255)
    return f"127.{x}.{y}.1", f"127.{x}.{y}.2"


async def udp(ip: str = "127.0.0.1"):
    s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await s.bind((ip, 0))
    return s


async def raw_exchange(sock, data: bytes, dest, timeout: float = 1.0):
    await sock.sendto(data, dest)
    with trio.fail_after(timeout):
        return await sock.recvfrom(4096)


@pytest.fixture
async def rfc5780(nursery):
    a, b = loopback_pair()
    srv = await nursery.start(serve_stun, StunServerConfig(ip=a, alt_ip=b, port=P, alt_port=PALT))
    return srv, a, b


async def test_binding_fills_mapped_origin_and_other(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    r = await binding(s, (a, P), timeout=2)
    assert r.mapped == s.getsockname()
    assert r.response_origin == (a, P) and r.source == (a, P)
    assert r.other_address == (b, PALT)
    s.close()


@pytest.mark.parametrize(
    "change_ip, change_port, expect",
    [(True, True, "b:alt"), (True, False, "b:p"), (False, True, "a:alt")],
)
async def test_change_request_answered_from_the_right_address(rfc5780, change_ip, change_port, expect):
    srv, a, b = rfc5780
    where = {"b:alt": (b, PALT), "b:p": (b, P), "a:alt": (a, PALT)}[expect]
    s = await udp()
    r = await binding(s, (a, P), change_ip=change_ip, change_port=change_port,
                      other_address=(b, PALT), timeout=2)
    assert r.source == where and r.response_origin == where
    s.close()


async def test_other_address_never_names_the_receiving_address(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    for dest in srv.addresses:
        r = await binding(s, dest, timeout=2)
        assert r.other_address is not None
        assert r.other_address[0] != dest[0] and r.other_address[1] != dest[1]
        assert r.response_origin == dest
    s.close()


async def test_response_port_sends_to_another_port_once_the_source_showed_it_receives(rfc5780):
    srv, a, b = rfc5780
    s, other = await udp(), await udp()
    # first the cookie: a RESPONSE-PORT request without one is answered at its source with 438
    req = binding_request(response_port=other.getsockname()[1])
    data, src = await raw_exchange(s, req.encode(), (a, P))
    m = parse(data)
    assert m.cls == Class.ERROR and m.get(Attr.ERROR_CODE).code == 438 and src == (a, P)
    cookie = m.get(Attr.NONCE)
    req = binding_request(response_port=other.getsockname()[1], extra=[(Attr.NONCE, cookie)])
    await s.sendto(req.encode(), (a, P))
    with trio.fail_after(2):
        data, src = await other.recvfrom(2048)
    m = parse(data)
    assert m.transaction_id == req.transaction_id and src == (a, P)
    # the mapping reported is the requesting socket's, not the one the answer went to
    assert m.mapped_address == s.getsockname()
    s.close()
    other.close()


async def _nothing_for(sock, req, why: str, wait: float = 0.5) -> None:
    # Only an answer to THIS request counts: other tests running in parallel on loopback may send a
    # stray datagram to any ephemeral port.
    with trio.move_on_after(wait):
        while True:
            data, _ = await sock.recvfrom(2048)
            try:
                if parse(data).transaction_id == req.transaction_id:
                    raise AssertionError(why)
            except BadPacket:
                pass


async def test_response_port_cannot_aim_an_answer_at_a_port_the_requester_does_not_own(rfc5780):
    # a spoofer sends from the victim's IP with RESPONSE-PORT = the victim's service port: the answer
    # must not reach that port. Here the "victim" is a socket on 127.0.0.1 that asked nothing.
    srv, a, b = rfc5780
    victim, spoofer = await udp("127.0.0.1"), await udp("127.0.0.1")
    req = binding_request(response_port=victim.getsockname()[1])
    await spoofer.sendto(req.encode(), (a, P))
    await _nothing_for(victim, req, "the answer was aimed at the victim's port")
    # a cookie made for another IP does not open it either
    helper = await udp(a)
    m = parse((await raw_exchange(helper, req.encode(), (a, P)))[0])
    other_ip_cookie = m.get(Attr.NONCE)
    req = binding_request(response_port=victim.getsockname()[1], extra=[(Attr.NONCE, other_ip_cookie)])
    await spoofer.sendto(req.encode(), (a, P))
    await _nothing_for(victim, req, "a cookie for another IP was accepted")
    assert srv.counters()["error_438"] == 3
    for x in (victim, spoofer, helper):
        x.close()


async def test_unknown_comprehension_required_gets_420(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    req = binding_request(extra=[(0x0024, b"\x6e\x00\x01\xff"), (0xC0DE, b"ok to ignore")])
    data, _ = await raw_exchange(s, req.encode(fingerprint=True), (a, P))
    m = parse(data)
    assert m.cls == Class.ERROR and m.get(Attr.ERROR_CODE).code == 420
    assert m.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0024,)
    assert m.check_fingerprint()
    s.close()


async def test_fingerprint_and_padding_echoed(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    req = binding_request(extra=[(Attr.PADDING, b"\xff" * 100)])
    data, _ = await raw_exchange(s, req.encode(fingerprint=True), (a, P))
    m = parse(data)
    assert m.check_fingerprint() and len(m.get(Attr.PADDING)) == 100
    s.close()


async def test_classic_rfc3489_request(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    req = binding_request(classic=True, change_ip=True, change_port=True)
    data, src = await raw_exchange(s, req.encode(), (a, P))
    m = parse(data)
    assert src == (b, PALT) and m.classic
    assert m.get(Attr.MAPPED_ADDRESS) == s.getsockname()
    assert m.get(Attr.SOURCE_ADDRESS) == (b, PALT)
    assert m.get(Attr.CHANGED_ADDRESS) == (b, PALT)
    s.close()


async def test_single_address_answers_420_to_change_ip(nursery):
    a, _ = loopback_pair()
    await nursery.start(serve_stun, StunServerConfig(ip=a, port=P, alt_port=PALT))
    s = await udp()
    r = await binding(s, (a, P), timeout=2)
    assert r.other_address is None  # never an OTHER-ADDRESS it cannot serve
    with pytest.raises(StunErrorResponse) as info:
        await binding(s, (a, P), change_ip=True, expect_from=(a, P), timeout=2)
    assert info.value.error.code == 420
    r = await binding(s, (a, P), change_port=True, expect_from=(a, PALT), timeout=2)
    assert r.source == (a, PALT)
    s.close()


async def test_one_ip_names_its_second_port_in_other_port(nursery, rfc5780):
    a, _ = loopback_pair()
    await nursery.start(serve_stun, StunServerConfig(ip=a, port=P, alt_port=PALT))
    s = await udp()
    for at, other in ((P, PALT), (PALT, P)):
        r = await binding(s, (a, at), timeout=2)  # a bare request: the C fast path's answer
        assert r.other_port == other and r.other_address is None
        req = binding_request()
        data, _src = await raw_exchange(s, req.encode(fingerprint=True), (a, at))  # the Python path
        assert parse(data).get(Attr.OTHER_PORT) == other
    # classic RFC 3489 clients get only the 3489 attributes
    data, _src = await raw_exchange(s, binding_request(classic=True).encode(), (a, P))
    assert Attr.OTHER_PORT not in parse(data)
    # a two-IP server says it all in OTHER-ADDRESS
    _srv, a2, _b2 = rfc5780
    r = await binding(s, (a2, P), timeout=2)
    assert r.other_port is None and r.other_address is not None
    s.close()


async def test_behind_a_one_to_one_nat_the_server_names_its_public_addresses(nursery):
    """--external-ip: the sockets bind the local IPs, every address the server names is public."""
    a, b = loopback_pair()
    pub_a, pub_b = a.rsplit(".", 1)[0] + ".101", a.rsplit(".", 1)[0] + ".102"
    await nursery.start(serve_stun, StunServerConfig(ip=pub_a, alt_ip=pub_b, port=P, alt_port=PALT,
                                                     bind={pub_a: a, pub_b: b}))
    s = await udp()
    r = await binding(s, (a, P), timeout=2)
    assert r.response_origin == (pub_a, P) and r.other_address == (pub_b, PALT)
    r = await binding(s, (a, P), change_ip=True, change_port=True, expect_from=(b, PALT), timeout=2)
    assert r.response_origin == (pub_b, PALT)
    s.close()


async def test_two_hosts_behind_one_to_one_nats_talk_over_their_private_link(nursery):
    a, b = loopback_pair()
    pub_a, pub_b = a.rsplit(".", 1)[0] + ".101", a.rsplit(".", 1)[0] + ".102"
    key = b"k" * 16
    ca = StunServerConfig(ip=pub_a, alt_ip=pub_b, peer=True, port=P, alt_port=PALT, secret=key,
                          bind={pub_a: a}, peer_link=b)
    cb = StunServerConfig(ip=pub_b, alt_ip=pub_a, peer=True, port=P, alt_port=PALT, secret=key,
                          bind={pub_b: b}, peer_link=a)
    sa = await nursery.start(serve_stun, ca)
    sb = await nursery.start(serve_stun, cb)
    s = await udp()
    r = await binding(s, (a, P), timeout=2)
    assert r.other_address == (pub_b, PALT) and r.response_origin == (pub_a, P)
    r = await binding(s, (a, P), change_ip=True, change_port=True, expect_from=(b, PALT), timeout=2)
    assert r.response_origin == (pub_b, PALT)
    assert sa.counters()["forwarded"] == 1 and sb.counters()["forwarded_in"] == 1
    s.close()


async def test_bad_packets_are_dropped_counted_and_service_continues(rfc5780):
    srv, a, b = rfc5780
    s = await udp()
    good = binding_request().encode()
    junk = [
        b"",  # empty
        b"\x00\x01\x00",  # truncated header
        good[:-4] if len(good) > 20 else good[:19],  # truncated
        b"\x00\x01\x00\x08" + good[4:20] + b"\x00\x20\x00\x08\x00\x01",  # attribute past the end
        b"\xff" * 20,  # top bits set
        b"\x00\x01\x00\x04" + good[4:20] + b"\x80\x22\x00\x10",  # attr longer than the message
    ]
    oversized = b"\x00\x01" + (3000 - 20).to_bytes(2, "big") + good[4:20] + b"\0" * 2980
    for j in junk:
        await s.sendto(j, (a, P))
    await s.sendto(oversized, (a, P))
    # a replay: the same request twice in a row from the same source
    replay = binding_request().encode()
    await s.sendto(replay, (a, P))
    await s.sendto(replay, (a, P))
    with trio.fail_after(2):
        first = parse((await s.recvfrom(2048))[0])
    assert first.transaction_id == parse(replay).transaction_id
    r = await binding(s, (a, P), timeout=2)  # still answering
    assert r.mapped == s.getsockname()
    c = srv.counters()
    assert c["malformed"] >= 6, c
    assert c["oversized"] == 1, c
    assert c["replayed"] == 1, c
    s.close()


async def test_one_flooding_client_does_not_block_another(rfc5780):
    srv, a, b = rfc5780
    flooder, s = await udp("127.0.0.1"), await udp(a)  # two sources: each has its own budget

    async def flood():
        for i in range(3000):
            try:
                await flooder.sendto(b"\x00\x01\x00\x00" + i.to_bytes(16, "big"), (a, P))
            except OSError:
                pass
            if i % 100 == 0:
                await trio.sleep(0)

    async with trio.open_nursery() as n:
        n.start_soon(flood)
        for _ in range(20):
            r = await binding(s, (a, P), timeout=2, rto=0.05)
            assert r.mapped == s.getsockname()
    flooder.close()
    s.close()


async def test_two_host_layout_hands_change_ip_to_the_peer(nursery):
    a, b = loopback_pair()
    key = b"k" * 16
    ca = StunServerConfig(ip=a, alt_ip=b, peer=True, port=P, alt_port=PALT, secret=key)
    cb = StunServerConfig(ip=b, alt_ip=a, peer=True, port=P, alt_port=PALT, secret=key)
    sa = await nursery.start(serve_stun, ca)
    sb = await nursery.start(serve_stun, cb)
    assert sa.addresses == [(a, P), (a, PALT)]  # each host owns only its own IP
    s = await udp()
    r = await binding(s, (a, P), timeout=2)
    assert r.other_address == (b, PALT) and r.response_origin == (a, P)
    for ci, cp, where in [(True, True, (b, PALT)), (True, False, (b, P)), (False, True, (a, PALT))]:
        r = await binding(s, (a, P), change_ip=ci, change_port=cp, other_address=(b, PALT), timeout=2)
        assert r.source == where and r.response_origin == where
        assert r.other_address == (b, PALT)  # computed for the address the request came in on
    # and the other way round: the secondary hands change-IP back to the primary
    r = await binding(s, (b, P), change_ip=True, change_port=True, other_address=(a, PALT), timeout=2)
    assert r.source == (a, PALT)
    assert sa.counters()["forwarded"] == 2 and sb.counters()["forwarded_in"] == 2
    assert sb.counters()["forwarded"] == 1 and sa.counters()["forwarded_in"] == 1
    # a control frame from a stranger is rejected, even one made with the key
    from nattrav.proto.stun_control import ControlSender

    forged = ControlSender(key, b, start=time.time()).forward(P, (a, P), ("127.0.0.1", 9),
                                                             binding_request().encode(), time.time())
    stranger = await udp("127.0.0.1")
    await stranger.sendto(forged, (b, ca.control_port))
    await trio.sleep(0.1)
    assert sb.counters()["control_rejected"] == 1
    stranger.close()
    s.close()


async def test_discover_on_loopback_reports_no_nat(rfc5780):
    srv, a, b = rfc5780
    rep = await discover((a, P), "127.0.0.1")
    assert rep.nat is False and rep.classic == "open internet"
    assert (rep.mapping, rep.filtering, rep.allocation, rep.delta) == ("EIM", "EIF", "preserve", 0)
    assert rep.other_address == (b, PALT)


async def test_discover_detects_a_server_that_ignores_change_request(nursery):
    # a STUN server that answers everything from where it was asked, ignoring CHANGE-REQUEST, and
    # still advertises an OTHER-ADDRESS (the seed's situation)
    a, b = loopback_pair()
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((a, P))
    sock2 = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock2.bind((b, PALT))
    sock3 = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock3.bind((b, P))
    sock4 = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock4.bind((a, PALT))

    async def lazy(s):
        from nattrav.proto.stun import Message
        from nattrav.proto.stun_attrs import Method

        while True:
            data, src = await s.recvfrom(2048)
            req = parse(data)
            resp = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
            resp.add(Attr.XOR_MAPPED_ADDRESS, src).add(Attr.OTHER_ADDRESS, (b, PALT))
            await s.sendto(resp.encode(), src)

    for s in (sock, sock2, sock3, sock4):
        nursery.start_soon(lazy, s)
    rep = await discover((a, P), "127.0.0.1", hairpin=False, rto=0.05, rc=2, rm=2)
    # unvalidated, the change-IP reply would have said "full cone"; validated, we cannot tell
    assert rep.filtering is None
    assert any("ignores" in f for f in rep.findings)
    assert rep.discarded.get("wrong_source", 0) >= 1


async def test_ipv6_single_address(nursery):
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = random.randrange(20000, 30000)
    srv = await nursery.start(serve_stun, StunServerConfig(ip="::1", port=port, alt_port=port + 1))
    s = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
    await s.bind(("::1", 0))
    r = await binding(s, ("::1", port), timeout=2)
    assert r.mapped == s.getsockname()[:2] and r.response_origin == ("::1", port)
    r = await binding(s, ("::1", port), change_port=True, expect_from=("::1", port + 1), timeout=2)
    assert r.source == ("::1", port + 1)
    assert srv.counters()["answered_fast"] >= 1  # the bare request went through the C path
    s.close()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nattrav.proto.stun_server import decide  # noqa: E402
from nattrav.proto.stun import Message  # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=20, max_size=300), st.booleans(), st.booleans())
def test_decide_never_raises_on_any_parsable_request(data, classic_hdr, two_ips):
    # turn arbitrary bytes into something parse() accepts often: a valid header over random attributes
    body = data[20:][: (len(data) - 20) // 4 * 4]
    hdr = (b"\x00\x01" + len(body).to_bytes(2, "big")
           + (data[4:20] if classic_hdr else b"\x21\x12\xa4\x42" + data[8:20]))
    try:
        req = parse(hdr + body)
    except BadPacket:
        return
    config = StunServerConfig(ip="192.0.2.1", alt_ip="192.0.2.2" if two_ips else None)
    d = decide(req, ("203.0.113.7", 4242), ("192.0.2.1", 3478), config, now=1_700_000_000.0)
    if d.response is not None:
        resp = parse(d.response)
        assert isinstance(resp, Message) and resp.transaction_id == req.transaction_id
        # answers leave only from addresses this layout owns, and go only to the requester's IP
        assert d.send_from[0] in ("192.0.2.1", "192.0.2.2") and d.dest[0] == "203.0.113.7"
        if not two_ips:
            assert d.send_from[0] == "192.0.2.1"


# ---- the shared event loop is never frozen by a flood (issue 14, item 4)


def _hostile_request(i: int) -> bytes:
    # a request the C path hands to Python: 30 unknown comprehension-required attributes (a 420)
    return binding_request(extra=[(0x4000 + k, b"") for k in range(30)]).encode()


async def test_serving_yields_to_the_event_loop_by_time_not_by_count(nursery):
    a, b = loopback_pair()
    config = StunServerConfig(ip=a, alt_ip=b, port=P, alt_port=PALT, rate_limit=0)
    srv = await nursery.start(serve_stun, config)
    # a deterministic clock: every request handled in Python costs exactly 1 ms of it
    now = [0.0]
    srv.clock = lambda: now[0]
    handle = srv.handle

    def costly_handle(data, src, at):
        now[0] += 0.001
        return handle(data, src, at)

    srv.handle = costly_handle
    n = 600
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.bind(("127.0.0.1", 0))
    for i in range(n):  # all queued before the server task runs again: no await in this loop
        flooder.sendto(_hostile_request(i), (a, P))
    handled = lambda: srv.stats["error_420"]  # noqa: E731
    gaps, last = [], handled()
    with trio.fail_after(20):
        while handled() < n:
            await trio.lowlevel.checkpoint()  # this task gets a turn whenever the server yields
            gaps.append(handled() - last)
            last = handled()
    # between two turns of ours the server ran at most twice, each time for one budget of work
    per_turn = int(config.turn_budget / 0.001) + 1
    assert max(gaps) <= 2 * per_turn, (max(gaps), per_turn)
    flooder.close()


# ---- per-source budget and amplification (issue 14, items 4 and 7)


def _drain(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Every datagram that arrives until the socket has been quiet for `quiet` seconds."""
    import select

    got = []
    while select.select([sock], [], [], quiet)[0]:
        got.append(sock.recv(4096))
    return got


async def _flood(sock: socket.socket, reqs: list[bytes], dest) -> list[bytes]:
    for r in reqs:
        sock.sendto(r, dest)
    return await trio.to_thread.run_sync(_drain, sock)


async def test_one_source_is_held_to_its_byte_budget(nursery):
    a, b = loopback_pair()
    exchange = (20 + 28) + (68 + 28)  # a bare request and our 68-byte answer, IPv4 + UDP headers
    config = StunServerConfig(ip=a, alt_ip=b, port=P, alt_port=PALT, rate_limit=1, rate_burst=10 * exchange)
    srv = await nursery.start(serve_stun, config)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    replies = await _flood(s, [binding_request().encode() for _ in range(50)], (a, P))
    assert len(replies) == 10  # the C fast path charged each answer with its request
    # the Python path shares the same bucket: the same IP, another port, other requests
    s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s2.bind(("127.0.0.1", 0))
    assert await _flood(s2, [binding_request(change_port=True).encode() for _ in range(5)], (a, P)) == []
    # another source is not affected
    other = await udp(a)
    r = await binding(other, (a, P), timeout=2)
    assert r.mapped == other.getsockname()
    c = srv.counters()
    assert c["answered_fast"] == 11 and c["rate_limited"] == 45, c
    for x in (s, s2, other):
        x.close()


async def test_replies_are_never_more_than_three_times_what_a_source_sent(nursery):
    # a long SOFTWARE makes every answer 460 bytes: 10x a bare request on the wire, an amplifier on main
    a, b = loopback_pair()
    config = StunServerConfig(ip=a, alt_ip=b, port=P, alt_port=PALT, software="x" * 400)
    srv = await nursery.start(serve_stun, config)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    reqs = [binding_request().encode() for _ in range(40)] + [
        binding_request(change_port=True).encode() for _ in range(40)]
    replies = await _flood(s, reqs, (a, P))
    sent = sum(len(r) + 28 for r in reqs)
    received = sum(len(r) + 28 for r in replies)
    assert 0 < received <= 3 * sent, (received, sent)
    assert srv.counters()["amplification_limited"] > 0
    s.close()


# ---- the two-host control link: authenticated, fresh, not replayable (issue 14, item 7)


def test_two_host_layout_refuses_to_run_without_a_secret():
    a, b = loopback_pair()
    for secret in (None, b"", b"short"):
        with pytest.raises(ValueError, match="secret"):
            srv = open_stun_server(StunServerConfig(ip=a, alt_ip=b, peer=True, port=P, alt_port=PALT,
                                                    secret=secret))
            srv.close()


class _Recording:
    """Stands in for a server's control socket and keeps a copy of every frame it sends."""

    def __init__(self, sock):
        self.sock, self.sent = sock, []

    def sendto(self, data, addr):
        self.sent.append((data, addr))
        return self.sock.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self.sock, name)


async def test_a_captured_control_frame_cannot_be_replayed(nursery):
    a, b = loopback_pair()
    key = b"k" * 16
    sa = await nursery.start(serve_stun, StunServerConfig(ip=a, alt_ip=b, peer=True, port=P, alt_port=PALT,
                                                          secret=key))
    sb = await nursery.start(serve_stun, StunServerConfig(ip=b, alt_ip=a, peer=True, port=P, alt_port=PALT,
                                                          secret=key))
    sa._control = _Recording(sa._control)
    s = await udp()
    r = await binding(s, (a, P), change_ip=True, other_address=(b, PALT), expect_from=(b, P), timeout=2)
    assert r.source == (b, P) and sb.counters()["forwarded_in"] == 1
    (frame, dest), = sa._control.sent
    # an attacker on the path replays it, from the primary's IP: the peer must not answer again
    replayer = await udp(a)
    for _ in range(3):
        await replayer.sendto(frame, dest)
    with trio.move_on_after(0.5):
        await s.recvfrom(2048)
        raise AssertionError("a replayed control frame was answered")
    assert sb.counters()["forwarded_in"] == 1 and sb.counters()["control_rejected"] == 3
    # and a frame that is too old is refused even the first time
    sa._control.sent.clear()
    sa.wall_clock = lambda: time.time() - 60
    with pytest.raises(StunTimeout):
        await binding(s, (a, P), change_ip=True, expect_from=(b, P), timeout=0.5)
    assert sb.counters()["control_rejected"] >= 4 and sb.counters()["forwarded_in"] == 1
    replayer.close()
    s.close()


async def test_discover_measures_the_mapping_lifetime_through_the_cookie(rfc5780):
    # the RFC 5780 lifetime test relies on RESPONSE-PORT: the client fetches and uses the cookie
    srv, a, b = rfc5780
    rep = await discover((a, P), "127.0.0.1", hairpin=False, lifetime=True, lifetime_max=1.0)
    assert rep.lifetime == 1.0
    assert srv.counters()["error_438"] >= 1
