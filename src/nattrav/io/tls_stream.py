"""TLS 1.3 over a punched TCP stream (trio.SSLStream), both sides authenticated by identity keys.

Roles follow the rendezvous: the "first" side (the initiator, who asked for a peer by ID) is the TLS
client, the "second" side the TLS server, whichever of them called connect() in the TCP race. Each
side knows the other's peer ID before the handshake (the initiator asked for it, the listener was
told it with the session), so OpenSSL checks the peer inside the handshake against a trust anchor
built from that ID (proto/certs.py says why), and the server requires the client's certificate.
After the handshake the certificate is checked once more by proto.certs.verify_peer_certificate
(lifetime cap, exactly our names), the same check the QUIC path runs.

trio.SSLStream has no half-close (send_eof); TLS close_notify ends both directions here.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from contextlib import contextmanager
from collections.abc import Iterator

import trio
from cryptography.hazmat.primitives import serialization

from ..errors import HandshakeFailed, PeerAuthError
from ..identity import Identity, PeerId
from ..proto.certs import issue_certificate, trust_anchor, verify_peer_certificate

ALPN = "nattrav/1"
HANDSHAKE_TIMEOUT = 10.0
ROLE_OF = {"first": "client", "second": "server"}  # rendezvous role -> TLS role
# OpenSSL's verify codes, in our words: with one anchor per expected peer, "no issuer" means the
# certificate was issued by another identity.
_VERIFY_REASONS = {
    20: "it was issued by another identity",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    7: "its signature is not by that peer's key: forged",  # X509_V_ERR_CERT_SIGNATURE_FAILURE
    9: "it is not valid yet: is one clock wrong?",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "it has expired",  # X509_V_ERR_CERT_HAS_EXPIRED
}


def ssl_context(identity: Identity, expected_peer: PeerId | str, *, server_side: bool,
                now: dt.datetime | None = None) -> ssl.SSLContext:
    """A TLS 1.3-only context that presents a fresh certificate of `identity` and accepts only a
    peer that proves `expected_peer` (both directions: the server requires a client certificate)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    peer = expected_peer if isinstance(expected_peer, PeerId) else PeerId.parse(expected_peer)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the peer is named by its key, not by a host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # our anchor is not self-signed
    ctx.load_verify_locations(cadata=trust_anchor(peer, now).public_bytes(serialization.Encoding.DER))
    ctx.set_alpn_protocols([ALPN])
    if server_side:
        ctx.num_tickets = 0  # no resumption: every session is a full, authenticated handshake
    with _memory_file(issue_certificate(identity, now).pem_bundle()) as path:
        ctx.load_cert_chain(path)
    return ctx


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that never touches a disk: load_cert_chain only reads files, and the
    bundle holds a private key."""
    fd = os.memfd_create("nattrav-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


async def open_tls_stream(stream: trio.abc.Stream, identity: Identity, expected_peer: PeerId | str,
                          *, server_side: bool, handshake_timeout: float = HANDSHAKE_TIMEOUT
                          ) -> trio.SSLStream:
    """TLS over `stream`, handshaken: the peer proved `expected_peer`, or this raises
    PeerAuthError (a wrong or forged peer) or HandshakeFailed (no handshake in time, refused,
    no common protocol). On failure the underlying stream is closed."""
    peer = expected_peer if isinstance(expected_peer, PeerId) else PeerId.parse(expected_peer)
    tls = trio.SSLStream(stream, ssl_context(identity, peer, server_side=server_side),
                         server_side=server_side, server_hostname=None,
                         https_compatible=False)
    try:
        with trio.fail_after(handshake_timeout):
            await tls.do_handshake()
        check_peer(tls, peer)
    except trio.TooSlowError:
        await trio.aclose_forcefully(tls)
        raise HandshakeFailed(f"no TLS handshake with {peer} within {handshake_timeout:g} s") from None
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(tls)
        raise _handshake_error(exc, peer) from None
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


def check_peer(tls: trio.SSLStream, peer: PeerId) -> PeerId:
    """After the handshake: TLS 1.3, our ALPN, and a certificate that proves `peer`."""
    if tls.version() != "TLSv1.3":
        raise HandshakeFailed(f"{tls.version()} negotiated, nattrav needs TLS 1.3")
    if tls.selected_alpn_protocol() != ALPN:
        raise HandshakeFailed(f"the peer does not speak {ALPN} (ALPN {tls.selected_alpn_protocol()!r})")
    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise PeerAuthError(f"the peer sent no certificate (expected {peer})", expected=peer)
    return verify_peer_certificate(der, peer, dt.datetime.now(dt.timezone.utc))


def _handshake_error(exc: trio.BrokenResourceError, peer: PeerId) -> HandshakeFailed:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = _VERIFY_REASONS.get(cause.verify_code, cause.verify_message)
        return PeerAuthError(f"the peer's certificate does not prove {peer} ({why}): refusing",
                             expected=peer)
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        return HandshakeFailed(f"TLS handshake with {peer} failed: {reason.lower().replace('_', ' ')}")
    return HandshakeFailed(f"the connection to {peer} broke during the TLS handshake")
