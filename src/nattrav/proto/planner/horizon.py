"""How old each side's last STUN sample will be at the agreed start, sans-IO: the prediction's horizon.

Why: the noise a window must cover (other hosts' allocations before our next mapping) grows with
the time from the last sample to the punch. A fixed second (DEFAULT_HORIZON) suits no path: at zero
delay a listener samples at the offer and punches ~20 ms later, so with no foreign flow seen its
windows still took 30-80 ports for 99.9 % (the prior's rate over a whole second), flows a CGN
subscriber's budget pays for on every connect; over a slow path a second may be short.

What the sample's age is made of, from the round trips both peers published in their node infos
(each sees both, so both derive the same horizons and the same plan) and the start margin the
server chose (both sessions frames carry it):
- the listener (SECOND) samples afresh at the offer (an APDM NAT: api/udp.refresh_mappings, one
  STUN round trip; with the sample beacon the server sees its port half a round trip after the
  offer, so this bound is one round trip generous there), its accept reaches the server half a
  round trip later, then the margin;
- the initiator (FIRST) sampled before its connect: discovery's remaining tests or the enroll
  reply (up to two round trips of its own), half a round trip to the server, the offer to the
  listener and its accept (one of the listener's), the listener's re-sample (one more), then the
  margin.
SLACK covers the processing, the talker's first resends and the burst's own duration. The sum is capped by
`cap` (DEFAULT_HORIZON, or what the caller set): never wider than before. A peer that lies about
its round trip narrows or widens the windows both sides size for ITS NAT and ours alike, within
[SLACK, cap]: what a false report could already do (its samples' times)."""

from __future__ import annotations

import math
from typing import Any

SLACK = 0.1  # seconds: processing on both peers and the server, the talker's resends, the burst
MAX_RTT = 10.0  # a published round trip beyond this is not a round trip: use the cap


def published_rtt(value: Any) -> float | None:
    """A round trip a node info published, in seconds, or None when it is not one (absent, not a
    number, negative, beyond MAX_RTT): a peer's word, read the same way by every user of it."""
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_RTT:
        return None
    return float(value)


def sample_ages(first_rtt: Any, second_rtt: Any, margin: Any, cap: float) -> tuple[float, float] | None:
    """(the initiator's, the listener's) horizon in seconds, each at most `cap`; None when a round
    trip or the margin is unknown (an older peer or server): the caller keeps `cap` for both."""
    r1, r2, m = published_rtt(first_rtt), published_rtt(second_rtt), published_rtt(margin)
    if r1 is None or r2 is None or m is None:
        return None
    first = 2.5 * r1 + 2.0 * r2 + m + SLACK
    second = 1.5 * r2 + m + SLACK
    return min(cap, first), min(cap, second)


__all__ = ["SLACK", "published_rtt", "sample_ages"]
