"""Key-bound certificates: ours verify as the peer ID that issued them and as no other; forged,
mismatched, expired, over-long, CA, self-signed (libp2p-style) and malformed certificates are refused
with PeerAuthError, and the trust anchor built from a peer ID alone verifies that peer's certificates."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.errors import PeerAuthError
from nattrav.identity import Identity
from nattrav.proto import certs
from nattrav.proto.certs import issue_certificate, trust_anchor, verify_peer_certificate

NOW = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
ALICE = Identity.generate()
BOB = Identity.generate()
MALLORY = Identity.generate()

# libp2p TLS spec, test vector 1: a valid libp2p certificate (self-signed, key in an extension)
LIBP2P_CERT = bytes.fromhex(
    "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c6962"
    "7032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630313031313330"
    "3030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce"
    "3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601"
    "331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea37c307a3078060a2b0601040183a2"
    "5a0101046a3068042408011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d9"
    "0d2769db992d5e6195dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4b"
    "de92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f65"
    "0c9fb48943ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36"
    "a31b77")


def build(claimed: Identity, signer, *, start=NOW - dt.timedelta(hours=1), end=NOW + dt.timedelta(days=1),
          key=None, ca=False, extra_ext=None, issuer=None, subject=None) -> bytes:
    """A certificate shaped like ours, with one thing changed by the test."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder()
         .issuer_name(issuer or certs._issuer_name(claimed.peer_id))
         .subject_name(subject or certs._subject_name(claimed.peer_id))
         .public_key(key.public_key())
         .serial_number(7)
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if extra_ext is not None:
        b = b.add_extension(*extra_ext)
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(signer, algo).public_bytes(serialization.Encoding.DER)


def test_our_certificate_proves_our_peer_id():
    mine = issue_certificate(ALICE, NOW)
    assert verify_peer_certificate(mine.der(), ALICE.peer_id, NOW) == ALICE.peer_id
    assert verify_peer_certificate(mine.der(), ALICE.peer_id.text, NOW) == ALICE.peer_id
    assert verify_peer_certificate(mine.certificate, None, NOW) == ALICE.peer_id  # who is calling?
    assert mine.peer_id == ALICE.peer_id
    # the TLS key is fresh each time, never the identity key
    other = issue_certificate(ALICE, NOW)
    assert other.certificate.public_key() != mine.certificate.public_key()
    assert isinstance(mine.certificate.public_key(), ec.EllipticCurvePublicKey)
    assert len(mine.der()) < 600


def test_another_peers_genuine_certificate_is_refused_naming_both():
    bobs = issue_certificate(BOB, NOW)
    with pytest.raises(PeerAuthError) as err:
        verify_peer_certificate(bobs.der(), ALICE.peer_id, NOW)
    assert err.value.expected == ALICE.peer_id and err.value.got == BOB.peer_id
    assert ALICE.peer_id.text in str(err.value) and BOB.peer_id.text in str(err.value)


def test_certificate_claiming_a_peer_but_signed_by_another_key_is_forged():
    forged = build(ALICE, MALLORY.private_key)
    for expected in (ALICE.peer_id, None):
        with pytest.raises(PeerAuthError, match="forged") as err:
            verify_peer_certificate(forged, expected, NOW)
        assert err.value.got is None  # a forged claim is never reported as who the peer is


def test_tampered_certificate_is_refused():
    # the TLS key's bytes are inside the signed part: swap in another key of the same size
    spki = issue_certificate(ALICE, NOW).certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    mine = issue_certificate(ALICE, NOW)
    der = bytearray(mine.der())
    own_spki = mine.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    at = bytes(der).index(own_spki)
    der[at:at + len(own_spki)] = spki
    with pytest.raises(PeerAuthError, match="forged"):
        verify_peer_certificate(bytes(der), ALICE.peer_id, NOW)


def test_self_signed_certificates_are_refused():
    tls_key = ec.generate_private_key(ec.SECP256R1())
    self_signed = build(ALICE, tls_key, key=tls_key)
    with pytest.raises(PeerAuthError, match="not signed with an Ed25519 identity key"):
        verify_peer_certificate(self_signed, ALICE.peer_id, NOW)
    with pytest.raises(PeerAuthError, match="not issued by a nattrav identity"):
        verify_peer_certificate(LIBP2P_CERT, None, NOW)


