"""QUIC over the punched UDP socket: aioquic's sans-IO QuicConnection driven by Trio.

Roles follow the rendezvous: the "first" side (the initiator, who asked for the peer by ID) is the
QUIC client, the "second" side the server. Both sides present key-bound certificates
(proto/certs.py) and the server requires the client's; right after the TLS handshake each side
checks the peer's certificate against the peer ID it expects, before a byte is delivered or sent
(aioquic has no verification hook inside the handshake; libp2p's TLS spec allows exactly this for
the server side).

The client's path is ready as soon as its own check of the server's certificate passed, as in TLS
1.3 (its Finished goes out with its first data), not one path round trip later when the server's
HANDSHAKE_DONE arrives. That is sound: what it sends is readable only by the verified peer, and the
server takes none of it before it has checked the client's certificate (RFC 9001 §5.7: no 1-RTT
data processed before the handshake completes; here, no event reaches the application before
_check_peer). A server that refuses our key closes with bad_certificate: the path dies, and
open_quic_path raises HandshakeFailed ("the peer refused our certificate") instead of the body's
PathDead, as it did when the client waited. `QuicSettings.wait_confirmed` restores the wait.

What the application gets (ALPN "nattrav/1"): one reliable byte stream each way (`path.stream`,
io/quic_stream.py) and unreliable datagrams (RFC 9221). Liveness: a PING when nothing was sent for
`keepalive_interval` (keeps both NAT mappings open; size it from the mapping lifetime), and the
path is declared dead after `idle_timeout` without a packet from the peer. A dead path makes every
pending and later operation raise PathDead, so data that could not be delivered is never silent.

The parts: io/quic_conn.py adapts aioquic (settings, authentication, stream credit), io/quic_wire.py
is the punched socket (the peer's datagrams only, UDP GSO out), io/quic_driver.py the two tasks that
move packets between them (one receives, one sends and keeps the timers), io/quic_stream.py the
byte stream and what a close says about it; this module is the path those parts make, from the
handshake to the close, and what the peer's events do to it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..errors import HandshakeFailed
from ..identity import Identity, PeerId
from .quic_conn import (APP_ERROR, BAD_CERTIFICATE, Connection, QuicSettings, accept_initial, check_handshake,
                        configuration, refusal_code, terminated_reason)
from .quic_driver import Driver
from .quic_stream import PathDead, QuicStream
from .quic_wire import PeerSocket

ROLE_OF = {"first": "client", "second": "server"}  # rendezvous role -> QUIC role
CLOSE_LINGER_MIN, CLOSE_LINGER_MAX = 0.3, 2.0  # seconds a closing side stays to repeat its close


class QuicPath:
    """An authenticated QUIC connection to one peer over one punched socket. Made by
    open_quic_path(); `peer_id` is the verified peer, `stream` the byte stream, `stats` counters."""

    def __init__(self, sock: Any, peer_addr: tuple[str, int], identity: Identity, expected: PeerId,
                 role: str, settings: QuicSettings,
                 intercept: Callable[[bytes], list[bytes] | None] | None, wire: Any = None) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server' (rendezvous {ROLE_OF}), not {role!r}")
        try:
            # the text recvfrom() gives back, so the address filter compares like with like
            self.peer_addr = (str(ipaddress.ip_address(peer_addr[0])), int(peer_addr[1]))
        except ValueError:
            raise ValueError(f"peer address must be an IP address (the punched one), not {peer_addr[0]!r}") from None
        self.peer_id = expected  # verified by the handshake before any data flows
        self.punched: Any = None  # the punched path under it, when the API made it (strategy, rtt)
        self.role = role
        self.settings = settings
        self.stream = QuicStream(self, rx_id=3 if role == "client" else 2)
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._identity = identity
        self._intercept = intercept
        # a relayed path brings its own wire (io/relay_path.py: relay or direct, whichever works now)
        self._driver = Driver(self, wire if wire is not None
                              else PeerSocket(sock, self.peer_addr, self.counters, settings.gso))
        self._conn: Connection | None = None
        self._changed = trio.Event()  # state the application waits on changed
        self._dead: str | None = None  # why the path ended
        self._error: HandshakeFailed | None = None
        self._authenticated = False
        self._refused: str | None = None  # client: the server refused our certificate (refused_us)
        self._closing = False
        self._datagrams: deque[bytes] = deque()

    # -- public --

    @property
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        if self.settings.drop_reasons:
            out["drop_reasons"] = dict(self.drops)
        out["rtt"] = self._conn.smoothed_rtt() if self._conn is not None else None
        return out

    @property
    def peer_key(self) -> bytes:
        """The peer's verified Ed25519 public key (raw 32 bytes)."""
        return self.peer_id.key_bytes

    @property
    def rtt(self) -> float | None:
        return self._conn.smoothed_rtt() if self._conn is not None else None

    @property
    def max_datagram_payload(self) -> int:
        # 1-RTT header (1 + the peer's connection ID, up to 20 + packet number, up to 4) + AEAD tag
        # 16 + DATAGRAM frame type and length 3
        return self.settings.max_datagram_size - (1 + 20 + 4 + 16 + 3)

    @property
    def dead_reason(self) -> str | None:
        return self._dead

    async def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram (at most max_datagram_payload bytes). Waits while QUIC's own
        queue is long (the congestion window is full), like a socket's send buffer."""
        if len(data) > self.max_datagram_payload:
            raise ValueError(f"datagram of {len(data)} bytes (at most {self.max_datagram_payload})")
        conn = self._live_conn()
        while conn.datagrams_queued() >= self.settings.datagram_queue:
            await self._wait_change()
            conn = self._live_conn()
        conn.send_datagram_frame(bytes(data))
        self._kick()
        await trio.lowlevel.checkpoint()

    async def receive_datagram(self) -> bytes:
        """The next datagram from the peer; PathDead once the path ended and none is left."""
        while not self._datagrams:
            if self._dead is not None:
                raise PathDead(self._dead)
            await self._wait_change()
        return self._datagrams.popleft()

    async def aclose(self) -> None:
        """Send what is left and the end of our stream, wait until the peer has all of it (its
        acknowledgements, or its own close saying so; up to close_timeout without progress), then
        close the connection. PathDead when that could not be confirmed: data may be missing."""
        if self._closing or self._conn is None:
            return
        self._closing = True
        problem = None
        try:
            if self._dead is None:
                self.stream.finish()
                await self.stream.wait_delivered(self.settings.close_timeout)
            if not self.stream.delivered():
                problem = self._dead or (
                    f"the peer acknowledged nothing more for {self.settings.close_timeout:g} s")
            await self._close_connection(QuicErrorCode.NO_ERROR, self.stream.bye())
        finally:
            self._die(self._dead or "closed")
        if problem is not None:
            raise PathDead(f"data may not have been delivered: {problem}")

    # -- the state the stream and the application wait on --

    def _live_conn(self) -> Connection:
        if self._closing and self._dead is not None:
            raise trio.ClosedResourceError("the path was closed")
        if self._dead is not None:
            raise PathDead(self._dead)
        assert self._conn is not None
        return self._conn

    def _kick(self) -> None:
        self._driver.kick()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _die(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._notify()
        self._kick()

    # -- the handshake --

    def _configuration(self) -> Any:
        return configuration(self._identity, self.role == "client", self.settings, self.drops)

    async def _run_handshake(self, nursery: trio.Nursery) -> None:
        """Start the background tasks and complete the authenticated handshake, or set _error."""
        nursery.start_soon(self._driver.receive_task)
        nursery.start_soon(self._driver.send_task)
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                if self.role == "client":
                    self._conn = Connection(configuration=self._configuration(),
                                            stream_window=self.settings.stream_window)
                    self._conn.read_offsets[self.stream.rx_id] = 0
                    self._conn.connect(self.peer_addr, now=trio.current_time())
                    self._kick()
                while not self._ready():
                    if self._error is not None:
                        return
                    if self._dead is not None:
                        self._error = HandshakeFailed(f"QUIC handshake with {self.peer_id} failed: {self._dead}")
                        return
                    await self._wait_change()
        except trio.TooSlowError:
            self._error = HandshakeFailed(
                f"no QUIC handshake with {self.peer_id} at {self.peer_addr[0]}:{self.peer_addr[1]} "
                f"within {self.settings.handshake_timeout:g} s")

    def _ready(self) -> bool:
        # a client with wait_confirmed also waits for HANDSHAKE_DONE: proof that the server
        # accepted its certificate
        return self._authenticated and self._conn is not None and (
            self.role == "server" or not self.settings.wait_confirmed or self._conn.handshake_confirmed())

    def refused_us(self) -> str | None:
        """Client: why the server refused our certificate after we took the path as ready (the
        close came before its HANDSHAKE_DONE), else None."""
        return self._refused

    def _accept_first(self, data: bytes) -> bool:
        """Server: make the connection from the client's first Initial; False for anything else."""
        conn = accept_initial(data, self._configuration, self.settings.stream_window)
        if conn is None:
            return False
        conn.read_offsets[self.stream.rx_id] = 0
        self._conn = conn
        return True

    def _check_peer(self, ev: events.HandshakeCompleted) -> None:
        conn = self._conn
        assert conn is not None
        try:
            check_handshake(conn, ev, self.peer_id)
        except HandshakeFailed as exc:
            self._error = exc
            self.counters["auth_failures"] += 1
            # now, before the driver can send HANDSHAKE_DONE: the refused client must not take it
            # for acceptance
            # a transport close (frame_type set): an application close sent in handshake packets
            # reaches the peer as a bare APPLICATION_ERROR without our code
            conn.close(error_code=refusal_code(exc), frame_type=QuicFrameType.CRYPTO,
                       reason_phrase="peer authentication failed")
            self._kick()
            return
        self._authenticated = True

    # -- what the peer sends --

    def _process_events(self) -> None:
        conn = self._conn
        assert conn is not None
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, events.ConnectionTerminated):
                if ev.error_code == QuicErrorCode.NO_ERROR:
                    self.stream.on_bye(ev.reason_phrase)
                reason = terminated_reason(ev, self.settings.idle_timeout, self._driver.close_datagrams is not None)
                if (self.role == "client" and ev.error_code == BAD_CERTIFICATE and not conn.handshake_confirmed()
                        and self._dead is None):
                    self._refused = reason
                self._die(reason)
            elif isinstance(ev, events.HandshakeCompleted):
                self._check_peer(ev)
            elif not self._authenticated:
                continue  # nothing from a peer we have not verified reaches the application
            elif isinstance(ev, events.StreamDataReceived):
                self._on_stream_data(ev)
            elif isinstance(ev, events.DatagramFrameReceived):
                if len(self._datagrams) < self.settings.datagram_queue:
                    self._datagrams.append(ev.data)
                else:
                    self.counters["datagrams_dropped_queue_full"] += 1
            elif isinstance(ev, events.StreamReset):
                if ev.stream_id == self.stream.rx_id:
                    self.stream.rx_reset = f"the peer aborted its stream (code {ev.error_code})"
            elif isinstance(ev, events.StopSendingReceived):
                if ev.stream_id == self.stream.tx_id:
                    self.stream.peer_reset = f"the peer stopped reading (code {ev.error_code})"

    def _on_stream_data(self, ev: events.StreamDataReceived) -> None:
        if ev.stream_id != self.stream.rx_id:
            # nattrav/1 has one stream each way; a peer that opens others is not speaking it
            self._conn.close(error_code=QuicErrorCode.STREAM_STATE_ERROR,
                             reason_phrase=f"nattrav/1 has no stream {ev.stream_id}")
            self._die(f"the peer opened stream {ev.stream_id} (not nattrav/1)")
            return
        self.stream.on_data(ev)

    # -- closing --

    async def _close_connection(self, code: int, reason: str) -> None:
        """Send CONNECTION_CLOSE, then stay (shielded) a few probe timeouts to repeat it to a peer
        that lost it; the receiver task does the repeating."""
        conn = self._conn
        if conn is None:
            return
        if not conn.ending():
            conn.close(error_code=code, reason_phrase=reason)
            self._kick()
        linger = min(CLOSE_LINGER_MAX, max(CLOSE_LINGER_MIN, 5 * conn.probe_timeout()))
        with trio.CancelScope(shield=True):
            await trio.sleep(linger)

    async def _abort(self, reason: str) -> None:
        if self._conn is not None and self._dead is None:
            await self._close_connection(APP_ERROR, reason)
        self._closing = True
        self._die(self._dead or reason)


@asynccontextmanager
async def open_quic_path(sock: Any, peer_addr: tuple[str, int], identity: Identity,
                         expected_peer: PeerId | str, *, role: str,
                         settings: QuicSettings | None = None,
                         intercept: Callable[[bytes], list[bytes] | None] | None = None,
                         wire: Any = None) -> AsyncIterator[QuicPath]:
    """An authenticated QUIC path over the punched UDP socket `sock` to `peer_addr`.

    `role` is "client" for the rendezvous' first side and "server" for the second (ROLE_OF). The
    peer must prove `expected_peer`, else PeerAuthError; other handshake failures (no answer in
    handshake_timeout, refused, no common protocol) raise HandshakeFailed. On leaving the block
    normally the path closes gracefully (aclose: our data acknowledged, or PathDead); on an
    exception it is aborted. The caller keeps and closes `sock`.

    `intercept(datagram)`, when given, sees each datagram from the peer first and returns None to
    pass it to QUIC, or a list of replies (maybe empty) to send instead: for late punch packets
    whose sender still waits for our answer.

    `wire`, when given, carries the datagrams instead of `sock` (None then): a relayed path's
    (io/relay_path.py RelayedPath.quic_wire), which may move from the relay to a direct route
    underneath; `peer_addr` then only names the peer for QUIC."""
    peer = expected_peer if isinstance(expected_peer, PeerId) else PeerId.parse(expected_peer)
    path = QuicPath(sock, peer_addr, identity, peer, role, settings or QuicSettings(), intercept, wire)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await path._run_handshake(nursery)
            if path._error is not None:
                await path._close_connection(refusal_code(path._error), "handshake failed")
                nursery.cancel_scope.cancel()
            else:
                # The caller's own exception leaves unwrapped (not as an ExceptionGroup)
                try:
                    yield path
                    await path.aclose()
                except BaseException as exc:
                    body_error = exc
                    await path._abort("application error")
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        path._die(path._dead or "closed")
        path._driver.wire.close()
    if path._error is not None:
        raise path._error
    if body_error is not None:
        if path._refused is not None and isinstance(body_error, (PathDead, trio.ClosedResourceError)):
            # the path was ready before the server's verdict on our key (see the module's doc)
            raise HandshakeFailed(f"QUIC handshake with {path.peer_id} failed: {path._refused}") from body_error
        raise body_error


__all__ = ["PathDead", "QuicPath", "QuicSettings", "QuicStream", "ROLE_OF", "open_quic_path"]
