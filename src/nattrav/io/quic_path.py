"""QUIC over the punched UDP socket: aioquic's sans-IO QuicConnection driven by Trio.

The socket is the one whose NAT mapping was punched (a new socket would get a new mapping), and
packets go only to the peer address the punch found; datagrams from any other address are dropped
and counted before QUIC sees them. Roles follow the rendezvous: the "first" side (the initiator,
who asked for the peer by ID) is the QUIC client, the "second" side the server. Both sides present
key-bound certificates (proto/certs.py) and the server requires the client's; right after the TLS
handshake each side checks the peer's certificate against the peer ID it expects, before a byte is
delivered or sent (aioquic has no verification hook inside the handshake; libp2p's TLS spec allows
exactly this for the server side). The client also waits for the server's HANDSHAKE_DONE, so a
client the server refused learns it from open_quic_path, not from a later read.

What the application gets (ALPN "nattrav/1"): one reliable byte stream each way (`path.stream`, a
trio HalfCloseableStream: send_all / receive_some / send_eof, so the same code pipes it as a TCP or
TLS stream), carried on one unidirectional QUIC stream per direction so either side may speak first;
and unreliable datagrams (RFC 9221). Liveness: a PING when nothing was sent for
`keepalive_interval` (keeps both NAT mappings open; size it from the mapping lifetime), and the
path is declared dead after `idle_timeout` without a packet from the peer. A dead path makes every
pending and later operation raise PathDead, so data that could not be delivered is never silent.

Sending: runs of equal-sized packets go to the kernel in one sendmsg with UDP_SEGMENT (GSO), one
trip through the stack for up to 53 packets; a kernel without it turns GSO off for the path.

aioquic grows its receive windows by what arrived, not by what the application read; a slow reader
would then buffer without bound. _Connection grants stream credit from what was read instead.
aioquic internals are used in _Connection only (request a client certificate, read the peer's
certificate, that credit, the send queue); aioquic is pinned below 2 for that.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import math
import os
import re
import socket
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.logger import QuicLogger, QuicLoggerTrace
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header

from ..errors import HandshakeFailed, PeerAuthError
from ..identity import Identity, PeerId
from ..proto.certs import issue_certificate, verify_peer_certificate

ALPN = "nattrav/1"
ROLE_OF = {"first": "client", "second": "server"}  # rendezvous role -> QUIC role
RECV_SIZE = 65536  # never truncate a datagram: a cut QUIC packet is only noise
RECV_BATCH = 64  # datagrams read per wake-up before QUIC answers (fewer, fuller ACK packets)
SOCKET_BUFFER = 4 * 1024 * 1024
IGNORED_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
CID_LENGTH = 8
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux >= 4.18; Python exports it from 3.12
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # one UDP datagram's payload before the kernel cuts it
_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42  # TLS alert bad_certificate, as a QUIC error
CLOSE_LINGER_MIN, CLOSE_LINGER_MAX = 0.3, 2.0  # seconds a closing side stays to repeat its close
_APP_ERROR = 1  # our application error code: the application gave up (an exception, a cancel)
BYE = "nattrav/1 bye"  # graceful close reason: "nattrav/1 bye <bytes received> <end received 0/1>"
_BYE_RE = re.compile(r"nattrav/1 bye (\d{1,20}) ([01])\Z")


class PathDead(trio.BrokenResourceError):
    """The QUIC path ended before the operation could complete: the peer went silent (idle timeout),
    closed with an error, or reset the stream. str() says which; data may not have arrived."""


@dataclass(frozen=True)
class QuicSettings:
    """Knobs of one path. Times in seconds."""

    idle_timeout: float = 30.0  # no packet from the peer for this long: the path is dead
    keepalive_interval: float | None = 10.0  # PING when we sent nothing for this long; None: never
    handshake_timeout: float = 10.0
    close_timeout: float = 10.0  # aclose() waits this long for the peer to acknowledge our data
    max_datagram_size: int = 1232  # UDP payload; 1280 (IPv6 minimum MTU) - 48 bytes of headers
    stream_window: int = 4 * 1024 * 1024  # bytes the peer may send ahead of what we read
    connection_window: int = 16 * 1024 * 1024
    send_buffer: int = 1024 * 1024  # bytes queued ahead of the congestion window before send_all waits
    datagram_queue: int = 1024  # received datagrams held for receive_datagram(); more are dropped
    congestion_control: str = "reno"
    drop_reasons: bool = False  # also count discarded packets by reason (costs ~5% of goodput)
    gso: bool = True  # hand runs of packets to the kernel in one call (UDP GSO), where it can

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0 or not self.handshake_timeout > 0 or not self.close_timeout >= 0:
            raise ValueError("timeouts must be positive")
        if self.keepalive_interval is not None and not 0 < self.keepalive_interval < self.idle_timeout:
            raise ValueError("keepalive_interval must be positive and below idle_timeout "
                             "(else an idle path dies between keepalives)")
        if not 1200 <= self.max_datagram_size <= 65527:
            raise ValueError("max_datagram_size must be 1200..65527 (QUIC needs 1200)")
        if min(self.stream_window, self.connection_window, self.send_buffer, self.datagram_queue) < 1:
            raise ValueError("windows and queues must be positive")


# --- aioquic, adapted --------------------------------------------------------------------------

class _DropTrace(QuicLoggerTrace):
    """Keeps only the count of dropped packets by reason (aioquic reports drops only to a qlog)."""

    def __init__(self, counter: Counter[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counter = counter

    def log_event(self, *, category: str, event: str, data: dict) -> None:
        if event == "packet_dropped":
            self._counter[data.get("trigger", "unknown")] += 1


class _DropLogger(QuicLogger):
    def __init__(self, counter: Counter[str]) -> None:
        super().__init__()
        self._counter = counter

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace:
        return _DropTrace(self._counter, is_client=is_client, odcid=odcid)

    def end_trace(self, trace: QuicLoggerTrace) -> None:
        pass


class _Connection(QuicConnection):
    """A QuicConnection with mutual authentication and read-driven stream credit. Every use of
    aioquic's internals is here."""

    def __init__(self, *args: Any, stream_window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_offsets: dict[int, int] = {}  # stream -> bytes the application has read
        self.packets_accepted = 0  # packets that decrypted and were new (not replays)
        self._window = stream_window

    def _payload_received(self, *args: Any, **kwargs: Any) -> Any:
        self.packets_accepted += 1
        return super()._payload_received(*args, **kwargs)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # aioquic's only switch for a CertificateRequest; the server must authenticate the client
            self.tls._request_client_certificate = True

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        read = self.read_offsets.get(stream.stream_id)
        if read is None:
            return super()._write_stream_limits(builder=builder, space=space, stream=stream)
        # Credit = what was read + one window, raised in steps of half a window to batch updates.
        if read + self._window - stream.max_stream_data_local >= self._window // 2:
            stream.max_stream_data_local = read + self._window
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA, capacity=17,
                                      handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    # read-only views of internals
    def peer_certificates(self) -> tuple[Any, list[Any]]:
        return self.tls._peer_certificate, list(self.tls._peer_certificate_chain)

    def handshake_confirmed(self) -> bool:
        return bool(self._handshake_confirmed)

    def unsent(self, stream_id: int, written: int) -> int:
        """Bytes written to the stream that were never sent (lost ones to resend count too)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else max(0, written - stream.sender.next_offset)

    def send_finished(self, stream_id: int) -> bool:
        """Every byte and the FIN acknowledged (aioquic forgets a stream once it is done)."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    def acked(self, stream_id: int) -> float:
        """How far the peer acknowledged the stream without a gap (inf once it is done)."""
        stream = self._streams.get(stream_id)
        return math.inf if stream is None else stream.sender._buffer_start

    def datagrams_queued(self) -> int:
        return len(self._datagrams_pending)

    def smoothed_rtt(self) -> float:
        return float(self._loss._rtt_smoothed)

    def ending(self) -> bool:
        """Closed by either side, or closing (CONNECTION_CLOSE queued, sent or received)."""
        return self._close_pending or self._state in (
            QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED)

    def close_pending(self) -> bool:
        """We asked to close and the CONNECTION_CLOSE is not built yet."""
        return bool(self._close_pending)

    def probe_timeout(self) -> float:
        return float(self._loss.get_probe_timeout())

    def terminated(self) -> bool:
        return self._state == QuicConnectionState.TERMINATED


# --- the path ----------------------------------------------------------------------------------

class QuicStream(trio.abc.HalfCloseableStream):
    """The path's byte stream, one QUIC stream each way. One sender and one receiver at a time."""

    def __init__(self, path: QuicPath) -> None:
        self._path = path

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._path._send_stream(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._path._wait_send_room()

    async def send_eof(self) -> None:
        self._path._send_fin()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._path._receive_stream(max_bytes)

    async def aclose(self) -> None:
        await self._path.aclose()


class QuicPath:
    """An authenticated QUIC connection to one peer over one punched socket. Made by
    open_quic_path(); `peer_id` is the verified peer, `stream` the byte stream, `stats` counters."""

    def __init__(self, sock: Any, peer_addr: tuple[str, int], identity: Identity, expected: PeerId,
                 role: str, settings: QuicSettings,
                 intercept: Callable[[bytes], list[bytes] | None] | None) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server' (rendezvous {ROLE_OF}), not {role!r}")
        try:
            # the text recvfrom() gives back, so the address filter compares like with like
            self.peer_addr = (str(ipaddress.ip_address(peer_addr[0])), int(peer_addr[1]))
        except ValueError:
            raise ValueError(f"peer address must be an IP address (the punched one), not {peer_addr[0]!r}") from None
        self.peer_id = expected
        self.role = role
        self.settings = settings
        self.stream = QuicStream(self)
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._identity = identity
        self._intercept = intercept
        # A second descriptor for the caller's socket: non-blocking calls without trio's per-call
        # cost, and closing ours leaves the caller's socket (and its NAT mapping) open.
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)
        _grow_buffers(self._sock)
        self._conn: _Connection | None = None
        self._wake = trio.Event()  # something to send, or the timer moved
        self._changed = trio.Event()  # state the application waits on changed
        self._last_send = -math.inf
        self._ping_uid = 0
        self._dead: str | None = None  # why the path ended
        self._close_datagrams: list[bytes] | None = None  # our CONNECTION_CLOSE, to repeat
        self._gso = settings.gso
        self._error: HandshakeFailed | None = None
        self._authenticated = False
        self._closing = False
        # stream state
        self._tx_id: int | None = None
        self._tx_written = 0
        self._tx_fin = False
        self._tx_delivered = False  # the peer's close confirmed it got all we wrote and the end
        self._peer_reset: str | None = None
        self._rx_id = 3 if role == "client" else 2  # the peer's first unidirectional stream
        self._rx = bytearray()
        self._rx_total = 0
        self._rx_eof = False
        self._rx_reset: str | None = None
        self._datagrams: deque[bytes] = deque()
        self._sending = False
        self._receiving = False

    # -- public --

    @property
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        if self.settings.drop_reasons:
            out["drop_reasons"] = dict(self.drops)
        out["rtt"] = self._conn.smoothed_rtt() if self._conn is not None else None
        return out

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
                self._send_fin()
                await self._wait_delivered()
            if not self._delivered():
                problem = self._dead or (
                    f"the peer acknowledged nothing more for {self.settings.close_timeout:g} s")
            await self._close_connection(QuicErrorCode.NO_ERROR, self._bye())
        finally:
            self._die(self._dead or "closed")
        if problem is not None:
            raise PathDead(f"data may not have been delivered: {problem}")

    def _delivered(self) -> bool:
        if self._tx_delivered or self._tx_id is None:
            return self._tx_delivered or self._tx_written == 0
        return self._conn is not None and self._conn.send_finished(self._tx_id)

    async def _wait_delivered(self) -> None:
        conn = self._conn
        progress = conn.acked(self._tx_id_or_open())
        deadline = trio.current_time() + self.settings.close_timeout
        while not self._delivered() and self._dead is None:
            with trio.move_on_at(deadline) as scope:
                await self._wait_change()
            if scope.cancelled_caught:
                return
            if conn.acked(self._tx_id) > progress:
                progress = conn.acked(self._tx_id)
                deadline = trio.current_time() + self.settings.close_timeout

    def _bye(self) -> str:
        # The close carries what we received: a peer whose last acknowledgements are cut off by
        # our close still learns that all its data (and its end) arrived.
        return f"{BYE} {self._rx_total} {int(self._rx_eof)}"

    # -- stream internals --

    def _tx_id_or_open(self) -> int:
        if self._tx_id is None:
            conn = self._live_conn()
            self._tx_id = conn.get_next_available_stream_id(is_unidirectional=True)
            conn.send_stream_data(self._tx_id, b"", end_stream=False)
        return self._tx_id

    async def _send_stream(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            if self._tx_fin or self._closing:
                raise trio.ClosedResourceError("the stream was closed for sending")
            view = memoryview(data).cast("B")
            chunk = max(self.settings.send_buffer // 4, 16384)
            for start in range(0, len(view), chunk):
                await self._wait_send_room()
                conn = self._live_conn()
                piece = bytes(view[start:start + chunk])
                conn.send_stream_data(self._tx_id_or_open(), piece)
                self._tx_written += len(piece)
                self._kick()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def _wait_send_room(self) -> None:
        while True:
            conn = self._live_conn()
            if self._peer_reset is not None:
                raise PathDead(self._peer_reset)
            if self._tx_id is None or conn.unsent(self._tx_id, self._tx_written) < self.settings.send_buffer:
                return
            await self._wait_change()

    def _send_fin(self) -> None:
        if self._tx_fin or self._dead is not None:
            return
        self._tx_fin = True
        self._live_conn().send_stream_data(self._tx_id_or_open(), b"", end_stream=True)
        self._kick()

    async def _receive_stream(self, max_bytes: int | None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            while not self._rx:
                if self._rx_reset is not None:
                    raise PathDead(self._rx_reset)
                if self._rx_eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                if self._closing:
                    raise trio.ClosedResourceError("the path was closed")
                if self._dead is not None:
                    raise PathDead(f"the stream ended before the peer finished it: {self._dead}")
                await self._wait_change()
            n = len(self._rx) if max_bytes is None else min(max_bytes, len(self._rx))
            out = bytes(self._rx[:n])
            del self._rx[:n]
            conn = self._conn
            if conn is not None and self._rx_id in conn.read_offsets:
                before = conn.read_offsets[self._rx_id]
                conn.read_offsets[self._rx_id] = before + n
                # a credit update is due every half window read
                if (before + n) // (self.settings.stream_window // 2) != before // (self.settings.stream_window // 2):
                    self._kick()
            await trio.lowlevel.checkpoint()
            return out
        finally:
            self._receiving = False

    # -- driving aioquic --

    def _live_conn(self) -> _Connection:
        if self._closing and self._dead is not None:
            raise trio.ClosedResourceError("the path was closed")
        if self._dead is not None:
            raise PathDead(self._dead)
        assert self._conn is not None
        return self._conn

    def _kick(self) -> None:
        self._wake.set()

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

    def _configuration(self) -> QuicConfiguration:
        s = self.settings
        cert = issue_certificate(self._identity, dt.datetime.now(dt.timezone.utc))
        cfg = QuicConfiguration(
            is_client=self.role == "client", alpn_protocols=[ALPN], idle_timeout=s.idle_timeout,
            max_datagram_size=s.max_datagram_size, max_data=s.connection_window,
            max_stream_data=s.stream_window, congestion_control_algorithm=s.congestion_control,
            connection_id_length=CID_LENGTH,
            quic_logger=_DropLogger(self.drops) if s.drop_reasons else None)
        cfg.max_datagram_frame_size = 65536
        cfg.verify_mode = ssl.CERT_NONE  # no CA: _check_peer verifies the key-bound certificate
        cfg.certificate = cert.certificate
        cfg.private_key = cert.private_key
        return cfg

    async def _run_handshake(self, nursery: trio.Nursery) -> None:
        """Start the background tasks and complete the authenticated handshake, or set _error."""
        nursery.start_soon(self._receiver)
        nursery.start_soon(self._driver)
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                if self.role == "client":
                    self._conn = _Connection(configuration=self._configuration(),
                                             stream_window=self.settings.stream_window)
                    self._conn.read_offsets[self._rx_id] = 0
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
        # the client also waits for HANDSHAKE_DONE: proof that the server accepted its certificate
        return self._authenticated and self._conn is not None and (
            self.role == "server" or self._conn.handshake_confirmed())

    def _accept_first(self, data: bytes) -> bool:
        """Server: make the connection from the client's first Initial; False for anything else."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            return False
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            return False
        self._conn = _Connection(configuration=self._configuration(),
                                 original_destination_connection_id=header.destination_cid,
                                 stream_window=self.settings.stream_window)
        self._conn.read_offsets[self._rx_id] = 0
        return True

    async def _receiver(self) -> None:
        sock = self._sock
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            now = None
            for _ in range(RECV_BATCH):
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in IGNORED_ERRNOS:
                        self.counters["icmp_errors"] += 1
                        continue
                    self._die(f"receive failed: {exc.strerror or exc}")
                    return
                if (addr[0], addr[1]) != self.peer_addr:
                    self.counters["foreign"] += 1  # not the punched peer: never reaches QUIC
                    continue
                self.counters["datagrams_in"] += 1
                if self._intercept is not None:
                    replies = self._intercept(data)
                    if replies is not None:
                        self.counters["intercepted"] += 1
                        for reply in replies:
                            self._send_now(reply)
                        continue
                if self._close_datagrams is not None:
                    # aioquic stays silent once closing; RFC 9000 10.2.1 wants the close repeated
                    # to a peer still sending (it lost ours, and may wait on it for its data's fate)
                    if self.counters["close_repeated"] < 16:
                        self.counters["close_repeated"] += 1
                        for packet in self._close_datagrams:
                            self._send_now(packet)
                    continue
                if self._conn is None and not self._accept_first(data):
                    self.counters["before_initial"] += 1
                    continue
                if now is None:
                    now = trio.current_time()
                accepted = self._conn.packets_accepted
                self._conn.receive_datagram(data, self.peer_addr, now)
                if self._conn.packets_accepted == accepted:
                    # no packet in it decrypted as new: forged, replayed, corrupt, or too late
                    self.counters["discarded"] += 1
            if now is not None:
                self._process_events()
                self._notify()  # also for what raises no event (HANDSHAKE_DONE, acknowledgements)
                self._kick()

    def _send_now(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.peer_addr)
        except OSError:
            pass  # a reply to a late punch packet is best effort

    async def _driver(self) -> None:
        """The one task that sends: runs aioquic's timer, keepalives and the send queue."""
        while True:
            conn = self._conn
            deadline = math.inf
            if conn is not None:
                deadline = conn.get_timer() or math.inf
                if self._authenticated and self.settings.keepalive_interval is not None and not conn.ending():
                    deadline = min(deadline, self._last_send + self.settings.keepalive_interval)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            conn = self._conn
            if conn is None:
                continue
            now = trio.current_time()
            timer = conn.get_timer()
            if timer is not None and now >= timer:
                conn.handle_timer(now)
                self._process_events()
            if (self._authenticated and self.settings.keepalive_interval is not None and not conn.ending()
                    and now >= self._last_send + self.settings.keepalive_interval):
                self._ping_uid += 1
                conn.send_ping(self._ping_uid)
                self.counters["keepalives"] += 1
            try:
                await self._flush(conn, now)
            except OSError as exc:
                self._die(f"send failed: {exc.strerror or exc}")
                return
            if self._dead is not None and conn.get_timer() is None:
                return  # terminated: nothing left to time

    async def _flush(self, conn: _Connection, now: float) -> None:
        closing = conn.close_pending()
        datagrams = [data for data, _addr in conn.datagrams_to_send(now)]
        if closing and datagrams and self._close_datagrams is None:
            self._close_datagrams = datagrams
        # always to the address the punch found; aioquic is never asked where to send
        i = 0
        while i < len(datagrams):
            size = len(datagrams[i])
            j = i + 1
            if self._gso:
                # a run of equal-sized datagrams (the last may be shorter) goes down in one
                # sendmsg, cut by the kernel (UDP GSO): one trip through the stack, not one each
                limit = min(len(datagrams), i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
                while j < limit and len(datagrams[j]) == size:
                    j += 1
                if j < limit and len(datagrams[j]) < size:
                    j += 1
            await self._send(datagrams[i:j], size)
            i = j
        if datagrams:
            self.counters["datagrams_out"] += len(datagrams)
            self._last_send = now
            self._notify()  # sends free queue space and may finish a stream
        await trio.lowlevel.checkpoint()

    async def _send(self, batch: list[bytes], segment: int) -> None:
        while True:
            try:
                if len(batch) == 1:
                    self._sock.sendto(batch[0], self.peer_addr)
                else:
                    self._sock.sendmsg([b"".join(batch)], [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))],
                                       0, self.peer_addr)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
            except OSError as exc:
                if exc.errno in IGNORED_ERRNOS:
                    self.counters["icmp_errors"] += 1
                    return
                if len(batch) > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT,
                                                    errno.EOPNOTSUPP):
                    self._gso = False  # a kernel or device without UDP GSO: one sendto each
                    self.counters["gso_disabled"] += 1
                    for data in batch:
                        await self._send([data], len(data))
                    return
                raise

    def _process_events(self) -> None:
        conn = self._conn
        assert conn is not None
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, events.ConnectionTerminated):
                self._on_terminated(ev)
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
                if ev.stream_id == self._rx_id:
                    self._rx_reset = f"the peer aborted its stream (code {ev.error_code})"
            elif isinstance(ev, events.StopSendingReceived):
                if ev.stream_id == self._tx_id:
                    self._peer_reset = f"the peer stopped reading (code {ev.error_code})"

    def _on_stream_data(self, ev: events.StreamDataReceived) -> None:
        if ev.stream_id != self._rx_id:
            # nattrav/1 has one stream each way; a peer that opens others is not speaking it
            self._conn.close(error_code=QuicErrorCode.STREAM_STATE_ERROR,
                             reason_phrase=f"nattrav/1 has no stream {ev.stream_id}")
            self._die(f"the peer opened stream {ev.stream_id} (not nattrav/1)")
            return
        self._rx += ev.data
        self._rx_total += len(ev.data)
        if ev.end_stream:
            self._rx_eof = True

    def _check_peer(self, ev: events.HandshakeCompleted) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if ev.alpn_protocol != ALPN:
                raise HandshakeFailed(f"the peer does not speak {ALPN} (ALPN {ev.alpn_protocol!r})")
            cert, chain = conn.peer_certificates()
            if cert is None:
                raise PeerAuthError(f"the peer sent no certificate (expected {self.peer_id})",
                                    expected=self.peer_id)
            if chain:
                raise PeerAuthError("the peer sent a certificate chain (one certificate expected)",
                                    expected=self.peer_id)
            verify_peer_certificate(cert, self.peer_id, dt.datetime.now(dt.timezone.utc))
        except HandshakeFailed as exc:
            self._error = exc
            self.counters["auth_failures"] += 1
            # now, before the driver can send HANDSHAKE_DONE: the refused client must not take it
            # for acceptance
            # a transport close (frame_type set): an application close sent in handshake packets
            # reaches the peer as a bare APPLICATION_ERROR without our code
            conn.close(error_code=_BAD_CERTIFICATE if isinstance(exc, PeerAuthError) else _APP_ERROR,
                       frame_type=QuicFrameType.CRYPTO, reason_phrase="peer authentication failed")
            self._kick()
            return
        self._authenticated = True

    def _on_terminated(self, ev: events.ConnectionTerminated) -> None:
        if ev.error_code == QuicErrorCode.NO_ERROR:
            got = _BYE_RE.match(ev.reason_phrase or "")
            if got and self._tx_fin and int(got[1]) == self._tx_written and got[2] == "1":
                self._tx_delivered = True
        if ev.reason_phrase == "Idle timeout" and ev.frame_type == QuicFrameType.PADDING:  # aioquic's own
            reason = f"no packet from the peer for {self.settings.idle_timeout:g} s (idle timeout)"
        elif self._close_datagrams is not None:
            reason = "closed"  # our own close, ended
        elif ev.error_code == QuicErrorCode.NO_ERROR:
            reason = "the peer closed the path"
        elif ev.error_code == _BAD_CERTIFICATE:
            reason = f"the peer refused our certificate ({ev.reason_phrase or 'no reason given'})"
        else:
            reason = f"closed with error 0x{ev.error_code:x}" + (
                f" ({ev.reason_phrase})" if ev.reason_phrase else "")
        self._die(reason)

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
            await self._close_connection(_APP_ERROR, reason)
        self._closing = True
        self._die(self._dead or reason)


def _grow_buffers(sock: socket.socket) -> None:
    """Bigger kernel buffers absorb bursts of a full congestion window (root may exceed rmem_max)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for opt in (force, plain):
            if opt is None:
                continue
            try:
                if sock.getsockopt(socket.SOL_SOCKET, plain) < SOCKET_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                break
            except OSError:
                continue


@asynccontextmanager
async def open_quic_path(sock: Any, peer_addr: tuple[str, int], identity: Identity,
                         expected_peer: PeerId | str, *, role: str,
                         settings: QuicSettings | None = None,
                         intercept: Callable[[bytes], list[bytes] | None] | None = None,
                         ) -> AsyncIterator[QuicPath]:
    """An authenticated QUIC path over the punched UDP socket `sock` to `peer_addr`.

    `role` is "client" for the rendezvous' first side and "server" for the second (ROLE_OF). The
    peer must prove `expected_peer`, else PeerAuthError; other handshake failures (no answer in
    handshake_timeout, refused, no common protocol) raise HandshakeFailed. On leaving the block
    normally the path closes gracefully (aclose: our data acknowledged, or PathDead); on an
    exception it is aborted. The caller keeps and closes `sock`.

    `intercept(datagram)`, when given, sees each datagram from the peer first and returns None to
    pass it to QUIC, or a list of replies (maybe empty) to send instead: for late punch packets
    whose sender still waits for our answer."""
    peer = expected_peer if isinstance(expected_peer, PeerId) else PeerId.parse(expected_peer)
    path = QuicPath(sock, peer_addr, identity, peer, role, settings or QuicSettings(), intercept)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await path._run_handshake(nursery)
            if path._error is not None:
                await path._close_connection(_BAD_CERTIFICATE if isinstance(path._error, PeerAuthError)
                                             else _APP_ERROR, "handshake failed")
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
        trio.lowlevel.notify_closing(path._sock)
        path._sock.close()
    if path._error is not None:
        raise path._error
    if body_error is not None:
        raise body_error
