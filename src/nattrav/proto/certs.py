"""X.509 certificates bound to a peer's identity key, for TLS 1.3 over QUIC and over TCP. Pure: no
sockets, and the caller passes `now`.

A side's TLS key is a fresh ECDSA P-256 key, and its certificate is signed by the side's long-term
Ed25519 identity key, whose peer ID is the issuer's name (issuer = O "nattrav peer", CN peer ID). The
TLS handshake proves possession of the TLS key (CertificateVerify); the certificate's signature proves
that the identity endorsed that key. The identity never signs inside a handshake, so a stolen session
key is worth at most one certificate's lifetime (DEFAULT_LIFETIME, and a peer's certificate that
claims longer than MAX_LIFETIME is refused).

libp2p's TLS spec carries the identity as a signed-key extension in a self-signed certificate. That
cannot work with the stdlib ssl module that trio.SSLStream uses: it has no verification callback, so
a TLS server that asks for the client's certificate refuses every self-signed one. A certificate
*issued by* the identity verifies in OpenSSL against a trust anchor built from the expected peer ID
alone (`trust_anchor`: the peer's public key under the issuer's name; OpenSSL does not check an
anchor's own signature, and X509_V_FLAG_PARTIAL_CHAIN lets a non-self-signed anchor end the chain).
So over TCP OpenSSL refuses a wrong peer inside the handshake, and over QUIC (aioquic has no
verification hook either) `verify_peer_certificate` does the same checks right after the handshake,
before any application byte is delivered or sent. Both paths run `verify_peer_certificate`.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from ..errors import BadPeerId, PeerAuthError
from ..identity import Identity, PeerId

ISSUER_ORG = "nattrav peer"
SUBJECT_UNIT = "tls key"
ANCHOR_ORG = "nattrav trust anchor"
BACKDATE = dt.timedelta(hours=1)  # a peer whose clock is a little behind ours still accepts ours
DEFAULT_LIFETIME = dt.timedelta(days=1)
MAX_LIFETIME = dt.timedelta(days=8)
ANCHOR_LIFETIME = dt.timedelta(days=30)
MAX_CERT_BYTES = 4096  # ours are about 400 bytes; a peer's larger one is not parsed at all
# Extensions a peer's certificate may mark critical: the ones we understand (RFC 5280 4.2).
_KNOWN_CRITICAL = {x509.BasicConstraints.oid, x509.KeyUsage.oid, x509.ExtendedKeyUsage.oid}
# What cryptography raises on malformed certificate bytes (several are not ValueErrors).
_PARSE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension,
                 x509.UnsupportedGeneralNameType, UnsupportedAlgorithm)


@dataclass(frozen=True)
class KeyBoundCertificate:
    """Our side's certificate and its TLS private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    peer_id: PeerId

    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def pem_bundle(self) -> bytes:
        """Certificate then PKCS#8 key, PEM: what ssl.SSLContext.load_cert_chain reads from one file."""
        return self.certificate.public_bytes(serialization.Encoding.PEM) + self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _issuer_name(peer: PeerId) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ISSUER_ORG),
                      x509.NameAttribute(NameOID.COMMON_NAME, peer.text)])


def _subject_name(peer: PeerId) -> x509.Name:
    # differs from the issuer, so OpenSSL never takes the leaf for a self-signed certificate
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ISSUER_ORG),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SUBJECT_UNIT),
                      x509.NameAttribute(NameOID.COMMON_NAME, peer.text)])


def issue_certificate(identity: Identity, now: dt.datetime,
                      lifetime: dt.timedelta = DEFAULT_LIFETIME) -> KeyBoundCertificate:
    """A fresh TLS key and its certificate, signed by `identity`, valid from now - BACKDATE."""
    if not dt.timedelta(0) < lifetime <= MAX_LIFETIME - BACKDATE:
        raise ValueError(f"certificate lifetime must be in (0, {MAX_LIFETIME - BACKDATE}]")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .issuer_name(_issuer_name(identity.peer_id))
            .subject_name(_subject_name(identity.peer_id))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now) - BACKDATE)
            .not_valid_after(_utc(now) + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(identity.private_key, None))
    return KeyBoundCertificate(cert, key, identity.peer_id)


def trust_anchor(peer: PeerId | str, now: dt.datetime) -> x509.Certificate:
    """A certificate OpenSSL can take as the trust anchor for `peer`: its identity key under the
    name its certificates are issued by. Signed by a throwaway key: OpenSSL does not check a trust
    anchor's signature, only the signatures made by its key. Use with VERIFY_X509_PARTIAL_CHAIN."""
    peer = peer if isinstance(peer, PeerId) else PeerId.parse(peer)
    throwaway = ed25519.Ed25519PrivateKey.generate()
    return (x509.CertificateBuilder()
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ANCHOR_ORG),
                                    x509.NameAttribute(NameOID.COMMON_NAME, peer.text)]))
            .subject_name(_issuer_name(peer))
            .public_key(peer.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now) - ANCHOR_LIFETIME)
            .not_valid_after(_utc(now) + ANCHOR_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(throwaway, None))


