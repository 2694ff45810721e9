"""The certificate of the fan-out bench's ``tls`` scenario, and the contexts around it.

``certificate(dir)`` writes one self-signed ECDSA P-256 certificate for 127.0.0.1 (the
kind of key a production site gets from Let's Encrypt by default) and its key, once
per sweep; every server under test loads the same pair. ``server_context`` is what the
peers (picows, websockets) serve with: ``ssl.PROTOCOL_TLS_SERVER`` with Python's
defaults, ALPN ``http/1.1``, like linkd's own (``engine/tls.py``; linkd also narrows
the TLS 1.2 suites, which a TLS 1.3 client never uses). ``client_context`` is the
load's: TLS 1.3 only, no verification (the bench measures the servers, not the PKI),
so every server negotiates the same suite (OpenSSL's first, TLS_AES_256_GCM_SHA384).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

__all__ = ["certificate", "client_context", "server_context"]


def certificate(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``directory``, made on the first call."""
    cert, key = directory / "bench-tls-cert.pem", directory / "bench-tls-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linkd bench")])
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.touch(0o600)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx
