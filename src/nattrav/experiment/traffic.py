"""Traffic over a path, iperf3's way (issue 17): UDP at a paced rate, or TCP bulk, and what arrived.

UDP: the sender builds its probes in Python 20 ms at a time (one header packed into a zeroed buffer
per probe; a punched path's frames then sealed in one C call, csrc/frames.c) and hands each batch to
the C core's burst loop (csrc/burst.c: sendmmsg/sendto paced to the nanosecond) in a thread, so the
rate is the C core's, not Python's; the Trio loop meanwhile pings (RTT samples) and listens. The
receiver drains its socket with recvmmsg and checks the batch in one C call (the source address; on a
punched path also the frames' tags and replay window), then keeps the account (measure.py). Both
kinds of channel go through the same calls, so punched vs direct differs only by the frames' cost. A FIN carries the number
of probes the kernel took; the receiver answers with its report (goodput, one-way delay, loss,
interval reports) in REPORT parts until the sender says DONE.

The same code runs over two kinds of channel: a punched path (PathChannel: every probe is an
authenticated DATA frame of the path, and the path's counters see it) and a plain socket aimed at a
fixed address (RawChannel: the direct path the punched one is compared against).
"""

from __future__ import annotations

import json
import socket
import time
from array import array
from collections.abc import Callable
from typing import Any

import trio

from ..core.burst import send_packed
from ..core.errors import ICMP_ERRNOS
from ..core.frames import HEADER, OVERHEAD, FrameBatch
from ..core.mmsg import RecvBatch
from ..core.packed import PackedBurst
from ..errors import BadPacket
from ..io.path import recv_ready
from ..proto.handshake import MAX_DATA, Event
from . import measure as m

CHUNK_SECONDS = 0.02  # probes built and handed to C per batch
SOCKBUF = 4 << 20  # bytes of kernel buffer a measurement socket asks for (0: the kernel's default)
PING_INTERVAL = 0.1
FIN_INTERVAL = 0.1
REPORT_GRACE = 0.3  # seconds the receiver waits after the first FIN for probes still on the way
DONE_COPIES = 3


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as the C core's nt_now_ns


class RawChannel:
    """A plain UDP socket and the one address it talks to."""

    kind = "direct"
    max_payload = 65507
    overhead = 0

    def __init__(self, sock: Any, peer: tuple[str, int]) -> None:
        self.sock, self.peer = sock, peer
        self._frames = FrameBatch([peer])
        self.received_at_ns = 0

    def wrap(self, payload: bytes) -> bytes:
        return payload

    def seal(self, frames: bytearray, frame_len: int, n: int) -> None:
        pass  # plain datagrams: the payloads are the datagrams

    async def receive_many(self) -> list[bytes]:
        """The datagrams of the next recvmmsg batch that has any from the peer."""
        while True:
            await recv_ready(self.sock, self._frames)
            self.received_at_ns = now_ns()
            _, payloads, _ = self._frames.open(0)
            if payloads:
                return payloads

    def note_sent(self, payload_bytes: int, datagrams: int) -> None:
        pass


class PathChannel:
    """A punched path (io/path.py): probes travel as its DATA frames."""

    kind = "punched"
    max_payload = MAX_DATA
    overhead = OVERHEAD

    def __init__(self, path: Any) -> None:
        self.path, self.sock, self.peer = path, path.sock, path.peer_addr

    def wrap(self, payload: bytes) -> bytes:
        return self.path.handshake.data(payload)

    def seal(self, frames: bytearray, frame_len: int, n: int) -> None:
        self.path.seal_data(frames, frame_len, n)

    async def receive_many(self) -> list[bytes]:
        got = await self.path.receive_many()
        if not got:  # the peer closed the path: nothing more will come
            await trio.sleep_forever()
        return got

    @property
    def received_at_ns(self) -> int:
        return self.path.received_at_ns

    def note_sent(self, payload_bytes: int, datagrams: int) -> None:
        self.path.counters.sent(payload_bytes, datagrams)


