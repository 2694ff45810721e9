"""TLS termination: the server's ``ssl.SSLContext``, and swapping its certificate live.

``Certificates(cert, key)`` loads a PEM certificate chain and its private key into a
context with a modern policy: TLS 1.2 at least (``min_version="1.3"`` for 1.3 only),
forward-secret AEAD suites for 1.2 (``DEFAULT_CIPHERS``; OpenSSL's defaults for 1.3,
which are all AEAD), no TLS compression (CRIME), no client-started renegotiation,
ALPN ``http/1.1`` (the only protocol spoken; a client that offers only ``h2`` gets no
ALPN answer, as from a server without ALPN, and speaks HTTP/1.1 or leaves).

``reload()`` (SIGHUP) builds a complete new context from the files and, only if it
loaded, makes it the one new handshakes use. The listening socket keeps the context it
was created with; its SNI callback, run for every ClientHello (with or without a
server name), moves the new connection onto the current one (``SSLObject.context``).
Open connections keep the certificate they were made with; a bad file on reload
changes nothing (the old certificate keeps serving) and the reason is returned for
the log. Loading the new chain into the *same* context would be simpler, but
``load_cert_chain`` replaces the certificate before it checks the key: a key that
does not match would leave the context without a usable key.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CIPHERS",
    "CertificateInfo",
    "Certificates",
    "build_context",
    "describe",
    "key_file_warning",
]

log = logging.getLogger("linkd.tls")

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy), AEAD only (no CBC, no SHA-1
#: MACs, no RSA key transport): Mozilla's "intermediate" policy, which every browser
#: and client library of the last decade speaks. TLS 1.3 suites are OpenSSL's.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the log says about a loaded certificate (the leaf of the chain)."""

    subject: str
    serial: int
    not_after: str


def build_context(
    cert: str, key: str, *, ciphers: str = DEFAULT_CIPHERS, min_version: str = "1.2"
) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain, leaf first) and ``key`` (PEM).

    Raises:
        ValueError: a file that cannot be read, a key that does not match, a cipher
            string OpenSSL refuses, a version other than "1.2" or "1.3".
    """
    if min_version not in _VERSIONS:
        raise ValueError(f"--tls-min-version must be 1.2 or 1.3, got {min_version!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[min_version]
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise ValueError(f"--tls-ciphers {ciphers!r}: no cipher OpenSSL accepts") from exc
    # CRIME; client-started renegotiation (a handshake's CPU, as often as a client
    # asks). The client's order of suites is kept: every one allowed is strong, and a
    # phone without AES instructions picks ChaCha20 (Mozilla's "intermediate").
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:  # OpenSSL's own errors do not say which file it could not open
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"TLS: {flag} {path}: {exc.strerror or exc}") from exc
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        if describe(cert) is None:
            raise ValueError(f"TLS: --tls-cert {cert}: no PEM certificate in it") from exc
        reason = getattr(exc, "reason", None) or exc  # "KEY_VALUES_MISMATCH", ...
        message = f"TLS: cannot use --tls-cert {cert} with --tls-key {key}: {reason}"
        raise ValueError(message) from exc
    return ctx


def describe(cert: str) -> CertificateInfo | None:
    """The leaf certificate of a PEM file, for the log; None if it cannot be read."""
    try:
        from cryptography import x509

        with open(cert, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc.isoformat(),
    )


def key_file_warning(key: str) -> str | None:
    """A warning when the private key file can be read by users other than its owner's
    group (as ``ssh`` refuses an ``id_rsa`` others can read); None when it is private."""
    try:
        mode = os.stat(key).st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return (
            f"--tls-key {key} is readable by every user (mode {stat.S_IMODE(mode):04o}): "
            f"chmod 600 {key} (or 640 with a group the engine is in)"
        )
    return None


class Certificates:
    """The live TLS configuration of one listener.

    Args:
        cert / key: PEM paths, re-read by ``reload``.
        ciphers / min_version: the policy (``build_context``), the same on reload.

    Raises:
        ValueError: the first load failed (the engine does not start).
    """

    def __init__(
        self, cert: str, key: str, *, ciphers: str = DEFAULT_CIPHERS, min_version: str = "1.2"
    ) -> None:
        self.cert, self.key = cert, key
        self._ciphers, self._min_version = ciphers, min_version
        #: The listener's context: it never changes, its SNI callback picks ``current``.
        self.context = self._build()
        self.current = self.context
        self.context.sni_callback = self._select
        self.info = describe(cert)
        self.reloads = 0
        if warning := key_file_warning(key):
            log.warning("%s", warning)

    def _build(self) -> ssl.SSLContext:
        return build_context(
            self.cert, self.key, ciphers=self._ciphers, min_version=self._min_version
        )

    def _select(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # Called by OpenSSL in the middle of each handshake; must not raise.
        current = self.current
        if current is not ctx:
            conn.context = current

    def reload(self) -> str | None:
        """Re-read both files; the new certificate serves new handshakes if it loads.

        Returns None on success, else why it failed (the old certificate stays).
        """
        try:
            fresh = self._build()
        except ValueError as exc:
            return str(exc)
        fresh.sni_callback = None  # only the listener's context selects
        self.current = fresh
        self.info = describe(self.cert)
        self.reloads += 1
        if warning := key_file_warning(self.key):
            log.warning("%s", warning)
        return None
