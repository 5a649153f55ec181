"""The system CAs for the rendezvous link's TLS, looked up lazily (io/rendezvous_tls.lazy_system_cas):
a hashed CA directory that holds the system bundle verifies a server as the bundle would, without
parsing ~150 certificates at start-up; anything else falls back to the default context."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from nattrav.io import rendezvous_tls
from tests.secure_lab import self_signed


def _paths(cafile: Path, capath: Path, default_bundle: Path) -> ssl.DefaultVerifyPaths:
    return ssl.DefaultVerifyPaths(str(cafile), str(capath), "SSL_CERT_FILE", str(default_bundle),
                                  "SSL_CERT_DIR", str(capath))


def _store(tmp_path: Path, cert: str, *, hashed: bool) -> Path:
    """A CA directory holding `cert` and a bundle of it, with OpenSSL's hash link when `hashed`."""
    store = tmp_path / "certs"
    store.mkdir()
    shutil.copy(cert, store / "ca-certificates.crt")
    if hashed:
        h = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", cert], capture_output=True, text=True,
                           check=True).stdout.strip()
        shutil.copy(cert, store / f"{h}.0")
    return store


def _handshake(client: ssl.SSLContext, cert: str, key: str) -> None:
    """A TLS handshake in memory against a server holding (cert, key); raises what the client raises."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    done = set()
    for _ in range(20):
        for side in (c, s):
            if side in done:
                continue
            try:
                side.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if len(done) == 2:
            return
    raise AssertionError("handshake did not finish")


def test_a_hashed_store_holding_the_bundle_verifies_lazily(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path, "rv")
    store = _store(tmp_path, cert, hashed=True)
    bundle = store / "ca-certificates.crt"
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: _paths(bundle, store, bundle))
    assert rendezvous_tls.lazy_system_cas() == str(store)
    ctx = rendezvous_tls.client_context()
    assert ctx.cert_store_stats()["x509"] == 0  # nothing parsed up front
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    _handshake(ctx, cert, key)  # the CA was found when the chain named it
    other, other_key = self_signed(tmp_path, "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(rendezvous_tls.client_context(), other, other_key)


@pytest.mark.parametrize("case", ["unhashed", "bundle elsewhere", "another bundle named"])
def test_anything_else_falls_back_to_the_default_context(tmp_path, monkeypatch, case):
    cert, key = self_signed(tmp_path, "rv")
    store = _store(tmp_path, cert, hashed=case != "unhashed")
    bundle = store / "ca-certificates.crt"
    if case == "bundle elsewhere":  # Fedora's layout: the bundle is not in the hashed directory
        bundle = Path(shutil.copy(cert, tmp_path / "cert.pem"))
        paths = _paths(bundle, store, bundle)
    elif case == "another bundle named":  # SSL_CERT_FILE names a bundle that is not the system's
        paths = _paths(bundle, store, tmp_path / "system.pem")
    else:
        paths = _paths(bundle, store, bundle)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    assert rendezvous_tls.lazy_system_cas() is None
