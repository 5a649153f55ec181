"""Enrollment by key in one round trip over real sockets (proto/rendezvous/timed_proof.py): the client
enrolls with a timed proof, plain or over TLS, and again after a server restart; a skewed clock or
an older server cost a round trip, never the enrollment; a replayed proof is refused by the other
worker process of the same address, through Redis."""

from __future__ import annotations

import secrets
import time

import trio

from nattrav.identity import Identity
from nattrav.io import rendezvous_client
from nattrav.io.redis_link import open_redis_link
from nattrav.io.rendezvous_client import open_rendezvous
from nattrav.io.rendezvous_server import serve_rendezvous
from nattrav.io.rendezvous_tls import client_context, server_context
from nattrav.proto.rendezvous import SERVER_MESSAGES, FrameDecoder, RendezvousServer, encode, make
from nattrav.proto.rendezvous import server as server_module
from nattrav.proto.rendezvous.names import enroll_proof
from nattrav.proto.rendezvous.timed_proof import NONCE_BYTES, audience, make_proof
from nattrav.proto.rendezvous.wire import CLIENT_MESSAGES
from tests.instances import instance
from tests.io.test_rendezvous_reenroll import RestartableServer
from tests.redisd import running_redis
from tests.secure_lab import self_signed


async def _serve(nursery, **options) -> tuple[RendezvousServer, tuple[str, int]]:
    state = RendezvousServer(**{"keepalive": 1.0, **options})
    addr = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, state=state,
                                                                    task_status=task_status))
    return state, addr


async def test_an_identity_enrolls_without_a_challenge_and_again_after_a_restart(nursery):
    server = RestartableServer(nursery, keepalive=1.0)
    await server.start()
    me = Identity.generate()
    async with open_rendezvous(("127.0.0.1", server.port), identity=me) as client:
        assert client.peer_id == me.peer_id.text and client.challenged == 0
        assert server.state.stats["timed_enrolls"] == 1 and server.state.stats["timed_fallbacks"] == 0
        await server.restart(down_for=0.3)  # a new process: empty registry, empty replay guard
        with trio.fail_after(10):
            while client.enrollments < 2 or not client.connected:
                await trio.sleep(0.02)
        assert client.peer_id == me.peer_id.text and client.challenged == 0
        assert server.state.stats["timed_enrolls"] == 1  # the new server's count: a fresh proof
        assert server.state.peers[me.peer_id.text].conn is not None


async def test_a_skewed_clock_enrolls_one_round_trip_later(nursery, monkeypatch):
    state, addr = await _serve(nursery)
    real = rendezvous_client.time.time
    monkeypatch.setattr(rendezvous_client.time, "time", lambda: real() + 120.0)  # two minutes ahead
    me = Identity.generate()
    async with open_rendezvous(addr, identity=me, name="skewed") as client:
        assert client.peer_id == "skewed" and client.challenged == 1 and client.timed_proofs
    assert state.stats["timed_enrolls"] == 0 and state.stats["timed_fallbacks"] == 1
    assert state.names.owner("skewed") == me.peer_id.key_bytes


async def test_an_older_server_gets_the_challenge_flow(nursery, monkeypatch):
    # the schema of a server that predates timed proofs: their fields are unknown there
    old = {**CLIENT_MESSAGES, "enroll": {k: v for k, v in CLIENT_MESSAGES["enroll"].items() if k not in ("nonce", "at")}}
    monkeypatch.setattr(server_module, "CLIENT_MESSAGES", old)
    state, addr = await _serve(nursery)
    me = Identity.generate()
    async with open_rendezvous(addr, identity=me) as client:
        assert client.peer_id == me.peer_id.text and not client.timed_proofs
        assert state.stats["bad_frames"] == 1 and state.stats["timed_enrolls"] == 0


async def test_a_timed_proof_names_the_address_under_tls(nursery, tmp_path):
    cert, key = self_signed(tmp_path, "rv")
    state, addr = await _serve(nursery)
    # a second server over TLS (serve_rendezvous' ssl_context)
    tls_state = RendezvousServer(keepalive=1.0)
    tls_addr = await nursery.start(lambda task_status: serve_rendezvous(
        "127.0.0.1", 0, state=tls_state, ssl_context=server_context(cert, key), task_status=task_status))
    me = Identity.generate()
    async with open_rendezvous(tls_addr, identity=me, tls=client_context(cert)) as client:
        assert client.peer_id == me.peer_id.text and client.challenged == 0
    assert tls_state.stats["timed_enrolls"] == 1 and state.stats["timed_enrolls"] == 0


async def _exchange(addr, *frames: dict) -> tuple[trio.SocketStream, FrameDecoder, list[dict]]:
    """Open a raw connection, send `frames`, and read one reply per frame."""
    stream = await trio.open_tcp_stream(*addr)
    dec = FrameDecoder(SERVER_MESSAGES)
    await stream.send_all(b"".join(encode(f) for f in frames))
    return stream, dec, [await _read(stream, dec) for _ in frames]


async def _read(stream, dec) -> dict:
    with trio.fail_after(5):
        while (msg := dec.next_message()) is None:
            data = await stream.receive_some(65536)
            assert data, "the server closed the connection"
            dec.feed(data)
    return msg


async def test_a_replayed_proof_is_refused_by_the_other_worker_process():
    with running_redis() as redisd, instance("--registry", redisd.url, "--processes", "2", "--instance", "w") as inst:
        me = Identity.generate()
        name = me.peer_id.text
        proof = make_proof(me.sign, me.peer_id.key_bytes, secrets.token_bytes(NONCE_BYTES), time.time(), audience(*inst.addr), name).fields()
        frame = make("enroll", id=1, name=name, **proof)
        async with open_redis_link(redisd.url) as link:
            first, _, (reply,) = await _exchange(inst.addr, frame)
            assert reply["t"] == "enrolled", reply
            took = (await link.call("HGET", f"nattrav:p:{name}", "inst")).decode()
            seen = set()
            streams = [first]
            try:
                # the same frame on more connections (other source ports: the kernel spreads them over
                # both workers) until one of them landed at the worker that did not take the proof
                for _ in range(40):
                    stream, dec, (reply,) = await _exchange(inst.addr, frame)
                    streams.append(stream)
                    assert reply["t"] == "challenge", reply
                    # we hold the key: sign the challenge, so the registry says which worker this was
                    await stream.send_all(encode(make("enroll", id=2, name=name, key=me.peer_id.key_bytes,
                                                      sig=me.sign(enroll_proof(reply["nonce"], name)))))
                    assert (await _read(stream, dec))["t"] == "enrolled"
                    seen.add((await link.call("HGET", f"nattrav:p:{name}", "inst")).decode())
                    if seen - {took}:
                        break
                assert seen - {took}, f"every replay landed at {took}"
            finally:
                for s in streams:
                    await trio.aclose_forcefully(s)
