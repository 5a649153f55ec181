"""The port blocks of the sequential NATs this process's mappings went through (proto/port_block.py),
by the public address the mappings showed: each sampling folds its ports in, and a report publishes
the block once the counter was seen to wrap. An application that connects again and again (a
listener's many peers, the lab's agents) learns it in memory; the behaviour cache keeps it per
network (api/udp.py), so that a new process (each `nattrav-fast` run) starts from what an earlier
one saw, instead of meeting a wrap its report could not name (a failed first round and a second one).
A NAT counts its TCP ports apart from its UDP ones (Linux keeps one counter per protocol), so each
protocol's blocks are learned and kept apart: `proto` "udp" or "tcp"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..proto.port_block import PortBlock

if TYPE_CHECKING:
    from .endpoint import CacheUse

MAX_NATS = 64  # (protocol, public address) pairs remembered (an address pool's each; the least recently seen go)

PROTOCOLS = ("udp", "tcp")

_blocks: dict[tuple[str, str], PortBlock] = {}


def observe(public_ip: str, ports: Sequence[int], proto: str = "udp") -> PortBlock:
    """Fold `ports` (mapped on `public_ip`, in the order the NAT handed them out) into its block."""
    key = _key(public_ip, proto)
    block = _blocks.get(key, PortBlock()).seen(ports)
    _put(key, block)
    return block


def seed(public_ip: str, lo: int, hi: int, wraps: int, proto: str = "udp") -> None:
    """Start `public_ip`'s block from a kept one (the cache's), unless this process saw its own."""
    key = _key(public_ip, proto)
    if key not in _blocks:
        _put(key, PortBlock(lo=lo, hi=hi, wraps=wraps, wrap_top=hi))


def kept(public_ip: str, proto: str = "udp") -> tuple[int, int, int] | None:
    """What the cache keeps of `public_ip`'s block (lowest, highest, wraps), once it wrapped: the
    highest as of the last wrap, so that a counter going on past it is still measured from there by
    the next process (PortBlock.past_top)."""
    b = _blocks.get(_key(public_ip, proto))
    if b is None or b.wraps < 1 or b.lo is None or b.hi is None:
        return None
    return b.lo, b.hi if b.wrap_top is None else b.wrap_top, b.wraps


def seed_from(cached: CacheUse, proto: str = "udp") -> None:
    """The network's `proto` block as its cache entry kept it, for this process's reports to name
    at once."""
    if (block := cached.blocks.get(proto)) is not None:
        seed(cached.key.public_ip, *block, proto=proto)


def keep_in(cached: CacheUse | None, proto: str = "udp") -> None:
    """The block this process has seen the network's `proto` counter go round, kept with its cache
    entry."""
    if cached is not None and (block := kept(cached.key.public_ip, proto)) is not None:
        cached.cache.set_block(cached.key, block, proto)


def _key(public_ip: str, proto: str) -> tuple[str, str]:
    if proto not in PROTOCOLS:
        raise ValueError(f"no port blocks for protocol {proto!r}")
    return proto, public_ip


def _put(key: tuple[str, str], block: PortBlock) -> None:
    """`block` is `key`'s now, its most recently seen."""
    _blocks.pop(key, None)
    _blocks[key] = block
    while len(_blocks) > MAX_NATS:
        del _blocks[next(iter(_blocks))]


def forget_all() -> None:
    """For tests: nothing learned."""
    _blocks.clear()


__all__ = ["MAX_NATS", "PROTOCOLS", "forget_all", "keep_in", "kept", "observe", "seed", "seed_from"]
