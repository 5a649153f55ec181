"""The QUIC path's settings, apart from io/quic_conn.py so that code which only builds or checks
them (api/udp.py's transport, at start-up) does not import aioquic (issue 13: start-up time)."""

from __future__ import annotations

from dataclasses import dataclass


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
    # client: yield the path only once the server's HANDSHAKE_DONE says it accepted our certificate
    # (one path round trip later); False: as soon as our own check of the server passed (io/quic_path.py)
    wait_confirmed: bool = False

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


__all__ = ["QuicSettings"]
