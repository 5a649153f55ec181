"""A rendezvous tier without sockets: one front (RendezvousServer) per instance over one registry
backend, driven through the async methods with a fake clock; notices relayed between instances go
through pack_notice/unpack_notice as io/ sends them. The backends: the in-memory registry (shared
by the fronts of one process) and Redis (one adapter per instance, one key prefix per tier)."""

from __future__ import annotations

import itertools
import secrets
from contextlib import asynccontextmanager

from nattrav.proto.rendezvous.names import NameBindings
from nattrav.proto.rendezvous import (
    SERVER_MESSAGES, Close, FrameDecoder, MemoryRegistry, Relay, RendezvousServer, Send, encode, make,
    pack_notice, unpack_notice,
)

REGISTRY_OPTIONS = ("retain", "max_peers", "max_peers_per_source", "max_offers_per_peer", "max_offers_per_source")


class Tier:
    def __init__(self, fronts: dict[str, RendezvousServer]):
        self.fronts = fronts
        self.now = 1000.0
        self.inbox: dict[int, list[dict]] = {}
        self.closed: dict[int, str] = {}
        self.instance_of: dict[int, str] = {}
        self._ids = itertools.count(1)

    def front(self, conn: int) -> RendezvousServer:
        return self.fronts[self.instance_of[conn]]

    async def open(self, instance: str = "A", addr=("203.0.113.10", 40000)) -> int:
        conn = next(self._ids)
        self.inbox[conn] = []
        self.instance_of[conn] = instance
        self.fronts[instance].connection_made(conn, addr, self.now)
        self._collect()
        return conn

    async def send(self, conn: int, kind: str, **fields) -> None:
        await self.front(conn).areceive_data(conn, encode(make(kind, **fields)), self.now)
        self._collect()

    async def lose(self, conn: int) -> None:
        await self.front(conn).aconnection_lost(conn, self.now)
        self._collect()

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for front in self.fronts.values():
            while await front.atick(self.now):
                pass
        self._collect()

    def _collect(self) -> None:
        moved = True
        while moved:
            moved = False
            for name, front in self.fronts.items():
                for act in front.actions():
                    moved = True
                    if isinstance(act, Send):
                        dec = FrameDecoder(SERVER_MESSAGES)  # every frame must parse as a client would
                        dec.feed(encode(act.msg))
                        self.inbox[act.conn].append(dec.next_message())
                    elif isinstance(act, Close):
                        self.closed[act.conn] = act.reason
                    elif isinstance(act, Relay):
                        wall = 5000.0
                        note = unpack_notice(pack_notice(act.notice, wall), wall)
                        self.fronts[act.instance].deliver(note, self.now)

    def pop(self, conn: int) -> list[dict]:
        out, self.inbox[conn] = self.inbox[conn], []
        return out

    def one(self, conn: int, kind: str) -> dict:
        msgs = self.pop(conn)
        assert [m["t"] for m in msgs] == [kind], msgs
        return msgs[0]

    async def enroll(self, conn: int, **fields) -> dict:
        await self.send(conn, "enroll", id=1, **fields)
        return self.one(conn, "enrolled")

    async def enrolled(self, *peers: tuple[str, tuple, str]) -> list[int]:
        """A connection per (instance, address, name), enrolled under that name."""
        conns = []
        for instance, addr, name in peers:
            conns.append(await self.open(instance, addr))
            await self.enroll(conns[-1], name=name)
        return conns


def _split(options: dict) -> tuple[dict, dict]:
    reg = {k: v for k, v in options.items() if k in REGISTRY_OPTIONS}
    front = {k: v for k, v in options.items() if k not in REGISTRY_OPTIONS}
    return reg, front


@asynccontextmanager
async def memory_tier(instances=("A", "B"), **options):
    reg_options, front_options = _split(options)
    # the registry keeps the name bindings, as Redis does for all its instances (each front has its own)
    registry = MemoryRegistry(**reg_options, names=NameBindings())
    yield Tier({name: RendezvousServer(registry=registry, instance=name, **front_options) for name in instances})


@asynccontextmanager
async def redis_tier(client, instances=("A", "B"), **options):
    from nattrav.io.redis_registry import RedisRegistry

    reg_options, front_options = _split(options)
    dead_after = front_options.pop("dead_after", 1e9)  # by default no instance ever dies
    prefix = f"t{secrets.token_hex(4)}:"
    fronts = {}
    for name in instances:
        registry = RedisRegistry(client, instance=name, prefix=prefix, dead_after=dead_after, **reg_options)
        await registry.maintain(1000.0)  # its first heartbeat: the instance is alive
        fronts[name] = RendezvousServer(registry=registry, instance=name, **front_options)
    yield Tier(fronts)
