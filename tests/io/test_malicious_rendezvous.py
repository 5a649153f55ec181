"""A rendezvous server gone bad cannot lead an initiator to the wrong peer, nor forge a session
(issue 15).

The test double is our own server with lies added. Asked for the victim, it introduces an impostor
(a real nattrav listener with its own key, which also answers to the victim's name) and tells the
initiator the session is with the victim, naming either the impostor's key (a key swap) or the
victim's own key (an address swap: the impostor's signed half of the punch key then fails against
the victim's key). Either way the initiator refuses before a packet is sent, and the impostor gets
no byte of its data; an honest listener refuses an offer meant for someone else by itself.
A server that puts its own ephemeral key into either side's half of the punch-key agreement is
caught by the signatures, and a server that records everything it sees cannot make a punch packet
the peers accept."""

from __future__ import annotations

import pytest
import trio

import msgpack
import secrets

from nattrav.api import connect, listen
from nattrav.errors import BadPacket, NattravError, Refused, WrongPeer
from nattrav.identity import Identity
from nattrav.io.path import now_ns
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.handshake import Handshake
from nattrav.proto.handshake_kx import INFO_KEY, KeyAgreement
from nattrav.proto.rendezvous import RendezvousServer
from nattrav.proto.rendezvous.wire import Packed


class SwappingServer(RendezvousServer):
    def __init__(self, swap: str, **options) -> None:
        super().__init__(**options)
        self.swap = swap
        self.victim = self.impostor = ""
        self.fooled: set[int] = set()  # connections of initiators that asked for the victim

    async def _handle(self, conn, c, msg, now):
        if msg["t"] == "connect" and msg["target"] == self.victim:
            msg = {**msg, "target": self.impostor}
            self.fooled.add(conn)
        await super()._handle(conn, c, msg, now)

    def _send(self, conn, kind, **fields):
        if kind == "session" and conn in self.fooled:
            fields["peer"] = self.victim
            if self.swap == "address":
                fields["peer_key"] = self.peers[self.victim].key
        super()._send(conn, kind, **fields)


@pytest.mark.parametrize("swap, error", [("key", WrongPeer), ("address", WrongPeer), ("honest", Refused)])
async def test_the_initiator_refuses_a_swapped_peer(servers, swap, error):
    state = SwappingServer(swap)
    victim, impostor, initiator = Identity.generate(), Identity.generate(), Identity.generate()
    state.victim, state.impostor = victim.peer_id.text, impostor.peer_id.text
    impostor_got: list[bytes] = []
    events: list[str] = []
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve_rendezvous(
                "127.0.0.1", 0, state=state, task_status=task_status))
            common = dict(stun=servers["stun"])

            async def victim_side(task_status=trio.TASK_STATUS_IGNORED):
                async with listen((host, port), identity=victim, **common) as lst:
                    task_status.started()
                    async with lst.accept():
                        raise AssertionError("the victim was never asked")

            async def impostor_side(task_status=trio.TASK_STATUS_IGNORED):
                async with listen((host, port), identity=impostor, **common) as lst:
                    if swap != "honest":  # a malicious impostor answers offers made for the victim
                        lst.aliases = (state.victim,)
                    task_status.started()
                    try:
                        async with lst.accept() as path:
                            while data := await path.stream.receive_some():
                                impostor_got.append(data)
                    except (NattravError, trio.BrokenResourceError):
                        pass  # refused by the initiator: what it should meet

            await nursery.start(victim_side)
            await nursery.start(impostor_side)
            with pytest.raises(error) as caught:
                async with connect((host, port), victim.peer_id.text, identity=initiator, timeout=20,
                                   on_event=lambda phase, d: events.append(phase), **common) as path:
                    await path.stream.send_all(b"for the victim's eyes only")
            await trio.sleep(1.0)  # let the impostor see whatever it was going to see
            nursery.cancel_scope.cancel()
    assert impostor_got == []
    assert "punch" not in events  # refused before one packet was sent
    if swap != "honest":
        assert victim.peer_id.text in str(caught.value)


def _info(value) -> dict:
    return value.unpack() if type(value) is Packed else msgpack.unpackb(value, raw=False)


class KxSwappingServer(RendezvousServer):
    """Puts its own ephemeral key into one side's half of the punch-key agreement (the offer's, on
    its way to the listener, or the answer's, on its way to the initiator), keeping the signature
    or signing with a key of its own."""

    def __init__(self, where: str, resign: bool, **options) -> None:
        super().__init__(**options)
        self.where, self.resign = where, resign
        self.own = Identity.generate()
        self.swapped = 0

    def _send(self, conn, kind, **fields):
        if (kind, self.where) in (("offer", "offer"), ("session", "answer")) and "info" in fields:
            if kind == "offer" or fields["role"] == "first":
                info = _info(fields["info"])
                if INFO_KEY in info:
                    half = KeyAgreement().offer(self.own, "whatever")
                    info[INFO_KEY] = {"pub": half.pub, "sig": half.sig if self.resign else info[INFO_KEY]["sig"]}
                    fields["info"] = Packed(msgpack.packb(info, use_bin_type=True))
                    self.swapped += 1
        super()._send(conn, kind, **fields)


