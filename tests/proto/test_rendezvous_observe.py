"""The server's observation of punch sockets (proto/rendezvous/observe.py), and the planners that aim
at what it observed, without sockets: tickets, the UDP responder's limits, the front's frames."""

from __future__ import annotations

from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.proto.planner import tcp as tcp_planner
from nattrav.proto.planner.udp import plan
from nattrav.proto.rendezvous.observe import (
    MAX_OBSERVED,
    TICKET_BYTES,
    TICKET_TTL,
    BadTicket,
    ObserveResponder,
    check_ticket,
    make_ticket,
    observe_request,
    read_observed,
    ticket_of,
)
from nattrav.proto.report import NatReport
from nattrav.proto.stun import binding_request, parse
from nattrav.proto.vocab import Strategy
from tests.proto.test_rendezvous_state import Harness
from tests.reports import tcp, udp

KEY = bytes(range(32))
VICTIM = ("192.0.2.50", 9999)


def ask(responder: ObserveResponder, source, now=100.0, request: bytes | None = None):
    data = request if request is not None else observe_request().encode()
    wire = responder.answer(data, source, now)
    if wire is None:
        return None
    msg = parse(wire)
    return ticket_of(msg, msg.mapped_address)


# --- tickets -------------------------------------------------------------------------------------

def test_a_ticket_vouches_for_the_address_it_was_sent_to_and_nothing_else():
    got = ask(ObserveResponder(KEY), ("198.51.100.7", 4000))
    assert got is not None
    addr, ticket = got
    assert addr == ("198.51.100.7", 4000)
    assert check_ticket(KEY, ["198.51.100.7", 4000], ticket, 101.0) == ("198.51.100.7", 4000)
    # the attacker's own ticket does not carry over to a victim's address or port
    for other in (["192.0.2.50", 4000], ["198.51.100.7", 4001]):
        try:
            check_ticket(KEY, other, ticket, 101.0)
        except BadTicket as exc:
            assert "another address" in str(exc)
        else:
            raise AssertionError(f"ticket accepted for {other}")


