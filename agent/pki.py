"""X.509 helpers: throw-away CAs and certificates for ``init --dev-certs`` and for tests.

Production certificates come from enrollment (relay-api.md §10); these exist so a developer or a
test can stand up the whole mTLS path on loopback with certificates made on the spot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.fsutil import atomic_write, ensure_dir

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(
    cn: str,
    *,
    days: int = 3650,
    key: PrivateKey | None = None,
    not_before: dt.datetime | None = None,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed root CA, or with ``issuer=(key, cert)`` an intermediate CA it signs
    (path length 0: it issues leaves only)."""
    key = key or new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    subject = _name(cn, "silson-agent test")
    signer_key = issuer[0] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if issuer else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    return key, builder.sign(signer_key, hashes.SHA256())


def make_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
    days: int = 825,
    key: PrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_usage: bool = True,
) -> tuple[PrivateKey, x509.Certificate]:
    """Issue a leaf certificate. ``server``/``client`` set the extended key usages."""
    key = key or new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_key(path: Path, key: PrivateKey) -> None:
    atomic_write(path, key_pem(key), 0o600)


def write_certs(path: Path, *certs: x509.Certificate) -> None:
    """0600 like every file the agent creates (security.md §10), public as a certificate is."""
    atomic_write(path, cert_pem(*certs), 0o600)


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def make_dev_certs(tls_dir: Path, *, institution_code: str = "99000001") -> None:
    """``init --dev-certs``: dev CA + server cert, relay CA + relay client cert, relay-server CA.

    The server's issuer (dev-ca) is never the relay-client issuer (relay-ca): otherwise any holder
    of an agent certificate could call the public port (relay-api.md §10 "Why two bundles").
    """
    ensure_dir(tls_dir)
    hostname = socket.gethostname()
    dev_ca_key, dev_ca = make_ca("silson-agent dev CA")
    server_key, server = make_cert(
        dev_ca_key,
        dev_ca,
        institution_code,
        dns=["localhost", hostname],
        ips=["127.0.0.1", "::1"],
        server=True,
        client=True,
        days=365,
    )
    relay_ca_key, relay_ca = make_ca("silson-agent dev relay-client CA")
    client_key, client = make_cert(relay_ca_key, relay_ca, "silson24-relay-dev", client=True, days=365)
    _, relay_server_ca = make_ca("silson-agent dev relay-server CA")
    write_certs(tls_dir / "dev-ca.crt", dev_ca)
    write_certs(tls_dir / "server.crt", server, dev_ca)
    write_key(tls_dir / "server.key", server_key)
    write_certs(tls_dir / "relay-ca.crt", relay_ca)
    write_certs(tls_dir / "relay-client.crt", client)
    write_key(tls_dir / "relay-client.key", client_key)
    write_certs(tls_dir / "relay-server-ca.crt", relay_server_ca)
