"""Taking a sequential NAT's port counter through the top of its block before our report leaves,
when it is about to get there (proto/port_block.py to_top).

Why: a report publishes the block the counter was seen to go round, with its top at the highest
port our samples met. A few samples a cycle rarely meet the NAT's very top, so the published top
is often lower than the NAT's, and the lowest port seen may sit above its bottom. A window that
crosses the published top wraps there, and the NAT's counter goes on: a miss. Where the peer's own
port is fixed, its window hedges with the wrapped ports' twins; where both sides count, the windows
pair flows by index and nothing can hedge (over wan50, the last misses of the CGN sequential pairs:
1 in 4,000 each). A counter that has already wrapped has no edge ahead of it for a whole cycle.

How: fresh sockets each send one Binding request to the STUN server. Each is a new flow, so a new
mapping, which takes the counter's next port. Their answers, in the order the requests left, are
folded into the block (api/port_blocks.py), where the wrap shows, at the NAT's own top and bottom.
The next batches (2·TOP_EXTRA flows, then twice as many each time) go on until the wrap shows, or
the counter went so far past the top that the block is not published any more (it was no block),
or MAX_CROSSING flows (or half what the flow budget has left) are spent. The caller folds the
last port into the report as the counter's sample (report.Sample.own: the other flows were ours)
and puts the flows in its ledger: they hold NAT entries like a burst's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..io.stun_client import from_fresh_sockets
from ..proto.port_block import MAX_CROSSING, TOP_EXTRA, to_top
from ..proto.stun import binding_request
from ..proto.stun_client import Transaction
from . import port_blocks

# an answer lost costs one port of evidence, not the crossing: retransmit once, give up after ~0.6 s
RTO, RC, RM = 0.2, 2, 2


@dataclass
class Crossing:
    """What a crossing did: the flows it opened, the ports answered (in the order their requests
    left), how many of its flows came before the last one answered, and when its last batch left."""

    flows: int = 0
    ports: list = field(default_factory=list)
    before_last: int = 0
    started: float = 0.0
    wrapped: bool = False


async def cross_top(stun: tuple[str, int], src_ip: str | None, public_ip: str, port_range: tuple[int, int],
                    last: int, delta: int | None, most: int = MAX_CROSSING) -> Crossing:
    """Take the counter (at `last`, stepping by `delta`, on `public_ip`) through the top of its
    published block `port_range` when it is within reach of it, in `most` flows at most (else do
    nothing: where our flow budget is nearly spent, the punch needs what is left more)."""
    out = Crossing(started=trio.current_time())
    most = min(most, MAX_CROSSING)
    n = to_top(port_range, last, delta)
    if not n or n > most:
        return out
    wraps = port_blocks.observe(public_ip, []).wraps
    batches = 0
    while n and out.flows + n <= most:
        out.started = trio.current_time()
        got = await new_flows(stun, src_ip, public_ip, n)
        if got is None:
            break
        block = port_blocks.observe(public_ip, [p for p in got if p is not None])
        answered = [i for i, p in enumerate(got) if p is not None]
        if answered:
            out.before_last = out.flows + answered[-1]
        out.ports += [p for p in got if p is not None]
        out.flows += n
        if block.wraps > wraps:
            out.wrapped = True
            break
        if not answered or block.port_range(delta) is None:
            break  # nothing came back, or the counter went on far past the top: no block there
        # the NAT's top is past the published one: a little further first, then twice as far each
        # time (a batch's flows after the wrap are spent for nothing: batches doubling from the first
        # spent 84-160 flows on a first crossing over wan50 and left the plan 1-4)
        batches += 1
        n = min(TOP_EXTRA << batches, most - out.flows)
    return out


async def new_flows(stun: tuple[str, int], src_ip: str | None, public_ip: str, n: int) -> list[int | None] | None:
    """The mapped port of each of `n` fresh sockets' flows to `stun`, in the order they left (None:
    no answer, or an answer from another public address); None when the sockets could not open."""
    try:
        _, results = await from_fresh_sockets(n, src_ip, lambda: Transaction(binding_request(), stun, rto=RTO, rc=RC,
                                                                               rm=RM))
    except OSError:
        return None
    return [r.mapped[1] if r is not None and r.ok and str(r.mapped[0]) == public_ip else None for r in results]


__all__ = ["Crossing", "cross_top", "new_flows"]
