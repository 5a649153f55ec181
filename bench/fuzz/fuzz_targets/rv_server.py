"""The rendezvous server state machine (proto/rendezvous/server.py RendezvousServer) fed arbitrary bytes on
four connections while time moves, driven the way io/rendezvous_server drives it (tick() whenever
next_deadline() has passed, a Close ends the connection, a closed slot is reopened as a new one).

Input: a script of records (fuzz_harness.records). Record op: bits 0-1 the connection slot, bits 2-3
the action (0, 1: these bytes arrive on the slot, opening it first if needed; 2: the slot's peer
disconnects, or connects when closed; 3: nothing but time), bits 4-7 how far the clock moves first
(STEPS seconds). Tokens and keys are deterministic ("t1", "t2", ...), so a seed can accept an offer.

Contract: no call raises for anything a peer sends (LocalProtocolError only for the caller's own
misuse, which this driver never commits). Every frame the server asks to send encodes within
MAX_FRAME and is one its clients accept (SERVER_MESSAGES), an error message quotes at most
MAX_MESSAGE characters, frames go to open connections only. Bounds: each decoder holds less than
one header plus one maximal frame after a call; peers <= max_peers; pending offers per peer <=
max_offers_per_peer.
"""

from __future__ import annotations

import itertools

import msgpack

from nattrav.errors import BadFrame, LocalProtocolError
from nattrav.proto import rendezvous as rv
from nattrav.proto.rendezvous import Close, RendezvousServer, Send

from fuzz_harness import Target, Violation, record, records, timed
from fuzz_targets.rv_frames import frames

STEPS = (0, 0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 15, 30, 45, 60, 120, 301, 1000)
ADDRS = (("203.0.113.10", 5000), ("198.51.100.20", 5001), ("2001:db8::30", 5002), ("203.0.113.10", 5003))
MAX_PEERS = 3
MAX_OFFERS = 2


def _server() -> RendezvousServer:
    n = itertools.count(1)
    return RendezvousServer(max_peers=MAX_PEERS, max_offers_per_peer=MAX_OFFERS,
                            token=lambda _nbytes: f"t{next(n)}", key=lambda nbytes: b"k" * nbytes)


class Driver:
    def __init__(self) -> None:
        self.srv = _server()
        self.now = 1000.0
        self.slots: list[int | None] = [None] * 4
        self.ids = itertools.count(1)

    def open(self, slot: int) -> None:
        conn = next(self.ids)
        self.slots[slot] = conn
        with timed():
            self.srv.connection_made(conn, ADDRS[slot], self.now)
        self.drain()

    def step(self, op: int, payload: bytes) -> None:
        slot, action = op & 3, (op >> 2) & 3
        self.now += STEPS[op >> 4]
        deadline = self.srv.next_deadline()
        if deadline is not None and deadline <= self.now:
            with timed():
                self.srv.tick(self.now)
            self.drain()
        conn = self.slots[slot]
        if action in (0, 1):
            if conn is None:
                self.open(slot)
                conn = self.slots[slot]
            if conn is not None and payload:
                with timed():
                    self.srv.receive_data(conn, payload, self.now)
                self.drain()
        elif action == 2:
            if conn is None:
                self.open(slot)
            else:
                self.slots[slot] = None
                with timed():
                    self.srv.connection_lost(conn, self.now)
                self.drain()
        self.check()

    def drain(self) -> None:
        for act in self.srv.actions():
            if act.conn not in self.slots:
                raise Violation(f"{type(act).__name__} for connection {act.conn}, which is not open")
            if isinstance(act, Close):
                self.slots[self.slots.index(act.conn)] = None
                continue
            assert isinstance(act, Send)
            try:
                frame = rv.encode(act.msg)
            except LocalProtocolError as exc:
                raise Violation(f"the server cannot frame its own {act.msg.get('t')!r}: {exc}") from None
            try:
                rv.decode_one(frame, rv.SERVER_MESSAGES)
            except BadFrame as exc:
                raise Violation(f"a client would reject the server's {act.msg.get('t')!r}: {exc}") from None
            if act.msg["t"] == "error" and len(act.msg["message"]) > rv.MAX_MESSAGE:
                raise Violation(f"an error message of {len(act.msg['message'])} characters")

    def check(self) -> None:
        srv = self.srv
        open_conns = {c for c in self.slots if c is not None}
        if set(srv.conns) != open_conns:
            raise Violation(f"server has connections {sorted(srv.conns)}, the driver {sorted(open_conns)}")
        for conn, c in srv.conns.items():
            if len(c.decoder._buf) >= rv.HEADER.size + rv.MAX_FRAME:
                raise Violation(f"connection {conn}'s decoder holds {len(c.decoder._buf)} bytes")
        if len(srv.peers) > MAX_PEERS:
            raise Violation(f"{len(srv.peers)} peers registered, the limit is {MAX_PEERS}")
        for p in srv.peers.values():
            if len(p.offers) > MAX_OFFERS:
                raise Violation(f"peer {p.peer_id} is in {len(p.offers)} pending offers")


