"""Rendezvous client on Trio.

    async with open_rendezvous(("198.51.100.1", 7000), info={...}) as rv:
        print(rv.peer_id)
        session = await rv.connect(other_id, timeout=10)      # initiator
        offer = await rv.next_offer(); session = await rv.accept(offer)   # the other side

A Session carries the other peer's node info, a fresh 32-byte key, the session id, the role and the
start time in *this process's* Trio clock: the server's clock is mapped through an offset estimated
NTP-style from the enroll reply and every keepalive (the sample with the smallest round trip wins), so
both peers fire at nearly the same moment even though their clocks are unrelated.
"""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from ..proto.rendezvous import SERVER_MESSAGES, BadFrame, ClockMap, check_info, make
from .framing import FrameStream

DEFAULT_PORT = 7000
SEND_TIMEOUT = 10.0


class RendezvousError(Exception):
    """Base of every error the rendezvous client raises; ``code`` is the server's error code."""

    code = "error"


class UnknownPeer(RendezvousError):
    code = "unknown-peer"


class PeerOffline(RendezvousError):
    code = "offline"


class Refused(RendezvousError):
    code = "refused"


class RendezvousTimeout(RendezvousError):
    code = "timeout"


class NameTaken(RendezvousError):
    code = "name-taken"


class BadRequest(RendezvousError):
    code = "bad-request"


class OfferGone(RendezvousError):
    code = "unknown-offer"


class ServerBusy(RendezvousError):
    code = "busy"


class ProtocolViolation(RendezvousError):
    """A malformed frame, from the server (or the server says ours was)."""

    code = "bad-frame"


class ServerUnreachable(RendezvousError):
    code = "unreachable"


class ServerGone(RendezvousError):
    """The connection to the server ended; every pending request fails with this."""

    code = "gone"


ERRORS: dict[str, type[RendezvousError]] = {
    cls.code: cls
    for cls in (UnknownPeer, PeerOffline, Refused, RendezvousTimeout, NameTaken, BadRequest, OfferGone,
                ServerBusy, ProtocolViolation)
}


def error_from(msg: dict) -> RendezvousError:
    cls = ERRORS.get(msg["code"], RendezvousError)
    return cls(f"{msg['code']}: {msg['message']}")


@dataclass(frozen=True)
class Session:
    session_id: str
    peer_id: str
    peer_info: dict
    key: bytes
    start_at: float  # trio.current_time() of this process
    role: str  # "first" sends the low-TTL packets first

    def start_in(self) -> float:
        return self.start_at - trio.current_time()


@dataclass(frozen=True)
class Offer:
    offer_id: str
    peer_id: str
    peer_info: dict
    expires: float  # trio.current_time() of this process


class _Reply:
    __slots__ = ("event", "msg")

    def __init__(self):
        self.event = trio.Event()
        self.msg: dict | None = None


