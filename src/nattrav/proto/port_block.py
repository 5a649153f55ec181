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
windows wrap where the NAT does. The highest port seen may still be below the block's top: while
our samples go past it, nothing is published (the counter is at a new top), and a window across it
also holds the wrapped ports' twins past it (Prediction.mixture_window). Before the first wrap is
seen, samples taken across it are read from the bottom by proto/predict.since_wrap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

# wraps seen before the block is used: one, since a wrong block undoes itself (two stale samples in
# a row read as a wrap publish a range whose top the counter then passes, and a counter past the
# highest port seen publishes nothing: PortBlock.beyond)
MIN_WRAPS = 1
MIN_BLOCK = 16  # ports; a smaller spread is not told from a counter that has barely moved


@dataclass(frozen=True)
class PortBlock:
    lo: int | None = None  # lowest port seen
    hi: int | None = None  # highest port seen
    last: int | None = None  # the counter's last port, in the order samples were taken
    wraps: int = 0
    dropped: int | None = None  # a step back not yet confirmed as a wrap: the port it went back to
    beyond: bool = False  # the last samples folded in went above every port seen before them

    def seen(self, ports: Iterable[int]) -> PortBlock:
        """The block after samples `ports`, in the order the NAT handed them out."""
        b = replace(self, beyond=False)
        for port in ports:
            b = b._one(port)
        # the counter went past the highest port seen before: the block's top is not known yet
        return replace(b, beyond=self.hi is not None and b.hi is not None and b.hi > self.hi)

    def _one(self, port: int) -> PortBlock:
        lo = port if self.lo is None else min(self.lo, port)
        hi = port if self.hi is None else max(self.hi, port)
        half = (hi - lo + 1) / 2
        if self.dropped is not None:
            # a wrap when the counter goes on from where it went back; else the step back was a
            # stale sample and the counter is where this one says
            wrapped = 0 <= port - self.dropped < half
            return replace(self, lo=lo, hi=hi, last=port, wraps=self.wraps + wrapped, dropped=None)
        quarter = half / 2
        if (self.last is not None and self.last - port > half and hi - lo + 1 >= MIN_BLOCK
                and port - lo < quarter and hi - self.last < quarter):
            # from the top quarter of the ports seen to the bottom one: the counter stays at `last`
            # until the next sample tells a wrap from an old flow's mapping
            return replace(self, lo=lo, hi=hi, dropped=port)
        return replace(self, lo=lo, hi=hi, last=port)

    def port_range(self, delta: int | None) -> tuple[int, int] | None:
        """[lowest, highest + Δ - 1] once the counter wrapped MIN_WRAPS times; None before, and while
        the last samples went past the highest port seen before them (the counter is at a new top:
        the block goes on at least that far, and maybe further)."""
        if self.wraps < MIN_WRAPS or self.lo is None or self.hi is None or not delta or delta < 1 or self.beyond:
            return None
        if self.hi - self.lo + 1 < MIN_BLOCK:
            return None
        return (self.lo, min(65535, self.hi + delta - 1))


__all__ = ["MIN_BLOCK", "MIN_WRAPS", "PortBlock"]
