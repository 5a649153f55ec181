"""The traffic measurement's wire and bookkeeping, sans-IO: probe datagrams (a kind, a sequence
number and the intended send time), the receiver's account of what arrived (goodput, one-way delay,
loss, reordering, interval reports) and the summaries both sides print.

Times are CLOCK_MONOTONIC nanoseconds. Between lab namespaces of one machine the sender's and the
receiver's clocks are the same clock, so one-way delay is absolute; between machines it carries the
clocks' offset (only its spread, `owd - owd_min`, then means something: the summary says which).

Every datagram from the network is parsed by `decode`, which raises BadProbe (one error type) on
anything malformed."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteProtocolError

MAGIC = b"NTpf"
HEADER = struct.Struct("!4sBQQ")  # magic, kind, sequence number, intended send time (ns)
DATA, PING, PONG, FIN, REPORT, DONE = 1, 2, 3, 4, 5, 6
KINDS = {DATA, PING, PONG, FIN, REPORT, DONE}
MIN_SIZE = HEADER.size
REPORT_PART = 1000  # bytes of the receiver's JSON report per REPORT datagram
MAX_REPORT_PARTS = 64
MAX_OWD_SAMPLES = 200_000  # a receiver keeps this many delay samples (then every other one)


class BadProbe(RemoteProtocolError):
    """A datagram that is not a well-formed measurement probe."""


@dataclass(frozen=True)
class Probe:
    kind: int
    seq: int
    stamp: int
    body: bytes = b""


def encode(kind: int, seq: int, stamp: int, size: int = MIN_SIZE, body: bytes = b"") -> bytes:
    """A probe of exactly `size` bytes (at least the header and body), zero padded."""
    head = HEADER.pack(MAGIC, kind, seq & (2**64 - 1), stamp & (2**64 - 1)) + body
    return head + bytes(max(0, size - len(head)))


def decode(data: bytes | bytearray | memoryview) -> Probe:
    if len(data) < HEADER.size:
        raise BadProbe(f"probe of {len(data)} bytes is shorter than its header")
    magic, kind, seq, stamp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadProbe("not a measurement probe")
    if kind not in KINDS:
        raise BadProbe(f"unknown probe kind {kind}")
    body = bytes(data[HEADER.size:]) if kind in (REPORT,) else b""
    return Probe(kind, seq, stamp, body)


def report_parts(report: dict[str, Any]) -> list[bytes]:
    """The receiver's report as datagram bodies: part i of n is REPORT(seq=i, stamp=n)."""
    raw = json.dumps(report, separators=(",", ":")).encode()
    parts = [raw[i:i + REPORT_PART] for i in range(0, len(raw), REPORT_PART)] or [b"{}"]
    if len(parts) > MAX_REPORT_PARTS:
        raise ValueError("receiver report too long")
    return parts


class ReportAssembly:
    """Collects a report's parts (any order, repeats harmless); `result()` once all came."""

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.total: int | None = None

    def add(self, p: Probe) -> None:
        if not 1 <= p.stamp <= MAX_REPORT_PARTS or p.seq >= p.stamp:
            raise BadProbe("report part out of range")
        if self.total is not None and p.stamp != self.total:
            raise BadProbe("report parts disagree on their count")
        self.total = p.stamp
        self.parts[p.seq] = p.body.rstrip(b"\0")

    def result(self) -> dict[str, Any] | None:
        if self.total is None or len(self.parts) < self.total:
            return None
        try:
            out = json.loads(b"".join(self.parts[i] for i in range(self.total)))
        except ValueError:
            raise BadProbe("report is not JSON") from None
        if not isinstance(out, dict):
            raise BadProbe("report is not a JSON object")
        return out


def quantiles(values: list[float], qs: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99, 1.0)) -> dict[str, float]:
    """Named quantiles of `values` (nearest rank): p0 is the minimum, p100 the maximum."""
    if not values:
        return {}
    v = sorted(values)
    return {f"p{round(q * 100):g}": v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))] for q in qs}


