"""The port blocks of the sequential NATs this process's mappings went through (proto/port_block.py),
by the public address the mappings showed: each sampling folds its ports in, and a report publishes
the block once the counter was seen to wrap. An application that connects again and again (a
listener's many peers, the lab's agents) learns it in memory; the behaviour cache keeps it per
network (api/udp.py), so that a new process (each `nattrav-fast` run) starts from what an earlier
one saw, instead of meeting a wrap its report could not name (a failed first round and a second one)."""

from __future__ import annotations

from collections.abc import Sequence

from ..proto.port_block import PortBlock

MAX_NATS = 64  # public addresses remembered (an address pool's each; the least recently seen go)

_blocks: dict[str, PortBlock] = {}


def observe(public_ip: str, ports: Sequence[int]) -> PortBlock:
    """Fold `ports` (mapped on `public_ip`, in the order the NAT handed them out) into its block."""
    block = _blocks.get(public_ip, PortBlock()).seen(ports)
    _put(public_ip, block)
    return block


def seed(public_ip: str, lo: int, hi: int, wraps: int) -> None:
    """Start `public_ip`'s block from a kept one (the cache's), unless this process saw its own."""
    if public_ip not in _blocks:
        _put(public_ip, PortBlock(lo=lo, hi=hi, wraps=wraps))


def kept(public_ip: str) -> tuple[int, int, int] | None:
    """What the cache keeps of `public_ip`'s block (lowest, highest, wraps), once it wrapped."""
    b = _blocks.get(public_ip)
    if b is None or b.wraps < 1 or b.lo is None or b.hi is None:
        return None
    return b.lo, b.hi, b.wraps


def _put(public_ip: str, block: PortBlock) -> None:
    """`block` is `public_ip`'s now, its most recently seen."""
    _blocks.pop(public_ip, None)
    _blocks[public_ip] = block
    while len(_blocks) > MAX_NATS:
        del _blocks[next(iter(_blocks))]


def forget_all() -> None:
    """For tests: nothing learned."""
    _blocks.clear()


__all__ = ["MAX_NATS", "forget_all", "kept", "observe", "seed"]