class PyFramesChannel(PathChannel):
    """The punched path as it was before csrc/frames.c: every frame built and checked by the
    Handshake in Python, one at a time. Only a baseline for the bench (bench/perf_punched_vs_direct.py
    runs it beside the batch path in the same run), with the same checks."""

    kind = "punched-py"

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self._from = {path.peer_addr} | set(path.also)
        self._batch = RecvBatch(64, 2048)
        self._received_at = 0

    def seal(self, frames: bytearray, frame_len: int, n: int) -> None:
        size = frame_len - OVERHEAD
        for i in range(n):
            at = i * frame_len
            frames[at : at + frame_len] = self.wrap(bytes(frames[at + HEADER : at + HEADER + size]))

    async def receive_many(self) -> list[bytes]:
        hs, counters = self.path.handshake, self.path.counters
        while True:
            await recv_ready(self.sock, self._batch)
            self._received_at = now_ns()
            out = []
            for data, addr in self._batch.datagrams():
                if data is None or addr not in self._from:
                    continue
                try:
                    got = hs.receive(data, int(trio.current_time() * 1e9))
                except BadPacket:
                    continue
                if got.event in (Event.DATA, Event.KEEPALIVE) or counters.first_counter is not None:
                    counters.peer_frame(hs.last_counter)
                for r in got.replies:
                    await self.sock.sendto(r, self.peer)
                if got.event is Event.DATA and got.payload:
                    counters.received(len(got.payload))
                    out.append(got.payload)
            if out:
                return out

    @property
    def received_at_ns(self) -> int:
        return self._received_at


async def _send(ch: Any, payload: bytes) -> None:
    try:
        await ch.sock.sendto(ch.wrap(payload), ch.peer)
        ch.note_sent(len(payload), 1)
    except OSError as exc:
        if exc.errno not in ICMP_ERRNOS:
            raise


async def _datagrams(ch: Any) -> list[tuple[bytes, int]]:
    """The next batch of the peer's payloads, each with the batch's arrival time (ns)."""
    got = await ch.receive_many()
    t = ch.received_at_ns
    return [(p, t) for p in got]


