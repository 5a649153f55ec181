"""Rendezvous client on Trio.

    async with open_rendezvous(("198.51.100.1", 7000), info={...}) as rv:
        print(rv.peer_id)
        session = await rv.connect(other_id, timeout=10)      # initiator
        offer = await rv.next_offer(); session = await rv.accept(offer)   # the other side

A Session carries the other peer's node info, a fresh 32-byte key, the session id, the role and the
start time in *this process's* Trio clock: the server's clock is mapped through an offset estimated
NTP-style from the enroll reply and every keepalive (the sample with the smallest round trip wins), so
both peers fire at nearly the same moment even though their clocks are unrelated.

The client stays enrolled by itself: it pings every keepalive and gives a ping a bounded time, so a
server that vanished without a FIN or RST is noticed in about two keepalives, not after the ~15
minutes TCP takes to give up; it then enrolls again (same peer ID and secret, its latest info) with
capped, jittered backoff. Requests made while it is reconnecting fail at once with ServerGone;
next_offer() simply keeps waiting, so a listener is reachable again without doing anything.

A scaled-out tier (several instances on one shared registry, docs/scale-out.md) is reached by one
name with several addresses (each attempt resolves it again: trio tries every address it gets) or
by a list of servers: the first attempt after a loss goes to the same server (a blip), later ones
each to a randomly chosen other one, so the peers of an instance that died spread over the rest.
"""

from __future__ import annotations

import itertools
import math
import ssl
import logging
import random
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Sequence

import trio

from ..errors import (
    BadFrame,
    BadRequest,
    NameTaken,
    OfferGone,
    ProtocolViolation,
    RendezvousError,
    RendezvousTimeout,
    ServerGone,
    ServerUnreachable,
)
from ..hostport import parse_hostport
from ..identity import Identity
from ..proto.rendezvous.names import enroll_proof
from ..proto.rendezvous.timed_proof import NONCE_BYTES, audience, make_proof
from ..proto.rendezvous import SERVER_MESSAGES, ClockMap, check_info, make, reconnect_delay
from ..proto.turn_rest import RelayGrant
from . import preconnect
from .framing import FrameStream
from .rendezvous_link import Link, Reply, error_from
from .session import Session

DEFAULT_PORT = 7000
SEND_TIMEOUT = 10.0
MIN_PING_TIMEOUT = 2.0  # a busy server may take a while to answer; a vanished one never does

log = logging.getLogger("nattrav.rendezvous.client")
Observed = Sequence[tuple[tuple[str, int], bytes]]  # (address the server saw, its ticket) pairs

@dataclass(frozen=True)
class Offer:
    offer_id: str
    peer_id: str
    peer_info: dict
    expires: float  # trio.current_time() of this process
    peer_key: bytes | None = None  # the identity key the initiator proved to the server, if any


class _NoTimedProofs(Exception):
    """The server refused a timed enroll proof's frame: it predates them."""


class EarlyConnect:
    """A connect that may go in the enroll's flight (issue 13): handed to open_rendezvous(early=),
    it is written right behind the enroll frame once the caller says what to publish (ready()),
    without waiting for the enroll reply; client.connect(peer_id) then takes its session.

    The server handles one connection's frames in order, so a connect behind an accepted enroll is
    served as if sent after the reply. When the enroll is not accepted at once (the server doubts
    the timed proof and answers with a challenge, or predates timed proofs and hangs up), the server
    refuses the frames behind it ("before enroll") or they die with the connection: no offer was
    made, and connect() sends them again on the enrolled connection. A connect not ready by the
    challenge may still go behind the enroll that answers it; once the enrollment's reply is in,
    nothing goes early: connect() is the ordinary one.

    ready() takes `info(rtt)`, the node info to publish given our round trip to the server (before
    the enroll reply the TCP connect's, or the TLS handshake's, the smaller, stands in for it), and
    `observed()`, the observation tickets to hand back first (taken only when the connect goes)."""

    def __init__(self, peer_id: str, timeout: float = 10.0):
        self.peer_id = peer_id
        self.timeout = timeout
        self._info: Callable[[float], dict] | None = None
        self._observe: Callable[[], Observed] | None = None
        self.observed: Observed = ()  # the tickets it took (sent again with it when it was refused)
        self._given = trio.Event()
        self.closed = False  # too late to go early: the enrollment's reply came first
        self.refused = False  # went early, but the server did not take it (not enrolled yet)
        self.link: Link | None = None  # the connection it was written on
        self.waiting: list[tuple[int, Reply]] = []

    def ready(self, info: Callable[[float], dict], observed: Callable[[], Observed] = tuple) -> None:
        self._info, self._observe = info, observed
        self._given.set()

    @property
    def sent(self) -> bool:
        """Written behind the enroll (whether it stands is known once the enrollment is)."""
        return bool(self.waiting)

    def stands(self, link: Link | None) -> bool:
        """It went early on `link` (the enrolled connection) and the server took it there."""
        return self.sent and not self.refused and link is not None and self.link is link


