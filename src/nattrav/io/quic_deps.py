"""Import aioquic.tls without the modules it needs only to check a certificate against CAs.

aioquic.tls imports service_identity, pyOpenSSL and certifi at its top, for verify_certificate
(hostnames, a CA store). We never call it: our QUIC peers have no CA (verify_mode CERT_NONE, and
quic_conn.check_handshake verifies the key-bound certificate instead). Those three cost ~13 ms of
CPU at every process start (a sixth of the QUIC stack, issue 13). So while aioquic.tls is imported
each of them is a stand-in module that imports the real one the first time any of its attributes is
read: aioquic keeps working if it ever uses them, it just pays then. The stand-ins leave
sys.modules as soon as aioquic.tls is loaded, so any later `import OpenSSL` anywhere gets the real
module as usual; only aioquic.tls's own references go through a stand-in.

Import this module before anything that imports aioquic.quic.configuration or aioquic.tls.
"""

from __future__ import annotations

import importlib
import sys
import types

# What aioquic.tls imports (`import X` / `from X import Y`) only for verify_certificate.
DEFERRED = ("service_identity", "OpenSSL", "OpenSSL.crypto", "certifi")


class _Deferred(types.ModuleType):
    """Stands for a module not imported yet; reading an attribute imports it."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):  # the import system probing (__path__, ...): we are not the module
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:  # still inside the window (another thread)
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_aioquic_tls() -> types.ModuleType:
    """aioquic.tls, its CA-checking dependencies deferred (the real ones where already loaded)."""
    if "aioquic.tls" in sys.modules:
        return sys.modules["aioquic.tls"]
    standing = {name: _Deferred(name) for name in DEFERRED if name not in sys.modules}
    parent = standing.get("OpenSSL")
    if parent is not None and "OpenSSL.crypto" in standing:
        parent.crypto = standing["OpenSSL.crypto"]  # `from OpenSSL import crypto` reads this attribute
    sys.modules.update(standing)
    try:
        return importlib.import_module("aioquic.tls")
    finally:
        for name, module in standing.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


aioquic_tls = import_aioquic_tls()

__all__ = ["DEFERRED", "aioquic_tls", "import_aioquic_tls"]