def _grow(ch: Any, size: int) -> int:
    """A measurement socket's kernel buffers at `size` bytes (0: left alone), like iperf3's -w: at
    300 Mbit/s the default ~200 KiB receive buffer holds ~3 ms of datagrams, shorter than a busy
    machine's scheduling gaps, and what overflows would count against the path. The same for every
    kind of channel. Root may exceed rmem_max/wmem_max. Returns the receive buffer's size."""
    sock = ch.sock
    try:
        for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                             (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
            for opt in (force, plain) if size else ():
                if opt is None:
                    continue
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                    break
                except PermissionError:
                    continue
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except (OSError, AttributeError):
        return 0


def udp_drops() -> int | None:
    """This network namespace's UDP receive-buffer drops (/proc/net/snmp RcvbufErrors): datagrams
    that reached the receiving host but found its socket full (every socket of the namespace)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def _probe(payload: bytes) -> m.Probe | None:
    try:
        return m.decode(payload)
    except m.BadProbe:
        return None


async def serve_udp_receiver(ch: Any, *, interval: float = 1.0, timeout: float = 60.0,
                             on_interval: Callable[[dict[str, Any]], None] | None = None,
                             clock: str = "shared", sockbuf: int = SOCKBUF) -> dict[str, Any]:
    """Receive one UDP measurement on `ch` and answer the sender's pings and FIN; returns the
    receiver's report. `timeout`: seconds without any probe before giving up (TooSlowError);
    `sockbuf`: the socket's kernel buffers (bytes; 0 leaves them as they are)."""
    acct = m.ReceiverAccount(interval_ns=int(interval * 1e9))
    rcvbuf = _grow(ch, sockbuf)
    drops0 = udp_drops()
    report: dict[str, Any] | None = None
    fin_at: float | None = None
    shown = 0
    while True:
        wait = timeout if report is None else 2.0
        if fin_at is not None and report is None:
            wait = max(0.0, fin_at + REPORT_GRACE - trio.current_time())
        got = None
        with trio.move_on_after(wait):
            got = await _datagrams(ch)
        if got is None:
            if report is not None:
                return report  # no DONE came, but the sender had every chance to ask again
            if fin_at is None:
                raise trio.TooSlowError(f"no measurement probe for {timeout:g} s")
        for payload, t in got or ():
            p = _probe(payload)
            if p is None:
                continue
            if p.kind == m.DATA:
                try:
                    acct.data(p, len(payload), t)
                except m.BadProbe:
                    continue
            elif p.kind == m.PING:
                await _send(ch, m.encode(m.PONG, p.seq, p.stamp, len(payload)))
            elif p.kind == m.FIN:
                acct.sent_total = p.seq
                if fin_at is None:
                    fin_at = trio.current_time()
                if report is not None:
                    await _send_report(ch, report)
            elif p.kind == m.DONE and report is not None:
                return report
        if on_interval is not None and acct.first_ns is not None:
            done = (now_ns() - acct.first_ns) // acct.interval_ns
            while shown < done:
                slot = acct.intervals.get(shown, [0, 0])
                on_interval({"start": shown * interval, "packets": slot[0], "bps": slot[1] * 8 / interval})
                shown += 1
        if report is None and fin_at is not None and trio.current_time() >= fin_at + REPORT_GRACE:
            report = acct.summary(clock)
            drops1 = udp_drops()
            report["rcvbuf"] = rcvbuf
            report["netns_rcvbuf_drops"] = drops1 - drops0 if drops0 is not None and drops1 is not None else None
            await _send_report(ch, report)


async def _send_report(ch: Any, report: dict[str, Any]) -> None:
    parts = m.report_parts(report)
    for i, body in enumerate(parts):
        await _send(ch, m.encode(m.REPORT, i, len(parts), body=body))


def _packed(ch: Any, first_seq: int, count: int, size: int, t0: int, gap_ns: float, pps: float) -> PackedBurst:
    """`count` DATA probes as the channel's datagrams, end to end: each probe's header packed into a
    zeroed buffer (its padding stays zero), then, on a punched path, all sealed as frames in C."""
    skip = HEADER if ch.overhead else 0
    flen = size + ch.overhead
    buf = bytearray(count * flen)
    pack = m.HEADER.pack_into
    for j in range(count):
        s = first_seq + j
        pack(buf, j * flen + skip, m.MAGIC, m.DATA, s, t0 + int(s * gap_ns))
    ch.seal(buf, flen, count)
    return PackedBurst(count, bytes(4 * count), socket.inet_aton(ch.peer[0]),
                       array("H", [ch.peer[1]]).tobytes() * count, bytes(buf), flen,
                       rate=pps, src_min=0, src_max=0)


async def run_udp_sender(ch: Any, *, rate_bps: float, size: int = 1200, duration: float = 5.0,
                         timeout: float = 10.0, sockbuf: int = SOCKBUF) -> dict[str, Any]:
    """Send DATA probes of `size` bytes at `rate_bps` for `duration` seconds, paced by the C core;
    ping meanwhile; then ask for the receiver's report. Returns {sender, receiver, rtt_ms}."""
    from .._core import ffi

    if not m.MIN_SIZE <= size <= ch.max_payload:
        raise ValueError(f"size must be {m.MIN_SIZE}..{ch.max_payload} bytes on a {ch.kind} path, got {size}")
    if not 0 < duration <= 3600:
        raise ValueError(f"duration must be in (0, 3600] seconds, got {duration}")
    if not 0 <= sockbuf <= 1 << 30:
        raise ValueError(f"sockbuf must be 0..{1 << 30} bytes, got {sockbuf}")
    pps = m.pps_for(rate_bps, size)
    total = max(1, round(pps * duration))
    gap_ns = 1e9 / pps
    chunk = max(1, min(1024, round(pps * CHUNK_SECONDS)))
    fdmap = ffi.new("int[1]", [ch.sock.fileno()])
    _grow(ch, sockbuf)
    rtts: list[float] = []
    assembly = m.ReportAssembly()
    done = trio.Event()
    st = {"sent": 0, "failed": 0, "waits": 0, "syscalls": 0, "last_errno": 0}

    async def listen() -> None:
        while True:
            for payload, t in await _datagrams(ch):
                p = _probe(payload)
                if p is None:
                    continue
                if p.kind == m.PONG:
                    rtts.append((t - p.stamp) / 1e6)
                elif p.kind == m.REPORT:
                    try:
                        assembly.add(p)
                        if assembly.result() is not None:
                            done.set()
                    except m.BadProbe:
                        continue

    async def ping(stop: trio.Event) -> None:
        seq = 0
        while not stop.is_set():
            await _send(ch, m.encode(m.PING, seq, now_ns(), m.MIN_SIZE))
            seq += 1
            with trio.move_on_after(PING_INTERVAL):
                await stop.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        sending = trio.Event()
        nursery.start_soon(ping, sending)
        t0 = now_ns()
        seq = 0
        while seq < total:
            k = min(chunk, total - seq)
            due = t0 + seq * gap_ns
            ahead = (due - now_ns()) / 1e9
            if ahead > 0:
                await trio.sleep(ahead)
            burst = _packed(ch, seq, k, size, t0, gap_ns, pps)
            # a batch that starts late catches up at up to twice the rate, so lateness does not add up
            left = (t0 + (seq + k) * gap_ns - now_ns()) / 1e9
            burst = _with_rate(burst, min(2 * pps, k / left) if left > 0 else 2 * pps)
            bs = await trio.to_thread.run_sync(send_packed, fdmap, 1, burst)
            st["sent"] += bs.sent
            st["failed"] += bs.failed
            st["waits"] += bs.waits
            st["syscalls"] += bs.syscalls
            st["last_errno"] = bs.last_errno or st["last_errno"]
            ch.note_sent(bs.sent * size, bs.sent)
            seq += k
        elapsed = (now_ns() - t0) / 1e9
        sending.set()
        with trio.move_on_after(timeout):
            while not done.is_set():
                await _send(ch, m.encode(m.FIN, seq, now_ns(), m.MIN_SIZE))
                with trio.move_on_after(FIN_INTERVAL):
                    await done.wait()
        for _ in range(DONE_COPIES):
            await _send(ch, m.encode(m.DONE, 0, now_ns(), m.MIN_SIZE))
        nursery.cancel_scope.cancel()
    receiver = assembly.result() if done.is_set() else None
    # sent: probes the kernel took (their sequence numbers skip the failed ones, which the receiver
    # then counts as lost: the path did not carry them either)
    sender = {"rate_bps": rate_bps, "size": size, "pps": round(pps, 3), "planned": total,
              "sent": st["sent"], "failed": st["failed"], "waits": st["waits"], "syscalls": st["syscalls"],
              "seconds": round(elapsed, 6), "send_bps": round(st["sent"] * size * 8 / elapsed, 1),
              "last_errno": st["last_errno"]}
    return {"transport": "udp", "path": ch.kind, "sender": sender, "receiver": receiver,
            "rtt_ms": {k: round(v, 4) for k, v in m.quantiles(rtts).items()}, "rtt_samples": len(rtts)}


def _with_rate(b: PackedBurst, rate: float) -> PackedBurst:
    return PackedBurst(b.n, b.src, b.ips, b.ports, b.payload, b.payload_len, rate=rate, ttl=0,
                       src_min=b.src_min, src_max=b.src_max)


# --- TCP bulk ---------------------------------------------------------------------------------------

TCP_BLOCK = 65536


async def run_tcp_sender(stream: Any, *, duration: float = 5.0, block: int = TCP_BLOCK) -> dict[str, Any]:
    """Write as fast as the stream takes it for `duration` seconds, half-close, read the receiver's
    JSON report (one line) and return {sender, receiver}."""
    data = bytes(block)
    sent = 0
    t0 = now_ns()
    end = t0 + int(duration * 1e9)
    while now_ns() < end:
        await stream.send_all(data)
        sent += block
    elapsed = (now_ns() - t0) / 1e9
    await stream.send_eof()
    raw = b""
    while len(raw) < 65536:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        raw += chunk
    try:
        receiver = json.loads(raw.split(b"\n", 1)[0])
    except ValueError:
        receiver = None
    return {"transport": "tcp", "sender": {"bytes": sent, "seconds": round(elapsed, 6),
                                            "send_bps": round(sent * 8 / elapsed, 1)},
            "receiver": receiver}


async def serve_tcp_receiver(stream: Any, *, interval: float = 1.0, timeout: float = 60.0,
                             on_interval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Read until the sender's EOF, counting bytes per interval; send back the report as a line."""
    got = 0
    first = last = None
    slots: dict[int, int] = {}
    shown = 0
    while True:
        with trio.fail_after(timeout):
            chunk = await stream.receive_some(TCP_BLOCK)
        if not chunk:
            break
        t = now_ns()
        first = t if first is None else first
        last = t
        got += len(chunk)
        i = (t - first) // int(interval * 1e9)
        slots[i] = slots.get(i, 0) + len(chunk)
        while on_interval is not None and shown < i:
            on_interval({"start": shown * interval, "bps": slots.get(shown, 0) * 8 / interval})
            shown += 1
    secs = (last - first) / 1e9 if first is not None and last != first else 0.0
    report = {"bytes": got, "seconds": round(secs, 6),
              "goodput_bps": round(got * 8 / secs, 1) if secs else None,
              "intervals": [{"start": round(i * interval, 3), "bps": round(b * 8 / interval, 1)}
                            for i, b in sorted(slots.items())]}
    await stream.send_all(json.dumps(report).encode() + b"\n")
    await stream.send_eof()
    return report


def ratio(punched: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """Goodput of a punched measurement over a direct one's (the receivers' figures)."""
    try:
        return round(punched["receiver"]["goodput_bps"] / direct["receiver"]["goodput_bps"], 4)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


__all__ = ["PathChannel", "PyFramesChannel", "RawChannel", "SOCKBUF", "udp_drops", "ratio", "run_tcp_sender", "run_udp_sender", "serve_tcp_receiver",
           "serve_udp_receiver"]
