"""The punch key, agreed by the two peers themselves, sans-IO.

The rendezvous server used to mint the 32-byte key that authenticates punch packets (and, on the raw
path, every datagram) and hand it to both peers: whoever ran or watched the server could forge the
session. Now each side brings a fresh X25519 key for this one session and signs it with its Ed25519
identity together with what identifies the session, so the server only relays public values it
cannot swap unnoticed:

    initiator -> (connect's node info)  kx = {pub: E_i, sig: Sign_i(OFFER | target | E_i)}
    responder -> (accept's node info)   kx = {pub: E_r, sig: Sign_r(ANSWER | session | ID_i | E_i | E_r)}
    punch key = HKDF-SHA256(X25519(e, E_peer), salt = E_i | E_r, info = LABEL | session)

The responder checks the offer against the key the server says the initiator proved at enroll (the
offer's from_key); the initiator checks the answer against the key it asked for (a peer ID is its
key). The answer signs the initiator's ephemeral key and the session id, so a server that puts its
own ephemeral key in either direction meets a signature that fails and the session is refused
before a packet is sent. A replayed old offer or answer only names an ephemeral key whose private
half its owner threw away: nobody can compute that session's key. Like WireGuard's and TLS 1.3's
ephemeral exchange, this gives forward secrecy to the punch key: the identity keys only sign.

Node info is the channel because the rendezvous protocol relays it unread in both directions (the
offer carries the initiator's, the session frame the responder's), with no server change; the
server's own "key" field stays in the session frame for clients that use the bare rendezvous
client (io/rendezvous_client.py's Session.key, e.g. raw lab tools), which the API no longer reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import PeerAuthError, WrongPeer

INFO_KEY = "kx"  # the node info field that carries one side's half
PUB_LEN = 32
SIG_LEN = 64
KEY_LEN = 32
_OFFER = b"nattrav kx v1 offer"
_ANSWER = b"nattrav kx v1 answer"
_DERIVE = b"nattrav punch key v1"


def _fields(label: bytes, *parts: bytes) -> bytes:
    # length-prefixed, so no two different field lists sign the same bytes
    return label + b"".join(struct.pack(">H", len(p)) + p for p in parts)


def _raw(public: x25519.X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Half:
    """One side's public half as it came through the server: ephemeral key and signature."""

    pub: bytes
    sig: bytes

    def to_info(self) -> dict[str, Any]:
        return {INFO_KEY: {"pub": self.pub, "sig": self.sig}}

    @classmethod
    def from_info(cls, info: Any, who: str) -> Half:
        """The half in a peer's node info; PeerAuthError when it is missing or malformed (an old
        client, or a server that stripped it: either way there is no key to agree on)."""
        kx = info.get(INFO_KEY) if isinstance(info, dict) else None
        if not isinstance(kx, dict):
            raise PeerAuthError(f"{who} sent no key agreement (an old client, or the server dropped it): "
                                "refusing a session whose punch key the server would know")
        pub, sig = kx.get("pub"), kx.get("sig")
        if type(pub) is not bytes or len(pub) != PUB_LEN or type(sig) is not bytes or len(sig) != SIG_LEN:
            raise PeerAuthError(f"{who}'s key agreement is malformed")
        return cls(pub, sig)


def _verify(signer: bytes, sig: bytes, data: bytes, what: str, who: str = "the peer") -> None:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(signer).verify(sig, data)
    except (InvalidSignature, ValueError):
        raise WrongPeer(f"{what} is not signed by {who}'s key for this session: the rendezvous server (or "
                        "someone on its path) changed it, or introduced someone else; refusing") from None


class KeyAgreement:
    """One side of one session's exchange. Make a new one per session: its private key is the
    session's secret and is never reused or stored."""

    def __init__(self) -> None:
        self._private = x25519.X25519PrivateKey.generate()
        self.pub = _raw(self._private.public_key())

    # -- the initiator --
    def offer(self, identity: Any, target: str) -> Half:
        """Our half for a connect to `target` (as the user wrote it: a peer ID or a name)."""
        return Half(self.pub, identity.sign(_fields(_OFFER, target.encode(), self.pub)))

    def finish_as_initiator(self, answer: Half, responder_key: bytes, our_key: bytes, session_id: str,
                            who: str = "the peer") -> bytes:
        """The punch key, once the responder's answer verifies against `responder_key` (the key we
        expect, `who` in messages) and signs our own ephemeral key and this session; WrongPeer otherwise."""
        _verify(responder_key, answer.sig, _fields(_ANSWER, session_id.encode(), our_key, self.pub, answer.pub),
                "the answer's key agreement", who)
        return self._derive(answer.pub, self.pub, answer.pub, session_id)

    # -- the responder --
    def answer(self, identity: Any, offer: Half, initiator_key: bytes, target_names: tuple[str, ...],
               session_id: str) -> Half:
        """Check the initiator's offer (signed by `initiator_key`, for one of our names) and make
        our half of session `session_id`; WrongPeer when the offer does not verify."""
        signed = False
        for name in target_names:
            try:
                _verify(initiator_key, offer.sig, _fields(_OFFER, name.encode(), offer.pub), "the offer")
                signed = True
                break
            except WrongPeer:
                continue
        if not signed:
            raise WrongPeer("the offer's key agreement is not signed by the initiator's key for us: the "
                            "rendezvous server (or someone on its path) changed it; refusing")
        self._offer_pub = offer.pub
        return Half(self.pub, identity.sign(_fields(_ANSWER, session_id.encode(), initiator_key, offer.pub,
                                                    self.pub)))

    def finish_as_responder(self, session_id: str) -> bytes:
        """The punch key, after answer()."""
        return self._derive(self._offer_pub, self._offer_pub, self.pub, session_id)

    def _derive(self, peer_pub: bytes, initiator_pub: bytes, responder_pub: bytes, session_id: str) -> bytes:
        try:
            shared = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pub))
        except ValueError:  # a low-order point gives an all-zero secret: no key at all
            raise WrongPeer("the peer's ephemeral key is degenerate; refusing") from None
        return HKDF(hashes.SHA256(), KEY_LEN, salt=initiator_pub + responder_pub,
                    info=_DERIVE + session_id.encode()).derive(shared)


__all__ = ["INFO_KEY", "Half", "KeyAgreement"]
