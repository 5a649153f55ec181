"""The block of ports a sequential NAT counts through, learned from our own samples, sans-IO.

Why: a sequential NAT does not always count through 1024-65535. A carrier-grade NAT gives each
subscriber a block of ports (RFC 7422; blocks of 64 to a few thousand), a Linux NAT the range its rule
names; at the block's end the counter starts again at its bottom. A prediction that assumes the whole
range aims past the top when the counter is close to it, and misses: in the lab, whose sequential
NATs count through 4,096 ports, ~1 predicted connect in 1,000 (more where windows are wider).

What we learn: the lowest and highest port any of our mappings on that NAT got, and how often the
counter was seen to start again at the bottom (a wrap: a step from the top quarter of the ports seen
to the bottom quarter, after which the next sample goes on forward from there; one step back alone
is a stale or stray sample, proto/predict.without_stray; two stale samples in a row that happen to
step that far would pass for a wrap, which io/fresh_port.py makes rare for our own flows). Once it
wrapped (MIN_WRAPS), the block's ports are taken as [lowest, highest + Δ - 1] (so that a step of Δ
past the highest lands on the lowest), and the report says so (NatReport.port_range): the peer's
windows wrap where the NAT does. The highest port seen may still be below the block's top, so a
window across it, from a side whose own port is fixed, also holds the wrapped ports' twins past it
(Prediction.mixture_window, TcpMapping.twin); likewise its lowest port seen may be above the
NAT's bottom, so such a window also holds the ports just under it, one a wrapped port
(TcpMapping.under; a TCP counter has no crossing to read its bottom). The block is published while the counter goes a
little past the top it wrapped at (TOP_SLACK): a few samples a cycle rarely meet the block's very
top, and a counter at a new top is just where the wrap comes next (TCP over wan50: all 8 misses of
a Δ = 2 pair in 4,000 came there, while nothing was published). A counter far past it says the wrap
was not one: nothing is published. Where both sides count, no twin can be aimed (the windows pair
flows by index): a side whose last sample is its published top (at_top) gets windows that go on
past it instead, as before such a block was published; and a counter within reach of its
published top (to_top) is taken through it before the report leaves (api/block_edge.py), so that
its windows start after the wrap. Before the first wrap is seen, samples taken across it are read
from the bottom by proto/predict.since_wrap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .report import PORT_RANGE

# wraps seen before the block is used: one, since a wrong block undoes itself (two stale samples in
# a row read as a wrap publish a range whose top the counter then passes, and a counter far past the
# top it wrapped at publishes nothing: TOP_SLACK)
MIN_WRAPS = 1
MIN_BLOCK = 16  # ports; a smaller spread is not told from a counter that has barely moved
# How far (a fraction of the block) the counter may go past the top it last wrapped at and the
# block still be published: a block's top is met by some cycle's samples within a few of
# the ports one connect takes (tens), while a wrong block's counter goes on past it by hundreds.
TOP_SLACK = 1 / 16
# A counter this few flows below its published top is taken through it before its report leaves
# (api/block_edge.py): a connect's windows reach tens of flows ahead, and where both sides count,
# a window that crosses a top published below the NAT's wraps early (no twin can cover it). The
# crossing costs those flows and a round trip, once a cycle of the block.
TOP_REACH = 64
# flows past the published top each crossing batch goes on for: the NAT's top may be higher, and
# the port after the wrap must be followed by one more to read as a wrap (PortBlock._one)
TOP_EXTRA = 8
MAX_CROSSING = 160  # flows one crossing may spend in all (a CGN subscriber may hold 512)


@dataclass(frozen=True)
class PortBlock:
    lo: int | None = None  # lowest port seen
    hi: int | None = None  # highest port seen
    last: int | None = None  # the counter's last port, in the order samples were taken
    wraps: int = 0
    dropped: int | None = None  # a step back not yet confirmed as a wrap: the port it went back to
    wrap_top: int | None = None  # the highest port seen when the counter last wrapped (a kept block's hi)

    @property
    def past_top(self) -> int:
        """How far the counter went above the top it wrapped at: the block goes on at least that far."""
        return 0 if self.wrap_top is None or self.hi is None else max(0, self.hi - self.wrap_top)

    def seen(self, ports: Iterable[int]) -> PortBlock:
        """The block after samples `ports`, in the order the NAT handed them out."""
        b = self
        for port in ports:
            b = b._one(port)
        return b

    def _one(self, port: int) -> PortBlock:
        lo = port if self.lo is None else min(self.lo, port)
        hi = port if self.hi is None else max(self.hi, port)
        half = (hi - lo + 1) / 2
        if self.dropped is not None:
            # a wrap when the counter goes on from where it went back; else the step back was a
            # stale sample and the counter is where this one says
            wrapped = 0 <= port - self.dropped < half
            return replace(self, lo=lo, hi=hi, last=port, wraps=self.wraps + wrapped, dropped=None,
                           wrap_top=hi if wrapped else self.wrap_top)
        quarter = half / 2
        if (self.last is not None and self.last - port > half and hi - lo + 1 >= MIN_BLOCK
                and port - lo < quarter and hi - self.last < quarter):
            # from the top quarter of the ports seen to the bottom one: the counter stays at `last`
            # until the next sample tells a wrap from an old flow's mapping
            return replace(self, lo=lo, hi=hi, dropped=port)
        return replace(self, lo=lo, hi=hi, last=port)

    def port_range(self, delta: int | None) -> tuple[int, int] | None:
        """[lowest, highest + Δ - 1] once the counter wrapped MIN_WRAPS times; None before, and while
        the counter went further past the top it last wrapped at than TOP_SLACK of the block (no wrap
        there: the block was read from stale samples)."""
        if self.wraps < MIN_WRAPS or self.lo is None or self.hi is None or not delta or delta < 1:
            return None
        span = self.hi - self.lo + 1
        if span < MIN_BLOCK or self.past_top > span * TOP_SLACK:
            return None
        return (self.lo, min(65535, self.hi + delta - 1))


def at_top(port_range: tuple[int, int], last: int, delta: int | None) -> bool:
    """A counter stepping by `delta` whose `last` port is the top of the published block
    `port_range` (its highest port seen + Δ - 1): the block goes on at least that far, and may go
    further (published a little past the top it wrapped at)."""
    lo, hi = port_range
    return (lo, hi) != PORT_RANGE and bool(delta) and delta > 0 and hi - delta + 1 <= last <= hi


def to_top(port_range: tuple[int, int], last: int, delta: int | None, reach: int = TOP_REACH) -> int:
    """Flows from a counter at `last`, stepping by `delta`, to the first that steps past the top of
    the published block `port_range`, plus TOP_EXTRA; 0 when that is more than `reach` flows away
    (or a sixteenth of the block's cycle, for a small block), or nothing is published, or `last` is
    not in the block."""
    lo, hi = port_range
    if (lo, hi) == PORT_RANGE or not delta or delta < 1 or not lo <= last <= hi:
        return 0
    steps = (hi - last) // delta + 1
    return steps + TOP_EXTRA if steps <= min(reach, max(1, (hi - lo + 1) // (16 * delta))) else 0


def under_bottom(lo: int, delta: int, wrapped: int) -> list[int]:
    """The ports just under a published block's lowest port seen `lo`, one for each of `wrapped`
    flows of a window that wrap to it, nearest first, on the grid of `delta` (> 0; else none): the
    NAT's bottom may be lower than its side's samples met, as its top may be higher (the twins)."""
    if delta < 1:
        return []
    return [lo - delta * g for g in range(1, wrapped + 1) if lo - delta * g >= 1]


__all__ = ["MAX_CROSSING", "MIN_BLOCK", "MIN_WRAPS", "TOP_EXTRA", "TOP_REACH", "TOP_SLACK", "PortBlock", "at_top",
           "to_top", "under_bottom"]
