"""The port blocks of the sequential NATs this process's mappings went through (proto/port_block.py),
by the public address the mappings showed: each sampling folds its ports in, and a report publishes
the block once the counter was seen to wrap. In memory only: an application that connects again and
again (a listener's many peers, the lab's agents) learns it; a single `nattrav-fast` run does not need
it (its connect wraps ~1 time in 1,000 at a 4,096-port block)."""

from __future__ import annotations

from collections.abc import Sequence

from ..proto.port_block import PortBlock

MAX_NATS = 64  # public addresses remembered (an address pool's each; the least recently seen go)

_blocks: dict[str, PortBlock] = {}


def observe(public_ip: str, ports: Sequence[int]) -> PortBlock:
    """Fold `ports` (mapped on `public_ip`, in the order the NAT handed them out) into its block."""
    block = _blocks.pop(public_ip, PortBlock()).seen(ports)
    _blocks[public_ip] = block
    while len(_blocks) > MAX_NATS:
        del _blocks[next(iter(_blocks))]
    return block


def forget_all() -> None:
    """For tests: nothing learned."""
    _blocks.clear()


__all__ = ["MAX_NATS", "forget_all", "observe"]
