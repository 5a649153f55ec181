"""The secure layer over a punched path: whom to expect, and QUIC (UDP) or TLS (TCP) with
certificates bound to identity keys.

The rendezvous server only introduces. What it says about the peer's key (the session's peer_key)
is checked against what the user asked for: a peer ID is a key, so a server that names another key
for it is caught before a packet is sent; a plain name is only as good as the server's binding
(the one thing a name trusts the server for). Whatever the server said, the peer must then prove
the expected key in the QUIC or TLS handshake, so a server that swaps addresses (or gives the
session key to someone else) meets a handshake the impostor cannot finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import BadPacket, PeerAuthError, WrongPeer
from ..identity import Identity, PeerId
from ..io.path import PunchedPath, now_ns
from ..io.session import Session
from ..proto.handshake import MAGIC as PUNCH_MAGIC
from ..proto.handshake_kx import Half, KeyAgreement
from ..proto.rendezvous.names import as_peer_id
from .endpoint import EventHook

if TYPE_CHECKING:
    from ..io.quic_settings import QuicSettings
    from ..io.quic_path import QuicPath
    from ..io.relay_path import RelayedPath
    from ..io.tls_frames import FramedTls

# QUIC, TLS and the relay are imported where they are first used: aioquic and the X.509 stack are
# a sixth of a cold process's start-up, and the rendezvous and discovery need none of them (issue
# 13: preload_secure() has a thread import them while the first round trips are in flight)
# (cryptography's OpenSSL backend module: aioquic's TLS context asks it which curves exist, a first
# import of ~2.5 ms inside the first handshake otherwise)
SECURE_STACK = ("nattrav.io.quic_deps", "aioquic.quic.connection", "aioquic.quic.configuration", "aioquic.tls",
                "cryptography.x509", "cryptography.hazmat.backends.openssl.backend", "nattrav.io.quic_path",
                "nattrav.io.tls_stream", "nattrav.io.tls_frames")


def preload_secure(modules: tuple[str, ...] = SECURE_STACK) -> None:
    """Import the secure stack in a daemon thread (the GIL is free while the main thread waits on the
    network). The thread imports third-party modules first; a module the main thread asks for
    meanwhile just waits for the thread's import of it to finish."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # the main thread's own import will say what is wrong
                return

    threading.Thread(target=load, name="nattrav-preload", daemon=True).start()

# A NAT forgets an idle UDP mapping after its lifetime: RFC 4787 asks for 2 minutes at least, but
# home routers and CGNs are seen at 30 s and below (the lab's tests run 20 s and 8 s). The lifetime is
# measured once a session is up (api/liveness.py, io/lifetime.py) and cached for the next session;
# until then the keepalive assumes 10 s, half of that. A PING is ~50 bytes.
ASSUMED_LIFETIME = 10.0
MIN_KEEPALIVE = 1.0
IDLE_TIMEOUT = 30.0  # silence from the peer (keepalives included) after which the path is dead


def keepalive_interval(lifetime: float | None) -> float:
    """Seconds between keepalives for a mapping known to live `lifetime` seconds idle (None: not
    measured): half of it, so one lost keepalive does not lose the mapping. The measured value is
    the lower end of a bracket (io/lifetime.py), so half of it stays below the true lifetime."""
    known = lifetime if lifetime is not None and lifetime > 0 else ASSUMED_LIFETIME
    return max(MIN_KEEPALIVE, known / 2)


def quic_settings(lifetime: float | None = None, **overrides: Any) -> QuicSettings:
    """The path's QUIC settings: keepalives sized from the mapping lifetime (and below a third of
    the idle timeout, so the peer's silence means a dead path, not a quiet one)."""
    from ..io.quic_settings import QuicSettings
    options: dict[str, Any] = {"idle_timeout": IDLE_TIMEOUT}
    options.update(overrides)
    if "keepalive_interval" not in overrides:
        options["keepalive_interval"] = min(keepalive_interval(lifetime), options["idle_timeout"] / 3)
    return QuicSettings(**options)


