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
[SLACK, cap]: what a false report could already do (its samples' times).

That guess leaves out the waits nobody can foresee: the server's and the listener's processing, a
listener slow to accept (over wan50 the initiator's sample was ~1.2 s old at the talk, up to 3.4 s
with a late listener, where the guess said 0.6 s and the cap 1 s: windows sized for a shorter age,
stated odds above the real ones; bench/results/predicted-wan50-misses.md). So each peer now puts
the age of its newest sample, as it publishes its node info, in that info (AGE), and the server
says in the session how long it held the initiator's connect until it started the session (HELD,
rendezvous/held.py; it puts the same number in both peers' session infos). `measured_ages` adds
them up. Every one of those numbers is someone else's word: each is bounded (MAX_AGE, MAX_HELD)
and their sum by MAX_MEASURED; a false one moves both sides' windows alike, as a round trip does.
No 1 s cap on a measured age: a cap below the real age states odds the window does not have. The
cost is flows: an older sample takes a wider window for the same odds, and the flow budget
(planner/udp.py flow_budget) then caps the window, which the stated odds say (lower, honestly)."""

from __future__ import annotations

import math
from typing import Any

SLACK = 0.1  # seconds: processing on both peers and the server, the talker's resends, the burst
MAX_RTT = 10.0  # a published round trip beyond this is not a round trip: use the cap
AGE = "age"  # node info: seconds from our newest sample's first request to this info's publishing
HELD = "held"  # session info (the server's): seconds from the connect's arrival to the session
MAX_AGE = 10.0  # a published sample age beyond this is not one (a listener re-samples at the offer)
MAX_HELD = 60.0  # the server holds a connect at most its longest offer timeout (its default 60 s)
MAX_MEASURED = 30.0  # seconds: the most a measured horizon may be, whatever the inputs say


def published_rtt(value: Any) -> float | None:
    """A round trip a node info published, in seconds, or None when it is not one (absent, not a
    number, negative, beyond MAX_RTT): a peer's word, read the same way by every user of it."""
    return published_seconds(value, MAX_RTT)


def sample_ages(first_rtt: Any, second_rtt: Any, margin: Any, cap: float) -> tuple[float, float] | None:
    """(the initiator's, the listener's) horizon in seconds, each at most `cap`; None when a round
    trip or the margin is unknown (an older peer or server): the caller keeps `cap` for both."""
    r1, r2, m = published_rtt(first_rtt), published_rtt(second_rtt), published_rtt(margin)
    if r1 is None or r2 is None or m is None:
        return None
    first = 2.5 * r1 + 2.0 * r2 + m + SLACK
    second = 1.5 * r2 + m + SLACK
    return min(cap, first), min(cap, second)


def published_seconds(value: Any, limit: float) -> float | None:
    """A duration someone else stated, in seconds within [0, limit], else None."""
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= limit:
        return None
    return float(value)


def sample_age(last_sample_at: float | None, now: float) -> float | None:
    """What AGE to publish: seconds since our newest sample's first request (None: no timed sample)."""
    if last_sample_at is None or not math.isfinite(last_sample_at):
        return None
    return round(max(0.0, now - last_sample_at), 6)


def measured_ages(first_info: Any, second_info: Any, held: Any, margin: Any) -> tuple[float, float] | None:
    """(the initiator's, the listener's) horizon from what both peers receive alike: both node infos
    (each one's round trip and AGE) and the server's HELD and margin. None when any is missing or not
    a duration (an older peer or server): the caller then keeps sample_ages' guess.

    - the initiator: its AGE when its connect left, half its round trip to the server, HELD (the
      offer, the listener's sampling and accept, a beacon's wait: everything until the session),
      then the margin;
    - the listener: its AGE when its accept (or its "sampled" info) left, half its round trip, the
      margin. (With a beacon its AGE is the beacon's: the info leaves right behind it.)"""
    if not isinstance(first_info, dict) or not isinstance(second_info, dict):
        return None
    r1, r2 = published_rtt(first_info.get("rtt")), published_rtt(second_info.get("rtt"))
    a1, a2 = published_seconds(first_info.get(AGE), MAX_AGE), published_seconds(second_info.get(AGE), MAX_AGE)
    h, m = published_seconds(held, MAX_HELD), published_rtt(margin)
    if r1 is None or r2 is None or a1 is None or a2 is None or h is None or m is None:
        return None
    first = a1 + 0.5 * r1 + h + m + SLACK
    second = a2 + 0.5 * r2 + m + SLACK
    return min(MAX_MEASURED, first), min(MAX_MEASURED, second)


__all__ = ["AGE", "HELD", "MAX_AGE", "MAX_HELD", "MAX_MEASURED", "SLACK", "measured_ages", "published_rtt",
           "published_seconds", "sample_age", "sample_ages"]
