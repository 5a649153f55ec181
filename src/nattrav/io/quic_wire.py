"""The punched UDP socket as io/quic_path.py's wire: datagrams in from the punched peer only, runs of
datagrams out in one sendmsg each (UDP GSO).

The socket is the one whose NAT mapping was punched (a new socket would get a new mapping), and
packets go only to the peer address the punch found; datagrams from any other address are counted
and dropped before QUIC sees them. Runs of equal-sized packets go to the kernel in one sendmsg with
UDP_SEGMENT, one trip through the stack for up to 53 packets; a kernel without it turns GSO off for
the path.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import trio

RECV_SIZE = 65536  # never truncate a datagram: a cut QUIC packet is only noise
RECV_BATCH = 64  # datagrams read per wake-up before QUIC answers (fewer, fuller ACK packets)
SOCKET_BUFFER = 4 * 1024 * 1024
IGNORED_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux >= 4.18; Python exports it from 3.12
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # one UDP datagram's payload before the kernel cuts it


class PeerSocket:
    """A second descriptor for the caller's punched socket, talking to `peer_addr` only: non-blocking
    calls without trio's per-call cost, and closing ours leaves the caller's socket (and its NAT
    mapping) open. `counters` is the path's: foreign, datagrams_in, icmp_errors, gso_disabled."""

    def __init__(self, sock: Any, peer_addr: tuple[str, int], counters: Counter[str], gso: bool) -> None:
        self.peer_addr = peer_addr
        self.counters = counters
        self.gso = gso
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)
        grow_buffers(self._sock)

    async def wait_readable(self) -> None:
        """Until a datagram may be there; trio.ClosedResourceError once close() was called."""
        await trio.lowlevel.wait_readable(self._sock)

    def received(self) -> Iterator[bytes]:
        """The peer's datagrams waiting in the kernel, up to RECV_BATCH. ICMP errors and other
        senders are counted and skipped; any other OSError ends the path (it propagates)."""
        for _ in range(RECV_BATCH):
            try:
                data, addr = self._sock.recvfrom(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in IGNORED_ERRNOS:
                    self.counters["icmp_errors"] += 1
                    continue
                raise
            if (addr[0], addr[1]) != self.peer_addr:
                self.counters["foreign"] += 1  # not the punched peer: never reaches QUIC
                continue
            self.counters["datagrams_in"] += 1
            yield data

    def send_now(self, data: bytes) -> None:
        """Best effort, never waits (a reply to a late punch packet, a repeated close)."""
        try:
            self._sock.sendto(data, self.peer_addr)
        except OSError:
            pass

    async def send(self, datagrams: list[bytes]) -> None:
        """All of `datagrams`, in order, always to the address the punch found: aioquic is never
        asked where to send. OSError (other than an ICMP error) ends the path."""
        i = 0
        while i < len(datagrams):
            size = len(datagrams[i])
            j = i + 1
            if self.gso:
                # a run of equal-sized datagrams (the last may be shorter) goes down in one
                # sendmsg, cut by the kernel (UDP GSO): one trip through the stack, not one each
                limit = min(len(datagrams), i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
                while j < limit and len(datagrams[j]) == size:
                    j += 1
                if j < limit and len(datagrams[j]) < size:
                    j += 1
            await self._send(datagrams[i:j], size)
            i = j

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
                    self.gso = False  # a kernel or device without UDP GSO: one sendto each
                    self.counters["gso_disabled"] += 1
                    for data in batch:
                        await self._send([data], len(data))
                    return
                raise

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


def grow_buffers(sock: socket.socket) -> None:
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


__all__ = ["PeerSocket", "RECV_BATCH", "UDP_SEGMENT", "grow_buffers"]
