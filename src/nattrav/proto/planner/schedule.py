"""When the talker of an attempt resends, sans-IO.

The opener's low-TTL packet must pass its own NAT before the talker's first packet reaches that NAT,
else a port-restricted NAT drops the talker's packet and the next one comes a whole interval later
(0.1–0.25 s). Both sides start at an agreed moment, but how far apart they really start (the clock
offsets' error, a session frame that came late, the work before the first packet) and where the
one-way delay sits are unknown. A fixed head start for the opener guesses them; resending quickly at
first does not: the talker starts at once and resends after gaps that double from RAMP_FIRST up to
the attempt's steady interval, so whenever the opener's NAT opens, the next packet is at most about
as far away as the time already spent (never more than one steady interval). Every resend goes to
the same ports from the same sockets: the same flows, so no new mapping, no flow-budget cost.
"""

from __future__ import annotations

# First gap of the ramp (seconds): a few times a process's wake-up jitter, well below a one-way
# delay on any real path; the gaps double from it (as STUN's and ICE's retransmissions do).
RAMP_FIRST = 0.002
# A part that sends more packets than this per round keeps one round per interval: its round alone
# takes a while to leave, and resending a big window quickly multiplies a burst.
RAMP_MAX_PACKETS = 64


def ramp(interval: float, first: float = RAMP_FIRST) -> tuple[float, ...]:
    """The gaps after the first rounds before the steady `interval` takes over: first, 2·first, ...,
    each shorter than `interval` (empty when `first` is not shorter)."""
    if not 0 < first:
        raise ValueError(f"first gap must be > 0, got {first!r}")
    gaps: list[float] = []
    gap = first
    while gap < interval:
        gaps.append(gap)
        gap *= 2
    return tuple(gaps)


def gap_after(round_no: int, gaps: tuple[float, ...], interval: float) -> float:
    """Seconds to wait after round `round_no` (0 = the first) of a part with ramp `gaps`."""
    return gaps[round_no] if 0 <= round_no < len(gaps) else interval


def send_times(gaps: tuple[float, ...], interval: float, until: float) -> list[float]:
    """The moments (seconds after the part's start) its rounds leave before `until`: what a part
    costs in packets (rounds × packets per round), for the plan's counts and the tests."""
    out, t, k = [], 0.0, 0
    while t < until:
        out.append(t)
        t += gap_after(k, gaps, interval)
        k += 1
    return out


__all__ = ["RAMP_FIRST", "RAMP_MAX_PACKETS", "gap_after", "ramp", "send_times"]