def test_tickets_expire_and_belong_to_one_server():
    ticket = make_ticket(KEY, VICTIM, now=0.0)
    check_ticket(KEY, list(VICTIM), ticket, TICKET_TTL - 1)
    for key, now, why in ((KEY, TICKET_TTL + 0.1, "expired"), (bytes(32), 1.0, "not this server's")):
        try:
            check_ticket(key, list(VICTIM), ticket, now)
        except BadTicket as exc:
            assert why in str(exc)
        else:
            raise AssertionError("a stale or foreign ticket was accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                         st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=3)))
def test_a_made_up_ticket_or_address_is_refused_with_one_error_type(ticket, addr):
    try:
        check_ticket(KEY, addr if addr is not None else list(VICTIM), ticket, 1.0)
    except BadTicket:
        return
    raise AssertionError("a ticket the server never made was accepted")


def test_a_flipped_bit_anywhere_in_a_ticket_is_refused():
    ticket = make_ticket(KEY, VICTIM, now=0.0)
    for i in range(TICKET_BYTES * 8):
        bad = bytearray(ticket)
        bad[i // 8] ^= 1 << (i % 8)
        try:
            check_ticket(KEY, list(VICTIM), bytes(bad), 1.0)
        except BadTicket:
            continue
        raise AssertionError(f"bit {i} flipped and still accepted")


# --- the UDP responder: no amplification, no reflection, no crash -----------------------------------

def test_answers_are_never_bigger_than_requests_and_unpadded_requests_get_none():
    r = ObserveResponder(KEY)
    padded = observe_request().encode()
    for source in (("198.51.100.7", 4000), ("2001:db8::1", 4000, 0, 0)):
        wire = r.answer(padded, source, 1.0)
        assert wire is not None and len(wire) <= len(padded)
    # a plain Binding (as a reflector's victim-aimed spoofed query would be) is smaller than the answer
    assert r.answer(binding_request().encode(), ("198.51.100.7", 4000), 1.0) is None
    assert r.stats["too_small"] == 1


def test_each_source_gets_a_token_bucket_and_the_table_stays_bounded():
    r = ObserveResponder(KEY, rate=1.0, burst=3, max_sources=8)
    answers = [ask(r, VICTIM, now=10.0) for _ in range(10)]
    assert sum(a is not None for a in answers) == 3  # the burst, then nothing at the same instant
    assert ask(r, ("192.0.2.51", 1), now=10.0) is not None  # another source is not held back
    assert ask(r, VICTIM, now=11.0) is not None  # one token a second
    for k in range(100):  # a sweep of spoofed sources cannot grow the table
        r.answer(observe_request().encode(), (f"10.0.{k // 256}.{k % 256}", 1), 12.0)
    assert len(r._buckets) <= 8


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_garbage_datagrams_are_dropped_without_raising(data):
    r = ObserveResponder(KEY)
    wire = r.answer(data, ("198.51.100.7", 4000), 1.0)
    assert wire is None or len(wire) <= len(data)


def test_a_response_or_classic_request_is_not_answered():
    r = ObserveResponder(KEY)
    padded = bytearray(observe_request().encode())
    padded[0:2] = (0x0101).to_bytes(2, "big")  # a Binding success: an answer must never answer
    assert r.answer(bytes(padded), VICTIM, 1.0) is None


# --- the front: observe frames, what it publishes ---------------------------------------------------

def _enrolled(h: Harness, addr=("203.0.113.10", 40000)) -> tuple[int, str]:
    conn = h.open(addr)
    return conn, h.enroll(conn)["peer"]


def _session_info(h: Harness, a: int, b: int, b_id: str, info_a: dict) -> dict:
    """a publishes info_a and connects to b; b accepts: the info b gets about a."""
    h.send(a, "info", id=2, info=info_a)
    assert h.one(a, "ok")
    h.send(a, "connect", id=3, target=b_id)
    offer = h.one(b, "offer")
    h.send(b, "accept", id=4, offer=offer["offer"])
    return h.one(b, "session")["info"]


def test_a_valid_ticket_is_recorded_and_reaches_the_peer_in_the_session():
    h = Harness()
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    ticket = make_ticket(h.server.observe_key, ("203.0.113.11", 31000), h.now)
    h.send(a, "observe", id=1, addr=["203.0.113.11", 31000], ticket=ticket)
    assert h.one(a, "observation")["recorded"] is True
    info = _session_info(h, a, b, b_id, {"report": "r"})
    assert info["observed"] == ["203.0.113.10", 40000]  # the TCP connection's, as before
    assert info["observed_udp"] == [["203.0.113.11", 31000]]
    assert read_observed(info["observed_udp"]) == [("203.0.113.11", 31000)]


def test_a_peer_cannot_write_its_own_observations():
    h = Harness()
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    info = _session_info(h, a, b, b_id, {"report": "r", "observed_udp": [[VICTIM[0], VICTIM[1]]],
                                          "observed": ["192.0.2.1", 1]})
    assert "observed_udp" not in info and info["observed"] == ["203.0.113.10", 40000]


def test_bad_tickets_are_refused_with_a_reason_and_record_nothing():
    h = Harness()
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    good = make_ticket(h.server.observe_key, ("203.0.113.11", 31000), h.now)
    cases = [(["192.0.2.50", 31000], good, "another address"),  # someone else's address
             (["203.0.113.11", 31000], make_ticket(bytes(32), ("203.0.113.11", 31000), h.now), "not this server"),
             (["203.0.113.11", 31000], make_ticket(h.server.observe_key, ("203.0.113.11", 31000),
                                                   h.now - 2 * TICKET_TTL), "expired")]
    for addr, ticket, why in cases:
        h.send(a, "observe", id=1, addr=addr, ticket=ticket)
        reply = h.one(a, "observation")
        assert reply["recorded"] is False and why in reply["reason"], reply
    assert "observed_udp" not in _session_info(h, a, b, b_id, {"report": "r"})
    assert h.server.stats["observed"] == 0


def test_observations_are_capped_per_connection_and_need_an_enrollment():
    h = Harness()
    stranger = h.open(("198.51.100.99", 1))
    h.send(stranger, "observe", id=1, addr=["198.51.100.99", 1],
           ticket=make_ticket(h.server.observe_key, ("198.51.100.99", 1), h.now))
    assert h.one(stranger, "error")["code"] == "bad-request"
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    for k in range(MAX_OBSERVED + 3):
        addr = ("203.0.113.11", 31000 + k)
        h.send(a, "observe", id=1, addr=list(addr), ticket=make_ticket(h.server.observe_key, addr, h.now))
        assert h.one(a, "observation")["recorded"]
    seen = _session_info(h, a, b, b_id, {"report": "r"})["observed_udp"]
    assert len(seen) == MAX_OBSERVED and seen[-1] == ["203.0.113.11", 31000 + MAX_OBSERVED + 2]
    # what the client reads back is bounded too, whatever a (buggy) server sends
    assert len(read_observed([["203.0.113.1", 1]] * 50 + ["junk", [1, 2], ["x", 1]])) == MAX_OBSERVED
    assert read_observed([["example.com", 1], ["203.0.113.1", 0], "x"]) == []


def test_the_packed_info_stays_small_with_observations():
    h = Harness()
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    for k in range(MAX_OBSERVED):
        addr = ("2001:db8::%x" % k, 65535)
        h.send(a, "observe", id=1, addr=list(addr), ticket=make_ticket(h.server.observe_key, addr, h.now))
        h.pop(a)
    info = _session_info(h, a, b, b_id, {"report": "r"})
    assert len(msgpack.packb(info["observed_udp"])) < 200


# --- the planners aim at any observed address, and say when none can be aimed at ---------------------

CONE = udp("EIM", "APDF", [5000])
FULL = udp("EIM", "EIF", [6000])


def _pooled(mapping="EIM", filtering="EIF", ip="203.0.113.11", pool=1, allocation=None) -> NatReport:
    return replace(udp(mapping, filtering, [7000, 7001] if mapping != "EIM" else [7000], ip=ip,
                       allocation=allocation), pool=pool)


def test_the_punch_sockets_observed_address_is_aimed_at_when_the_tcp_one_differs():
    # an EIM NAT with an arbitrary pool: the TCP connection left from .10, the punch socket from .11
    peer = _pooled(ip="203.0.113.11")
    p = plan(CONE, peer, "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.11"])
    assert p.feasible and p.remote.ip == "203.0.113.11" and "reported_peer_ip" not in p.params
    assert {a.local.peer_ip for a in p.attempts} == {"203.0.113.11"}
    # without the observation, as before: the TCP address only (and the claim is kept aside)
    old = plan(CONE, peer, "first", peer_ip="203.0.113.10")
    assert old.remote.ip == "203.0.113.10" and old.params["reported_peer_ip"] == "203.0.113.11"


def test_a_report_naming_an_unobserved_address_is_still_never_aimed_at():
    liar = _pooled(ip="192.0.2.50")
    p = plan(CONE, liar, "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.11", "203.0.113.12"])
    assert {a.local.peer_ip for a in p.attempts} == {"203.0.113.12"}  # the newest observation
    assert p.params["reported_peer_ip"] == "192.0.2.50"


