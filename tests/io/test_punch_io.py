"""The Trio punch executor over loopback: two sockets punching each other with a known session key."""

import dataclasses
import os
import socket

import psutil
import pytest
import trio

from nattrav.errors import PunchFailed
from nattrav.io.punch import punch
from nattrav.io.session import Session
from nattrav.proto import handshake
from nattrav.proto.planner.odds import FLOW_TABLE_CAP, probes_for
from nattrav.proto.planner.udp import WINDOW_MARGIN
from nattrav.proto.planner.udp import plan
from nattrav.proto.vocab import Strategy
from tests.reports import udp as udp_report

KEY = os.urandom(32)
LO = "127.0.0.1"
LAB_BUDGET = int(FLOW_TABLE_CAP * 0.9)  # the lab machine's whole flow table, less a margin
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux value; Python does not export it


async def udp(port=0):
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await s.bind((LO, port))
    return s


def report(sock, **kw):
    return udp_report(public=(LO, sock.getsockname()[1]), **kw)


OPEN = dict(mapping=None, filtering=None, nat=False)  # no NAT: nothing filters
CONE = dict(mapping="EIM", filtering="APDF")


async def run_pair(sa, sb, plan_a, plan_b, *, key=KEY, delay=0.05, on_event=None):
    start = trio.current_time() + delay
    out = {}

    async def side(name, sock, pl, role):
        out[name] = await punch(sock, pl, Session(key, role, start), on_event=on_event)

    async with trio.open_nursery() as n:
        n.start_soon(side, "a", sa, plan_a, "first")
        n.start_soon(side, "b", sb, plan_b, "second")
    return out["a"], out["b"]


async def exchange(pa, pb):
    await pa.send(b"ping from a")
    assert await pb.receive() == b"ping from a"
    await pb.send(b"pong from b" * 300)  # > MAX_DATA: split into several frames
    got = b""
    while len(got) < 11 * 300:
        got += await pa.receive()
    assert got == b"pong from b" * 300


async def test_direct_path_carries_data_and_measures_rtt():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"))
    assert pa.peer_addr == sb.getsockname() and pb.peer_addr == sa.getsockname()
    assert pa.strategy is Strategy.DIRECT
    assert 0 < pa.rtt < 1 and 0 < pb.rtt < 1
    await exchange(pa, pb)
    await pa.aclose()
    assert await pb.receive() == b""  # the peer's CLOSE
    await pb.aclose()


async def test_cone_pair_simultaneous_uses_the_stun_socket():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **CONE), report(sb, **CONE)
    events = []
    pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"),
                            on_event=lambda what, info: events.append((what, info)))
    kinds = [w for w, _ in events]
    assert "attempt" in kinds and "established" in kinds
    assert kinds.index("attempt") < kinds.index("established")
    assert dict(events)["attempt"]["strategy"] == "simultaneous"
    assert pa.strategy is Strategy.SIMULTANEOUS and pa.sock is sa and pb.sock is sb
    # the opener's socket is back at the normal TTL once the path is up
    assert sa.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) > 2
    await exchange(pa, pb)
    await pa.aclose()
    await pb.aclose()


def _without_opener_reaching(pl, decoy):
    """Make the opener's low-TTL packets go to a dead port, as they die in the network for real."""
    attempts = []
    for a in pl.attempts:
        if a.local.opens:
            a = dataclasses.replace(a, local=dataclasses.replace(a.local, targets=(decoy,)))
        else:
            a = dataclasses.replace(a, remote=dataclasses.replace(a.remote, targets=(decoy,)))
        attempts.append(a)
    return dataclasses.replace(pl, attempts=tuple(attempts))


async def test_predicted_sequential_side_gets_in_when_low_ttl_packets_die():
    sa, sb = await udp(), await udp()
    decoy_sock = await udp()  # a bound port that never answers
    decoy_sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    decoy = decoy_sock.getsockname()[1]
    pb_port = sb.getsockname()[1]
    ra = report(sa, **CONE)
    # B's NAT "was seen" at pb-2, pb-1 with Δ = 1: the predicted next mapping is B's real port
    rb = udp_report("APDM", "APDF", [pb_port - 2, pb_port - 1], times=[0.0, 0.01], ip=LO, allocation="sequential",
                    delta=1)
    plan_a, plan_b = plan(ra, rb, "first"), plan(rb, ra, "second")
    assert plan_a.strategy is Strategy.PREDICTED and plan_a.primary.local.opens
    assert pb_port in plan_a.primary.local.targets
    plan_a = _without_opener_reaching(plan_a, decoy)
    plan_b = _without_opener_reaching(plan_b, decoy)
    pa, pb = await run_pair(sa, sb, plan_a, plan_b)
    assert pa.peer_addr == sb.getsockname() and pb.peer_addr == sa.getsockname()
    await exchange(pa, pb)
    # the decoy only ever saw hellos from A, and every one of them left A with the low TTL
    seen = 0
    with trio.move_on_after(0.1):
        while True:
            data, anc, _, addr = await decoy_sock.recvmsg(2048, socket.CMSG_SPACE(4))
            assert addr == sa.getsockname() and handshake.decode(data).type is handshake.FrameType.HELLO
            ttl = [int.from_bytes(d[:4], "little") for lvl, typ, d in anc if typ == socket.IP_TTL]
            assert ttl == [2]
            seen += 1
    assert seen >= 1
    await pa.aclose()
    await pb.aclose()
    decoy_sock.close()