def run(data: bytes) -> None:
    d = Driver()
    for op, payload in records(data):
        d.step(op, payload)


# ---- seeds: scripted sessions through every handler


def _op(slot: int, action: int = 0, step: int = 0) -> int:
    return slot | action << 2 | step << 4


def seeds() -> dict[str, bytes]:
    f = frames()
    m = rv.make

    def enc(kind: str, **kw) -> bytes:
        return rv.encode(m(kind, **kw))

    bob = enc("enroll", id=1, name="bob", secret="b" * 16, info={"report": {"public": ["198.51.100.20", 5001]}})
    happy = (record(_op(0), f["enroll"]) + record(_op(1), bob) + record(_op(0), f["connect"])
             + record(_op(1, step=3), enc("accept", id=2, offer="t1")) + record(_op(0), f["ping"])
             + record(_op(1), f["info"]))
    refuse = (record(_op(0), f["enroll"]) + record(_op(1), bob) + record(_op(0), f["connect"])
              + record(_op(1), enc("refuse", id=2, offer="t1")) + record(_op(0), enc("connect", id=9, target="carol")))
    timeout = (record(_op(0), f["enroll"]) + record(_op(1), bob) + record(_op(0), f["connect"])
               + record(_op(2, 3, 8)) + record(_op(3, 3, 11)) + record(_op(3, 3, 14)) + record(_op(3, 3, 15)))
    reenroll = (record(_op(0), f["enroll"]) + record(_op(1), bob) + record(_op(1), enc("connect", id=5, target="alice"))
                + record(_op(2), f["enroll"]) + record(_op(3), f["enroll"].replace(b"s" * 16, b"x" * 16))
                + record(_op(2, 2)) + record(_op(0, 2)) + record(_op(3), enc("enroll", id=3, name="bob")))
    busy = b"".join(record(_op(i % 4), f["enroll-anon"]) for i in range(5)) + record(_op(0, 2)) + record(_op(0), f["enroll-anon"])
    offers = (record(_op(0), f["enroll"]) + record(_op(1), bob)
              + b"".join(record(_op(0), f["connect"]) for _ in range(3))
              + record(_op(1), enc("accept", id=3, offer="t2")) + record(_op(1, 2)) + record(_op(0), f["ping"]))
    garbage = (record(_op(0), f["enroll"]) + record(_op(0), b"\0\0\0\x03\xc1\xc1\xc1") + record(_op(0), f["ping"][:3])
               + record(_op(0), f["ping"][3:]) + record(_op(0), b"\0\x01\0\0") + record(_op(0), f["ping"]))
    big = rv.encode(m("info", id=1, info={"blob": "\x00" * 8000}))
    out = {"happy": happy, "refuse": refuse, "timeout": timeout, "reenroll": reenroll, "busy": busy,
           "offers": offers, "garbage": garbage,
           "big-info": record(_op(0), f["enroll"]) + record(_op(0), big) + record(_op(1), bob)
           + record(_op(1), enc("connect", id=1, target="alice"))}
    # a frame that asks for an error quoting attacker data (issue 14 finding 1)
    junk = msgpack.packb({"v": "\x00" * 5000, "t": "ping"})
    out["quoted-junk"] = record(_op(0), rv.HEADER.pack(len(junk)) + junk)
    return out


TARGET = Target("rv_server", run, (), seeds, max_len=40000,
                what="RendezvousServer fed chunks on 4 connections with time advancing")