@pytest.mark.parametrize("resign", [False, True])
@pytest.mark.parametrize("where, error", [("offer", Refused), ("answer", WrongPeer)])
async def test_a_server_that_substitutes_its_ephemeral_key_is_refused(servers, where, error, resign):
    state = KxSwappingServer(where, resign)
    listener_id, initiator = Identity.generate(), Identity.generate()
    events: list[tuple[str, dict]] = []
    listener_events: list[tuple[str, dict]] = []
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve_rendezvous(
                "127.0.0.1", 0, state=state, task_status=task_status))
            common = dict(stun=servers["stun"], secure=False)  # the raw path: the punch key is all it has

            async def listener_side(task_status=trio.TASK_STATUS_IGNORED):
                async with listen((host, port), identity=listener_id,
                                  on_event=lambda p, d: listener_events.append((p, d)), **common) as lst:
                    task_status.started()
                    try:
                        async with lst.accept() as path:
                            await path.receive()
                    except NattravError:
                        pass

            await nursery.start(listener_side)
            with pytest.raises(error):
                async with connect((host, port), listener_id.peer_id.text, identity=initiator, timeout=20,
                                   on_event=lambda p, d: events.append((p, d)), **common):
                    pass
            nursery.cancel_scope.cancel()
    assert state.swapped >= 1
    assert "punch" not in [p for p, _ in events]
    if where == "offer":  # the listener saw the bad signature and refused the offer
        refused = [d["reason"] for p, d in listener_events if p == "refused"]
        assert refused and "not signed" in refused[0]


class RecordingServer(RendezvousServer):
    """An honest server that keeps everything it learns: the keys it minted, every frame it sent."""

    def __init__(self, **options) -> None:
        self.minted: list[bytes] = []

        def key(n: int) -> bytes:
            k = secrets.token_bytes(n)
            self.minted.append(k)
            return k

        super().__init__(key=key, **options)
        self.sent: list[tuple[str, dict]] = []

    def _send(self, conn, kind, **fields):
        self.sent.append((kind, {k: (_info(v) if k == "info" else v) for k, v in fields.items()}))
        super()._send(conn, kind, **fields)


async def test_a_recording_server_cannot_forge_a_punch_packet(servers):
    state = RecordingServer()
    listener_id, initiator = Identity.generate(), Identity.generate()
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve_rendezvous(
                "127.0.0.1", 0, state=state, task_status=task_status))
            common = dict(stun=servers["stun"], secure=False)
            got: list[bytes] = []

            async def listener_side(task_status=trio.TASK_STATUS_IGNORED):
                async with listen((host, port), identity=listener_id, **common) as lst:
                    task_status.started()
                    async with lst.accept() as path:
                        got.append(await path.receive())

            await nursery.start(listener_side)
            async with connect((host, port), listener_id.peer_id.text, identity=initiator, timeout=20,
                               **common) as path:
                await path.send(b"hello")  # the session works with the peers' own key
                # everything the server knows about this session
                sessions = [f for k, f in state.sent if k == "session"]
                assert len(sessions) == 2 and state.minted
                session_id, server_key = sessions[0]["session"], sessions[0]["key"]
                relayed = [f["info"][INFO_KEY] for _, f in state.sent if "info" in f and INFO_KEY in f["info"]]
                assert relayed  # it relayed both halves, and only public values
                # a punch packet and a data frame keyed with the server's session key, as the
                # initiator would send them, are dropped and counted by the initiator's own peer...
                hs = path.handshake
                before = hs.rejected
                for role in ("first", "second"):
                    forger = Handshake(server_key, role, b"f" * 8)
                    for frame in (forger.hello(now_ns()), forger.data(b"forged"), forger.keepalive()):
                        with pytest.raises(BadPacket):
                            hs.authenticate(frame)
                assert hs.rejected == before + 6
                # ...and also those keyed with anything else the server saw
                for value in [session_id.encode().ljust(32, b"\0")] + [h["pub"] for h in relayed]:
                    with pytest.raises(BadPacket):
                        hs.authenticate(Handshake(value, "second", b"f" * 8).hello(now_ns()))
                with trio.fail_after(10):
                    while not got:
                        await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert got == [b"hello"]


@pytest.mark.parametrize("keyed", [False, True])
async def test_an_initiator_without_its_half_is_refused(servers, keyed):
    """An old client (no key, or a key but no half of the agreement: a server that stripped it looks
    the same) would leave only the server's key to punch with: the listener refuses it."""
    from nattrav.io import rendezvous_client as rv

    refused: list[str] = []
    with trio.fail_after(30):
        async with listen(servers["server"], stun=servers["stun"], secure=False,
                          on_event=lambda p, d: refused.append(d["reason"]) if p == "refused" else None) as lst:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _never(lst))
                async with rv.open_rendezvous(servers["server"],
                                              identity=Identity.generate() if keyed else None) as old:
                    await old.update_info({"report": {}})
                    with pytest.raises(Refused):
                        await old.connect(lst.peer_id, timeout=5)
                nursery.cancel_scope.cancel()
    assert len(refused) == 1
    assert ("no key agreement" if keyed else "no identity key") in refused[0]


async def _never(lst):
    async with lst.accept():
        raise AssertionError("an offer without a key agreement was accepted")
