"""A rendezvous server gone bad cannot lead an initiator to the wrong peer (issue 15).

The test double is our own server with two lies added: asked for the victim, it introduces an
impostor (a real nattrav listener with its own key) and tells the initiator the session is with the
victim, naming either the impostor's key (a key swap: refused before a packet is sent) or the
victim's own key (an address swap: the punch reaches the impostor, who holds the session key the
server gave it, and the QUIC handshake is where the impostor fails). Either way the initiator
refuses, and the impostor gets no byte of its data."""

from __future__ import annotations

import pytest
import trio

from nattrav.api import connect, listen
from nattrav.errors import NattravError, PeerAuthError, WrongPeer
from nattrav.identity import Identity
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.proto.rendezvous import RendezvousServer


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


@pytest.mark.parametrize("swap, error", [("key", WrongPeer), ("address", PeerAuthError)])
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
    assert victim.peer_id.text in str(caught.value)
    if swap == "key":
        assert "punch" not in events  # refused on the server's word alone: not one packet sent
    else:
        assert "connected" in events and "secure" not in events  # punched, then the handshake refused
