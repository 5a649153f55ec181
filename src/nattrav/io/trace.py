"""A traceroute to the STUN server on Trio: which hop answers each TTL (proto/hops.py reads it).

One UDP socket sends a STUN Binding request per TTL 1..max_ttl, all at once; the hops where a
request's TTL runs out answer with ICMP time-exceeded, which IP_RECVERR queues on the socket with the
hop's address and our own request as payload (its transaction ID names the TTL); the requests that
reach the server get a STUN answer. No raw socket, no privileges. The socket is not the punch socket:
its ICMP errors must not disturb the punch, and the one flow it opens happens during discovery, before
the punch socket's mappings are sampled.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import trio

from ..proto import stun
from ..proto.hops import HopReading, read_trace
from .fresh_port import fresh_trio_udp

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
SO_EE_ORIGIN_ICMP = 2
ICMP_TIME_EXCEEDED = 11
_EXT_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err; the offender's sockaddr_in follows
MAX_TTL = 8


def _offender(cmsgs: list) -> tuple[str, int] | None:
    """(hop address, ICMP type) from an IP_RECVERR control message, or None."""
    for level, kind, data in cmsgs:
        if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < _EXT_ERR.size + 8:
            continue
        _errno, origin, icmp_type, _code, _pad, _info, _data = _EXT_ERR.unpack_from(data)
        if origin != SO_EE_ORIGIN_ICMP:
            continue
        family, = struct.unpack_from("=H", data, _EXT_ERR.size)
        if family != socket.AF_INET:
            continue
        ip = socket.inet_ntop(socket.AF_INET, data[_EXT_ERR.size + 4:_EXT_ERR.size + 8])
        return ip, icmp_type
    return None


async def trace_hops(server: tuple[str, int], *, src_ip: str | None = None, max_ttl: int = MAX_TTL,
                     timeout: float = 1.0, grace: float = 0.1, rounds: int = 2,
                     made: Callable[[], None] | None = None) -> HopReading:
    """Trace the path to `server` (a STUN server: it answers the probes that reach it). Returns once
    the server answered and every lower TTL answered too, or `grace` seconds after the server's
    answer, or after `timeout`. `rounds` sends everything again after a short pause (lost probes).
    `made()` is called once, when the first round left or the trace ends, whichever comes first: the
    trace's one flow is then made on every NAT layer it crosses (or never will be)."""
    if not 1 <= max_ttl <= 64:
        raise ValueError("max_ttl must be 1..64")
    told = False

    def tell() -> None:  # the one call of made(), whichever way the trace ends
        nonlocal told
        if made is not None and not told:
            told = True
            made()

    try:
        # its flow to the server lives on in our NATs: a later sampling socket must not get its port
        sock = await fresh_trio_udp(src_ip)
        with sock:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            txids = {stun.new_transaction_id(): ttl for ttl in range(1, max_ttl + 1)}
            requests = {ttl: stun.binding_request(transaction_id=t).encode() for t, ttl in txids.items()}
            answers: dict[int, str] = {}
            reached: set[int] = set()

            def done() -> bool:
                return bool(reached) and not missing()

            async def send(ttls) -> None:
                for ttl in ttls:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                    try:
                        await sock.sendto(requests[ttl], server)
                    except OSError:
                        pass  # an error queued by an earlier probe can surface here: read below
                    # a little apart: the first packets of a new flow racing each other through a NAT
                    # can clash in its connection tracking, and one is dropped
                    await trio.sleep(0.002)

            def missing() -> list[int]:
                top = min(reached) if reached else max_ttl + 1
                return [t for t in range(1, top) if t not in answers]

            async def send_all() -> None:
                for n in range(rounds):
                    await send(missing())
                    if n == 0:
                        tell()
                    await trio.sleep(min(0.2, timeout / 3))

            def drain() -> None:
                while True:  # ICMP errors first: each names a hop
                    try:
                        data, cmsgs, _flags, _addr = sock._sock.recvmsg(
                            2048, socket.CMSG_SPACE(512), socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    hop = _offender(cmsgs)
                    ttl = _ttl_of(data, txids)
                    if hop is not None and ttl is not None and hop[1] == ICMP_TIME_EXCEEDED:
                        answers.setdefault(ttl, hop[0])
                while True:  # then the server's answers
                    try:
                        data, src = sock._sock.recvfrom(2048, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue  # a pending ICMP error reported on the normal path: drained above
                    if tuple(src[:2]) != tuple(server):
                        continue
                    ttl = _ttl_of(data, txids)
                    if ttl is not None:
                        reached.add(ttl)

            with trio.move_on_after(timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all)
                    while not done():
                        await trio.lowlevel.wait_readable(sock)
                        drain()
                        if reached and not done():
                            nursery.start_soon(send, missing())  # lost, or silent: ask once more
                            with trio.move_on_after(grace):
                                while not done():
                                    await trio.lowlevel.wait_readable(sock)
                                    drain()
                            break
                    nursery.cancel_scope.cancel()
    finally:
        tell()
    return read_trace(answers, min(reached) if reached else None, max_ttl)


def _ttl_of(data: bytes, txids: dict[bytes, int]) -> int | None:
    try:
        return txids.get(stun.parse(data).transaction_id)
    except stun.BadPacket:
        return None


__all__ = ["MAX_TTL", "trace_hops"]
