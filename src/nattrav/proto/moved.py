"""What broke when a plan that stated high odds found no path: the second round's fresh samples
(api/session.py) set against the first round's and the window each side aimed at. A NAT whose
ports went far below its earlier ones started its counter again (a port block's end); one whose
next ports lie past the window handed the window's ports to other flows. When neither shows, the
samples agree with the first plan and its packets, not its prediction, were lost."""

from __future__ import annotations

from collections.abc import Sequence

from .predict import WRAP_STEPS
from .planner.udp import Plan
from .report import NatReport

AGREE = "the fresh samples agree with the first plan (its packets were lost, or a filter did not open)"


def moved(whose: str, aimed: Sequence[int], before: NatReport, after: NatReport, spent: int = 0) -> str | None:
    """The finding about one side's NAT (`whose`: "the peer's", "our"), or None: `aimed`, the
    ports the window held for it; `before`, `after`, its reports of the two rounds; `spent`, the
    flows its own first punch opened there (they moved its counter too). Only a NAT that maps each
    flow anew can have moved (an EIM mapping is the one port the plan aimed at)."""
    if before.mapping is None or not before.mapping.symmetric or not aimed:
        return None
    old = [s.port for s in before.samples]
    new = [s.port for s in after.samples]
    if not old or not new:
        return None
    top, low = max(old), min(new)
    step = max(1, abs(before.delta or 1))
    if low < min(aimed) and top - low > WRAP_STEPS * step:
        return f"{whose} NAT started its ports again lower ({top} before, {low} now): the end of a port block"
    beyond = low - spent * step - max(aimed)
    if beyond > 0:
        return (f"{whose} NAT was {beyond} port(s) past the window's end ({min(aimed)}-{max(aimed)}) by the "
                f"second round, besides its punch's own {spent} flow(s): other flows took them")
    return None


def what_broke(first: Plan, peer: tuple[NatReport, NatReport], ours: tuple[NatReport, NatReport]) -> str:
    """One line from the `first` plan that failed and both sides' reports of the two rounds:
    every side's finding, or AGREE."""
    a = first.primary
    found = [f for f in (moved("the peer's", a.local.targets, *peer, spent=a.remote.flows),
                         moved("our", a.remote.targets, *ours, spent=a.local.flows)) if f]
    return "; ".join(found) or AGREE


__all__ = ["AGREE", "moved", "what_broke"]
