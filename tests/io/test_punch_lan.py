"""LAN attempts in the Trio executors over loopback: they race the planned strategy on the punch
socket (UDP) or from fresh ports to the peer's LAN listener (TCP), the first authenticated reply
wins, and a dead candidate costs a bounded number of packets and breaks nothing.

The planner never aims at loopback candidates (proto/planner/lan.py), so the LAN attempts here are
built by hand: what is tested is the executor."""

import dataclasses
import os
import socket

import trio

from nattrav.errors import PunchFailed
from nattrav.io.path import PunchedPath
from nattrav.io.punch import punch
from nattrav.io.session import Session
from nattrav.io.tcp_punch import open_listener, tcp_punch
from nattrav.proto import handshake
from nattrav.proto.planner.lan import LAN_CONNECTS, LAN_INTERVAL, LAN_ROUNDS
from nattrav.proto.planner.tcp import TcpPlan
from nattrav.proto.planner.udp import Attempt, Part, plan
from nattrav.proto.vocab import Strategy, TcpStrategy
from tests.reports import udp as udp_report

KEY = os.urandom(32)
LO = "127.0.0.1"
CONE = dict(mapping="EIM", filtering="APDF")


async def udp_sock():
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await s.bind((LO, 0))
    return s


def with_lan(pl, target, mirror):
    """The plan plus one LAN attempt to `target` (the peer aims at `mirror`), as plan() appends it."""
    a = Attempt(Strategy.LAN, Part(target[0], (target[1],), interval=LAN_INTERVAL),
                Part(mirror[0], (mirror[1],), interval=LAN_INTERVAL), odds=0.0, timeout=LAN_ROUNDS * LAN_INTERVAL)
    return dataclasses.replace(pl, attempts=pl.attempts + (a,))


def dead_wan(pl, port):
    """Every planned (non-LAN) packet goes to a port that never answers: a NAT without hairpinning."""
    out = []
    for a in pl.attempts:
        if a.strategy is not Strategy.LAN:
            a = dataclasses.replace(a, local=dataclasses.replace(a.local, targets=(port,)),
                                    remote=dataclasses.replace(a.remote, targets=(port,)))
        out.append(a)
    return dataclasses.replace(pl, attempts=tuple(out))


async def run_pair(sa, sb, plan_a, plan_b, delay=0.05):
    start = trio.current_time() + delay
    out = {}

    async def side(name, sock, pl, role):
        out[name] = await punch(sock, pl, Session(KEY, role, start))

    async with trio.open_nursery() as n:
        n.start_soon(side, "a", sa, plan_a, "first")
        n.start_soon(side, "b", sb, plan_b, "second")
    return out["a"], out["b"]


async def drain(sock, seconds=0.05):
    got = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await sock.recvfrom(2048))
    return got


async def test_the_lan_wins_where_the_nat_does_not_hairpin():
    sa, sb, dead = await udp_sock(), await udp_sock(), await udp_sock()
    ra, rb = udp_report(public=(LO, 9), **CONE), udp_report(public=(LO, 9), **CONE)
    pa = with_lan(dead_wan(plan(ra, rb, "first"), dead.getsockname()[1]), sb.getsockname(), sa.getsockname())
    pb = with_lan(dead_wan(plan(rb, ra, "second"), dead.getsockname()[1]), sa.getsockname(), sb.getsockname())
    assert pa.strategy is Strategy.SIMULTANEOUS  # what the plan says; the LAN is what connects
    t0 = trio.current_time()
    path_a, path_b = await run_pair(sa, sb, pa, pb)
    assert path_a.strategy is path_b.strategy is Strategy.LAN
    assert path_a.peer_addr == sb.getsockname() and path_b.peer_addr == sa.getsockname()
    assert path_a.sock is sa  # the punch socket itself: no other socket was opened
    assert trio.current_time() - t0 < 1.0
    await path_a.send(b"over the LAN")
    assert await path_b.receive() == b"over the LAN"
    await path_a.aclose()
    await path_b.aclose()
    dead.close()