class RendezvousClient:
    def __init__(self, frames: FrameStream, server: tuple[str, int]):
        self._frames = frames
        self.server = server
        self.peer_id = ""
        self.secret = ""
        self.observed: tuple[str, int] | None = None  # our address as the server sees it
        self.keepalive = 15.0
        self._clock = ClockMap()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._offers_send, self._offers = trio.open_memory_channel(32)
        self._cancelled: dict[str, str] = {}
        self._gone: RendezvousError | None = None

    # -- clock --
    @property
    def clock_offset(self) -> float:
        """Server clock minus ours."""
        return self._clock.offset

    @property
    def rtt(self) -> float:
        """The smallest round trip to the server seen so far (seconds)."""
        return self._clock.rtt

    def _sample(self, sent: float, received: float, server_now: float) -> None:
        self._clock.sample(sent, received, server_now)

    def to_local(self, server_time: float) -> float:
        return self._clock.to_local(server_time)

    # -- plumbing --
    def _gone_error(self) -> RendezvousError:
        gone = self._gone or ServerGone("connection closed")
        return type(gone)(str(gone))  # a fresh instance per raise: tracebacks must not pile up

    async def _send(self, msg: dict) -> None:
        # A frame cut in half by a cancellation would desynchronise the stream for every later
        # request, so the write is shielded; its own deadline covers a server that stopped reading.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_TIMEOUT) as stuck:
                try:
                    await self._frames.send(msg)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(ServerGone(f"lost the server connection: {exc}"))
            if stuck.cancelled_caught:
                self._fail(ServerGone(f"the server has not read our frames for {SEND_TIMEOUT:g} s"))
                await trio.aclose_forcefully(self._frames.stream)

    async def _request(self, kind: str, **fields) -> dict:
        if self._gone is not None:
            raise self._gone_error()
        rid = next(self._ids)
        reply = self._pending[rid] = _Reply()
        try:
            await self._send(make(kind, id=rid, **fields))
            await reply.event.wait()
        finally:
            self._pending.pop(rid, None)
        if reply.msg is None:
            raise self._gone_error()
        if reply.msg["t"] == "error":
            raise error_from(reply.msg)
        return reply.msg

    def _fail(self, exc: RendezvousError) -> None:
        if self._gone is None:
            self._gone = exc
        for reply in self._pending.values():
            reply.event.set()
        self._offers_send.close()

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self._frames.receive()
                if msg is None:
                    self._fail(ServerGone("the server closed the connection"))
                    return
                self._dispatch(msg)
        except BadFrame as exc:
            self._fail(ProtocolViolation(f"malformed frame from the server: {exc}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ServerGone(f"lost the server connection: {exc}"))

    def _dispatch(self, msg: dict) -> None:
        kind = msg["t"]
        rid = msg.get("id")
        if rid is not None and rid in self._pending:
            reply = self._pending[rid]
            reply.msg = msg
            reply.event.set()
        elif kind == "offer":
            offer = Offer(msg["offer"], msg["from"], msg["info"], self.to_local(msg["expires"]))
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
            # An error not tied to a request: the server is about to close this connection.
            self._fail(ServerGone(f"server: {msg['code']}: {msg['message']}"))

    def _session(self, msg: dict) -> Session:
        return Session(msg["session"], msg["peer"], msg["info"], msg["key"], self.to_local(msg["start_at"]),
                       msg["role"])

    async def _enroll(self, info: dict | None, name: str | None, secret: str | None) -> None:
        sent = trio.current_time()
        await self._frames.send(make("enroll", id=0, info=info, name=name, secret=secret))
        msg = await self._frames.receive()
        if msg is None:
            raise ServerGone("the server closed the connection during enroll")
        if msg["t"] == "error":
            raise error_from(msg)
        if msg["t"] != "enrolled":
            raise ProtocolViolation(f"expected enrolled, got {msg['t']}")
        self._sample(sent, trio.current_time(), msg["now"])
        self.peer_id, self.secret = msg["peer"], msg["secret"]
        self.keepalive = float(msg["keepalive"])
        obs = msg["observed"]
        self.observed = (str(obs[0]), int(obs[1])) if len(obs) == 2 else None

    async def _keepalive_loop(self) -> None:
        while self._gone is None:
            await trio.sleep(self.keepalive)
            try:
                await self.ping()
            except RendezvousError:
                return

    # -- public API --
    async def ping(self) -> float:
        """One round trip to the server; refines the clock offset; returns the RTT in seconds."""
        sent = trio.current_time()
        msg = await self._request("ping")
        received = trio.current_time()
        self._sample(sent, received, msg["now"])
        return received - sent

    async def update_info(self, info: dict) -> None:
        try:
            check_info(info)
        except BadFrame as exc:
            raise ValueError(f"node info rejected: {exc}") from None
        await self._request("info", info=info)

    async def connect(self, peer_id: str, timeout: float = 10.0) -> Session:
        """Ask peer_id for a session; raises UnknownPeer, PeerOffline, Refused or RendezvousTimeout."""
        # The server enforces the timeout; the local guard only covers a server that stops answering.
        with trio.move_on_after(timeout + max(2.0, 4 * min(self.rtt, 5.0))) as guard:
            msg = await self._request("connect", target=peer_id, timeout=float(timeout))
        if guard.cancelled_caught:
            raise RendezvousTimeout(f"timeout: no answer about {peer_id} within {timeout:g} s")
        return self._session(msg)

    async def next_offer(self) -> Offer:
        """Wait for the next peer that wants a session with us (offers cancelled meanwhile are skipped)."""
        while True:
            try:
                offer = await self._offers.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._gone_error() from None
            if offer.offer_id not in self._cancelled:
                return offer

    async def accept(self, offer: Offer) -> Session:
        if offer.offer_id in self._cancelled:
            raise OfferGone(f"offer from {offer.peer_id} ended: {self._cancelled[offer.offer_id]}")
        return self._session(await self._request("accept", offer=offer.offer_id))

    async def refuse(self, offer: Offer) -> None:
        if offer.offer_id in self._cancelled:
            return
        try:
            await self._request("refuse", offer=offer.offer_id)
        except OfferGone:
            pass


def parse_server(server: str | tuple[str, int], default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    if isinstance(server, tuple):
        return server
    if server.count(":") > 1 and not server.startswith("["):
        return server, default_port  # a bare IPv6 address; with a port it must be [addr]:port
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        return server.strip("[]"), default_port
    return host.strip("[]"), int(port)


@asynccontextmanager
async def open_rendezvous(
    server: str | tuple[str, int],
    *,
    info: dict | None = None,
    name: str | None = None,
    secret: str | None = None,
    connect_timeout: float = 10.0,
    local_address: str | None = None,
) -> AsyncIterator[RendezvousClient]:
    """Connect to the server, enroll (under ``name`` if given, proving ownership with ``secret``)."""
    host, port = parse_server(server)
    if info is not None:
        try:
            check_info(info)
        except BadFrame as exc:
            raise ValueError(f"node info rejected: {exc}") from None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    except (OSError, trio.TooSlowError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
        raise ServerUnreachable(f"cannot reach rendezvous server {host}:{port}: {reason}") from None
    frames = FrameStream(stream, SERVER_MESSAGES)
    client = RendezvousClient(frames, (host, port))
    try:
        try:
            with trio.fail_after(connect_timeout):
                await client._enroll(info, name, secret)
        except trio.TooSlowError:
            raise RendezvousTimeout(f"timeout: {host}:{port} did not answer the enroll") from None
        except BadFrame as exc:
            raise ProtocolViolation(f"malformed frame from the server: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ServerGone(f"lost the server connection during enroll: {exc}") from None
        # The caller's own exception leaves unwrapped: raised inside the nursery it would come out
        # as an ExceptionGroup, and callers could no longer `except ConnectError`.
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            nursery.start_soon(client._keepalive_loop)
            try:
                yield client
            except BaseException as exc:
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        client._fail(ServerGone("rendezvous client closed"))
        await trio.aclose_forcefully(stream)