async def test_stray_and_forged_packets_do_not_win():
    sa, sb = await udp(), await udp()
    mallory = await udp()
    ra, rb = report(sa, **CONE), report(sb, **CONE)
    evil = handshake.Handshake(os.urandom(32), "second", b"MMMMMMMM")
    # a frame with the right key but for another session nonce, replayed later by mallory
    stale = handshake.Handshake(KEY, "second", b"SSSSSSSS").hello(0)
    stop = trio.Event()

    async def flood():
        while not stop.is_set():
            for target in (sa.getsockname(), sb.getsockname()):
                for junk in (b"\x00" * 40, b"nT\x01\x01" + b"\x00" * 40, evil.hello(0), stale):
                    await mallory.sendto(junk, target)
            await trio.sleep(0.002)

    async with trio.open_nursery() as n:
        n.start_soon(flood)
        await trio.sleep(0.02)
        pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"))
        stop.set()
    assert pa.peer_addr == sb.getsockname() and pb.peer_addr == sa.getsockname()
    assert pa.stats["rejected"] + pb.stats["rejected"] > 0
    await exchange(pa, pb)
    await pa.aclose()
    await pb.aclose()
    mallory.close()


async def test_wrong_session_key_never_connects():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    pl_a = plan(ra, rb, "first")
    pl_b = plan(rb, ra, "second")
    start = trio.current_time() + 0.02
    failures = []

    async def side(sock, pl, key, role):
        try:
            await punch(sock, pl, Session(key, role, start))
        except PunchFailed as exc:
            failures.append(str(exc))

    async with trio.open_nursery() as n:
        n.start_soon(side, sa, pl_a, KEY, "first")
        n.start_soon(side, sb, pl_b, os.urandom(32), "second")
    assert len(failures) == 2 and all("no path" in f for f in failures)
    sa.close()
    sb.close()


def _ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    return lo, hi


async def test_birthday_burst_finds_one_of_many_sockets_and_closes_the_rest():
    """The random side opens many sockets (kernel-chosen ports, like a random NAT); its low-TTL
    packets die (decoy); the other side's random probes over the port range find one of them."""
    sr, se = await udp(), await udp()
    decoy_sock = await udp()
    lo, hi = _ephemeral_range()
    rr = udp_report("APDM", "APDF", [lo + 11, lo + 5000], ip=LO, allocation="random",
              port_range=(lo, hi))
    re_ = report(se, **CONE)
    # a loopback "NAT" has no flow table to fill: the lab's budget, not a home router's
    kw = dict(birthday_sockets=64, target=0.999999, flow_budget=LAB_BUDGET)
    plan_r, plan_e = plan(rr, re_, "first", **kw), plan(re_, rr, "second", **kw)
    assert plan_r.strategy is Strategy.BIRTHDAY
    # (a birthday aims at a tenth of the misses its target allows: planner/udp.py WINDOW_MARGIN)
    aim = 1 - (1 - 0.999999) / WINDOW_MARGIN
    assert plan_e.primary.local.random_probes == probes_for(hi - lo + 1, 64, aim, 10**6)
    plan_r = _without_opener_reaching(plan_r, decoy_sock.getsockname()[1])
    plan_e = _without_opener_reaching(plan_e, decoy_sock.getsockname()[1])
    fds_before = psutil.Process().num_fds()
    with trio.fail_after(10):
        pr, pe = await run_pair(sr, se, plan_r, plan_e)
    assert pr.strategy is Strategy.BIRTHDAY
    assert pe.peer_addr == pr.sock.getsockname()
    # one of the 256 sockets won (the STUN socket is one of them, a 1 in 256 chance), and every
    # other burst socket is closed: only a winning burst socket is new
    assert psutil.Process().num_fds() == fds_before + (pr.sock is not sr)
    await exchange(pr, pe)
    await pr.aclose()
    await pe.aclose()
    sr.close()
    decoy_sock.close()


