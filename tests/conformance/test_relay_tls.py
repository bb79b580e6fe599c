"""relay-api.md §2.1–§2.3 and §13 C-01…C-05; security.md S-01…S-04, S-06 — against a real agent process."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    return S.shared_agent(tmp_path_factory)


def _ok_health(a: S.AgentProcess, ctx: ssl.SSLContext) -> bytes:
    done, data = a.raw_exchange(ctx)
    assert done, "handshake failed"
    return data


def _no_http(a: S.AgentProcess, ctx: ssl.SSLContext) -> None:
    _, data = a.raw_exchange(ctx)
    assert data == b"", f"received HTTP bytes: {data[:80]!r}"


# -- C-01 / S-01 ---------------------------------------------------------------------------------
def test_c01_valid_relay_certificate_gets_http(agent) -> None:
    data = _ok_health(agent, agent.client_context())
    assert data.startswith(b"HTTP/1.1 200")


def test_c01_dev_relay_client_certificate_of_init_is_accepted(agent) -> None:
    ctx = agent.client_context((agent.tls / "relay-client.crt", agent.tls / "relay-client.key"))
    assert _ok_health(agent, ctx).startswith(b"HTTP/1.1 200")


def test_c01_no_client_certificate_gets_no_http_bytes(agent) -> None:
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(agent, agent.client_context(use_default_cert=False, version=version))


def test_c01_self_signed_certificate_gets_no_http_bytes(agent, tmp_path: Path) -> None:
    key, cert = S.make_leaf(None, None, "silson24-relay-01", self_signed=True)  # type: ignore[arg-type]
    pair = S.write_pair(tmp_path, "self", key, cert)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(agent, agent.client_context(pair, version=version))


def test_c01_certificate_from_another_ca_gets_no_http_bytes(agent, tmp_path: Path) -> None:
    ca_key, ca = S.make_ca("some other CA")
    key, cert = S.make_leaf(ca_key, ca, "silson24-relay-01")
    pair = S.write_pair(tmp_path, "other", key, cert)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(agent, agent.client_context(pair, version=version))


def test_c01_expired_relay_ca_certificate_gets_no_http_bytes(agent) -> None:
    now = dt.datetime.now(dt.UTC)
    c, k, _ = agent.issue_client(
        "expired-relay", not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1)
    )
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(agent, agent.client_context((c, k), version=version))


def test_c01_not_yet_valid_relay_ca_certificate_gets_no_http_bytes(agent) -> None:
    now = dt.datetime.now(dt.UTC)
    c, k, _ = agent.issue_client(
        "future-relay", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)
    )
    _no_http(agent, agent.client_context((c, k)))


def test_c01_refused_client_cannot_get_a_response_even_after_sending_a_full_request(agent) -> None:
    """With TLS 1.3 the client may think the handshake worked; it still reads no HTTP byte."""
    ctx = agent.client_context(use_default_cert=False, version=ssl.TLSVersion.TLSv1_3)
    req = (
        b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    _, data = agent.raw_exchange(ctx, req)
    assert data == b""


# -- C-02 ----------------------------------------------------------------------------------------
def test_c02_ca_outside_client_ca_is_refused_like_c01(agent, tmp_path: Path) -> None:
    """A CA "in the system store" but not in api.client_ca (simulated: a CA that only the client
    side trusts, and whose certificate is handed over in the chain) is refused like C-01."""
    ca_key, ca = S.make_ca("pretend public root CA")
    key, cert = S.make_leaf(ca_key, ca, "silson24-relay-01")
    c, k = tmp_path / "sys.crt", tmp_path / "sys.key"
    c.write_bytes(S.cert_pem(cert, ca))  # send the whole chain, root included
    k.write_bytes(S.key_pem(key))
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(agent, agent.client_context((c, k), version=version))


def test_c02_server_certificate_issuer_is_not_trusted_for_clients(agent, tmp_path: Path) -> None:
    """relay-api.md §10 "why two bundles": the issuer of agent certificates (dev CA) is not a client CA.
    We cannot sign with the dev CA (its key is not kept), but the agent's own server certificate is
    an agent certificate with clientAuth: presenting it as a client certificate must be refused."""
    ctx = agent.client_context((agent.tls / "server.crt", agent.tls / "server.key"))
    _no_http(agent, ctx)


# -- C-04 / S-02 / S-04 --------------------------------------------------------------------------
def _legacy_ctx(agent: S.AgentProcess, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = agent.client_context(version=version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_c04_tls10_and_tls11_are_refused(agent, version: ssl.TLSVersion) -> None:
    ctx = _legacy_ctx(agent, version)
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    try:
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(raw, server_hostname="localhost")
        # the client really offered the old version (not "no protocols available" on our side)
        assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value).upper()
    finally:
        raw.close()


def test_c04_tls10_refused_per_openssl_cli(agent) -> None:
    """Independent check with the openssl binary (it can offer TLS 1.0 at SECLEVEL=0)."""
    for flag in ("-tls1", "-tls1_1"):
        out = _s_client(agent, [flag, "-cipher", "DEFAULT:@SECLEVEL=0"])
        assert "Cipher is (NONE)" in out or "Cipher    : 0000" in out, out[-500:]


@pytest.mark.parametrize(
    "suite",
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
        "AES128-GCM-SHA256",
        "AES128-SHA",
    ],
)
def test_c04_tls12_cbc_or_static_rsa_suites_fail(agent, suite: str) -> None:
    ctx = agent.client_context(version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    done, data = agent.raw_exchange(ctx)
    assert not done and data == b""


@pytest.mark.parametrize(
    "suite",
    ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"],
)
def test_c04_tls12_aead_suites_matching_the_key_succeed(agent, suite: str) -> None:
    ctx = agent.client_context(version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.cipher()[0] == suite
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(12).startswith(b"HTTP/1.1 200")


def test_c04_tls13_succeeds_with_an_allowed_suite(agent) -> None:
    ctx = agent.client_context(version=ssl.TLSVersion.TLSv1_3)
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.cipher()[0] in {
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        }
        assert tls.compression() is None
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(12).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_tls13_each_listed_suite_is_accepted(agent, suite: str) -> None:
    out = _s_client(agent, ["-tls1_3", "-ciphersuites", suite])
    assert f"Cipher is {suite}" in out, out[-600:]


@pytest.mark.parametrize("group", ["X25519", "P-256"])
def test_tls13_key_exchange_groups_x25519_and_p256_are_offered(agent, group: str) -> None:
    out = _s_client(agent, ["-tls1_3", "-groups", group])
    assert "Cipher is TLS_" in out, out[-600:]
    assert ("X25519" if group == "X25519" else "prime256v1") in out


def test_tls12_p256_key_exchange(agent) -> None:
    out = _s_client(agent, ["-tls1_2", "-groups", "P-256"])
    assert "Cipher is ECDHE-" in out and "prime256v1" in out, out[-600:]


def test_s04_server_certificate_and_negotiated_parameters(agent) -> None:
    ctx = agent.client_context()
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        name, _, _ = tls.cipher()
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        assert key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.digest_size >= 32
    assert "GCM" in name or "CHACHA20" in name


def test_alpn_offering_h2_selects_http11(agent) -> None:
    ctx = agent.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_plain_http_is_not_answered_with_http(agent) -> None:
    with socket.create_connection(("127.0.0.1", agent.api_port), timeout=5) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    assert b"HTTP/" not in data


def test_client_initiated_renegotiation_is_refused(agent) -> None:
    cmd = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{agent.api_port}",
        "-tls1_2",
        "-cert",
        str(agent.client_cert),
        "-key",
        str(agent.client_key),
        "-CAfile",
        str(agent.server_ca),
    ]
    script = "sleep 1; printf 'R\\n'; sleep 2"
    p = subprocess.run(
        f"({script}) | {' '.join(cmd)}", shell=True, capture_output=True, text=True, timeout=20
    )
    out = p.stdout + p.stderr
    assert "RENEGOTIATING" in out
    assert "no renegotiation" in out.lower() or "alert" in out.lower(), out[-800:]


def _s_client(agent: S.AgentProcess, extra: list[str]) -> str:
    cmd = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{agent.api_port}",
        "-servername",
        "localhost",
        "-cert",
        str(agent.client_cert),
        "-key",
        str(agent.client_key),
        "-CAfile",
        str(agent.server_ca),
        *extra,
    ]
    p = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20)
    return p.stdout + p.stderr


# -- C-03 / S-03 allow-list ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def allowlisted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("allow") / "inst"
    a = S.AgentProcess(root, limits={"rate_per_s": 0, "health_rate_per_s": 0})
    key_a = ec.generate_private_key(ec.SECP256R1())
    ca_path = a.issue_client("relay-A", key=key_a)
    cert_c = a.issue_client("relay-C")
    # S-03: A's SPKI hash; C-03: C's certificate hash. The default client is on neither.
    a.set_api_option("allowed_client_fingerprints", [S.spki_sha256(ca_path[2]), S.cert_sha256(cert_c[2])])
    a.start()
    a.pins = {"A": ca_path, "key_a": key_a, "C": cert_c}  # type: ignore[attr-defined]
    yield a
    a.close()


def test_c03_spki_pinned_certificate_gets_200(allowlisted) -> None:
    c, k, _ = allowlisted.pins["A"]
    assert _ok_health(allowlisted, allowlisted.client_context((c, k))).startswith(b"HTTP/1.1 200")


def test_s03_reissued_certificate_with_same_key_still_matches_spki(allowlisted) -> None:
    c, k, cert = allowlisted.issue_client("relay-A", key=allowlisted.pins["key_a"])
    assert S.cert_sha256(cert) != S.cert_sha256(allowlisted.pins["A"][2])
    assert _ok_health(allowlisted, allowlisted.client_context((c, k))).startswith(b"HTTP/1.1 200")


def test_c03_certificate_hash_entry_gets_200(allowlisted) -> None:
    c, k, _ = allowlisted.pins["C"]
    assert _ok_health(allowlisted, allowlisted.client_context((c, k))).startswith(b"HTTP/1.1 200")


def test_c03_relay_ca_certificate_matching_nothing_gets_no_http(allowlisted) -> None:
    _no_http(allowlisted, allowlisted.client_context())  # the default client: chains, not listed
    c, k, _ = allowlisted.issue_client("relay-B")
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(allowlisted, allowlisted.client_context((c, k), version=version))


def test_c03_reissue_with_new_key_of_a_certificate_pinned_by_hash_is_refused(allowlisted) -> None:
    c, k, _ = allowlisted.issue_client("relay-C")
    _no_http(allowlisted, allowlisted.client_context((c, k)))


# -- C-05 / S-06 admin listener ------------------------------------------------------------------
def test_c05_non_loopback_admin_listen_exits_4(tmp_path: Path) -> None:
    a = S.AgentProcess(tmp_path / "inst")
    text = a.config.read_text(encoding="utf-8")
    head, sep, tail = text.partition("[admin]\n")
    tail = tail.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:8780"', 1)
    a.config.write_text(head + sep + tail, encoding="utf-8")
    a.start(expect_ready=False)
    assert a.wait_exit(30) == 4
    assert not any(line.startswith("ready:") for line in a.stderr_lines)


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_s06_admin_port_not_reachable_on_a_non_loopback_address(agent) -> None:
    ip = _non_loopback_address()
    if ip is None:
        pytest.skip("no non-loopback address on this host")
    with pytest.raises(OSError):
        socket.create_connection((ip, agent.admin_port), timeout=2).close()


def test_s06_admin_listener_serves_metrics_on_loopback(agent) -> None:
    assert "silson_" in agent.metrics()


# -- §2.2 resumption keeps the identity ------------------------------------------------------------
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_resumed_connection_keeps_the_verified_identity(agent, version: ssl.TLSVersion) -> None:
    c, k, cert = agent.issue_client("resume")
    ctx = agent.client_context((c, k), version=version)
    req = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(req)
        while tls.recv(65536):
            pass
        session = tls.session
    body = S.json.dumps(S.search_body()).encode()
    rid = S.json.loads(body)["request_id"]
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        reused = tls.session_reused
        tls.sendall(
            b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        data = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    if not reused:
        pytest.skip("the agent does not resume sessions (allowed: resumption MAY be enabled)")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    rec = agent.audit_for(rid)
    assert rec and rec[0]["actor"]["cert_sha256"] == S.cert_sha256(cert)


# -- §2.3 CRL ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_crl(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("crl") / "inst"
    a = S.AgentProcess(root, limits={"rate_per_s": 0, "health_rate_per_s": 0})
    revoked = a.issue_client("revoked-relay")
    kept = a.issue_client("kept-relay")
    now = dt.datetime.now(dt.UTC)
    from cryptography.hazmat.primitives import hashes, serialization

    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(a.ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked[2].serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
        .sign(a.ca_key, hashes.SHA256())
    )
    (root / "tls" / "relay-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    # the bundle holds only our CA here, so the CRL covers every issuer of the bundle
    (root / "tls" / "relay-ca.crt").write_bytes(S.cert_pem(a.ca_cert))
    a.set_api_option("client_crl", "tls/relay-crl.pem")
    a.start()
    a.pins = {"revoked": revoked, "kept": kept}  # type: ignore[attr-defined]
    yield a
    a.close()


def test_crl_revoked_leaf_gets_no_http(with_crl) -> None:
    c, k, _ = with_crl.pins["revoked"]
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _no_http(with_crl, with_crl.client_context((c, k), version=version))


def test_crl_other_leaf_is_served(with_crl) -> None:
    c, k, _ = with_crl.pins["kept"]
    assert _ok_health(with_crl, with_crl.client_context((c, k))).startswith(b"HTTP/1.1 200")


# -- §2.2 RSA server certificate: ECDHE-RSA suites -------------------------------------------------
@pytest.fixture(scope="module")
def rsa_agent(pki_agent):
    return pki_agent


@pytest.mark.parametrize(
    "suite", ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
)
def test_rsa_server_ecdhe_rsa_aead_suites_succeed(rsa_agent, suite: str) -> None:
    ctx = rsa_agent.client_context(version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    raw = socket.create_connection(("127.0.0.1", rsa_agent.api_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.cipher()[0] == suite


@pytest.mark.parametrize(
    "suite",
    [
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "AES128-SHA",
        "DHE-RSA-CHACHA20-POLY1305",
    ],
)
def test_rsa_server_static_rsa_dhe_and_cbc_suites_fail(rsa_agent, suite: str) -> None:
    ctx = rsa_agent.client_context(version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    done, data = rsa_agent.raw_exchange(ctx)
    assert not done and data == b""


def test_rsa_server_tls13_works(rsa_agent) -> None:
    data = _ok_health(rsa_agent, rsa_agent.client_context(version=ssl.TLSVersion.TLSv1_3))
    assert data.startswith(b"HTTP/1.1 200")


# -- §2.1 admin listener addresses -----------------------------------------------------------------
@pytest.mark.parametrize("listen,ok", [("127.0.0.2:0", True)])
def test_admin_listen_loopback_range(tmp_path: Path, listen: str, ok: bool) -> None:
    a = S.AgentProcess(tmp_path / "inst")
    text = a.config.read_text(encoding="utf-8")
    head, sep, tail = text.partition("[admin]\n")
    a.config.write_text(
        head + sep + tail.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"', 1), encoding="utf-8"
    )
    a.start(expect_ready=ok)
    try:
        if ok:
            assert a.admin_port > 0
        else:
            assert a.wait_exit(30) == 4
    finally:
        a.close()


def test_admin_non_loopback_allowed_when_forced_and_doctor_warns(tmp_path: Path) -> None:
    a = S.AgentProcess(tmp_path / "inst")
    text = a.config.read_text(encoding="utf-8")
    head, sep, tail = text.partition("[admin]\n")
    tail = tail.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"\nallow_non_loopback = true', 1)
    a.config.write_text(head + sep + tail, encoding="utf-8")
    a.start()
    try:
        assert a.admin_port > 0
        r = a.cli("doctor")
        assert re.search(r"WARN[^\n]*admin", r.stdout + r.stderr, re.I), r.stdout + r.stderr
    finally:
        a.close()


# -- §2.3 / §10: the pinned bundle is the relay-client ISSUING CA (possibly an intermediate) --------
def _intermediate(root_key, root, cn: str):
    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(S._name(cn))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def _rsa_server(a: S.AgentProcess) -> None:
    """An RSA-2048 server certificate from our own server CA (§2.2: RSA >= 2048 accepted)."""
    import ipaddress

    from cryptography.hazmat.primitives import hashes

    ca_key, ca = S.make_ca("conformance server CA")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(S._name("99000001"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (a.tls / "server.crt").write_bytes(S.cert_pem(cert, ca))
    (a.tls / "server.key").write_bytes(S.key_pem(key))
    os.chmod(a.tls / "server.key", 0o600)
    (a.tls / "conformance-server-ca.crt").write_bytes(S.cert_pem(ca))
    a.server_ca = a.tls / "conformance-server-ca.crt"


@pytest.fixture(scope="module")
def pki_agent(tmp_path_factory: pytest.TempPathFactory):
    """One agent for the PKI variants: RSA server certificate; api.client_ca = our test CA (a root),
    a relay-client issuing CA I1 WITHOUT its root (the form enrollment installs), and a root R2 whose
    intermediate I2 is not pinned."""
    a = S.AgentProcess(
        tmp_path_factory.mktemp("pki") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    _rsa_server(a)
    r1_key, r1 = S.make_ca("relay root CA 1")
    i1_key, i1 = _intermediate(r1_key, r1, "relay-client issuing CA 1")
    r2_key, r2 = S.make_ca("relay root CA 2")
    i2_key, i2 = _intermediate(r2_key, r2, "relay-client issuing CA 2")
    (a.tls / "relay-ca.crt").write_bytes(S.cert_pem(a.ca_cert, i1, r2))
    chains = {}
    a.certs.mkdir(exist_ok=True)
    for tag, (ikey, inter, root) in (("i1", (i1_key, i1, r1)), ("i2", (i2_key, i2, r2))):
        lk, leaf = S.make_leaf(ikey, inter, "silson24-relay-01")
        for name, chain in (("leaf", [leaf]), ("leaf+issuer", [leaf, inter]), ("full", [leaf, inter, root])):
            c, k = a.certs / f"{tag}-{name}.crt", a.certs / f"{tag}-{name}.key"
            c.write_bytes(S.cert_pem(*chain))
            k.write_bytes(S.key_pem(lk))
            chains[f"{tag}-{name}"] = (c, k)
    a.start()
    a.chains = chains  # type: ignore[attr-defined]
    yield a
    a.close()


@pytest.mark.parametrize("chain", ["leaf", "leaf+issuer"])
def test_leaf_of_pinned_intermediate_issuing_ca_is_served(pki_agent, chain: str) -> None:
    ctx = pki_agent.client_context(pki_agent.chains[f"i1-{chain}"])
    assert _ok_health(pki_agent, ctx).startswith(b"HTTP/1.1 200")


def test_leaf_chaining_through_intermediate_to_pinned_root_is_served(pki_agent) -> None:
    for name in ("i2-leaf+issuer", "i2-full"):
        ctx = pki_agent.client_context(pki_agent.chains[name])
        assert _ok_health(pki_agent, ctx).startswith(b"HTTP/1.1 200")


def test_leaf_without_its_intermediate_cannot_chain_to_pinned_root(pki_agent) -> None:
    _no_http(pki_agent, pki_agent.client_context(pki_agent.chains["i2-leaf"]))


def test_pki_agent_still_serves_the_plain_relay_client(pki_agent) -> None:
    assert _ok_health(pki_agent, pki_agent.client_context()).startswith(b"HTTP/1.1 200")
