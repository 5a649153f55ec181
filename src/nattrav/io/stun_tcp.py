"""STUN Binding over TCP (RFC 5389 §7.2.2 framing: messages back to back on the stream), both ends.

Why TCP at all: a NAT may allocate TCP ports unlike UDP ones (another counter, another range), so a
TCP traversal must measure its TCP mappings with TCP probes. The client opens several connections
from ONE local port (SO_REUSEADDR + SO_REUSEPORT) to different server endpoints; for an APDM NAT each
is a new mapping, and the differences between them give the TCP allocation step Δ.

The server side answers Binding requests on the same IPs and ports as the UDP server. CHANGE-REQUEST
means nothing on a stream (the answer must come back on the connection), so it gets a 400.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter
from functools import partial
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from ..core.limits import HEADROOM, ensure_fd_capacity, open_fd_count
from ..errors import BadPacket, FdLimitError, LocalProtocolError, StunTcpError
from ..proto.stun import HEADER_LEN, Message, parse
from ..proto.stun_attrs import Address, Attr, Class, Method
from ..proto.stun_server import StunServerConfig, decide, error_response

log = logging.getLogger(__name__)

# A client connects, sends one Binding request, reads the answer and closes (tcp_binding). Slots are
# the scarce resource (each holds a descriptor), so a connection holds one only as long as that takes:
FIRST_REQUEST_TIMEOUT = 5.0  # from accept to the first request
IDLE_AFTER_ANSWER = 2.0  # after an answer, the next request must come this soon
MAX_LIFETIME = 30.0  # whatever it does, a connection is closed after this long
MAX_MESSAGE = 2048  # a Binding exchange is far smaller; a longer length field is garbage
MAX_CONNECTIONS = 512  # beyond this, new connections are closed at once (no unbounded memory)
MAX_PER_SOURCE = 8  # per source IP (IPv6: per /64): one source cannot take the slots of everyone
MIN_CONNECTIONS = 16  # the least we serve with, however low the descriptor limit


def reuse_socket(family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket that may share its local port with the punch's other sockets."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setblocking(False)
    return s


async def read_message(stream: trio.abc.ReceiveStream, buf: bytearray) -> bytes | None:
    """One STUN message off a stream (None at a clean EOF between messages). BadPacket on a header
    no STUN message can have; never buffers more than MAX_MESSAGE bytes."""
    while True:
        if len(buf) >= HEADER_LEN:
            mtype, length = struct.unpack_from("!HH", buf)
            if mtype & 0xC000 or length % 4 or HEADER_LEN + length > MAX_MESSAGE:
                raise BadPacket("not a STUN header on the stream")
            if len(buf) >= HEADER_LEN + length:
                msg = bytes(buf[:HEADER_LEN + length])
                del buf[:HEADER_LEN + length]
                return msg
        chunk = await stream.receive_some(MAX_MESSAGE)
        if not chunk:
            if buf:
                raise BadPacket("stream ended inside a STUN message")
            return None
        buf += chunk


# ---- server


def source_key(ip: str) -> str:
    """What one source is, for the per-source cap: its IPv4 address, or its IPv6 /64 (one host can
    use a whole /64)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 client
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def connection_cap(wanted: int, listeners: int) -> int:
    """How many connections the process can hold open: `wanted`, after raising RLIMIT_NOFILE's soft
    limit towards the hard one if needed; fewer when even the hard limit does not leave room (then
    accept() would fail with EMFILE for everyone, and starve the rest of the process)."""
    try:
        ensure_fd_capacity(wanted + listeners)
        return wanted
    except FdLimitError:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        room = soft - open_fd_count() - listeners - HEADROOM
        cap = max(MIN_CONNECTIONS, min(wanted, room))
        log.warning("STUN over TCP: RLIMIT_NOFILE %d leaves room for %d connections, not %d; raise it "
                    "(ulimit -n, LimitNOFILE=)", soft, cap, wanted)
        return cap


