"""What crossed a punched path: bytes and datagrams each way, the peer's frame counters (their gaps
are datagrams lost on the way), RTT samples. Plain counters, updated by the path and by tools that
send over its socket directly (nattrav.experiment.traffic)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_RTT_SAMPLES = 4096  # the newest samples are kept


@dataclass
class PathCounters:
    bytes_sent: int = 0  # payload bytes (what the caller sent, not the frames' headers and tags)
    bytes_received: int = 0
    datagrams_sent: int = 0  # DATA frames
    datagrams_received: int = 0
    first_counter: int | None = None  # the peer's frame counter of its first DATA frame we accepted
    high_counter: int = 0  # the highest peer frame counter accepted since
    counted: int = 0  # authentic peer frames accepted since first_counter (DATA and keepalives)
    rtt_samples: deque = field(default_factory=lambda: deque(maxlen=MAX_RTT_SAMPLES))  # seconds

    def sent(self, payload_bytes: int, datagrams: int = 1) -> None:
        self.bytes_sent += payload_bytes
        self.datagrams_sent += datagrams

    def peer_frame(self, counter: int) -> None:
        """An authentic frame from the peer after the punch (its counter is fresh: the replay window
        rejected repeats)."""
        if self.first_counter is None:
            self.first_counter = self.high_counter = counter
        self.high_counter = max(self.high_counter, counter)
        self.counted += 1

    def peer_frames(self, n: int, first: int, high: int) -> None:
        """n authentic frames of one batch at once: `first` the first one's counter, `high` the
        highest (the batch's counters are all fresh)."""
        if n <= 0:
            return
        if self.first_counter is None:
            self.first_counter = self.high_counter = first
        self.high_counter = max(self.high_counter, high)
        self.counted += n

    def received(self, payload_bytes: int, datagrams: int = 1) -> None:
        self.bytes_received += payload_bytes
        self.datagrams_received += datagrams

    def loss(self) -> float | None:
        """Fraction of the peer's frames since its first DATA frame that never arrived (its counter
        moves once a frame, so every gap below the highest counter is a frame lost or still on the
        way); None before two frames."""
        if self.first_counter is None or self.high_counter == self.first_counter:
            return None
        expected = self.high_counter - self.first_counter + 1
        return max(0.0, 1.0 - self.counted / expected)

    def to_dict(self) -> dict[str, Any]:
        rtts = sorted(self.rtt_samples)
        return {"bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "datagrams_sent": self.datagrams_sent, "datagrams_received": self.datagrams_received,
                "loss": self.loss(), "rtt_samples": len(rtts),
                "rtt_min_ms": round(rtts[0] * 1e3, 4) if rtts else None,
                "rtt_median_ms": round(rtts[len(rtts) // 2] * 1e3, 4) if rtts else None}
