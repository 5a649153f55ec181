"""Independent probes of the path itself: round-trip times, loss and order through a delay line, the
routers that answer an expiring packet, the rate a link lets through, and whether two hosts share a
segment. Plain sockets against the tests' responder, run inside host namespaces through Lab.call.
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import struct
import time

from .probe import _rpc, _udp

SO_EE_ORIGIN_ICMP = 2
ICMP_TIME_EXCEEDED = 11
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux values; older Pythons lack the names
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)


def rtt_run(target: tuple[str, int], count: int, gap: float, linger: float = 1.5) -> dict:
    """`count` echo requests `gap` seconds apart from one socket; the replies as [seq, rtt_ms] in
    arrival order, so the caller sees delay, its spread, loss and reordering."""
    got: list[list[float]] = []
    sent: dict[int, float] = {}
    with _udp() as s:
        s.setblocking(False)
        start = time.monotonic()
        k, stop = 0, None
        while True:
            now = time.monotonic()
            if k < count and now >= start + k * gap:
                sent[k] = now
                s.sendto(json.dumps({"op": "echo", "id": str(k)}).encode(), tuple(target))
                k += 1
                if k == count:
                    stop = now + linger
            if stop is not None and now >= stop:
                break
            wait = max(0.0, min(start + k * gap - now if k < count else 0.05, 0.05))
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                continue
            while True:
                try:
                    data, _ = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                try:
                    seq = int(json.loads(data)["id"])
                except (ValueError, KeyError, TypeError):
                    continue
                if seq in sent:
                    got.append([seq, (time.monotonic() - sent[seq]) * 1e3])
    return {"sent": count, "replies": got}


def rtt_summary(run: dict) -> dict:
    """Mean, spread, extremes, loss and how many replies overtook an earlier one."""
    rtts = [r for _, r in run["replies"]]
    order = [int(q) for q, _ in run["replies"]]
    return {
        "mean_ms": statistics.fmean(rtts) if rtts else None,
        "sd_ms": statistics.pstdev(rtts) if len(rtts) > 1 else None,
        # the spread without the scheduler's rare outliers (a shared 2-core machine)
        "iqr_ms": (lambda q: q[2] - q[0])(statistics.quantiles(rtts, n=4)) if len(rtts) > 3 else None,
        "min_ms": min(rtts, default=None), "max_ms": max(rtts, default=None),
        "loss": 1 - len(set(order)) / run["sent"],
        "inversions": sum(1 for x, y in zip(order, order[1:]) if y < x),
    }


def trace_run(dst: tuple[str, int], max_ttl: int, timeout: float = 1.0, tries: int = 3) -> list[str | None]:
    """For TTL 1..max_ttl, a datagram towards dst (up to `tries`, for lossy links): the address that
    answered with ICMP time-exceeded (IP_RECVERR's offender), or None when nothing came back."""
    out: list[str | None] = []
    for ttl in range(1, max_ttl + 1):
        who = None
        for _ in range(tries):
            with _udp(ttl=ttl) as s:
                s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                s.sendto(b"trace", (dst[0], dst[1] + ttl))
                who = _offender(s, timeout)
            if who is not None:
                break
        out.append(who)
    return out


def _offender(s: socket.socket, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        # the error queue signals POLLERR, which select reports as readable
        r, _, x = select.select([s], [], [s], left)
        if not r and not x:
            continue
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        except OSError:
            return None
        for level, kind, data in anc:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < 32:
                continue
            _errno, origin, icmp_type, _code = struct.unpack_from("=IBBB", data)
            if origin == SO_EE_ORIGIN_ICMP and icmp_type == ICMP_TIME_EXCEEDED:
                return socket.inet_ntoa(data[20:24])  # offender: a sockaddr_in after the 16-byte header
        return None


def burst_run(target: tuple[str, int], count: int, size: int, pace_pps: float | None = None) -> dict:
    """`count` datagrams of `size` bytes as fast as the socket takes them (or at `pace_pps`), then the
    responder's count, bytes and first/last arrival times for them (the rate a link lets through)."""
    tag = os.urandom(6).hex()
    head = json.dumps({"op": "count", "tag": tag}).encode()
    payload = head + b" " * max(0, size - len(head))
    with _udp() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        t0 = time.monotonic()
        for i in range(count):
            if pace_pps:
                ahead = t0 + i / pace_pps - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    s.sendto(payload, tuple(target))
                    break
                except BlockingIOError:
                    time.sleep(0.0005)
        sent_for = time.monotonic() - t0
        got = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = _rpc(s, tuple(target), {"op": "stats", "tag": tag}, 0.5, 10)
            if now is not None and got is not None and now["count"] == got["count"]:
                break  # nothing more arrived: the line has drained
            got = now
    return {"sent": count, "size": len(payload), "send_seconds": sent_for, "stats": got}


def recv_ttl_main(port: int, wait: float) -> None:
    """Print one JSON line for the first datagram on `port`: its source and the TTL it arrived with."""
    with _udp(port) as s:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        print(json.dumps({"ready": True}), flush=True)
        r, _, _ = select.select([s], [], [], wait)
        if not r:
            print(json.dumps({"from": None}), flush=True)
            return
        _, anc, _, addr = s.recvmsg(2048, 64)
        ttl = next((struct.unpack("=i", d[:4])[0] for lv, k, d in anc
                    if lv == socket.IPPROTO_IP and k == socket.IP_TTL), None)
        print(json.dumps({"from": list(addr), "ttl": ttl}), flush=True)


def send_once(dst: tuple[str, int], count: int = 3) -> int:
    with _udp() as s:
        for _ in range(count):
            s.sendto(b"segment", tuple(dst))
            time.sleep(0.01)
        return s.getsockname()[1]


def c_burst(dst: str, count: int, rate: float | None, cpu: int | None = None) -> dict:
    """`count` 28-byte datagrams to dst:9 from the C core's sendmmsg (paced at `rate` packets/s, or as
    fast as the kernel takes them; on CPU `cpu` if given): how many left and over how long."""
    from ..core import Burst, SocketPool

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with SocketPool(1) as pool:
        st = pool.send_burst(Burst.one_to_many(0, dst, [9] * count, b"x" * 28, rate=rate), timeout=60)
    return {"sent": st.sent, "span": st.send_span_s}