class RendezvousClient:
    def __init__(self, server: tuple[str, int] | list[tuple[str, int]], *, info: dict | None = None,
                 connect_timeout: float = 10.0, local_address: str | None = None, reconnect: bool = True,
                 ping_timeout: float | None = None, identity: Identity | None = None,
                 tls: ssl.SSLContext | None = None, early: EarlyConnect | None = None):
        self.servers = list(server) if isinstance(server, list) else [server]
        if not self.servers:
            raise ValueError("no rendezvous server given")
        self.server = self.servers[0]  # the one enrolled with (or being tried)
        self.stun: list[tuple[str, int]] = []  # STUN servers the tier named in the enroll reply
        self.tls = tls  # None: a plain link (io/rendezvous_tls.py makes the contexts)
        self.identity = identity  # enroll by proving this key (proto/rendezvous/names.py)
        self.peer_id = ""
        self.secret = ""
        self.observed: tuple[str, int] | None = None  # our address as the server sees it
        self.relay: RelayGrant | None = None  # TURN credentials the server granted us (None: no relay)
        self.relay_problem: str | None = None  # why a grant that came cannot be used
        self.keepalive = 15.0
        self.enrollments = 0  # 1 after open_rendezvous(); more each time it enrolled again by itself
        # with an identity: sign a timed proof (no challenge round trip) until a server shows it does
        # not know them (an older one refuses the frame); `challenged` counts the enrollments whose
        # timed proof the server doubted and answered with a challenge (our clock, its address)
        self.timed_proofs = True
        self.challenged = 0
        self._info = info  # what an enrollment publishes: the latest info given
        self._connect_timeout = connect_timeout
        self._local_address = local_address
        self._reconnect = reconnect
        self._ping_timeout = ping_timeout
        self._clock = ClockMap()
        # the first enrollment's connection set-up (TCP connect, TLS handshake: one server round
        # trip each): our round trip to the server before the enroll reply measures it
        self._setup_rtt = math.inf
        self._early = early  # a connect for the first enrollment's flight
        self._ids = itertools.count(1)
        self._link: Link | None = None
        self._offers_send, self._offers = trio.open_memory_channel(32)
        self._cancelled: dict[str, str] = {}
        self._closed: RendezvousError | None = None

    # -- clock --
    @property
    def clock_offset(self) -> float:
        """Server clock minus ours."""
        return self._clock.offset

    @property
    def rtt(self) -> float:
        """The smallest round trip to the server seen so far (seconds)."""
        return self._clock.rtt

    def to_local(self, server_time: float) -> float:
        return self._clock.to_local(server_time)

    @property
    def connected(self) -> bool:
        """Enrolled on a live connection now (False while enrolling again)."""
        return self._link is not None and self._link.gone is None

    # -- one connection --
    async def _open_link(self, name: str | None, secret: str | None) -> Link:
        """Connect and enroll; raises the RendezvousError that says why not."""
        try:
            return await self._open_link_once(name, secret)
        except _NoTimedProofs:
            # a server that predates timed proofs closed the connection over the unknown fields
            log.info("%s:%d does not take timed enroll proofs: using its challenge", *self.server)
            self.timed_proofs = False
            return await self._open_link_once(name, secret)

    async def _open_link_once(self, name: str | None, secret: str | None) -> Link:
        host, port = self.server
        began = trio.current_time()
        try:
            with trio.fail_after(self._connect_timeout):
                adopted = await self._early_stream(host, port)
                if adopted is not None:
                    stream, self._setup_rtt = adopted
                else:
                    stream = await trio.open_tcp_stream(host, port, local_address=self._local_address)
                    self._setup_rtt = trio.current_time() - began  # a name lookup too, if any: an upper bound
        except (OSError, trio.TooSlowError) as exc:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
            raise ServerUnreachable(f"cannot reach rendezvous server {host}:{port}: {reason}") from None
        try:  # the server we dialed, as a timed proof names it: the address the connection reached
            aud = audience(*stream.socket.getpeername()[:2])
        except (OSError, ValueError):
            aud = None
        if self.tls is not None:
            began = trio.current_time()
            stream = await self._start_tls(stream)
            self._setup_rtt = min(self._setup_rtt, trio.current_time() - began)
        link = Link(stream, FrameStream(stream, SERVER_MESSAGES))
        enrolled = False
        try:
            try:
                with trio.fail_after(self._connect_timeout):
                    await self._enroll(link, name, secret, aud)
            except trio.TooSlowError:
                raise RendezvousTimeout(f"timeout: {host}:{port} did not answer the enroll") from None
            except BadFrame as exc:
                raise ProtocolViolation(f"malformed frame from the server: {exc}") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ServerGone(f"lost the server connection during enroll: {exc}") from None
            enrolled = True
            return link
        finally:
            if not enrolled:
                await trio.aclose_forcefully(stream)

    async def _early_stream(self, host: str, port: int) -> tuple[trio.SocketStream, float] | None:
        """The connect nattrav-fast began before its imports (cli/launch.py, io/preconnect.py) when
        it dials this very server from no chosen local address: its stream once connected, and the
        handshake's round trip (the kernel's measure; else the time since the SYN, an upper bound).
        None: connect as usual; a connect that failed is closed, and the ordinary one meets the same
        trouble and reports it."""
        early = preconnect.take(host, port, self._local_address)
        if early is None:
            return None
        sock = trio.socket.from_stdlib_socket(early.sock)
        try:
            await trio.lowlevel.wait_writable(sock)
            failed = sock.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_ERROR)
        except BaseException:
            sock.close()
            raise
        if failed:
            log.debug("the early connect to %s:%d failed (errno %d): connecting again", host, port, failed)
            sock.close()
            return None
        rtt = preconnect.handshake_rtt(early.sock) or max(0.0, time.monotonic() - early.started)
        return trio.SocketStream(sock), rtt

    async def _start_tls(self, stream: trio.SocketStream) -> trio.SSLStream:
        host, port = self.server
        tls = trio.SSLStream(stream, self.tls, server_hostname=host, https_compatible=False)
        try:
            with trio.fail_after(self._connect_timeout):
                await tls.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(tls)
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = f"its certificate does not verify ({cause.verify_message})"
            elif isinstance(exc, trio.TooSlowError):
                why = "no TLS handshake in time"
            else:
                why = f"the TLS handshake failed ({cause or exc}); is it a plain server? (--plain, for a lab)"
            raise ServerUnreachable(f"rendezvous server {host}:{port}: {why}") from None
        return tls

    def _challenge_proof(self, msg: dict, name: str) -> dict:
        if msg["t"] == "error":
            raise error_from(msg)
        if msg["t"] != "challenge" or "nonce" not in msg:
            raise ProtocolViolation(f"expected challenge, got {msg['t']}")
        return {"key": self.identity.peer_id.key_bytes, "sig": self.identity.sign(enroll_proof(msg["nonce"], name))}

    async def _enroll(self, link: Link, name: str | None, secret: str | None, aud: str | None = None) -> None:
        try:
            await self._enroll_once(link, name, secret, aud)
        finally:
            if self._early is not None:
                self._early.closed = True  # the first enrollment is over: only connect() sends it now

    async def _enroll_once(self, link: Link, name: str | None, secret: str | None, aud: str | None) -> None:
        proof: dict = {}
        timed = False
        if self.identity is not None:
            # a name (ours, or our key's peer ID) claimed by a signature: over a timed proof of our
            # own making when we can (no round trip first, proto/rendezvous/timed_proof.py), else
            # over the challenge this connection asks for
            name = name or self.identity.peer_id.text
            secret = None
            if self.timed_proofs and aud is not None:
                timed = True
                proof = make_proof(self.identity.sign, self.identity.peer_id.key_bytes,
                                   secrets.token_bytes(NONCE_BYTES), time.time(), aud, name).fields()
            else:
                await link.frames.send(make("challenge", id=0))
                proof = self._challenge_proof(await self._enroll_reply(link), name)
        sent = trio.current_time()
        await link.frames.send(make("enroll", id=0, info=self._info, name=name, secret=secret, **proof))
        msg = await self._enroll_reply_early(link)
        if timed and msg["t"] == "error" and msg["code"] == ProtocolViolation.code:
            raise _NoTimedProofs()
        if timed and msg["t"] == "challenge":
            # the server doubted the timed proof (our clock is off, or it sits behind an address
            # translation): it sent the challenge an older client would have asked for
            self.challenged += 1
            log.info("%s:%d answered our timed enroll proof with a challenge", *self.server)
            proof = self._challenge_proof(msg, name)
            sent = trio.current_time()
            await link.frames.send(make("enroll", id=0, info=self._info, name=name, secret=None, **proof))
            msg = await self._enroll_reply_early(link)
        if msg["t"] == "error":
            raise error_from(msg)
        if msg["t"] != "enrolled":
            raise ProtocolViolation(f"expected enrolled, got {msg['t']}")
        if self.enrollments and msg["peer"] != self.peer_id:
            raise ProtocolViolation(f"enrolled again as {msg['peer']!r}, not {self.peer_id!r}")
        clock = ClockMap()  # a restarted server is a new process with a new clock: start over
        clock.sample(sent, trio.current_time(), msg["now"])
        self._clock = clock
        self.peer_id, self.secret = msg["peer"], msg["secret"]
        self.keepalive = float(msg["keepalive"])
        self.stun = [(str(h), int(p)) for h, p in msg.get("stun", [])]
        obs = msg["observed"]
        self.observed = (str(obs[0]), int(obs[1])) if len(obs) == 2 else None
        self.relay, self.relay_problem = None, None
        if "relay" in msg:
            try:
                self.relay = RelayGrant.from_wire(msg["relay"])
            except BadFrame as exc:  # the enrollment stands; only the relay is out
                self.relay_problem = f"the server's relay grant is malformed: {exc}"
        self.enrollments += 1

    @staticmethod
    async def _enroll_reply(link: Link, early: EarlyConnect | None = None) -> dict:
        while True:
            msg = await link.frames.receive()
            if msg is None:
                raise ServerGone("the server closed the connection during enroll")
            if early is not None and early.link is link and msg.get("id") in dict(early.waiting):
                # the server answered a frame of the early connect before we were enrolled: it
                # refused it ("before enroll"); connect() sends it again once we are
                early.refused = True
                continue
            if msg["t"] == "error" and msg["code"] != ProtocolViolation.code:
                raise error_from(msg)
            return msg

    async def _enroll_reply_early(self, link: Link) -> dict:
        """The reply to the enroll frame just sent, while the early connect (if any, and not sent
        yet) goes behind that frame as soon as its info is given: at once when it is already.
        An enrollment's reply ends its chance (a challenge's: until the enroll that answers it)."""
        early = self._early
        if early is None or early.closed or early.sent:
            return await self._enroll_reply(link, early)
        if early._given.is_set():
            await self._send_early(link, early)
            return await self._enroll_reply(link, early)
        replied = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_early, link, early, replied)
            try:
                return await self._enroll_reply(link, early)
            finally:
                replied.set()  # before the cancel: a send not begun never begins
                nursery.cancel_scope.cancel()

    async def _send_early(self, link: Link, early: EarlyConnect, replied: trio.Event | None = None) -> None:
        await early._given.wait()
        if early.closed or (replied is not None and replied.is_set()):
            return
        rtt = self.rtt if math.isfinite(self.rtt) else self._setup_rtt
        try:
            info = early._info(rtt)
            check_info(info)
        except (ValueError, BadFrame):
            return  # bad info: connect() raises it, as it would have without the early flight
        early.observed = list(early._observe())
        requests = self._info_request(info, early.observed) + [self._connect_request(early.peer_id, early.timeout)]
        early.link = link
        with trio.CancelScope(shield=True):  # all or none: an info without its observations is not ours
            await self._post(link, requests, early.waiting)

    async def _reader(self, link: Link) -> None:
        try:
            while True:
                msg = await link.frames.receive()
                if msg is None:
                    link.fail(ServerGone("the server closed the connection"))
                    return
                self._dispatch(link, msg)
        except BadFrame as exc:
            link.fail(ProtocolViolation(f"malformed frame from the server: {exc}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            link.fail(ServerGone(f"lost the server connection: {exc}"))

    def _dispatch(self, link: Link, msg: dict) -> None:
        kind = msg["t"]
        rid = msg.get("id")
        if rid is not None and rid in link.pending:
            reply = link.pending[rid]
            reply.msg = msg
            reply.event.set()
        elif kind == "offer":
            offer = Offer(msg["offer"], msg["from"], msg["info"], self.to_local(msg["expires"]),
                          msg.get("from_key"))
            try:
                self._offers_send.send_nowait(offer)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # nobody is taking offers: the server times it out and tells the initiator
        elif kind == "cancel":
            self._cancelled[msg["offer"]] = f"{msg['code']}: {msg['message']}"
            if len(self._cancelled) > 1024:
                self._cancelled.pop(next(iter(self._cancelled)))
        elif rid is not None:
            pass  # a late reply to a request its caller gave up on (cancelled): nobody wants it
        elif kind == "error":
            # An error not tied to a request: the server is about to close this connection. Our own
            # name enrolled elsewhere means another process took over: it must not be taken back.
            if msg["code"] == NameTaken.code:
                link.fail(NameTaken(f"{msg['code']}: {msg['message']}"), final=True)
            else:
                link.fail(ServerGone(f"server: {msg['code']}: {msg['message']}"))

    async def _keepalive_loop(self, link: Link) -> None:
        while True:
            await trio.sleep(self.keepalive)
            timeout = self._ping_timeout or max(self.keepalive, MIN_PING_TIMEOUT)
            with trio.move_on_after(timeout) as waited:
                try:
                    await self.ping()
                except RendezvousError:
                    return  # the link failed: the reader or the sender said why
            if waited.cancelled_caught:
                link.fail(ServerGone(f"the server did not answer a ping within {timeout:g} s"))
                return

    # -- staying enrolled --
    async def _run(self, link: Link) -> None:
        """Serve `link` until it fails, then enroll again, for as long as the client is open."""
        while True:
            self._link = link
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, link)
                nursery.start_soon(self._keepalive_loop, link)
                await link.lost.wait()
                nursery.cancel_scope.cancel()
            self._link = None
            await trio.aclose_forcefully(link.stream)
            self._drop_queued_offers()
            if link.final or not self._reconnect:
                self._close(link.gone)
                return
            log.info("lost the rendezvous server %s:%d (%s); enrolling again as %s",
                     *self.server, link.gone, self.peer_id)
            link = await self._enroll_again()
            if link is None:
                return
            log.info("enrolled again as %s with %s:%d", self.peer_id, *self.server)

    async def _enroll_again(self) -> Link | None:
        attempt = 0
        while True:
            await trio.sleep(reconnect_delay(attempt, cap=max(1.0, self.keepalive)))
            if attempt and len(self.servers) > 1:
                self.server = random.choice([s for s in self.servers if s != self.server])
            attempt += 1
            try:
                return await self._open_link(self.peer_id, self.secret)
            except (NameTaken, BadRequest) as exc:
                # our name went to someone else after the server forgot us: nothing to retry
                self._close(exc)
                return None
            except RendezvousError as exc:
                log.debug("enroll attempt %d with %s:%d failed: %s", attempt, *self.server, exc)

    def _drop_queued_offers(self) -> None:
        # offers that came on a lost connection ended with it (the server cancels them)
        while True:
            try:
                self._offers.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    def _close(self, exc: RendezvousError | None) -> None:
        if self._closed is None:
            self._closed = exc or ServerGone("connection closed")
        self._offers_send.close()
        if self._link is not None:
            self._link.fail(self._closed)

    # -- plumbing --
    def _gone_error(self, link: Link | None) -> RendezvousError:
        gone = self._closed or (link.gone if link is not None else None)
        if gone is None:
            gone = ServerGone(f"not connected to the rendezvous server {self.server[0]}:{self.server[1]} "
                              "(enrolling again)")
        return type(gone)(str(gone))  # a fresh instance per raise: tracebacks must not pile up

    async def _send(self, link: Link, msg: dict) -> None:
        # A frame cut in half by a cancellation would desynchronise the stream for every later
        # request, so the write is shielded; its own deadline covers a server that stopped reading.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_TIMEOUT) as stuck:
                try:
                    await link.frames.send(msg)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    link.fail(ServerGone(f"lost the server connection: {exc}"))
            if stuck.cancelled_caught:
                link.fail(ServerGone(f"the server has not read our frames for {SEND_TIMEOUT:g} s"))

    async def _request(self, kind: str, **fields) -> dict:
        return (await self._requests((kind, fields)))[-1]

    async def _requests(self, *requests: tuple[str, dict]) -> list[dict]:
        """Send the requests back to back (the server answers them in order), then wait for every
        reply: one round trip for all. The first error reply is raised."""
        link = self._link
        if self._closed is not None or link is None or link.gone is not None:
            raise self._gone_error(link)
        waiting: list[tuple[int, Reply]] = []
        try:
            await self._post(link, requests, waiting)
        except BaseException:
            _forget(link, waiting)
            raise
        return await self._collect(link, waiting)

    async def _post(self, link: Link, requests: Sequence[tuple[str, dict]], waiting: list[tuple[int, Reply]]) -> None:
        """Write the requests, each registered (in `waiting`) before it goes."""
        for kind, fields in requests:
            rid = next(self._ids)
            reply = link.pending[rid] = Reply()
            waiting.append((rid, reply))
            await self._send(link, make(kind, id=rid, **fields))

    async def _collect(self, link: Link, waiting: list[tuple[int, Reply]]) -> list[dict]:
        """The replies to requests _post wrote; the first error reply is raised."""
        try:
            for _, reply in waiting:
                await reply.event.wait()
        finally:
            _forget(link, waiting)
        replies = []
        for _, reply in waiting:
            if reply.msg is None:
                raise self._gone_error(link)
            if reply.msg["t"] == "error":
                raise error_from(reply.msg)
            replies.append(reply.msg)
        return replies

    def _info_request(self, info: dict | None, observed: Observed = ()) -> list[tuple[str, dict]]:
        # observations first: the server adds what it recorded to the info that follows
        # one endpoint's at a time: the first replaces what an earlier punch socket left on the server
        out = [("observe", {"addr": [ip, port], "ticket": ticket, "fresh": k == 0 or None})
               for k, ((ip, port), ticket) in enumerate(observed)]
        if info is None:
            return out
        try:
            check_info(info)
        except BadFrame as exc:
            raise ValueError(f"node info rejected: {exc}") from None
        self._info = info
        return out + [("info", {"info": info})]

    @staticmethod
    def _noted(replies: list[dict]) -> None:
        for msg in replies:
            if msg["t"] == "observation" and not msg["recorded"]:
                # the peer then aims at our TCP address only (a tier's other instance, an old ticket)
                log.info("the server did not record our punch socket's address: %s", msg.get("reason"))

    def _session(self, msg: dict) -> Session:
        # its stamp bounds the clock offset (it left the server before we read it): an enroll
        # sample that a lost segment slowed cannot put our start far from the peer's
        self._clock.heard(msg["now"], trio.current_time())
        return Session.from_frame(msg, self.to_local, self.observed, self._info)

    # -- public API --
    async def ping(self) -> float:
        """One round trip to the server; refines the clock offset; returns the RTT in seconds."""
        sent = trio.current_time()
        msg = await self._request("ping")
        received = trio.current_time()
        self._clock.sample(sent, received, msg["now"])
        return received - sent

    async def update_info(self, info: dict, *, observed: Observed = ()) -> None:
        """Publish new node info (also what the client publishes when it enrolls again).
        `observed`: (address, ticket) pairs from the server's observation port (proto/rendezvous/
        observe.py), handed back first so that the info carries them."""
        self._noted(await self._requests(*self._info_request(info, observed)))

    async def connect(self, peer_id: str, timeout: float = 10.0, *, info: dict | None = None,
                      observed: Observed = (), resample: Callable[[], Awaitable[dict]] | None = None) -> Session:
        """Ask peer_id for a session; raises UnknownPeer, PeerOffline, Refused or RendezvousTimeout.
        `info`: publish this node info first, in the same round trip (update_info() then connect());
        `observed`: as update_info()'s. The connect handed to open_rendezvous(early=) for this peer,
        when it went behind the enroll, is not sent again: its reply is taken (or, refused before
        the enrollment, it goes again with its own info and observations). `resample`: our info says
        we take a "resample" (proto/rendezvous/held.py: a listener slow to accept); the server then
        answers the connect with one, and resample() re-samples our punch socket and returns the node
        info the session starts on."""
        early = self._early if self._early is not None and self._early.peer_id == peer_id else None
        if early is not None:
            self._early = None  # one connect: a second one to the same peer is an ordinary request
            if not early.sent:
                early = None
            elif not early.stands(self._link):
                # refused (we were not enrolled yet), or lost with the first connection: the same
                # info and observations go again, now that we are enrolled (no offer was made)
                _forget(early.link, early.waiting)
                info, observed = early._info(self.rtt), early.observed
                early = None
        # The server enforces the timeout; the local guard only covers a server that stops answering.
        with trio.move_on_after(timeout + max(2.0, 4 * min(self.rtt, 5.0))) as guard:
            if early is not None:  # written behind the enroll and taken: its replies are due
                replies = await self._collect(early.link, early.waiting)
            else:
                requests = self._info_request(info, observed) + [self._connect_request(peer_id, timeout)]
                replies = await self._requests(*requests)
            self._noted(replies)
            msg = replies[-1]
            if msg["t"] == "resample" and resample is not None:
                # under the connect's own id: a server that stopped waiting for our samples answers
                # the connect with the session on our old ones, and that is still our answer
                msg = await self._sampled(msg["session"], resample, msg.get("id"))
        if guard.cancelled_caught:
            raise RendezvousTimeout(f"timeout: no answer about {peer_id} within {timeout:g} s")
        return self._session(msg)

    @staticmethod
    def _connect_request(peer_id: str, timeout: float) -> tuple[str, dict]:
        return ("connect", {"target": peer_id, "timeout": float(timeout)})

    @property
    def early_went(self) -> bool:
        """The connect handed to open_rendezvous(early=) went behind the enroll with its info and
        observations: connect(its peer) takes its reply, or sends the same again if the server
        refused it before the enrollment (the caller passes no info of its own then)."""
        return self._early is not None and self._early.sent

    async def next_offer(self) -> Offer:
        """Wait for the next peer that wants a session with us (offers cancelled meanwhile are skipped).

        Keeps waiting while the client enrolls again after losing the server; raises only once the
        client is closed for good (NameTaken: our name enrolled elsewhere; ServerGone otherwise)."""
        while True:
            try:
                offer = await self._offers.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._gone_error(None) from None
            if offer.offer_id not in self._cancelled:
                return offer

    async def accept(self, offer: Offer, *, info: dict | None = None, observed: Observed = (),
                     resample: Callable[[], Awaitable[dict]] | None = None, beacon: bool = True) -> Session:
        """Take `offer`; `info`: publish this node info first, in the same round trip; `observed`: as
        update_info()'s. `resample`: a sample beacon left with this accept (proto/rendezvous/beacon.py,
        only for an offer whose server asked for one): the server starts the session on it, or, when
        it did not arrive in time, asks for STUN samples, which resample() then takes and returns as
        our node info for the session. `beacon` False: no beacon left, but resample() is there for
        a server that asks anyway (it first asked a long-held initiator for fresh samples,
        proto/rendezvous/held.py; our info says we take it)."""
        if offer.offer_id in self._cancelled:
            raise OfferGone(f"offer from {offer.peer_id} ended: {self._cancelled[offer.offer_id]}")
        fields = {"offer": offer.offer_id, **({"beacon": True} if resample is not None and beacon else {})}
        replies = await self._requests(*self._info_request(info, observed), ("accept", fields))
        self._noted(replies)
        msg = replies[-1]
        if msg["t"] == "resample" and resample is not None:
            msg = await self._sampled(offer.offer_id, resample)
        if msg["t"] != "session":
            raise ProtocolViolation(f"the server answered an accept with {msg['t']!r}")
        return self._session(msg)

    async def _sampled(self, offer_id: str, resample: Callable[[], Awaitable[dict]], rid: int | None = None) -> dict:
        """The server asked for fresh samples for this session: they go as our info, and the
        session frame answers them (`rid`: as the reply to that request, answered by the resample)."""
        fresh = await resample()
        try:
            check_info(fresh)
        except BadFrame as exc:
            raise ValueError(f"node info rejected: {exc}") from None
        self._info = fresh  # what we published for this session (Session.own_info)
        link = self._link
        if rid is None or link is None or link.gone is not None or self._closed is not None:
            return await self._request("sampled", offer=offer_id, info=fresh)
        waiting = [(rid, Reply())]
        link.pending[rid] = waiting[0][1]
        try:
            await self._send(link, make("sampled", id=rid, offer=offer_id, info=fresh))
        except BaseException:
            _forget(link, waiting)
            raise
        return (await self._collect(link, waiting))[-1]

    async def refuse(self, offer: Offer) -> None:
        if offer.offer_id in self._cancelled:
            return
        try:
            await self._request("refuse", offer=offer.offer_id)
        except OfferGone:
            pass


def _forget(link: Link, waiting: list[tuple[int, Reply]]) -> None:
    """No reply to these requests is awaited on `link` any more: a late one is dropped."""
    for rid, _ in waiting:
        link.pending.pop(rid, None)


def parse_servers(server: str | tuple[str, int] | list) -> list[tuple[str, int]]:
    """The servers of one tier: "HOST[:PORT][,HOST[:PORT]...]", a (host, port) or a list of either."""
    if isinstance(server, str):
        server = server.split(",")
    items = server if isinstance(server, list) else [server]
    return [s if isinstance(s, tuple) else parse_hostport(s, DEFAULT_PORT) for s in items]


@asynccontextmanager
async def open_rendezvous(
    server: str | tuple[str, int] | list,
    *,
    info: dict | None = None,
    name: str | None = None,
    secret: str | None = None,
    connect_timeout: float = 10.0,
    local_address: str | None = None,
    reconnect: bool = True,
    ping_timeout: float | None = None,
    identity: Identity | None = None,
    tls: ssl.SSLContext | None = None,
    early: EarlyConnect | None = None,
) -> AsyncIterator[RendezvousClient]:
    """Connect to the server, enroll (under ``name`` if given, proving ownership with ``secret``,
    or with ``identity``: then the name defaults to its peer ID and is proven by a signature).

    The first enrollment's failure is raised here. Later losses are handled inside: with
    ``reconnect`` (the default) the client enrolls again by itself; ``ping_timeout`` (default: the
    server's keepalive, at least 2 s) is how long an unanswered ping may take before the connection
    counts as lost. ``server`` may be a list of servers of one tier, or "HOST:PORT,HOST:PORT,...":
    the first is enrolled with, the others take over when it is lost (see the module's doc).
    ``early``: a connect that may go in the enroll's flight (EarlyConnect)."""
    servers = parse_servers(server)
    if info is not None:
        try:
            check_info(info)
        except BadFrame as exc:
            raise ValueError(f"node info rejected: {exc}") from None
    client = RendezvousClient(servers if len(servers) > 1 else servers[0], info=info, connect_timeout=connect_timeout,
                              local_address=local_address, reconnect=reconnect, ping_timeout=ping_timeout,
                              identity=identity, tls=tls, early=early)
    link = await client._open_link(name, secret)
    client._link = link
    try:
        # The caller's own exception leaves unwrapped: raised inside the nursery it would come out
        # as an ExceptionGroup, and callers could no longer `except ConnectError`.
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run, link)
            try:
                yield client
            except BaseException as exc:
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        client._close(ServerGone("rendezvous client closed"))
        current = client._link or link
        await trio.aclose_forcefully(current.stream)