def expected_peer(asked: str | None, session: Session) -> PeerId:
    """The key the peer must prove. `asked` is what the initiator asked for (None on the listener's
    side, which expects whoever the session names). WrongPeer when the server's word contradicts a
    peer ID; PeerAuthError when nothing says which key to expect."""
    named = as_peer_id(asked if asked is not None else session.peer_id)
    told = PeerId.from_public_key(session.peer_key) if session.peer_key is not None else None
    if named is not None:
        if told is not None and told != named:
            raise WrongPeer(f"the rendezvous server introduced {told} as {named}: refusing (a server that "
                            "swaps keys is not to be followed)")
        return named
    if told is None:
        who = asked if asked is not None else session.peer_id
        raise PeerAuthError(f"{who} has no identity key at the server (an old client?): cannot "
                            "authenticate it; connect by peer ID, or use the raw datagram path")
    return told


def agree_as_initiator(kx: KeyAgreement, session: Session, peer: PeerId, identity: Identity) -> Session:
    """`session` with the punch key we agreed with `peer` (proto/handshake_kx.py) in place of the
    server's; WrongPeer or PeerAuthError when the peer's half is missing or not signed by its key."""
    answer = Half.from_info(session.peer_info, peer.text)
    key = kx.finish_as_initiator(answer, peer.key_bytes, identity.peer_id.key_bytes, session.session_id,
                                 peer.text)
    return replace(session, key=key)


def agree_as_responder(kx: KeyAgreement, session: Session, offer_id: str) -> Session:
    """`session` with the punch key of the answer we signed for offer `offer_id`."""
    if session.session_id != offer_id:
        raise WrongPeer(f"the rendezvous server answered offer {offer_id} with session {session.session_id}")
    return replace(session, key=kx.finish_as_responder(offer_id))


@asynccontextmanager
async def secure_udp(path: PunchedPath | RelayedPath, session: Session, identity: Identity, expected: PeerId,
                     settings: QuicSettings, emit: EventHook) -> AsyncIterator[QuicPath]:
    """QUIC over the punched socket, authenticated both ways; late punch packets are answered.
    Over a relayed path (io/relay_path.py) QUIC rides the path's own wire, which moves from the
    relay to a direct route underneath when one answers; the relayed path answers its own punch
    packets."""
    import sys

    from ..io.quic_path import ROLE_OF, open_quic_path

    # the relay's modules (the TURN stack, ~4 ms of CPU) are loaded only once the ladder reached the
    # relay (api/relay.py): before that, no path can be a relayed one
    relay_path = sys.modules.get("nattrav.io.relay_path")
    if relay_path is not None and isinstance(path, relay_path.RelayedPath):
        async with open_quic_path(None, path.peer_addr, identity, expected, role=ROLE_OF[session.role.value],
                                  settings=settings, wire=path.quic_wire(path.counters)) as quic:
            quic.punched = path
            emit("secure", {"protocol": "quic", "peer_id": expected.text,
                            "keepalive": settings.keepalive_interval, "via": path.via})
            yield quic
        return

    def late_punch(data: bytes) -> list[bytes] | None:
        if data[:2] != PUNCH_MAGIC:
            # QUIC's, told without raising an exception per packet (~1 % of a receiver's CPU); a QUIC
            # packet that happens to start so goes on to decode(), which sorts it out
            return None
        try:
            got = path.handshake.receive(data, now_ns())
        except BadPacket:
            return None  # not ours: QUIC's
        return list(got.replies)

    async with open_quic_path(path.sock, path.peer_addr, identity, expected, role=ROLE_OF[session.role.value],
                              settings=settings, intercept=late_punch) as quic:
        quic.punched = path
        emit("secure", {"protocol": "quic", "peer_id": expected.text, "keepalive": settings.keepalive_interval})
        yield quic


@asynccontextmanager
async def secure_tcp(stream: Any, session: Session, identity: Identity, expected: PeerId,
                     emit: EventHook) -> AsyncIterator[FramedTls]:
    """TLS 1.3 over the punched TCP stream, authenticated both ways, framed for half-close and
    delivery confirmation (io/tls_frames.py)."""
    from ..io.quic_path import ROLE_OF
    from ..io.tls_frames import FramedTls
    from ..io.tls_stream import open_tls_stream

    tls = await open_tls_stream(stream, identity, expected, server_side=ROLE_OF[session.role.value] == "server")
    framed = FramedTls(tls)
    framed.peer_id, framed.punched = expected, stream
    emit("secure", {"protocol": "tls", "peer_id": expected.text})
    try:
        yield framed
    finally:
        await framed.aclose()


__all__ = ["ASSUMED_LIFETIME", "SECURE_STACK", "agree_as_initiator", "agree_as_responder", "expected_peer",
           "keepalive_interval", "preload_secure", "quic_settings", "secure_tcp", "secure_udp"]
