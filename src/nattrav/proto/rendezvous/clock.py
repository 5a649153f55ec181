"""Timing: the server's clock mapped into the client's, when a client enrolls again after a loss, and
how far ahead of an accept the server sets a session's common start."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable

MAX_REPORTED_RTT = 60.0  # seconds; a larger "rtt" in node info is nonsense and ignored


MAX_DRIFT = 2e-4  # the largest rate difference assumed between two clocks (200 ppm: two poor crystals)
KEEP_BOUNDS = 32  # recent observations whose bounds the estimate is kept within


class ClockMap:
    """Maps the server's clock into ours, NTP-style, from request/reply pairs.

    offset = server_now - (sent + received) / 2 assumes symmetric one-way delays; its error is at most
    half the round trip, so the sample with the smallest round trip is kept. Every frame stamped
    with the server's time also bounds the offset for sure: the server stamped a reply after we sent
    the request (offset <= server_now - sent) and any frame before we read it (offset >=
    server_now - received). The estimate is kept inside the recent bounds (each loosened by
    MAX_DRIFT per second of age): when the only sample is a slow one -- a lost segment that TCP
    resent 0.2 s later inflates one half of the round trip and skews the midpoint by half the
    delay -- a later frame that came quickly (the session frame, `heard`) pulls the offset back to
    within its one-way delay, so both peers' agreed start stays meaningful.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.rtt = math.inf
        self._base = 0.0  # the midpoint of the tightest sample, before the bounds
        self._bounds: deque[tuple[float, float, float]] = deque(maxlen=KEEP_BOUNDS)  # (local t, low, high)

    def sample(self, sent: float, received: float, server_now: float) -> None:
        rtt = received - sent
        if not (math.isfinite(server_now) and math.isfinite(sent) and 0 <= rtt):
            return  # a clock that went backwards or a nonsense server time tells us nothing
        if rtt <= self.rtt:
            self.rtt = rtt
            self._base = server_now - (sent + received) / 2
        self._bound(received, server_now - received, server_now - sent)

    def heard(self, server_now: float, received: float) -> None:
        """A frame the server stamped `server_now` reached us at `received` (ours): the offset is at
        least their difference (its one-way delay is not negative)."""
        if math.isfinite(server_now) and math.isfinite(received) and math.isfinite(self.rtt):
            self._bound(received, server_now - received, math.inf)

    def _bound(self, at: float, low: float, high: float) -> None:
        self._bounds.append((at, low, high))
        lo, hi = self._limits(at)
        if lo > hi:
            # the bounds disagree: a clock stepped or drifts faster than assumed; the newest stands
            self._bounds.clear()
            self._bounds.append((at, low, high))
            lo, hi = low, high
        self.offset = min(max(self._base, lo), hi)

    def _limits(self, now: float) -> tuple[float, float]:
        lo, hi = -math.inf, math.inf
        for at, low, high in self._bounds:
            slack = MAX_DRIFT * abs(now - at)
            lo, hi = max(lo, low - slack), min(hi, high + slack)
        return lo, hi

    def to_local(self, server_time: float) -> float:
        return server_time - self.offset


def reconnect_delay(attempt: int, *, cap: float, first: float = 0.25,
                    rng: Callable[[], float] = random.random) -> float:
    """Seconds a client waits before re-enroll attempt `attempt` (0 = right after the loss).

    The first attempt is immediate (a restart or a blip is over soon); then the wait doubles from
    `first` up to `cap`, drawn from its upper half: thousands of peers that lost the same server must
    not all come back in the same millisecond, and none should wait much longer than `cap` (the
    client caps it at its keepalive, so a peer is reachable again within one keepalive of the
    server's return)."""
    if attempt <= 0:
        return 0.0
    ceiling = min(cap, first * 2 ** min(attempt - 1, 32))
    return ceiling * (0.5 + 0.5 * rng())


def reported_rtt(info: Any) -> float | None:
    """The round trip to the server a client put in its node info ("rtt", seconds), or None when it
    sent none or nonsense (an older client, or a hostile one)."""
    rtt = info.get("rtt") if isinstance(info, dict) else None
    if type(rtt) not in (int, float) or not math.isfinite(rtt) or not 0 <= rtt <= MAX_REPORTED_RTT:
        return None
    return float(rtt)


# The client's own work between the session frame and its first punch packet (the key agreement's
# checks and the plan: 1–4 ms in the lab bench's events, plan - session); a side that needs longer
# simply starts late, which its peer's quick first resends (planner/schedule.py) absorb.
START_SLACK = 0.004


def start_margin(rtts: Iterable[float | None], *, default: float, floor: float, factor: float,
                 ceiling: float, slack: float = START_SLACK) -> float:
    """Seconds between the accept and the agreed start. Each peer gets the session frame half its
    round trip after the server sends it, so `factor` (the server's default 0.5: the one-way delay)
    times the larger round trip plus `slack` (the client's work before it can punch) lets both start
    about when the later one can, never less than `floor` nor more than `ceiling`.

    The round trips are the smallest each peer saw, so jitter makes a frame come a few ms after the
    start now and then: that side starts at once (io/punch.py), and the talker's quick first resends
    make such lateness cost its few ms, not a resend interval; a larger margin would cost its whole
    excess in every session. When a peer did not say its round trip (an older client) the old fixed
    `default`."""
    known = list(rtts)
    if not known or any(r is None for r in known):
        return default
    return min(ceiling, max(floor, factor * max(known) + slack))  # type: ignore[type-var]
