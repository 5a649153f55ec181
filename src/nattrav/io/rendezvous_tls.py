"""TLS for the rendezvous link (stdlib ssl through trio.SSLStream).

The rendezvous server hands out sessions: whoever sits on a peer's path to it could otherwise read
whom the peer meets, the punch's session key and the peers' reports, or rewrite them. With TLS the
client checks the server: against the system's certificate authorities and the server's host name
(the default), or pinned to one certificate (`server_cert`: a PEM file, e.g. a self-signed one a
small deployment made itself). A plain link is only ever chosen explicitly (the CLIs' --plain):
the lab's servers have no certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import UsageError


def client_context(server_cert: str | None = None) -> ssl.SSLContext:
    """Verify the server against the system CAs and its host name, or, with `server_cert`, trust
    exactly that certificate (host name not checked: the pin names the server). UsageError when the
    file is unusable."""
    if server_cert is None:
        ctx = ssl.create_default_context()
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


__all__ = ["client_context", "server_context"]
