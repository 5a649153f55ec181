"""The peers' own punch key (proto/handshake_kx.py): both sides get the same key, the relaying
server's view is not enough to compute it, and every field the server could change is caught."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes

from nattrav.errors import BadPacket, PeerAuthError, WrongPeer
from nattrav.identity import Identity
from nattrav.proto.handshake import Handshake
from nattrav.proto.handshake_kx import INFO_KEY, Half, KeyAgreement

SESSION = "s3ss10n-id"


def exchange(target: str | None = None):
    """One full exchange; returns (initiator key, responder key, what the server relayed)."""
    ini, resp = Identity.generate(), Identity.generate()
    target = target or resp.peer_id.text
    a, b = KeyAgreement(), KeyAgreement()
    offer = a.offer(ini, target)
    # through the server and back: msgpack, as the node info travels
    offer = Half.from_info(msgpack.unpackb(msgpack.packb(offer.to_info())), ini.peer_id.text)
    answer = b.answer(resp, offer, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)
    k_resp = b.finish_as_responder(SESSION)
    k_ini = a.finish_as_initiator(answer, resp.peer_id.key_bytes, ini.peer_id.key_bytes, SESSION)
    return k_ini, k_resp, (ini, resp, a, b, offer, answer)


def test_both_sides_agree_on_a_fresh_key():
    k1, k2, _ = exchange()
    k3, k4, _ = exchange()
    assert k1 == k2 and len(k1) == 32
    assert k3 == k4 and k3 != k1  # fresh ephemeral keys: a new key per session


def test_what_the_server_relays_does_not_give_the_key():
    key, _, (ini, resp, _, _, offer, answer) = exchange()
    # everything public the server saw, run through the same derivation, is not the key
    public = offer.pub + answer.pub + offer.sig + answer.sig
    for ikm in (public, offer.pub, answer.pub, bytes(32)):
        guess = HKDF(hashes.SHA256(), 32, salt=offer.pub + answer.pub,
                     info=b"nattrav punch key v1" + SESSION.encode()).derive(ikm)
        assert guess != key
    # and a punch packet made with anything but the agreed key is dropped by the peer's handshake
    victim = Handshake(key, "second", b"n" * 8)
    forged = Handshake(bytes(32), "first", b"f" * 8).hello(1)
    with pytest.raises(BadPacket):
        victim.receive(forged, 2)
    genuine = Handshake(key, "first", b"g" * 8).hello(3)
    assert victim.receive(genuine, 4).replies  # the real key is accepted (the check is not vacuous)
    assert victim.rejected == 1


def test_a_swapped_offer_key_is_refused_by_the_responder():
    ini, resp = Identity.generate(), Identity.generate()
    offer = KeyAgreement().offer(ini, resp.peer_id.text)
    server_own = KeyAgreement()
    swapped = Half(server_own.pub, offer.sig)
    with pytest.raises(WrongPeer):
        KeyAgreement().answer(resp, swapped, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)
    # re-signed by someone else (the server's own key) does not verify against the initiator's key
    resigned = server_own.offer(Identity.generate(), resp.peer_id.text)
    with pytest.raises(WrongPeer):
        KeyAgreement().answer(resp, resigned, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)


def test_an_offer_meant_for_another_peer_is_refused():
    ini, resp = Identity.generate(), Identity.generate()
    offer = KeyAgreement().offer(ini, "someone-else")
    with pytest.raises(WrongPeer):
        KeyAgreement().answer(resp, offer, ini.peer_id.key_bytes, (resp.peer_id.text, "bob"), SESSION)
    # a name the responder is known by is fine
    KeyAgreement().answer(resp, KeyAgreement().offer(ini, "bob"), ini.peer_id.key_bytes,
                          (resp.peer_id.text, "bob"), SESSION)


@pytest.mark.parametrize("change", ["pub", "session", "initiator-pub", "signer"])
def test_a_changed_answer_is_refused_by_the_initiator(change):
    ini, resp, other = Identity.generate(), Identity.generate(), Identity.generate()
    a, b = KeyAgreement(), KeyAgreement()
    offer = a.offer(ini, resp.peer_id.text)
    if change == "initiator-pub":  # the server gave the responder its own ephemeral key as ours
        offer = KeyAgreement().offer(ini, resp.peer_id.text)
    answer = b.answer(resp, offer, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)
    session, signer = SESSION, resp.peer_id.key_bytes
    if change == "pub":
        answer = Half(KeyAgreement().pub, answer.sig)
    elif change == "session":
        session = "another-session"
    elif change == "signer":  # answered by another key than the one we asked for
        answer = KeyAgreement().answer(other, offer, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)
    with pytest.raises(WrongPeer):
        a.finish_as_initiator(answer, signer, ini.peer_id.key_bytes, session)


@pytest.mark.parametrize("info", [None, {}, {INFO_KEY: 1}, {INFO_KEY: {"pub": b"x", "sig": b"y" * 64}},
                                  {INFO_KEY: {"pub": b"x" * 32}}, {INFO_KEY: {"pub": "x" * 32, "sig": b"y" * 64}}])
def test_a_missing_or_malformed_half_is_refused(info):
    with pytest.raises(PeerAuthError):
        Half.from_info(info, "peer")


def test_a_degenerate_ephemeral_key_is_refused():
    ini, resp = Identity.generate(), Identity.generate()
    b = KeyAgreement()
    # sign the all-zero (low-order) point properly, so only the exchange itself can refuse it
    from nattrav.proto import handshake_kx as kx
    zero = Half(bytes(32), ini.sign(kx._fields(kx._OFFER, resp.peer_id.text.encode(), bytes(32))))
    b.answer(resp, zero, ini.peer_id.key_bytes, (resp.peer_id.text,), SESSION)
    with pytest.raises(WrongPeer):
        b.finish_as_responder(SESSION)
