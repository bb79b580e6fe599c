"""Transport and client authentication of the public port (relay-api.md §2.2–§2.3; C-01–C-04,
S-01–S-04) and certificate reload. Raw ``ssl`` sockets: the point is what bytes reach the client."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent import pki
from agent.api.tls import build_server_context
from tests.api.conftest import make_certs, start_agent, stop_agent
from tests.api.tlsutil import client_context, exchange

NO_LIMITS = {"rate_per_s": 0, "health_rate_per_s": 0}


def _assert_no_http(agent, ctx: ssl.SSLContext) -> None:
    _, received, _ = exchange(agent.server.address, ctx)
    assert received == b"", "a refused client must receive no HTTP byte"


def test_valid_relay_client_gets_health(agent) -> None:
    ok, received, _ = exchange(
        agent.server.address,
        client_context(agent.certs.server_ca, agent.certs.client_cert, agent.certs.client_key),
    )
    assert ok and received.startswith(b"HTTP/1.1 200 ")


def test_client_without_certificate_gets_no_http_bytes(agent) -> None:
    _assert_no_http(agent, client_context(agent.certs.server_ca))


def test_self_signed_client_certificate_gets_no_http_bytes(agent, tmp_path: Path) -> None:
    key, cert = pki.make_ca("silson24-relay-01")  # self-signed
    pki.write_certs(tmp_path / "self.crt", cert)
    pki.write_key(tmp_path / "self.key", key)
    _assert_no_http(
        agent, client_context(agent.certs.server_ca, tmp_path / "self.crt", tmp_path / "self.key")
    )


def test_certificate_from_another_ca_gets_no_http_bytes(agent, tmp_path: Path) -> None:
    other_key, other_ca = pki.make_ca("some other CA")
    key, cert = pki.make_cert(other_key, other_ca, "silson24-relay-01", client=True)
    pki.write_certs(tmp_path / "o.crt", cert)
    pki.write_key(tmp_path / "o.key", key)
    _assert_no_http(agent, client_context(agent.certs.server_ca, tmp_path / "o.crt", tmp_path / "o.key"))


def test_expired_relay_ca_certificate_gets_no_http_bytes(agent) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    cert, key, _ = agent.certs.issue_client(
        "expired", not_before=start, not_after=start + dt.timedelta(days=1)
    )
    _assert_no_http(agent, client_context(agent.certs.server_ca, cert, key))


def test_server_auth_only_certificate_gets_no_http_bytes(agent) -> None:
    cert, key, _ = agent.certs.issue_client("serveronly", client=False, server=True)
    _assert_no_http(agent, client_context(agent.certs.server_ca, cert, key))


def test_key_usage_without_digital_signature_gets_no_http_bytes(agent, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "badku")]))
        .issuer_name(agent.certs.relay_ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(agent.certs.relay_ca_key, hashes.SHA256())
    )
    pki.write_certs(tmp_path / "ku.crt", cert)
    pki.write_key(tmp_path / "ku.key", key)
    _assert_no_http(agent, client_context(agent.certs.server_ca, tmp_path / "ku.crt", tmp_path / "ku.key"))


def test_plain_http_gets_no_http_response(agent) -> None:
    import socket

    with socket.create_connection(agent.server.address, timeout=5) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            pass
    assert b"HTTP/" not in data


def test_system_trust_store_is_not_loaded(tmp_path: Path) -> None:
    # C-02: the only CA the public port trusts is the pinned relay-client bundle.
    certs = make_certs(tmp_path)
    ctx = build_server_context(certs.server_cert, certs.server_key, certs.relay_ca)
    cas = ctx.get_ca_certs()
    assert len(cas) == 1
    assert dict(x[0] for x in cas[0]["subject"])["commonName"] == "test relay-client CA"
    default = ssl.create_default_context()
    if default.get_ca_certs():  # the machine has a system store: none of it is in ours
        assert not any(c in cas for c in default.get_ca_certs())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls10_and_tls11_are_refused(agent, version: ssl.TLSVersion) -> None:
    ctx = client_context(
        agent.certs.server_ca,
        agent.certs.client_cert,
        agent.certs.client_key,
        version=version,
        ciphers="DEFAULT:@SECLEVEL=0",
    )
    ok, received, _ = exchange(agent.server.address, ctx)
    assert not ok and received == b""


def test_tls12_cbc_only_is_refused(agent) -> None:
    ctx = client_context(
        agent.certs.server_ca,
        agent.certs.client_cert,
        agent.certs.client_key,
        version=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA",
    )
    ok, received, _ = exchange(agent.server.address, ctx)
    assert not ok and received == b""


def test_tls12_ecdhe_ecdsa_aes128_gcm_succeeds_with_aead(agent) -> None:
    ctx = client_context(
        agent.certs.server_ca,
        agent.certs.client_cert,
        agent.certs.client_key,
        version=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
    )
    ok, received, sock = exchange(agent.server.address, ctx)
    assert ok and received.startswith(b"HTTP/1.1 200 ")
    assert sock is not None and sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert sock.selected_alpn_protocol() in (None, "http/1.1")


def test_tls13_succeeds_and_server_key_is_p256(agent) -> None:
    ctx = client_context(
        agent.certs.server_ca, agent.certs.client_cert, agent.certs.client_key, version=ssl.TLSVersion.TLSv1_3
    )
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ok, received, sock = exchange(agent.server.address, ctx)
    assert ok and received.startswith(b"HTTP/1.1 200 ")
    assert sock is not None
    assert sock.version() == "TLSv1.3" and sock.selected_alpn_protocol() == "http/1.1"
    assert sock.cipher()[0] in (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    )
    server_cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    assert isinstance(server_cert.public_key(), ec.EllipticCurvePublicKey)
    assert server_cert.public_key().curve.name == "secp256r1"


def test_allow_list_matches_spki_or_certificate_fingerprint(tmp_path: Path) -> None:
    # S-03 / C-03: A re-issued with the same key matches by SPKI; B (same CA) gets no HTTP bytes.
    certs = make_certs(tmp_path / "tls")
    key_a = ec.generate_private_key(ec.SECP256R1())
    cert_a1, key_a1, a1 = certs.issue_client("relay-a1", key=key_a)
    cert_a2, key_a2, _ = certs.issue_client("relay-a2", key=key_a)  # re-issued: same key, new cert
    cert_b, key_b, b = certs.issue_client("relay-b")
    agent = start_agent(
        tmp_path,
        certs=certs,
        limits=NO_LIMITS,
        api={"allowed_client_fingerprints": [pki.spki_sha256(a1), pki.cert_sha256(b)]},
    )
    try:
        for cert, key in ((cert_a1, key_a1), (cert_a2, key_a2), (cert_b, key_b)):
            ok, received, _ = exchange(agent.server.address, client_context(certs.server_ca, cert, key))
            assert received.startswith(b"HTTP/1.1 200 ")
        # The default client certificate chains to the relay CA but matches no entry.
        _assert_no_http(agent, client_context(certs.server_ca, certs.client_cert, certs.client_key))
    finally:
        stop_agent(agent)


def test_reload_tls_new_connections_see_new_cert_and_open_connection_keeps_working(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits=NO_LIMITS)
    try:
        certs = agent.certs
        ctx = client_context(certs.server_ca, certs.client_cert, certs.client_key)
        ok, received, old_sock = exchange(agent.server.address, ctx)
        assert ok and received.startswith(b"HTTP/1.1 200 ")
        old_der = old_sock.getpeercert(binary_form=True)
        # Renewal: new key and certificate written in place, then the SIGHUP hook.
        server_ca_key = ec.generate_private_key(ec.SECP256R1())
        _, server_ca = pki.make_ca("test server CA 2", key=server_ca_key)
        new_key, new_cert = pki.make_cert(
            server_ca_key, server_ca, "99000001", dns=["localhost"], ips=["127.0.0.1"], server=True
        )
        pki.write_certs(certs.server_cert, new_cert, server_ca)
        pki.write_key(certs.server_key, new_key)
        pki.write_certs(certs.server_ca, server_ca)
        agent.server.reload_tls()
        import time

        time.sleep(0.2)
        new_ctx = client_context(certs.server_ca, certs.client_cert, certs.client_key)
        ok, received, new_sock = exchange(agent.server.address, new_ctx)
        assert ok and received.startswith(b"HTTP/1.1 200 ")
        assert new_sock.getpeercert(binary_form=True) != old_der
        assert x509.load_der_x509_certificate(new_sock.getpeercert(binary_form=True)) == new_cert
        # The keep-alive connection opened before the reload still answers.
        old_sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        again = old_sock.recv(65536)
        assert again.startswith(b"HTTP/1.1 200 ")
    finally:
        stop_agent(agent)
