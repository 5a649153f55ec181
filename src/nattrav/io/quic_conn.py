"""aioquic's QuicConnection, adapted for io/quic_path.py: the path's settings, mutual authentication
with key-bound certificates, read-driven stream credit, and the close reasons in words.

aioquic grows its receive windows by what arrived, not by what the application read; a slow reader
would then buffer without bound. Connection grants stream credit from what was read instead.
aioquic internals are used here only (request a client certificate, read the peer's certificate,
that credit, the send queue); aioquic is pinned below 2 for that.
"""

from __future__ import annotations

import datetime as dt
import math
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from .quic_deps import aioquic_tls  # noqa: F401  (first: aioquic.tls without its CA-checking imports)
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.logger import QuicLogger, QuicLoggerTrace
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header

from ..errors import HandshakeFailed, PeerAuthError
from ..identity import Identity, PeerId
from ..proto.certs import issue_certificate, verify_peer_certificate
from .quic_settings import QuicSettings

ALPN = "nattrav/1"
CID_LENGTH = 8
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42  # TLS alert bad_certificate, as a QUIC error
APP_ERROR = 1  # our application error code: the application gave up (an exception, a cancel)


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


def configuration(identity: Identity, is_client: bool, s: QuicSettings, drops: Counter[str]) -> QuicConfiguration:
    """One side's QUIC configuration, with a fresh certificate bound to `identity`."""
    cert = issue_certificate(identity, dt.datetime.now(dt.timezone.utc))
    cfg = QuicConfiguration(
        is_client=is_client, alpn_protocols=[ALPN], idle_timeout=s.idle_timeout,
        max_datagram_size=s.max_datagram_size, max_data=s.connection_window,
        max_stream_data=s.stream_window, congestion_control_algorithm=s.congestion_control,
        connection_id_length=CID_LENGTH, quic_logger=_DropLogger(drops) if s.drop_reasons else None)
    cfg.max_datagram_frame_size = 65536
    cfg.verify_mode = ssl.CERT_NONE  # no CA: check_handshake verifies the key-bound certificate
    cfg.certificate = cert.certificate
    cfg.private_key = cert.private_key
    return cfg


class Connection(QuicConnection):
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


def accept_initial(data: bytes, make_config: Callable[[], QuicConfiguration], stream_window: int) -> Connection | None:
    """Server: the connection a client's first Initial asks for; None for anything else (no
    certificate is issued for junk)."""
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
    except ValueError:
        return None
    if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
        return None
    return Connection(configuration=make_config(), original_destination_connection_id=header.destination_cid,
                      stream_window=stream_window)


def check_handshake(conn: Connection, ev: events.HandshakeCompleted, expected: PeerId) -> None:
    """The completed handshake speaks nattrav/1 and the peer's certificate proves `expected`:
    HandshakeFailed (PeerAuthError for the certificate) otherwise."""
    if ev.alpn_protocol != ALPN:
        raise HandshakeFailed(f"the peer does not speak {ALPN} (ALPN {ev.alpn_protocol!r})")
    cert, chain = conn.peer_certificates()
    if cert is None:
        raise PeerAuthError(f"the peer sent no certificate (expected {expected})", expected=expected)
    if chain:
        raise PeerAuthError("the peer sent a certificate chain (one certificate expected)", expected=expected)
    verify_peer_certificate(cert, expected, dt.datetime.now(dt.timezone.utc))


def refusal_code(exc: HandshakeFailed) -> int:
    """What our close tells a peer we refused: its certificate (bad_certificate) or anything else."""
    return BAD_CERTIFICATE if isinstance(exc, PeerAuthError) else APP_ERROR


def terminated_reason(ev: events.ConnectionTerminated, idle_timeout: float, ours: bool) -> str:
    """Why the connection ended, in words (`ours`: we sent the close)."""
    if ev.reason_phrase == "Idle timeout" and ev.frame_type == QuicFrameType.PADDING:  # aioquic's own
        return f"no packet from the peer for {idle_timeout:g} s (idle timeout)"
    if ours:
        return "closed"  # our own close, ended
    if ev.error_code == QuicErrorCode.NO_ERROR:
        return "the peer closed the path"
    if ev.error_code == BAD_CERTIFICATE:
        return f"the peer refused our certificate ({ev.reason_phrase or 'no reason given'})"
    return f"closed with error 0x{ev.error_code:x}" + (f" ({ev.reason_phrase})" if ev.reason_phrase else "")


__all__ = ["ALPN", "APP_ERROR", "BAD_CERTIFICATE", "CID_LENGTH", "Connection", "QuicSettings", "accept_initial",
           "check_handshake", "configuration", "refusal_code", "terminated_reason"]
