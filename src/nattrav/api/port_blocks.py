"""The port blocks of the sequential NATs this process's mappings went through (proto/port_block.py),
by the public address the mappings showed: each sampling folds its ports in, and a report publishes
the block once the counter was seen to wrap. An application that connects again and again (a
listener's many peers, the lab's agents) learns it in memory; the behaviour cache keeps it per
network (api/udp.py), so that a new process (each `nattrav-fast` run) starts from what an earlier
one saw, instead of meeting a wrap its report could not name (a failed first round and a second one).
A NAT counts its TCP ports apart from its UDP ones (Linux keeps one counter per protocol), so each
protocol's blocks are learned and kept apart: `proto` "udp" or "tcp".

The addresses of one NAT's pool share one block (join): the planner takes a pool's ports as one
counter aimed at on every address (proto/planner/pool.py), and each address alone is a thin sample
of it. An arbitrary pool's 4 addresses, each named by its own cache entry, left each block to a
sixteenth of the samples: its lowest port seen stood 1-33 ports above the NAT's bottom after
~25 cycles, and 4 connects in 4,000 missed there (bench/results/reliability.md, s19c)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..proto.port_block import PortBlock
from .behavior_cache import Key

if TYPE_CHECKING:
    from .endpoint import CacheUse

MAX_NATS = 64  # (protocol, public address) pairs remembered (an address pool's each; the least recently seen go)

PROTOCOLS = ("udp", "tcp")

_blocks: dict[tuple[str, str], PortBlock] = {}
# (protocol, address) -> the key its pool's shared block is kept under (join)
_alias: dict[tuple[str, str], tuple[str, str]] = {}


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


def join(public_ips: Iterable[str], proto: str = "udp") -> None:
    """The addresses `public_ips` are one NAT's pool: from now on they share one block, which
    starts as the union of what each had (lowest and highest ports, most wraps)."""
    keys = sorted({_key(ip, proto) for ip in public_ips})
    if len(keys) < 2:
        return
    roots = sorted({_alias.get(k, k) for k in keys})
    root = roots[0]
    merged = None
    for r in roots:
        if (b := _blocks.get(r)) is not None:
            merged = b if merged is None else _union(merged, b)
        if r != root:
            _blocks.pop(r, None)
    for k, r in list(_alias.items()):
        if r in roots:
            _alias[k] = root
    for k in keys:
        _alias[k] = root
    _alias.pop(root, None)
    if merged is not None:
        _put(root, merged)


def _union(a: PortBlock, b: PortBlock) -> PortBlock:
    """One counter's block seen as two: every port either saw; the counter where the one that saw
    more wraps left it."""
    def pick(x: int | None, y: int | None, f) -> int | None:
        return y if x is None else x if y is None else f(x, y)

    first, other = (a, b) if a.wraps >= b.wraps else (b, a)
    return replace(first, lo=pick(a.lo, b.lo, min), hi=pick(a.hi, b.hi, max),
                   wrap_top=pick(a.wrap_top, b.wrap_top, max), dropped=None,
                   last=first.last if first.last is not None else other.last)


def seed_from(cached: CacheUse, proto: str = "udp", pool: Iterable[str] = ()) -> None:
    """The network's `proto` block as its cache entry kept it, for this process's reports to name
    at once; with the blocks kept by the entries of the other addresses of its pool `pool`, which
    then share one (join)."""
    if (block := cached.blocks.get(proto)) is not None:
        seed(cached.key.public_ip, *block, proto=proto)
    others = sorted(set(pool) - {cached.key.public_ip})
    if not others:
        return
    for ip in others:
        try:
            entry = cached.cache.lookup(Key.of(cached.key.local_ip, ip, cached.key.stun))
        except ValueError:
            continue
        if entry is not None and (kept_block := entry.blocks().get(proto)) is not None:
            seed(ip, *kept_block, proto=proto)
    join([cached.key.public_ip, *others], proto)


def keep_in(cached: CacheUse | None, proto: str = "udp") -> None:
    """The block this process has seen the network's `proto` counter go round, kept with its cache
    entry."""
    if cached is not None and (block := kept(cached.key.public_ip, proto)) is not None:
        cached.cache.set_block(cached.key, block, proto)


def _key(public_ip: str, proto: str) -> tuple[str, str]:
    """Where `public_ip`'s block is kept: its pool's shared one once joined."""
    if proto not in PROTOCOLS:
        raise ValueError(f"no port blocks for protocol {proto!r}")
    return _alias.get((proto, public_ip), (proto, public_ip))


def _put(key: tuple[str, str], block: PortBlock) -> None:
    """`block` is `key`'s now, its most recently seen."""
    _blocks.pop(key, None)
    _blocks[key] = block
    while len(_blocks) > MAX_NATS:
        gone = next(iter(_blocks))
        del _blocks[gone]
        for k in [k for k, r in _alias.items() if r == gone]:
            del _alias[k]


def forget_all() -> None:
    """For tests: nothing learned."""
    _blocks.clear()
    _alias.clear()


__all__ = ["MAX_NATS", "PROTOCOLS", "forget_all", "join", "keep_in", "kept", "observe", "seed", "seed_from"]