@dataclass
class ReceiverAccount:
    """What arrived of a UDP measurement: fed (probe, arrival ns) for each DATA probe."""

    interval_ns: int = 1_000_000_000
    size: int = 0  # payload bytes of one DATA probe (the last seen)
    received: int = 0  # unique DATA probes
    duplicates: int = 0
    reordered: int = 0  # arrived after a higher sequence number had
    high_seq: int = -1
    first_ns: int | None = None
    last_ns: int = 0
    owd_ns: list[int] = field(default_factory=list)
    _owd_step: int = 1
    _n_owd: int = 0
    _seen: bytearray = field(default_factory=bytearray)  # bitmap of sequence numbers
    intervals: dict[int, list[int]] = field(default_factory=dict)  # index -> [packets, bytes]
    sent_total: int | None = None  # from the sender's FIN

    def data(self, p: Probe, size: int, now: int) -> None:
        byte, bit = divmod(p.seq, 8)
        if byte >= 1 << 27:  # a sequence number past 2^30: not ours to keep a bitmap for
            raise BadProbe(f"sequence number {p.seq} out of range")
        if byte >= len(self._seen):
            self._seen.extend(bytes(byte + 1 - len(self._seen) + 4096))
        if self._seen[byte] >> bit & 1:
            self.duplicates += 1
            return
        self._seen[byte] |= 1 << bit
        if self.first_ns is None:
            self.first_ns = now
        self.last_ns = now
        self.size = size
        self.received += 1
        if p.seq < self.high_seq:
            self.reordered += 1
        self.high_seq = max(self.high_seq, p.seq)
        self._n_owd += 1
        if self._n_owd % self._owd_step == 0:
            self.owd_ns.append(now - p.stamp)
            if len(self.owd_ns) >= MAX_OWD_SAMPLES:  # keep a uniform sample: every other one, twice as sparse
                self.owd_ns = self.owd_ns[::2]
                self._owd_step *= 2
        slot = self.intervals.setdefault((now - self.first_ns) // self.interval_ns, [0, 0])
        slot[0] += 1
        slot[1] += size

    def summary(self, clock: str = "shared") -> dict[str, Any]:
        sent = self.sent_total
        lost = None if sent is None else max(0, sent - self.received)
        span = (self.last_ns - self.first_ns) if self.first_ns is not None else 0
        # the arrival span covers received-1 gaps; one more mean gap makes it the sending time
        secs = span / 1e9 * self.received / (self.received - 1) if self.received > 1 else 0.0
        owd = [x / 1e6 for x in self.owd_ns]
        base = min(owd) if owd else 0.0
        iv = self.interval_ns / 1e9
        return {
            "received": self.received, "duplicates": self.duplicates, "reordered": self.reordered,
            "sent": sent, "lost": lost, "loss": None if not sent else round(lost / sent, 6),
            "bytes": self.received * self.size, "seconds": round(secs, 6),
            "goodput_bps": round(self.received * self.size * 8 / secs, 1) if secs > 0 else None,
            "owd_clock": clock,
            "owd_ms": {k: round(v, 4) for k, v in quantiles(owd).items()},
            "owd_spread_ms": {k: round(v - base, 4) for k, v in quantiles(owd).items()},
            "intervals": [{"start": round(i * iv, 3), "packets": p, "bps": round(b * 8 / iv, 1)}
                          for i, (p, b) in sorted(self.intervals.items())],
        }


def pps_for(rate_bps: float, size: int) -> float:
    """Datagrams a second that carry `rate_bps` of payload in datagrams of `size` bytes."""
    return rate_bps / (8.0 * size)


def parse_rate(text: str) -> float:
    """'50M', '800k', '1.5G', '20000' (bits per second) -> float; ValueError with the reason."""
    t = str(text).strip()
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:].lower(), 1.0)
    num = t[:-1] if mult != 1.0 else t
    try:
        v = float(num) * mult
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (bits per second, e.g. 50M, 800k)") from None
    if not 0 < v <= 100e9 or math.isnan(v):
        raise ValueError(f"rate out of range: {text!r}")
    return v
