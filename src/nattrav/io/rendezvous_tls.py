"""TLS for the rendezvous link (stdlib ssl through trio.SSLStream).

The rendezvous server hands out sessions: whoever sits on a peer's path to it could otherwise read
whom the peer meets, the punch's session key and the peers' reports, or rewrite them. With TLS the
client checks the server: against the system's certificate authorities and the server's host name
(the default), or pinned to one certificate (`server_cert`: a PEM file, e.g. a self-signed one a
small deployment made itself). A plain link is only ever chosen explicitly (the CLIs' --plain):
the lab's servers have no certificate.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

from ..errors import UsageError

_HASHED = re.compile(r"[0-9a-f]{8}\.\d+")  # OpenSSL's subject-hash names (c_rehash, openssl rehash)


def lazy_system_cas() -> str | None:
    """The system's CA directory when OpenSSL can look issuers up in it one by one, and it holds the
    same CAs as the default bundle; None otherwise.

    The default context parses the whole bundle up front (~150 CAs: ~17 ms of CPU, a tenth of a warm
    connect's, issue 13); a hashed directory is read only for the issuer a chain names. Used only when
    the bundle lives in that directory (Debian's /etc/ssl/certs: update-ca-certificates writes both
    from one list) and SSL_CERT_FILE, if set, names that same bundle."""
    paths = ssl.get_default_verify_paths()
    if not paths.capath or not paths.cafile:
        return None
    bundle = Path(paths.cafile).resolve()
    # SSL_CERT_FILE may name the system bundle itself (as here), not another one
    if bundle != Path(paths.openssl_cafile).resolve() or bundle.parent != Path(paths.capath).resolve():
        return None
    try:
        with os.scandir(paths.capath) as entries:
            hashed = any(_HASHED.fullmatch(e.name) for e in entries)
    except OSError:
        return None
    return paths.capath if hashed else None


def client_context(server_cert: str | None = None) -> ssl.SSLContext:
    """Verify the server against the system CAs and its host name, or, with `server_cert`, trust
    exactly that certificate (host name not checked: the pin names the server). UsageError when the
    file is unusable."""
    if server_cert is None:
        capath = lazy_system_cas()
        ctx = ssl.create_default_context(capath=capath) if capath else ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=str(Path(server_cert).expanduser()))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--server-cert {server_cert}: not a readable PEM certificate ({exc})") from None
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned leaf need not be a CA
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's context from its certificate chain and key (PEM files); UsageError if unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--tls-cert/--tls-key: cannot load {cert} with {key} ({exc})") from None
    return ctx


__all__ = ["client_context", "lazy_system_cas", "server_context"]