async def test_random_pair_fails_fast_naming_both_nats():
    sa, sb = await udp(), await udp()
    rnd = udp_report("APDM", "APDF", [40000, 12345], ip=LO, allocation="random",
               port_range=(20000, 20100))  # nobody listens there
    pl_a = plan(rnd, rnd, "first")
    assert not pl_a.feasible
    t0 = trio.current_time()
    fds = psutil.Process().num_fds()
    with pytest.raises(PunchFailed) as info:
        await punch(sa, pl_a, Session(KEY, "first"))
    assert trio.current_time() - t0 <= pl_a.timeout + 1.0
    assert psutil.Process().num_fds() == fds  # its 63 burst sockets are closed again
    assert sa.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) > 2  # and the STUN socket's TTL restored
    msg = str(info.value)
    assert msg.count("address-and-port-dependent mapping") == 2 and "relay" in msg and "%" in msg
    sa.close()
    sb.close()


async def test_session_from_rendezvous_frame_shifts_start_to_local_clock():
    now = trio.current_time()
    frame = {"key": KEY, "role": "second", "start_at": 1000.5, "now": 1000.0, "session": "s1", "peer": "alice",
             "info": {"report": {}}}
    s = Session.from_frame(frame, lambda server_time: server_time - 1000.0 + now)  # the client's clock map
    assert s.role == "second" and s.start_at == pytest.approx(now + 0.5) and s.start_in() == pytest.approx(0.5, abs=0.1)
    assert (s.session_id, s.peer_id, s.peer_info) == ("s1", "alice", {"report": {}})


async def test_birthday_burst_through_the_worker_coordinator():
    """Same as above with the burst sockets in worker processes (C core): the winning socket is
    taken over from its worker and carries the path."""
    from nattrav.workers import open_coordinator

    sr, se = await udp(), await udp()
    decoy_sock = await udp()
    lo, hi = _ephemeral_range()
    rr = udp_report("APDM", "APDF", [lo + 11, lo + 5000], ip=LO, allocation="random",
              port_range=(lo, hi))
    re_ = report(se, **CONE)
    kw = dict(birthday_sockets=128, target=0.999999, flow_budget=LAB_BUDGET)
    plan_r = _without_opener_reaching(plan(rr, re_, "first", **kw), decoy_sock.getsockname()[1])
    plan_e = _without_opener_reaching(plan(re_, rr, "second", **kw), decoy_sock.getsockname()[1])
    async with open_coordinator(2) as coord:
        start = trio.current_time() + 0.05
        out = {}

        async def side(name, sock, pl, role, c):
            out[name] = await punch(sock, pl, Session(KEY, role, start), coordinator=c)

        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(side, "r", sr, plan_r, "first", coord)
                n.start_soon(side, "e", se, plan_e, "second", None)
        pr, pe = out["r"], out["e"]
        assert coord.count == 127  # the burst sockets were opened in the workers
        assert pr.strategy is Strategy.BIRTHDAY  # won by a worker socket, or (1 in 128) the STUN one
        assert pe.peer_addr == pr.sock.getsockname()
        assert pr.stats["sent"] >= 127
        await exchange(pr, pe)
        await pr.aclose()
        await pe.aclose()
    sr.close()
    decoy_sock.close()


async def test_keepalives_and_late_hellos_are_absorbed_by_receive():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    pa, pb = await run_pair(sa, sb, plan(ra, rb, "first"), plan(rb, ra, "second"))
    await pa.send_keepalive()
    # a late punch packet from the peer (it missed our CONFIRM): answered, not returned as data
    await sa.sendto(pa.handshake.hello(0), pa.peer_addr)
    await pa.send(b"after")
    with trio.fail_after(2):
        assert await pb.receive() == b"after"
    async with trio.open_nursery() as n:
        n.start_soon(pa.serve_keepalives, 0.01)
        with trio.fail_after(2):
            data, _ = await sb.recvfrom(2048)  # pb is not reading: see the raw keepalive
        assert pb.handshake.receive(data, 0).event is handshake.Event.KEEPALIVE
        n.cancel_scope.cancel()
    await pa.aclose()
    await pb.aclose()


async def test_cancelled_punch_closes_its_burst_sockets():
    sa = await udp()
    rnd = udp_report("APDM", "APDF", [40000, 12345], ip=LO, allocation="random",
               port_range=(20000, 20100))
    pl = plan(rnd, rnd, "first")
    fds = psutil.Process().num_fds()
    with trio.move_on_after(0.3):
        await punch(sa, pl, Session(KEY, "first"))
    assert psutil.Process().num_fds() == fds
    sa.close()


