"""The client's timing: the server's clock mapped into ours, and when to enroll again after a loss."""

from __future__ import annotations

import math
import random
from typing import Callable


class ClockMap:
    """Maps the server's clock into ours, NTP-style, from request/reply pairs.

    offset = server_now - (sent + received) / 2 assumes symmetric one-way delays; its error is at most
    half the round trip, so the sample with the smallest round trip is kept.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.rtt = math.inf

    def sample(self, sent: float, received: float, server_now: float) -> None:
        rtt = received - sent
        if not (math.isfinite(server_now) and 0 <= rtt):
            return  # a clock that went backwards or a nonsense server time tells us nothing
        if rtt <= self.rtt:
            self.rtt = rtt
            self.offset = server_now - (sent + received) / 2

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