def test_a_socket_seen_on_several_addresses_with_a_mapping_per_destination_is_infeasible_and_says_why():
    sym = _pooled("APDM", "APDF", ip="203.0.113.11", allocation="random")
    for me in (CONE, udp("APDM", "APDF", [5000, 5001], allocation="sequential", delta=1)):
        for role in ("first", "second"):
            p = plan(me, sym, role, peer_ip="203.0.113.10", peer_udp=["203.0.113.12"])
            assert not p.feasible, p.reason
            assert "RFC 4787" in p.reason and "2 addresses" in p.reason and "relay" in p.reason
            assert p.odds <= 0.5 and p.params["address_pools"]["remote"] == ["203.0.113.11", "203.0.113.12"]
            assert "a relay (TURN) is needed" in p.failure_message()
    # the peer's plan says the same about its own side (its pool count travels in its report)
    mirror = plan(sym, CONE, "second", peer_ip="203.0.113.30", own_udp=["203.0.113.12"])
    assert not mirror.feasible and mirror.params["address_pools"]["local"] == ["203.0.113.11", "203.0.113.12"]


def test_a_scattered_side_still_reaches_a_full_cone_by_talking_first():
    sym = _pooled("APDM", "APDF", ip="203.0.113.11", allocation="random")
    p = plan(FULL, sym, "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.12"])
    assert p.feasible and p.strategy is Strategy.DIRECT and p.odds == 1.0
    assert {a.strategy for a in p.attempts} == {Strategy.DIRECT}


