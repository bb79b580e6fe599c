"""The SSL context of the public port (relay-api.md §2.2, §2.3) and client identity helpers.

Built by hand from ``SSLContext(PROTOCOL_TLS_SERVER)``: ``ssl.create_default_context`` would load
the system trust store, and the public port must trust only the pinned relay-client CA bundle
(C-02). The allow-list check lives here too so the listener and the tests share one definition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# TLS 1.2 suites of §2.2 (Mozilla "intermediate" without DHE). TLS 1.3 suites are OpenSSL's
# defaults (AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305), which is exactly the §2.2 list.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def build_server_context(
    server_cert: Path, server_key: Path, client_ca: Path, client_crl: Path | None = None
) -> ssl.SSLContext:
    """A server context requiring a client certificate chained to ``client_ca`` only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # OP_NO_COMPRESSION: CRIME; OP_NO_RENEGOTIATION: client-initiated renegotiation is refused.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_SINGLE_ECDH_USE", 0)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Only the pinned bundle; never load_default_certs() (C-02).
    ctx.load_verify_locations(cafile=str(client_ca))
    if client_crl is not None:
        ctx.load_verify_locations(cafile=str(client_crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # X509_STRICT rejects malformed certificates OpenSSL would otherwise tolerate.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # The pinned bundle holds the relay-client *issuing* CA, usually an intermediate (enrollment
    # installs exactly that): it must be a trust anchor by itself, without its root.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(certfile=str(server_cert), keyfile=str(server_key))
    return ctx


@dataclasses.dataclass(frozen=True)
class PeerIdentity:
    """What the connection layer learnt about the client certificate (audit actor, rate key)."""

    cert_sha256: str
    spki_sha256: str
    subject: str


def peer_identity(der: bytes) -> PeerIdentity:
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PeerIdentity(
        cert_sha256=hashlib.sha256(der).hexdigest(),
        spki_sha256=hashlib.sha256(spki).hexdigest(),
        subject=cert.subject.rfc4514_string(),
    )


def client_cert_allowed(der: bytes, allowed: frozenset[str]) -> bool:
    """§2.3: an empty list allows every chained certificate; else cert or SPKI SHA-256 must match."""
    cert = x509.load_der_x509_certificate(der)
    return has_client_auth(cert) and (
        not allowed or bool({hashlib.sha256(der).hexdigest(), peer_identity(der).spki_sha256} & allowed)
    )


def has_client_auth(cert: x509.Certificate) -> bool:
    """A relay client certificate must be usable for TLS client authentication.

    OpenSSL's chain check does not know the purpose on a server context's peer unless told, so
    the connection layer refuses a certificate whose EKU excludes clientAuth or whose key usage
    lacks digitalSignature (wrong-purpose certificates get no HTTP bytes, like C-01).
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if (
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH not in eku
            and x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
        ):
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return False
    except x509.ExtensionNotFound:
        pass
    return True
