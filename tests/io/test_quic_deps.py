"""aioquic.tls loaded without service_identity/pyOpenSSL/certifi (io/quic_deps.py): they stay
unimported through a QUIC-capable start-up, yet aioquic's CA verification, if ever called, still
works (the stand-ins import the real modules), and the rest of the process sees the real modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

DEFERRED = ("service_identity", "OpenSSL", "certifi")


def run_fresh(code: str) -> str:
    """Run `code` in a fresh interpreter (sys.modules is what is under test) and return its stdout."""
    cp = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_the_quic_stack_loads_without_the_ca_checking_modules():
    out = run_fresh(f"""
        import sys
        import nattrav.io.quic_path, nattrav.io.quic_conn
        from aioquic.quic.connection import QuicConnection
        print(sorted(n for n in sys.modules if n.split('.')[0] in {DEFERRED!r}))
    """)
    assert out == "[]"


def test_aioquic_verify_certificate_still_works_through_the_stand_ins():
    out = run_fresh("""
        import datetime as dt, sys
        import nattrav.io.quic_conn
        import aioquic.tls as tls
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer.example")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("peer.example")]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        tls.verify_certificate(cert, cadata=pem, server_name="peer.example")  # OpenSSL + service_identity
        try:
            tls.verify_certificate(cert, cadata=pem, server_name="other.example")
        except tls.AlertBadCertificate as exc:
            print("refused:", exc)
        try:
            tls.verify_certificate(cert, server_name="peer.example")  # certifi's CAs: not ours
        except tls.AlertBadCertificate:
            print("unknown CA refused")
        import OpenSSL, service_identity, certifi
        print(type(OpenSSL).__name__, type(service_identity).__name__, type(certifi).__name__,
              OpenSSL.crypto is sys.modules["OpenSSL.crypto"])
    """).splitlines()
    assert out[0].startswith("refused:") and "other.example" in out[0]
    assert out[1] == "unknown CA refused"
    assert out[2] == "module module module True"  # the real modules, not the stand-ins


def test_modules_already_loaded_are_left_alone():
    out = run_fresh("""
        import sys
        import OpenSSL
        real = sys.modules["OpenSSL"]
        import nattrav.io.quic_conn
        import aioquic.tls
        print(aioquic.tls.crypto is real.crypto, sys.modules["OpenSSL"] is real)
    """)
    assert out == "True True"