@pytest.mark.parametrize("start,end,match", [
    (NOW - dt.timedelta(days=2), NOW - dt.timedelta(seconds=1), "expired"),
    (NOW + dt.timedelta(minutes=5), NOW + dt.timedelta(days=1), "valid only from"),
    (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=365), "lifetime"),
])
def test_validity_window_is_checked(start, end, match):
    with pytest.raises(PeerAuthError, match=match):
        verify_peer_certificate(build(ALICE, ALICE.private_key, start=start, end=end), ALICE.peer_id, NOW)


def test_ca_certificate_or_unknown_critical_extension_is_refused():
    with pytest.raises(PeerAuthError, match="CA certificate"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, ca=True), ALICE.peer_id, NOW)
    odd = (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True)
    with pytest.raises(PeerAuthError, match="unknown critical extension"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, extra_ext=odd), ALICE.peer_id, NOW)
    harmless = (odd[0], False)  # non-critical unknown extensions are ignored (RFC 5280)
    assert verify_peer_certificate(build(ALICE, ALICE.private_key, extra_ext=harmless), ALICE.peer_id, NOW)


def test_names_must_be_exactly_ours():
    extra = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, certs.ISSUER_ORG),
                       x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
                       x509.NameAttribute(NameOID.COMMON_NAME, ALICE.peer_id.text)])
    with pytest.raises(PeerAuthError, match="not issued by a nattrav identity"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, issuer=extra), ALICE.peer_id, NOW)
    not_an_id = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, certs.ISSUER_ORG),
                           x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    with pytest.raises(PeerAuthError, match="issuer"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, issuer=not_an_id), None, NOW)
    with pytest.raises(PeerAuthError, match="subject is not"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, subject=certs._subject_name(BOB.peer_id)),
                                ALICE.peer_id, NOW)


def test_rsa_or_other_curve_tls_keys_are_refused():
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(PeerAuthError, match="not P-256"):
        verify_peer_certificate(build(ALICE, ALICE.private_key, key=p384), ALICE.peer_id, NOW)
    ed_tls = ed25519.Ed25519PrivateKey.generate()  # Ed25519 TLS keys are fine
    assert verify_peer_certificate(build(ALICE, ALICE.private_key, key=ed_tls), None, NOW) == ALICE.peer_id


def test_caller_mistakes_are_value_errors_not_peer_errors():
    der = issue_certificate(ALICE, NOW).der()
    with pytest.raises(ValueError, match="expected peer"):
        verify_peer_certificate(der, "alice", NOW)
    with pytest.raises(ValueError, match="timezone"):
        verify_peer_certificate(der, None, dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        issue_certificate(ALICE, NOW, lifetime=dt.timedelta(days=30))


def test_non_positive_serial_is_malformed_not_a_warning():
    der = build(ALICE, ALICE.private_key)
    # serial 7 is encoded 02 01 07 right after the version; make it -7 (0xf9)
    at = der.index(bytes([0x02, 0x01, 0x07]))
    bad = der[:at + 2] + b"\xf9" + der[at + 3:]
    with pytest.raises(PeerAuthError, match="malformed"):
        verify_peer_certificate(bad, ALICE.peer_id, NOW)


def test_oversized_certificate_is_not_parsed():
    with pytest.raises(PeerAuthError, match="bytes"):
        verify_peer_certificate(b"\x30" * (certs.MAX_CERT_BYTES + 1), None, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_raises_only_peer_auth_error(data):
    with pytest.raises(PeerAuthError):
        verify_peer_certificate(data, None, NOW)


_VALID = issue_certificate(ALICE, NOW).der()


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused_or_still_alice(pos, xor):
    der = bytearray(_VALID)
    der[pos] ^= xor
    try:
        got = verify_peer_certificate(bytes(der), None, NOW)
    except PeerAuthError:
        return
    assert got == ALICE.peer_id  # a change outside what is signed may parse; it never names another peer


def test_trust_anchor_from_the_peer_id_alone_verifies_its_certificates():
    anchor = trust_anchor(ALICE.peer_id.text, NOW)
    assert anchor.public_key() == ALICE.public_key
    issue_certificate(ALICE, NOW).certificate.verify_directly_issued_by(anchor)
    with pytest.raises(ValueError):  # another issuer name
        issue_certificate(BOB, NOW).certificate.verify_directly_issued_by(anchor)
    forged = x509.load_der_x509_certificate(build(ALICE, MALLORY.private_key))
    with pytest.raises(InvalidSignature):
        forged.verify_directly_issued_by(anchor)
    assert anchor.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
