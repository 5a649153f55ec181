"""TLS 1.3 over a TCP stream on loopback with key-bound certificates: the right peers talk (data
intact both ways), a wrong, forged, certificate-less, silent or non-TLS peer is refused on the side
that checks it, and nothing reaches the application from a refused peer."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl

import pytest
import trio

from nattrav.identity import Identity
from nattrav.io import tls_stream
from nattrav.io.tls_stream import ALPN, open_tls_stream, ssl_context
from nattrav.proto import certs
from nattrav.errors import HandshakeFailed, PeerAuthError

ALICE = Identity.generate()  # the initiator: TLS client
BOB = Identity.generate()  # the listener: TLS server
MALLORY = Identity.generate()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def handshake_both(client_ident, client_expects, server_ident, server_expects, timeout=5.0):
    """Run both sides; returns (client result, server result), each a stream or the exception."""
    c_raw, s_raw = await tcp_pair()
    out = {}

    async def side(name, raw, ident, expects, server_side):
        try:
            out[name] = await open_tls_stream(raw, ident, expects, server_side=server_side,
                                              handshake_timeout=timeout)
        except (HandshakeFailed, ValueError) as exc:
            out[name] = exc

    async with trio.open_nursery() as n:
        n.start_soon(side, "client", c_raw, client_ident, client_expects, False)
        n.start_soon(side, "server", s_raw, server_ident, server_expects, True)
    return out["client"], out["server"]


async def test_authenticated_peers_exchange_data_intact_both_ways():
    client, server = await handshake_both(ALICE, BOB.peer_id, BOB, ALICE.peer_id.text)
    assert isinstance(client, trio.SSLStream) and isinstance(server, trio.SSLStream)
    assert client.version() == server.version() == "TLSv1.3"
    assert client.selected_alpn_protocol() == ALPN
    size = 4 * 1024 * 1024
    a_data, b_data = os.urandom(size), os.urandom(size)
    got = {}

    async def pump(name, stream, data):
        async def send():
            for i in range(0, len(data), 65536):
                await stream.send_all(data[i:i + 65536])

        async def recv():
            h, n = hashlib.sha256(), 0
            while n < size:
                chunk = await stream.receive_some(65536)
                assert chunk
                h.update(chunk)
                n += len(chunk)
            got[name] = h.hexdigest()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(recv)

    async with trio.open_nursery() as n:
        n.start_soon(pump, "client", client, a_data)
        n.start_soon(pump, "server", server, b_data)
    assert got == {"client": hashlib.sha256(b_data).hexdigest(), "server": hashlib.sha256(a_data).hexdigest()}
    await client.aclose()
    assert await server.receive_some(10) == b""
    await server.aclose()


async def test_client_refuses_another_peer_answering():
    client, server = await handshake_both(ALICE, BOB.peer_id, MALLORY, ALICE.peer_id)
    assert isinstance(client, PeerAuthError)
    assert BOB.peer_id.text in str(client) and "another identity" in str(client)
    assert isinstance(server, HandshakeFailed)  # the client's alert ends the server's handshake too


async def test_server_refuses_another_peer_calling_and_delivers_nothing():
    c_raw, s_raw = await tcp_pair()
    result = {}

    async def client():
        # the TLS 1.3 client finishes first, so its handshake can succeed before the server checks it
        try:
            stream = await open_tls_stream(c_raw, MALLORY, BOB.peer_id, server_side=False)
            await stream.send_all(b"secret for bob")
            result["client read"] = await stream.receive_some(10)
        except (HandshakeFailed, trio.BrokenResourceError) as exc:
            result["client"] = exc

    async def server():
        try:
            await open_tls_stream(s_raw, BOB, ALICE.peer_id, server_side=True)
        except HandshakeFailed as exc:
            result["server"] = exc

    async with trio.open_nursery() as n:
        n.start_soon(client)
        n.start_soon(server)
    assert isinstance(result["server"], PeerAuthError) and ALICE.peer_id.text in str(result["server"])
    assert "client read" not in result  # the refused client got no byte back


async def test_forged_certificate_claiming_the_expected_peer_is_refused(monkeypatch):
    """Mallory presents a certificate naming Bob, signed by her own key."""
    real_issue = certs.issue_certificate

    def forge(identity, now, lifetime=certs.DEFAULT_LIFETIME):
        if identity is not MALLORY:
            return real_issue(identity, now, lifetime)
        made = real_issue(MALLORY, now, lifetime)
        from cryptography import x509
        cert = (x509.CertificateBuilder()
                .issuer_name(certs._issuer_name(BOB.peer_id)).subject_name(certs._subject_name(BOB.peer_id))
                .public_key(made.private_key.public_key()).serial_number(5)
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(hours=1))
                .sign(MALLORY.private_key, None))
        return certs.KeyBoundCertificate(cert, made.private_key, BOB.peer_id)

    monkeypatch.setattr(tls_stream, "issue_certificate", forge)
    client, server = await handshake_both(ALICE, BOB.peer_id, MALLORY, ALICE.peer_id)
    assert isinstance(client, PeerAuthError)
    assert "does not prove" in str(client) and "forged" in str(client)


async def test_client_without_certificate_is_refused():
    c_raw, s_raw = await tcp_pair()
    result = {}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])

    async def client():
        stream = trio.SSLStream(c_raw, ctx, server_hostname=None)
        try:
            await stream.do_handshake()
            result["client read"] = await stream.receive_some(10)
        except trio.BrokenResourceError:
            pass

    async def server():
        try:
            await open_tls_stream(s_raw, BOB, ALICE.peer_id, server_side=True)
        except HandshakeFailed as exc:
            result["server"] = exc

    async with trio.open_nursery() as n:
        n.start_soon(client)
        n.start_soon(server)
    assert isinstance(result["server"], HandshakeFailed)
    assert "certificate" in str(result["server"])
    assert "client read" not in result


async def test_peer_without_our_alpn_is_refused():
    c_raw, s_raw = await tcp_pair()
    result = {}
    ctx = ssl_context(ALICE, BOB.peer_id, server_side=False)
    ctx.set_alpn_protocols(["h2"])

    async def client():
        stream = trio.SSLStream(c_raw, ctx, server_hostname=None)
        try:
            await stream.do_handshake()
            await stream.receive_some(10)
        except trio.BrokenResourceError:
            pass

    async def server():
        try:
            await open_tls_stream(s_raw, BOB, ALICE.peer_id, server_side=True)
        except HandshakeFailed as exc:
            result["server"] = exc

    async with trio.open_nursery() as n:
        n.start_soon(client)
        n.start_soon(server)
    assert "nattrav/1" in str(result["server"])


async def test_silent_peer_times_out_and_non_tls_peer_fails():
    c_raw, s_raw = await tcp_pair()
    with pytest.raises(HandshakeFailed, match="within 0.3 s"):
        await open_tls_stream(c_raw, ALICE, BOB.peer_id, server_side=False, handshake_timeout=0.3)
    await s_raw.aclose()

    c_raw, s_raw = await tcp_pair()
    await c_raw.send_all(b"GET / HTTP/1.0\r\n\r\n" * 10)
    with pytest.raises(HandshakeFailed) as err:
        await open_tls_stream(s_raw, BOB, ALICE.peer_id, server_side=True, handshake_timeout=2)
    assert not isinstance(err.value, PeerAuthError)
    await c_raw.aclose()


def test_bad_expected_peer_is_a_value_error_before_any_io():
    from nattrav.identity import BadPeerId
    with pytest.raises(BadPeerId):
        ssl_context(ALICE, "bob", server_side=False)


def test_context_is_tls13_only_and_requires_the_peer_certificate():
    for server_side in (False, True):
        ctx = ssl_context(ALICE, BOB.peer_id, server_side=server_side)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert tls_stream.ROLE_OF == {"first": "client", "second": "server"}
