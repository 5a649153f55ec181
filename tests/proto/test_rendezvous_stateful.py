"""Hypothesis drives the rendezvous state machine through random sequences of peers enrolling,
connecting, answering, vanishing and time passing, and checks its promises after every step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nattrav.proto.rendezvous import SERVER_MESSAGES, Close, RendezvousServer, Send, decode_one, encode, make

NAMES = ["p0", "p1", "p2", "p3"]
OFFER_TIMEOUT = 5.0


class RendezvousMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.server = RendezvousServer(offer_timeout=OFFER_TIMEOUT, keepalive_timeout=30.0, retain=60.0,
                                       max_offers_per_peer=4)
        self.now = 0.0
        self.next_conn = 1
        self.next_id = 1
        self.conn_of: dict[str, int] = {}  # name -> live connection
        self.secret: dict[str, str] = {}
        self.closed: set[int] = set()
        self.open_connects: dict[tuple[int, int], str] = {}  # (conn, id) -> target, awaiting a reply
        self.offers: dict[str, list] = {}  # name -> offers received, not yet answered
        self.sessions: dict[str, list] = {}
        self.enrolled: dict[int, dict] = {}

    # -- plumbing --
    def _collect(self):
        for act in self.server.actions():
            if isinstance(act, Close):
                assert act.conn not in self.closed, "closed twice"
                self.closed.add(act.conn)
                for name, conn in list(self.conn_of.items()):
                    if conn == act.conn:
                        del self.conn_of[name]
                continue
            assert isinstance(act, Send)
            assert act.conn not in self.closed, f"frame after close: {act.msg}"
            msg = decode_one(encode(act.msg), SERVER_MESSAGES)
            key = (act.conn, msg.get("id"))
            if msg["t"] in ("session", "error") and key in self.open_connects:
                del self.open_connects[key]
            if msg["t"] == "enrolled":
                self.enrolled[act.conn] = msg
            if msg["t"] == "session":
                self.sessions.setdefault(msg["session"], []).append(msg)
            if msg["t"] == "offer":
                name = next(n for n, c in self.conn_of.items() if c == act.conn)
                self.offers.setdefault(name, []).append(msg["offer"])

    def _send(self, conn, kind, **fields):
        self.server.receive_data(conn, encode(make(kind, **fields)), self.now)
        self._collect()

    # -- rules --
    @rule(name=st.sampled_from(NAMES), wrong_secret=st.sampled_from([False, False, False, True]))
    def enroll(self, name, wrong_secret):
        conn = self.next_conn
        self.next_conn += 1
        self.server.connection_made(conn, ("203.0.113.9", conn), self.now)
        secret = "w" * 20 if wrong_secret else self.secret.get(name)
        self.enrolled.pop(conn, None)
        self._send(conn, "enroll", id=0, name=name, secret=secret)
        reply = self.enrolled.pop(conn, None)
        taken = name in self.server.peers and self.server.peers[name].conn not in (None, conn)
        if reply is None:
            # refused: only a wrong secret for a name someone holds can be refused
            assert wrong_secret and name in self.server.peers and self.server.peers[name].conn != conn
            return
        assert not taken
        assert reply["peer"] == name
        if not wrong_secret:
            self.secret[name] = reply["secret"]
        else:
            self.secret[name] = reply["secret"]  # the name was free: the chosen secret now owns it
        self.conn_of[name] = conn

    @precondition(lambda self: self.conn_of)
    @rule(data=st.data(), timeout=st.sampled_from([1.0, 5.0]))
    def connect(self, data, timeout):
        src = data.draw(st.sampled_from(sorted(self.conn_of)))
        dst = data.draw(st.sampled_from(sorted(self.conn_of) + NAMES + ["ghost"]))
        conn = self.conn_of[src]
        rid = self.next_id
        self.next_id += 1
        self.open_connects[(conn, rid)] = dst
        self._send(conn, "connect", id=rid, target=dst, timeout=timeout)

    @precondition(lambda self: any(self.offers.get(n) and n in self.conn_of for n in NAMES))
    @rule(data=st.data(), accept=st.sampled_from([True, True, False]))
    def answer(self, data, accept):
        name = data.draw(st.sampled_from([n for n in NAMES if self.offers.get(n) and n in self.conn_of]))
        conn = self.conn_of[name]
        offer = self.offers[name].pop(0)
        self._send(conn, "accept" if accept else "refuse", id=self.next_id, offer=offer)
        self.next_id += 1

    @rule(name=st.sampled_from(NAMES))
    def vanish(self, name):
        conn = self.conn_of.pop(name, None)
        if conn is None:
            return
        self.closed.add(conn)
        self.server.connection_lost(conn, self.now)
        self._collect()

    @rule(dt=st.sampled_from([0.5, 2.0, 6.0, 40.0]))
    def advance(self, dt):
        self.now += dt
        self.server.tick(self.now)
        self._collect()
        # keep the live peers alive unless a long jump is meant to expire them
        if dt < 30:
            for name, conn in list(self.conn_of.items()):
                self._send(conn, "ping")

    # -- promises --
    @invariant()
    def offers_only_between_online_peers(self):
        for offer in self.server.offers.values():
            for pid in (offer.initiator, offer.target):
                peer = self.server.peers.get(pid)
                assert peer is not None and peer.conn is not None, "an offer outlived a peer's connection"
                assert offer.offer_id in peer.offers
            assert offer.expires > self.now - 1e-9

    @invariant()
    def every_connect_is_answered_in_time(self):
        # whatever is still open must be a pending offer that has not expired yet
        pending = {(self.server.peers[o.initiator].conn, o.request_id) for o in self.server.offers.values()}
        for key in self.open_connects:
            if key[0] in self.closed:
                continue  # the initiator left; nobody to answer
            assert key in pending, f"connect {key} was neither answered nor pending"

    @invariant()
    def sessions_are_symmetric(self):
        for sid, msgs in self.sessions.items():
            assert len(msgs) == 2, f"session {sid} delivered {len(msgs)} times"
            a, b = msgs
            assert a["key"] == b["key"] and len(a["key"]) == 32 and a["start_at"] == b["start_at"]
            assert {a["role"], b["role"]} == {"first", "second"} and a["peer"] != b["peer"]

    @invariant()
    def registry_matches_connections(self):
        for name, conn in self.conn_of.items():
            assert self.server.peers[name].conn == conn
        online = set(self.server.online())
        assert online == set(self.conn_of), (online, self.conn_of)


RendezvousMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestRendezvousMachine = RendezvousMachine.TestCase
