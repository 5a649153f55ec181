"""The rendezvous port's UDP side: answers punch sockets' observation requests (proto/rendezvous/
observe.py) on the same port number as the TCP listener, so every server layout has it wherever the
rendezvous server runs. One task, one socket, no state per datagram beyond the responder's rate table.
Beside it, the beacon port (serve_beacons): accepting listeners' one-way sample beacons.

A socket bound to the wildcard address would answer from whichever local address the route picks,
and a client accepts an answer only from the address it asked (a multi-homed server, like the
lab's two-address one, would then never be heard): the answer leaves from the address the request
was sent to (IP_PKTINFO), as STUN servers on such hosts do."""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time
from functools import partial
from typing import Callable

import trio

from ..proto.rendezvous.beacon import MAX_BEACON
from ..proto.rendezvous.observe import MAX_REQUEST, ObserveResponder, SourceBuckets

log = logging.getLogger("nattrav.rendezvous.observe")

_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_ANC = socket.CMSG_SPACE(_PKTINFO.size)
# Python's socket module does not name it; 8 is Linux's value (<linux/in.h>), other systems lack it
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)


def ticket_clock() -> float:
    """The clock tickets' expiry is written in: CLOCK_MONOTONIC, one for every process of the host
    (Trio's clock adds a random offset per run), so a ticket minted by one process of an instance
    (--processes) verifies in another."""
    return time.monotonic()


async def serve_observer(host: str | None, port: int, key: bytes, *, task_status=trio.TASK_STATUS_IGNORED,
                         responder: ObserveResponder | None = None, reuse_port: bool = False) -> None:
    """Answer observation requests at host:port (UDP, IPv4; host None or "" is every address) until
    cancelled. ``task_status.started`` gets the responder (its stats). ``reuse_port``: share the port
    with the instance's other processes (SO_REUSEPORT; they share ``key``)."""
    responder = responder if responder is not None else ObserveResponder(key)
    # one process alone keeps Trio's clock (as before); workers of one instance need the host's
    clock = ticket_clock if reuse_port else trio.current_time
    bind = host or "0.0.0.0"
    wildcard = bind == "0.0.0.0" and IP_PKTINFO is not None  # (else: answers leave as the route says)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((bind, port))
        if wildcard:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        log.info("observation requests answered on %s:%d/udp", bind, port)
        task_status.started(responder)
        while True:
            try:
                if wildcard:
                    data, anc, _flags, src = await sock.recvmsg(MAX_REQUEST + 1, _ANC)
                else:
                    data, src = await sock.recvfrom(MAX_REQUEST + 1)
                    anc = []
            except OSError:
                continue  # an ICMP error about an earlier answer: nothing to do
            reply = responder.answer(data, src, clock())
            if reply is None:
                continue
            try:
                if wildcard:
                    await sock.sendmsg([reply], _from_where_asked(anc), 0, src)
                else:
                    await sock.sendto(reply, src)
            except OSError as exc:
                log.debug("cannot answer %s: %s", src, exc)


def _from_where_asked(anc: list) -> list:
    """The control message that makes an answer leave from the address the request came to."""
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            _ifindex, _spec, dst = _PKTINFO.unpack_from(data)
            return [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, dst, bytes(4)))]
    return []


async def observe_beside(host: str | None, port: int, key: bytes, *, reuse_port: bool = False) -> None:
    """serve_observer() beside a rendezvous listener at host:port, if it can: the observation is an
    extra (clients fall back to the TCP connection's address), so a UDP port taken by something
    else, or an IPv6-only listener, is logged and left at that."""
    if host in (None, "", "::"):
        host = None
    elif ":" in host:
        log.info("no observation port beside an IPv6 listener (%s): peers are aimed at their TCP address", host)
        return
    try:
        await serve_observer(host, port, key, reuse_port=reuse_port)
    except OSError as exc:
        log.warning("cannot answer observation requests on %s:%d/udp (%s): peers behind an address pool "
                    "may not be reachable", host or "0.0.0.0", port, exc.strerror or exc)
    except Exception:
        # a bug here must cost the observation only, never the rendezvous server beside it
        log.exception("the observation port %s:%d/udp stopped", host or "0.0.0.0", port)


# --- the beacon port (proto/rendezvous/beacon.py) ---------------------------------------------------
# A port of its own, not the observation port: a listener's punch socket already has a flow to the
# observation port (its mapping is old there), and a beacon must make a NEW mapping to show where the
# next one lands. Nothing is ever sent from it.
BEACON_RATE, BEACON_BURST = 20.0, 40.0  # beacons per second per source IP (a listener sends 3 an offer)


async def serve_beacons(host: str | None, port: int, sink: Callable[[bytes, tuple, float], object], *,
                        task_status=trio.TASK_STATUS_IGNORED, max_sources: int = 4096) -> None:
    """Hand every datagram at host:port (UDP, IPv4; port 0 picks one) that its source's bucket
    admits to `sink(data, source, now)` until cancelled; ``task_status.started`` gets the port bound.
    The sink parses (untrusted bytes); a bug there costs that datagram, never the loop."""
    buckets = SourceBuckets(BEACON_RATE, BEACON_BURST, max_sources)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((host or "0.0.0.0", port))
        bound = sock.getsockname()[1]
        log.info("sample beacons taken on %s:%d/udp", host or "0.0.0.0", bound)
        task_status.started(bound)
        while True:
            try:
                data, src = await sock.recvfrom(MAX_BEACON + 1)
            except OSError:
                continue
            now = trio.current_time()
            if not buckets.admit(str(src[0]), now):
                continue
            try:
                sink(data, src, now)
            except Exception:
                log.exception("a beacon from %s could not be handled", src)


async def beacons_beside(host: str | None, nursery: trio.Nursery, sink: Callable[[bytes, tuple, float], object],
                         port: int = 0) -> int | None:
    """serve_beacons() in `nursery` beside a rendezvous listener at `host`, if it can: the port it
    took, or None (an IPv6-only listener, or the port is taken: listeners then sample through STUN
    before they accept, as before)."""
    if host in (None, "", "::"):
        host = None
    elif ":" in host:
        return None
    try:
        return await nursery.start(partial(serve_beacons, host, port, sink))
    except OSError as exc:
        log.warning("no beacon port on %s:%d/udp (%s): listeners sample through STUN before accepting",
                    host or "0.0.0.0", port, exc.strerror or exc)
        return None