def verify_peer_certificate(cert: bytes | x509.Certificate, expected: PeerId | str | None,
                            now: dt.datetime) -> PeerId:
    """The peer ID the certificate proves, checked to be `expected` (None: any peer, for a caller
    that learns who called). PeerAuthError on anything else. Does not check possession of the TLS
    key: the TLS handshake did that."""
    now = _utc(now)
    want = None
    if expected is not None:
        try:
            want = expected if isinstance(expected, PeerId) else PeerId.parse(expected)
        except BadPeerId as exc:
            raise BadPeerId(f"expected peer: {exc}") from None  # our caller's mistake, not the peer's
    try:
        with warnings.catch_warnings():
            # what cryptography only warns about today (a serial number <= 0) is malformed too
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            return _verify(cert, want, now)
    except PeerAuthError:
        raise
    except (*_PARSE_ERRORS, CryptographyDeprecationWarning) as exc:
        # cryptography parses certificate fields lazily, so a malformed field can surface anywhere
        raise PeerAuthError(f"malformed peer certificate ({exc})", expected=want) from None


def _verify(cert: bytes | x509.Certificate, want: PeerId | None, now: dt.datetime) -> PeerId:
    if not isinstance(cert, x509.Certificate):
        if len(cert) > MAX_CERT_BYTES:
            raise PeerAuthError(f"peer certificate of {len(cert)} bytes (at most {MAX_CERT_BYTES})",
                                expected=want)
        cert = x509.load_der_x509_certificate(bytes(cert))
    if cert.version is not x509.Version.v3:
        raise PeerAuthError("peer certificate is not X.509 v3", expected=want)

    claimed = _claimed_peer(cert, want)
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
        raise PeerAuthError(f"peer certificate for {claimed} is not signed with an Ed25519 identity key",
                            expected=want)
    try:
        claimed.public_key().verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        raise PeerAuthError(f"peer certificate claims {claimed} but is not signed by its key (forged)",
                            expected=want) from None
    if want is not None and claimed != want:
        raise PeerAuthError(f"the peer is {claimed}, not the expected {want} (wrong peer or a server "
                            "that swapped them: refusing)", expected=want, got=claimed)

    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise PeerAuthError(f"{claimed}'s certificate is valid only from {start:%Y-%m-%d %H:%M} UTC "
                            "(is one clock wrong?)", expected=want, got=claimed)
    if now > end:
        raise PeerAuthError(f"{claimed}'s certificate expired at {end:%Y-%m-%d %H:%M} UTC",
                            expected=want, got=claimed)
    if end - start > MAX_LIFETIME:
        raise PeerAuthError(f"{claimed}'s certificate claims a lifetime of {end - start} "
                            f"(at most {MAX_LIFETIME})", expected=want, got=claimed)

    key = cert.public_key()
    if not (isinstance(key, ed25519.Ed25519PublicKey)
            or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))):
        raise PeerAuthError(f"{claimed}'s TLS key is a {type(key).__name__.lstrip('_')}, not P-256 "
                            "or Ed25519", expected=want, got=claimed)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise PeerAuthError(f"{claimed}'s certificate has an unknown critical extension "
                                f"{ext.oid.dotted_string}", expected=want, got=claimed)
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise PeerAuthError(f"{claimed}'s certificate is a CA certificate, not a TLS key's",
                                expected=want, got=claimed)
    return claimed


def _claimed_peer(cert: x509.Certificate, want: PeerId | None) -> PeerId:
    """The peer ID the issuer's name claims (not proven yet)."""
    if _attrs(cert.issuer) != [(NameOID.ORGANIZATION_NAME, ISSUER_ORG), (NameOID.COMMON_NAME, None)]:
        raise PeerAuthError("peer certificate is not issued by a nattrav identity", expected=want)
    text = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    try:
        claimed = PeerId.parse(str(text))
    except BadPeerId as exc:
        raise PeerAuthError(f"peer certificate's issuer: {exc}", expected=want) from None
    subject_cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in subject_cn] != [claimed.text]:
        raise PeerAuthError(f"peer certificate's subject is not {claimed}", expected=want)
    return claimed


def _attrs(name: x509.Name) -> list[tuple[x509.ObjectIdentifier, str | None]]:
    out = []
    for attr in name:
        value = attr.value if attr.oid == NameOID.ORGANIZATION_NAME else None
        out.append((attr.oid, value if isinstance(value, str) or value is None else repr(value)))
    return out


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (datetime.now(timezone.utc))")
    return now.astimezone(dt.timezone.utc)