@dataclass
class StunTcpServer:
    config: StunServerConfig
    addresses: list[Address] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    active: int = 0
    max_connections: int = MAX_CONNECTIONS
    per_source: Counter = field(default_factory=Counter)

    def answer(self, data: bytes, src: Address, recv_at: Address) -> bytes | None:
        """The response to one request read at `recv_at` from `src` (None: say nothing)."""
        try:
            req = parse(data)
        except BadPacket:
            self.stats["malformed"] += 1
            return None
        change = req.get(Attr.CHANGE_REQUEST)
        if req.cls == Class.REQUEST and change is not None and (change.ip or change.port):
            self.stats["error_400"] += 1
            return error_response(req, 400, "CHANGE-REQUEST is not served over TCP")
        d = decide(req, src, recv_at, self.config, now=time.time())
        if d.response is None:
            self.stats[d.reason] += 1
            return None
        self.stats["answered" if d.reason == "answered" else d.reason] += 1
        return d.response

    async def handle(self, stream: trio.SocketStream, public: Address | None = None) -> None:
        """One connection; `public`: the listener's address as clients see it (behind a 1:1 NAT the
        socket's own is a private one)."""
        try:
            src = stream.socket.getpeername()[:2]
            at = public or stream.socket.getsockname()[:2]
        except OSError:  # reset before we looked
            self.stats["broken"] += 1
            await trio.aclose_forcefully(stream)
            return
        await self.serve_connection(stream, src, at)

    async def serve_connection(self, stream: trio.abc.Stream, src: Address, at: Address) -> None:
        key = source_key(src[0])
        if self.active >= self.max_connections:
            self.stats["refused_busy"] += 1
            await trio.aclose_forcefully(stream)
            return
        if self.per_source[key] >= MAX_PER_SOURCE:
            self.stats["refused_per_source"] += 1
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        self.per_source[key] += 1
        try:
            buf = bytearray()
            end = trio.current_time() + MAX_LIFETIME
            wait = FIRST_REQUEST_TIMEOUT
            while True:
                with trio.move_on_at(min(trio.current_time() + wait, end)):
                    data = await read_message(stream, buf)
                    if data is None:
                        return
                    out = self.answer(data, src, at)
                    if out is not None:
                        await stream.send_all(out)
                    wait = IDLE_AFTER_ANSWER
                    continue
                self.stats["idle_closed"] += 1
                return
        except BadPacket:
            self.stats["malformed"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stats["broken"] += 1
        finally:
            self.active -= 1
            self.per_source[key] -= 1
            if not self.per_source[key]:
                del self.per_source[key]  # the table holds live sources only
            await trio.aclose_forcefully(stream)


def _listener(ip: str, reuse_port: bool = False) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = trio.socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one of an instance's several processes (StunServerConfig.reuse_port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


async def serve_stun_tcp(config: StunServerConfig, addresses: list[Address], *,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve STUN over TCP on each of `addresses` (the UDP server's) forever; task_status gets the
    StunTcpServer (counters)."""
    srv = StunTcpServer(config, max_connections=connection_cap(MAX_CONNECTIONS, len(addresses)))
    listeners = []
    try:
        for ip, port in addresses:
            s = _listener(ip, config.reuse_port)
            try:
                await s.bind((config.bind_ip(ip), port))
                s.listen(128)
            except OSError:
                s.close()
                raise
            listeners.append(trio.SocketListener(s))
            srv.addresses.append((ip, port))
        async with trio.open_nursery() as nursery:
            for lst, public in zip(listeners, srv.addresses):
                nursery.start_soon(trio.serve_listeners, partial(srv.handle, public=public), [lst])
            task_status.started(srv)
    finally:
        for lst in listeners:
            await trio.aclose_forcefully(lst)


# ---- client


class TcpBinding(NamedTuple):
    mapped: Address  # our address as the server saw it
    local: Address  # the address the connection left from (the kernel's choice of source IP)


def close_with_rst(s: socket.socket) -> None:
    # SO_LINGER 0: no TIME_WAIT pins the 4-tuple, so the same server can be asked again from the port
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def _connecting(local: tuple[str, int], server: Address) -> socket.socket:
    """A socket bound to `local` whose SYN to `server` has left: a non-blocking connect(), so that the
    caller decides the order in which its probes' SYNs leave (and thus reach the NAT)."""
    s = reuse_socket()
    try:
        s.bind(local)
        rc = s.connect_ex(server)
    except BaseException:
        s.close()
        raise
    if rc not in (0, errno.EINPROGRESS):
        s.close()
        raise StunTcpError(rc, f"TCP connect from {local[1]} to {server[0]}:{server[1]}: {os.strerror(rc)}")
    return s


async def _binding_on(s: socket.socket, local: tuple[str, int], server: Address, timeout: float) -> TcpBinding:
    """Finish the Binding on `s` (a _connecting() socket, closed with an RST here)."""
    try:
        tsock = trio.socket.from_stdlib_socket(s)
        with trio.move_on_after(timeout) as scope:
            await trio.lowlevel.wait_writable(s)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise StunTcpError(err, f"TCP connect from {local[1]} to {server[0]}:{server[1]}: "
                                        f"{os.strerror(err)}")
            stream = trio.SocketStream(tsock)
            req = Message(Method.BINDING, Class.REQUEST)
            await stream.send_all(req.encode(fingerprint=True))
            buf = bytearray()
            while True:
                try:
                    data = await read_message(stream, buf)
                except BadPacket as exc:
                    raise StunTcpError(errno.EPROTO, f"bad STUN stream from {server[0]}:{server[1]}: {exc}") from None
                if data is None:
                    raise StunTcpError(errno.ECONNRESET, f"{server[0]}:{server[1]} closed without an answer")
                try:
                    resp = parse(data)
                except BadPacket:
                    continue
                if resp.transaction_id != req.transaction_id:
                    continue
                mapped = resp.mapped_address if resp.cls == Class.SUCCESS else None
                if mapped is None:
                    raise StunTcpError(errno.EPROTO, f"{server[0]}:{server[1]} answered without a mapped address")
                src = tsock.getsockname()[:2]
                return TcpBinding((str(mapped[0]), int(mapped[1])), (str(src[0]), int(src[1])))
        assert scope.cancelled_caught
        raise StunTcpError(errno.ETIMEDOUT, f"no TCP STUN answer from {server[0]}:{server[1]} in {timeout:g} s")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if isinstance(exc, StunTcpError):
            raise
        raise StunTcpError(getattr(exc, "errno", None) or errno.ECONNRESET,
                           f"TCP STUN to {server[0]}:{server[1]}: {exc}") from None
    finally:
        close_with_rst(s)


# How long a probe waits for its answer: the kernel's resends do the retrying. Linux sends a lost SYN
# again after 1, 2, 3, 4 s (tcp_syn_linear_timeouts, 6.5+) or 1, 3, 7 s (older), and a request lost
# after a resent SYN waits a whole 1 s RTO (no round trip was measured on a retried handshake). A
# 3 s wait let two or three losses sink a probe: over the lab's wan50 (1 % loss a link, six to nine
# probes a TCP trial) 14 same-NAT trials in 12,000 failed so, with "no TCP STUN answer". 8 s
# outlasts three lost SYNs on either kernel, and costs nothing when the first answers.
PROBE_TIMEOUT = 8.0


async def tcp_binding(local: tuple[str, int], server: Address, *, timeout: float = PROBE_TIMEOUT) -> TcpBinding:
    """Our public (ip, port) as `server` sees a TCP connection from `local` (port shared). The
    connection is closed with an RST (SO_LINGER 0): no TIME_WAIT pins the 4-tuple, so the same
    server can be asked again from the same port."""
    return await _binding_on(_connecting(local, server), local, server, timeout)


async def tcp_mappings(local: tuple[str, int], servers: list[Address], *, timeout: float = PROBE_TIMEOUT,
                       clock=None) -> list[dict]:
    """One TCP Binding per server, all from the same local port: [{"dest", "port", "ip", "local_ip",
    "t"}], in the order of `servers`, "t" the seconds from the first SYN to this one's.

    The SYNs leave back to back, in order, before any answer is awaited: a sequential NAT numbers new
    flows in the order their SYNs arrive, and the step between two probes' ports is the NAT's Δ only
    if no other host's flow took a port in between. One probe after the other would leave two round
    trips between SYNs; on a 100 ms path the flows of a host opening 5 a second then land between
    every two probes, and a Δ=2 NAT reads as an exact, noise-free +4 (measured in the lab's wan50)."""
    if len(set(map(tuple, servers))) != len(servers):
        # two probes to one endpoint would be one 4-tuple at the same time (EADDRNOTAVAIL)
        raise LocalProtocolError(f"tcp_mappings: each server endpoint once, got {servers}")
    now = clock or trio.current_time
    t0 = now()
    started: list[tuple[socket.socket, float]] = []
    try:
        for server in servers:
            started.append((_connecting(local, server), round(now() - t0, 4)))
    except BaseException:
        for s, _ in started:
            close_with_rst(s)
        raise
    out: list[dict | None] = [None] * len(servers)
    failed: list[StunTcpError] = []

    async def one(i: int) -> None:
        s, t = started[i]
        try:
            b = await _binding_on(s, local, servers[i], timeout)
        except StunTcpError as exc:
            failed.append(exc)
            nursery.cancel_scope.cancel()
            return
        out[i] = {"dest": [servers[i][0], servers[i][1]], "ip": b.mapped[0], "port": b.mapped[1],
                  "local_ip": b.local[0], "t": t}

    async with trio.open_nursery() as nursery:
        for i in range(len(servers)):
            nursery.start_soon(one, i)
    if failed:
        raise failed[0]
    return [x for x in out if x is not None]


__all__ = ["StunTcpServer", "TcpBinding", "close_with_rst", "connection_cap", "read_message", "reuse_socket",
           "serve_stun_tcp", "source_key", "tcp_binding", "tcp_mappings"]