async def test_early_side_takes_the_first_answered_hello_and_the_peer_still_establishes():
    # `early` (QUIC follows and proves the path itself): b's hellos wait in a's socket when a starts,
    # so a answers the first one and takes it as the path, unmeasured; b establishes on a's ACK
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    now = trio.current_time()
    out = {}

    async def side(name, sock, pl, role, start, early):
        out[name] = await punch(sock, pl, Session(KEY, role, start), early=early)

    async with trio.open_nursery() as n:
        n.start_soon(side, "a", sa, plan(ra, rb, "first"), "first", now + 0.15, True)
        n.start_soon(side, "b", sb, plan(rb, ra, "second"), "second", now + 0.02, False)
    pa, pb = out["a"], out["b"]
    assert pa.peer_addr == sb.getsockname() and pb.peer_addr == sa.getsockname()
    assert pa.rtt == 0 and not pa.handshake.established  # the peer's CONFIRM was not awaited
    assert pb.rtt > 0 and pb.handshake.established
    await pa.send(b"early data")
    assert await pb.receive() == b"early data"
    await pa.aclose()
    await pb.aclose()


async def test_early_side_never_wins_on_a_hello_under_another_key():
    sa, sb = await udp(), await udp()
    ra, rb = report(sa, **OPEN), report(sb, **OPEN)
    start = trio.current_time() + 0.02
    with trio.move_on_after(1.5) as waited:
        async with trio.open_nursery() as n:
            n.start_soon(lambda: punch(sa, plan(ra, rb, "first"), Session(KEY, "first", start), early=True))
            n.start_soon(lambda: punch(sb, plan(rb, ra, "second"), Session(os.urandom(32), "second", start)))
    assert waited.cancelled_caught
    sa.close()
    sb.close()


async def test_session_keeps_our_published_info_and_the_servers_margin():
    frame = {"key": KEY, "role": "first", "start_at": 1000.25, "now": 1000.0, "session": "s1", "peer": "bob",
             "info": {"report": {}, "rtt": 0.05}}
    s = Session.from_frame(frame, lambda t: t, own_info={"rtt": 0.1})
    assert s.margin == pytest.approx(0.25) and s.own_info == {"rtt": 0.1}


def test_escalation_waits_scale_with_the_published_round_trips():
    from nattrav.io.punch import ESCALATE_AFTER, ESCALATE_MIN, escalate_after

    def session(own, peer):
        return Session(KEY, "first", own_info={} if own is None else {"rtt": own},
                       peer_info={} if peer is None else {"rtt": peer})

    assert escalate_after(session(0.001, 0.001)) == pytest.approx(ESCALATE_MIN, abs=0.01)  # zero delay
    assert escalate_after(session(0.1, 0.1)) == pytest.approx(0.7)
    assert escalate_after(session(1.0, 1.0)) == ESCALATE_AFTER
    assert escalate_after(session(None, 0.1)) == ESCALATE_AFTER  # an older peer: as before
    assert escalate_after(session(0.1, "fast")) == ESCALATE_AFTER


async def test_an_opener_aims_at_every_address_of_a_pooled_peer():
    # B's NAT draws each mapping's address from a pool the server saw as 127.0.0.2, .3 and .1 (B is
    # on .1): A's low-TTL packets go to B's predicted port on every one of them, and the path is up
    sa, sb = await udp(), await udp()
    pb_port = sb.getsockname()[1]
    others = []
    for ip in ("127.0.0.2", "127.0.0.3"):
        s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await s.bind((ip, pb_port))
        others.append(s)
    pool = ["127.0.0.2", "127.0.0.3", LO]
    ra = report(sa, **CONE)
    # its last mapping was seen on .2, so .1 comes last (on loopback the first answer ends the punch)
    rb = dataclasses.replace(udp_report("APDM", "APDF", [pb_port - 2, pb_port - 1], times=[0.0, 0.01],
                                        ip="127.0.0.2", allocation="sequential", delta=1), pool=3, pool_draws=40)
    plan_a = plan(ra, rb, "first", peer_ip=LO, peer_udp=pool)
    plan_b = plan(rb, ra, "second", peer_ip=LO, own_udp=pool)
    assert plan_a.primary.local.opens and plan_a.primary.local.peer_ip == "127.0.0.2"
    assert plan_a.primary.local.also == ("127.0.0.3", LO)
    # on loopback nothing dies and B's answer would end the punch at once: B talks a little later
    plan_b = dataclasses.replace(plan_b, attempts=tuple(
        dataclasses.replace(a, local=dataclasses.replace(a.local, delay=a.local.delay + 0.2))
        for a in plan_b.attempts))
    pa, pb = await run_pair(sa, sb, plan_a, plan_b)
    assert pa.peer_addr == sb.getsockname() and pb.peer_addr == sa.getsockname()
    await exchange(pa, pb)
    for s in others:
        with trio.fail_after(1):
            data, addr = await s.recvfrom(2048)
        assert addr == sa.getsockname() and handshake.decode(data).type is handshake.FrameType.HELLO
        s.close()
    await pa.aclose()
    await pb.aclose()