def test_a_pool_count_in_the_report_is_evidence_against_its_own_side_only():
    sym = _pooled("APDM", "APDF", ip="203.0.113.11", allocation="random", pool=3)
    p = plan(CONE, sym, "first", peer_ip="203.0.113.11")
    assert not p.feasible and "3 addresses" in p.reason
    # an EIM side whose one socket showed one address is not scattered, whatever the TCP address
    ok = plan(CONE, _pooled(ip="203.0.113.11"), "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.11"])
    assert ok.feasible and "address_pools" not in ok.params
    assert NatReport.from_wire(sym.to_wire()).pool == 3 and "pool" not in CONE.to_wire()


def test_the_tcp_planner_accepts_a_udp_observed_address_the_report_names():
    mine, theirs = tcp([1000]), tcp([2000], public="203.0.113.11")
    p = tcp_planner.plan(mine, theirs, "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.11"])
    assert {ip for ip, _ in p.targets} <= {"203.0.113.11"} and "reported_peer_ip" not in p.params
    q = tcp_planner.plan(mine, tcp([2000], public="192.0.2.50"), "first", peer_ip="203.0.113.10",
                         peer_udp=["203.0.113.11"])
    assert {ip for ip, _ in q.targets} <= {"203.0.113.10"} and q.params["reported_peer_ip"] == "192.0.2.50"
    rungs = tcp_planner.ladder(mine, theirs, "first", peer_ip="203.0.113.10", peer_udp=["203.0.113.11"])
    assert all(ip == "203.0.113.11" for r in rungs for ip, _ in r.plan.targets)


def test_a_fresh_punch_socket_replaces_the_earlier_ones_observations():
    # a listener's next endpoint: its old socket's address would read as one socket on two addresses
    h = Harness()
    a, _ = _enrolled(h)
    b, b_id = _enrolled(h, ("198.51.100.20", 5000))
    for addr, fresh in ((("203.0.113.11", 31000), True), (("203.0.113.11", 31001), None),
                        (("203.0.113.12", 32000), True)):
        h.send(a, "observe", id=1, addr=list(addr), ticket=make_ticket(h.server.observe_key, addr, h.now),
               fresh=fresh)
        assert h.one(a, "observation")["recorded"]
    assert _session_info(h, a, b, b_id, {"report": "r"})["observed_udp"] == [["203.0.113.12", 32000]]
    h.pop(a)  # its session
    # a refused fresh ticket forgets nothing
    h.send(a, "observe", id=1, addr=["203.0.113.13", 1], ticket=bytes(24), fresh=True)
    assert h.one(a, "observation")["recorded"] is False
    h.send(a, "info", id=2, info={"report": "r"})
    assert h.one(a, "ok")
    a_id = next(c.peer for conn, c in h.server.conns.items() if conn == a)
    assert msgpack.unpackb(h.server.peers[a_id].info)["observed_udp"] == [["203.0.113.12", 32000]]


def test_new_addresses_keeps_one_ticket_per_unknown_ip_in_order_up_to_the_cap():
    from nattrav.proto.rendezvous.observe import new_addresses

    def seen(ip, port):
        return ((ip, port), b"t" * 24)

    found = [seen("192.0.2.1", 1), None, seen("192.0.2.2", 2), seen("192.0.2.1", 3), seen("192.0.2.3", 4),
             seen("192.0.2.4", 5)]
    assert [a for a, _ in new_addresses(found, ["192.0.2.2"], 2)] == [("192.0.2.1", 1), ("192.0.2.3", 4)]
    assert new_addresses(found, [], 0) == []
    assert new_addresses([None, None], [], 8) == []


def test_only_a_symmetric_nat_whose_flows_showed_several_addresses_is_surveyed():
    from nattrav.api.pool_survey import needs_survey
    from nattrav.proto.vocab import Mapping

    assert needs_survey(Mapping.APDM, {"192.0.2.1", "192.0.2.2"})
    assert needs_survey(Mapping.ADM, {"192.0.2.1", "192.0.2.2"})
    assert not needs_survey(Mapping.APDM, {"192.0.2.1"})
    # an EIM pool keeps one address per socket: the punch socket's observation names it
    assert not needs_survey(Mapping.EIM, {"192.0.2.1", "192.0.2.2"})
    assert not needs_survey(None, {"192.0.2.1", "192.0.2.2"})