async def test_a_dead_candidate_breaks_nothing_and_costs_a_handful_of_packets():
    sa, sb, cand = await udp_sock(), await udp_sock(), await udp_sock()
    ra, rb = udp_report(public=sa.getsockname(), **CONE), udp_report(public=sb.getsockname(), **CONE)
    # both LAN candidates are a socket that never answers: the planned strategy must still win
    pa = with_lan(plan(ra, rb, "first"), cand.getsockname(), cand.getsockname())
    pb = with_lan(plan(rb, ra, "second"), cand.getsockname(), cand.getsockname())
    path_a, path_b = await run_pair(sa, sb, pa, pb)
    assert path_a.strategy is path_b.strategy is Strategy.SIMULTANEOUS
    await path_a.aclose()
    await path_b.aclose()
    # alone (the peer never comes), one side sends exactly LAN_ROUNDS HELLOs to a candidate
    await drain(cand)
    lone = await udp_sock()
    pl = with_lan(dead_wan(plan(ra, rb, "first"), 9), cand.getsockname(), lone.getsockname())
    try:
        await punch(lone, pl, Session(KEY, "first", trio.current_time()))
    except PunchFailed:
        pass
    got = await drain(cand, 0.1)
    assert len(got) == LAN_ROUNDS
    assert all(addr == lone.getsockname() and handshake.decode(d).type is handshake.FrameType.HELLO
               for d, addr in got)
    cand.close()
    lone.close()


async def test_a_path_takes_the_peers_frames_from_every_address_it_authenticated_from():
    """With a LAN and a hairpin both working, A may win on B's LAN address while B wins on A's
    public one: each side's path must take the peer's frames from both."""
    mine, lan_b, hairpin_b, stranger = [await udp_sock() for _ in range(4)]
    peer = handshake.Handshake(KEY, "second", b"BBBBBBBB")
    path = PunchedPath(mine, lan_b.getsockname(), 0.001, Strategy.LAN,
                       handshake.Handshake(KEY, "first", b"AAAAAAAA"), also=frozenset({hairpin_b.getsockname()}))
    for sock, payload in ((stranger, b"not the peer's address"), (hairpin_b, b"via the hairpin"),
                          (lan_b, b"over the LAN")):
        await sock.sendto(peer.data(payload), mine.getsockname())
    assert await path.receive() == b"via the hairpin"
    assert await path.receive() == b"over the LAN"
    for s in (mine, lan_b, hairpin_b, stranger):
        s.close()


def _tcp_plan(role, lan):
    # random on both sides: only the LAN can connect this pair
    return TcpPlan(TcpStrategy.NONE, False, "TCP infeasible: test", role, lan=lan)


async def test_tcp_connects_to_the_peers_lan_listener_even_when_the_plan_is_infeasible():
    la, lb = open_listener((LO, 0)), open_listener((LO, 0))
    lan_a, lan_b = open_listener((LO, 0)), open_listener((LO, 0))
    start = trio.current_time() + 0.05
    out = {}

    async def side(name, lst, lan_lst, role, peer_lan):
        out[name] = await tcp_punch(lst, _tcp_plan(role, (peer_lan,)), KEY, start, timeout=3.0,
                                    lan_listener=lan_lst)

    peer_of_a, peer_of_b = lan_b.getsockname()[:2], lan_a.getsockname()[:2]
    async with trio.open_nursery() as n:
        n.start_soon(side, "a", la, lan_a, "first", peer_of_a)
        n.start_soon(side, "b", lb, lan_b, "second", peer_of_b)
    a, b = out["a"], out["b"]
    assert a.strategy is b.strategy is TcpStrategy.LAN
    await a.send_all(b"ping")
    assert await b.receive_some(4) == b"ping"
    await b.send_all(b"pong")
    assert await a.receive_some(4) == b"pong"
    await a.aclose()
    await b.aclose()
    # every listener is closed once the punch returns
    for s in (la, lb, lan_a, lan_b):
        assert s.fileno() == -1


async def test_tcp_lan_tries_a_dead_candidate_a_bounded_number_of_times():
    lst, lan_lst = open_listener((LO, 0)), open_listener((LO, 0))
    probe = socket.socket()
    probe.bind((LO, 0))
    dead = probe.getsockname()[:2]  # bound, not listening: every SYN is refused
    try:
        await tcp_punch(lst, _tcp_plan("first", (dead,)), KEY, trio.current_time(), timeout=1.5,
                        lan_listener=lan_lst)
    except PunchFailed as exc:
        assert f"LAN listener(s) {dead[0]}:{dead[1]}" in str(exc)
        assert f"{LAN_CONNECTS} connect attempts" in str(exc)
    else:
        raise AssertionError("connected to nobody")
    probe.close()
