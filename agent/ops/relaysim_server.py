"""Relay simulator, server side: the relay's own HTTPS endpoints (relay-api.md §10, §11) on loopback.

The counterpart of ``agent.api.relaysim`` (the relay as a *client* of the agent). Tests, the
acceptance command and demos enroll against it, send heartbeats to it and renew certificates
through it; nothing needs the real relay.

It owns a throw-away PKI made at start:

- ``relay-server-ca.crt`` — the relay program's root. It issues the simulator's own HTTPS
  certificate and, through the intermediate "agent issuing CA", the agents' certificates. This
  file is the pinned bundle an installation holds before enrolling (``server_ca_path``).
- ``relay-client-ca.crt`` — the separate issuer of the relay's client certificates (what an
  agent's ``api.client_ca`` must hold, and nothing else).
- a "rogue" CA that nothing trusts, for the chain-does-not-verify mode.

``RelaySimulator(tmp_dir).start()`` returns the base URL; ``stop()`` ends it. Behaviour is set
through plain attributes (``enrollment_mode``, ``fail_next``, ``heartbeat_status``,
``next_interval_s``, ``server_time_offset_s``, ``heartbeat_extra``, …) and every request is
recorded (``enrollments``, ``heartbeats``, ``renewals``, ``signing_keys``, ``requests``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent import pki
from agent.keys import generate_keys
from agent.signing import kid_of, verify_es256

ENROLL_PROOF_PREFIX = "silson-agent-enroll-v1\n"
ROTATE_PREFIX = "silson-agent-rotate-v1\n"
DEFAULT_RELAY_IDS = ("silson24-relay-01", "silson24-relay-02")
ENROLL_MEMBERS = {
    "enrollment_token",
    "institution_code",
    "institution_type",
    "agent_version",
    "api_revision",
    "endpoint",
    "server_csr_pem",
    "signing_public_key_pem",
    "signing_key_proof",
}
# Enrollment answers the simulator can be told to give (``enrollment_mode`` / ``renewal_mode``).
MODES = ("ok", "wrong_key", "bad_chain", "client_ca_has_issuer", "short_validity", "wrong_san", "wrong_kid")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFIG = """\
[agent]
institution_code = "{code}"
institution_type = "{kind}"
data_dir = "data"
log_dir = "logs"

[[watch]]
path = "inbox"

[api]
listen = "{listen}"
server_cert = "tls/server.crt"
server_key = "tls/server.key"
client_ca = "tls/relay-ca.crt"

[admin]
listen = "{admin}"

[relay]
url = "{url}"
server_ca = "tls/relay-server-ca.crt"
"""
_AGENT_PATH = re.compile(r"^/v1/agents/(agt_[0-9A-Z]{26})/(heartbeats|certificates|signing-keys)\Z")


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crockford(n: int) -> str:
    return "".join(secrets.choice(_CROCKFORD) for _ in range(n))


def new_token() -> str:
    """``ENR-XXXX-…``: 7 groups of 4 Crockford base32 characters (140 bits of randomness)."""
    return "ENR-" + "-".join(_crockford(4) for _ in range(7))


def _san_for(host: str) -> list[x509.GeneralName]:
    try:
        return [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        return [x509.DNSName(host)]


def _leaf(
    issuer_key: Any,
    issuer: x509.Certificate,
    public_key: Any,
    cn: str,
    host: str,
    *,
    days: float,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """An agent certificate: serverAuth + clientAuth, SAN = the endpoint host (relay-api.md §10)."""
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
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
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_san_for(host)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(*certs: x509.Certificate) -> str:
    return pki.cert_pem(*certs).decode("ascii")


def _spki(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class _Problem(Exception):
    def __init__(self, status: int, kind: str, title: str) -> None:
        super().__init__(title)
        self.status, self.kind, self.title = status, kind, title


class RelaySimulator:
    """The relay's HTTPS endpoints on 127.0.0.1:0 with a test PKI (see the module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        host: str = "127.0.0.1",
        relay_ids: tuple[str, ...] = DEFAULT_RELAY_IDS,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.relay_ids = list(relay_ids)
        self._lock = threading.RLock()
        # -- PKI -------------------------------------------------------------------------------
        self.root_key, self.root = pki.make_ca("sim relay-server root CA")
        self.issuing_key, self.issuing_ca = pki.make_ca(
            "sim agent issuing CA", issuer=(self.root_key, self.root)
        )
        self.client_ca_key, self.client_ca = pki.make_ca("sim relay-client CA")
        self.rogue_key, self.rogue_ca = pki.make_ca("sim rogue CA")
        https_key, https_cert = pki.make_cert(
            self.root_key,
            self.root,
            "relay.sim.invalid",
            dns=["localhost", "relay.sim.invalid"],
            ips=["127.0.0.1", "::1"],
            server=True,
        )
        self.server_ca_path = self.dir / "relay-server-ca.crt"
        self.relay_client_ca_path = self.dir / "relay-client-ca.crt"
        self.issuing_ca_path = self.dir / "agent-issuing-ca.crt"
        self._https_cert_path = self.dir / "relay-https.crt"
        self._https_key_path = self.dir / "relay-https.key"
        pki.write_certs(self.server_ca_path, self.root)
        pki.write_certs(self.relay_client_ca_path, self.client_ca)
        pki.write_certs(self.issuing_ca_path, self.issuing_ca)
        pki.write_certs(self._https_cert_path, https_cert, self.root)
        pki.write_key(self._https_key_path, https_key)
        # -- behaviour (tests set these) --------------------------------------------------------
        self.enrollment_mode = "ok"
        self.renewal_mode = "ok"
        self.cert_days: float = 365  # validity of issued agent certificates
        self.fail_next = 0  # the next N enrollment/renewal calls answer fail_status
        self.fail_status = 503
        self.enrollment_status: int | None = None  # force a status for enrollments (400, 422, 409, …)
        self.renewal_status: int | None = None  # force a status for renewals (e.g. 401)
        self.heartbeat_interval_s = 300
        self.heartbeat_status = 200
        self.heartbeat_down = False  # True: every heartbeat answers 503
        self.next_interval_s: int | None = 300
        self.server_time_offset_s: float = 0
        self.heartbeat_extra: dict[str, Any] = {}
        self.enrolled_institutions: set[str] = set()
        # -- records ----------------------------------------------------------------------------
        self.tokens: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.enrollments: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.heartbeat_times: list[float] = []  # time.monotonic() of each recorded heartbeat
        self.renewals: list[dict[str, Any]] = []
        self.signing_keys: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self._https_cert_path), str(self._https_key_path))
        # Client certificates are optional at the TLS layer (enrollment has none); the agent
        # endpoints refuse a request without one. Agent certificates chain to the root.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(self.server_ca_path))
        handler = type("SimHandler", (_Handler,), {"sim": self})
        server = _TLSServer((self.host, 0), handler, ctx)
        self._server = server
        port = server.server_address[1]
        self.base_url = (
            f"https://{self.host}:{port}" if ":" not in self.host else f"https://[{self.host}]:{port}"
        )
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="relay-sim", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RelaySimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- operator actions ---------------------------------------------------------------------------
    def issue_token(
        self,
        token: str | None = None,
        *,
        institution_code: str | None = None,
        expired: bool = False,
        used: bool = False,
        days: int = 14,
    ) -> str:
        """A one-time enrollment token; ``expired``/``used`` make one the relay answers 401 for."""
        token = token or new_token()
        expires = time.time() + (-60 if expired else days * 86400)
        with self._lock:
            self.tokens[token] = {
                "institution_code": institution_code,
                "expires": expires,
                "used_by": "someone-else" if used else None,
                "response": None,
            }
        return token

    def issue_agent_certificate(
        self,
        public_key: Any,
        *,
        cn: str = "99000001",
        host: str = "127.0.0.1",
        days: float = 365,
        not_before: dt.datetime | None = None,
        agent_id: str | None = None,
    ) -> str:
        """PEM (leaf + intermediate) for ``public_key`` from the agent issuing CA; registered to
        ``agent_id`` when given, so it may call the agent endpoints."""
        cert = _leaf(
            self.issuing_key, self.issuing_ca, public_key, cn, host, days=days, not_before=not_before
        )
        if agent_id is not None:
            with self._lock:
                self.agents[agent_id]["spki"].add(_spki(public_key))
        return _pem(cert, self.issuing_ca)

    def issue_relay_client_cert(
        self, cert_path: Path, key_path: Path, *, name: str = "silson24-relay-01"
    ) -> None:
        """A client certificate the relay would present to an agent's public port."""
        key, cert = pki.make_cert(self.client_ca_key, self.client_ca, name, client=True)
        pki.write_certs(cert_path, cert)
        pki.write_key(key_path, key)

    def prepare_installation(
        self,
        directory: Path,
        *,
        institution_code: str = "99000001",
        institution_type: str = "clinic",
        listen: str = "127.0.0.1:8443",
        admin: str = "127.0.0.1:0",
    ) -> Path:
        """An installation as ``init`` leaves it without dev certificates (cli.md §4), holding this
        relay's pinned bundle and ``relay.url``; returns the ``agent.toml`` path (ready for
        ``enroll``). Call after ``start()``."""
        if not self.base_url:
            raise RuntimeError("start the simulator first")
        directory = Path(directory)
        for sub in ("inbox", "data", "logs", "tls"):
            (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory / "tls", 0o700)
        generate_keys(directory / "keys")
        pki.write_certs(directory / "tls" / "relay-server-ca.crt", self.root)
        toml = directory / "agent.toml"
        toml.write_text(
            _CONFIG.format(
                code=institution_code, kind=institution_type, listen=listen, admin=admin, url=self.base_url
            ),
            encoding="utf-8",
        )
        os.chmod(toml, 0o600)
        return toml

    def last_heartbeat(self) -> dict[str, Any] | None:
        with self._lock:
            return self.heartbeats[-1] if self.heartbeats else None

    # -- request handling (called from handler threads) --------------------------------------------
    def handle(
        self, method: str, path: str, body: bytes, peer_der: bytes | None
    ) -> tuple[int, dict[str, Any]]:
        try:
            if method != "POST":
                raise _Problem(405, "method-not-allowed", "method not allowed")
            if path == "/v1/enrollments":
                return self._enroll(self._json(body))
            match = _AGENT_PATH.match(path)
            if not match:
                raise _Problem(404, "not-found", "not found")
            agent_id, what = match.groups()
            agent = self._authenticate(agent_id, peer_der)
            data = self._json(body)
            if what == "heartbeats":
                return self._heartbeat(agent, data)
            if what == "certificates":
                return self._renew(agent, data)
            return self._signing_key(agent, data)
        except _Problem as problem:
            return problem.status, {
                "type": f"https://relay.sim.invalid/problems/{problem.kind}",
                "title": problem.title,
                "status": problem.status,
            }

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError:
            raise _Problem(400, "malformed-json", "body is not JSON") from None
        if not isinstance(value, dict):
            raise _Problem(400, "malformed-json", "body is not a JSON object")
        return value

    def _authenticate(self, agent_id: str, peer_der: bytes | None) -> dict[str, Any]:
        if not peer_der:
            raise _Problem(401, "client-certificate-required", "client certificate required")
        cert = x509.load_der_x509_certificate(peer_der)
        with self._lock:
            agent = self.agents.get(agent_id)
            if agent is None or _spki(cert.public_key()) not in agent["spki"]:
                raise _Problem(403, "forbidden", "certificate not registered for this agent")
            return agent

    def _take_failure(self) -> None:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise _Problem(self.fail_status, "unavailable", "temporarily unavailable")

    def _check_csr(self, pem: Any) -> x509.CertificateSigningRequest:
        if not isinstance(pem, str):
            raise _Problem(422, "invalid-csr", "server_csr_pem missing")
        try:
            csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        except ValueError:
            raise _Problem(400, "invalid-csr", "server_csr_pem is not a PKCS#10 request") from None
        if not csr.is_signature_valid:
            raise _Problem(422, "invalid-csr", "CSR signature does not verify")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise _Problem(422, "invalid-csr", "CSR key is not ECDSA P-256")
        return csr

    def _issue(
        self, mode: str, csr: x509.CertificateSigningRequest, cn: str, host: str
    ) -> tuple[str, x509.Certificate]:
        public_key = csr.public_key()
        if mode == "wrong_key":
            public_key = pki.new_key().public_key()
        if mode == "wrong_san":
            host = "somewhere-else.invalid"
        days = 20 if mode == "short_validity" else self.cert_days
        if mode == "bad_chain":
            leaf = _leaf(self.rogue_key, self.rogue_ca, public_key, cn, host, days=days)
            return _pem(leaf, self.rogue_ca), leaf
        leaf = _leaf(self.issuing_key, self.issuing_ca, public_key, cn, host, days=days)
        return _pem(leaf, self.issuing_ca), leaf

    def _enroll(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.enrollments.append(data)
        self._take_failure()
        if self.enrollment_status is not None:
            raise _Problem(self.enrollment_status, "refused", "enrollment refused")
        missing = ENROLL_MEMBERS - set(data)
        unknown = set(data) - ENROLL_MEMBERS
        if missing or unknown:
            raise _Problem(422, "invalid-request", "members missing or unknown")
        token = data["enrollment_token"]
        code = data["institution_code"]
        endpoint = data["endpoint"]
        if not isinstance(token, str) or not isinstance(code, str) or not re.fullmatch(r"[0-9]{8}", code):
            raise _Problem(422, "invalid-request", "bad token or institution code")
        if (
            not isinstance(endpoint, dict)
            or not isinstance(endpoint.get("host"), str)
            or not isinstance(endpoint.get("port"), int)
            or not 0 <= endpoint["port"] < 65536
        ):
            raise _Problem(422, "invalid-request", "bad endpoint")
        csr = self._check_csr(data["server_csr_pem"])
        try:
            signing_public = serialization.load_pem_public_key(
                str(data["signing_public_key_pem"]).encode("ascii")
            )
        except ValueError:
            raise _Problem(422, "invalid-key", "signing_public_key_pem is not a public key") from None
        if (
            not isinstance(signing_public, ec.EllipticCurvePublicKey)
            or signing_public.curve.name != "secp256r1"
        ):
            raise _Problem(422, "invalid-key", "signing key is not ECDSA P-256")
        kid = kid_of(signing_public)
        message = f"{ENROLL_PROOF_PREFIX}{code}\n{token}\n{kid}".encode()
        if not isinstance(data["signing_key_proof"], str) or not verify_es256(
            signing_public, message, data["signing_key_proof"]
        ):
            raise _Problem(422, "invalid-proof", "signing_key_proof does not verify")
        request_id = hashlib.sha256((token + "\n" + data["server_csr_pem"]).encode()).hexdigest()
        with self._lock:
            entry = self.tokens.get(token)
            if entry is None or entry["expires"] < time.time():
                raise _Problem(401, "invalid-token", "enrollment token unknown or expired")
            if entry["used_by"] is not None:
                if entry["used_by"] == request_id and entry["response"] is not None:
                    return 201, entry["response"]  # idempotent repeat (same token, same CSR)
                raise _Problem(401, "invalid-token", "enrollment token already used")
            if entry["institution_code"] not in (None, code):
                raise _Problem(401, "invalid-token", "enrollment token is for another institution")
            if code in self.enrolled_institutions:
                raise _Problem(409, "already-enrolled", "institution already enrolled")
            mode = self.enrollment_mode
            agent_id = "agt_" + _crockford(26)
            cert_pem, leaf = self._issue(mode, csr, code, endpoint["host"])
            client_ca_pem = _pem(self.client_ca)
            if mode == "client_ca_has_issuer":
                client_ca_pem = _pem(self.client_ca, self.issuing_ca)
            response = {
                "agent_id": agent_id,
                "server_certificate_pem": cert_pem,
                "client_ca_pem": client_ca_pem,
                "relay_server_ca_pem": _pem(self.root),
                "relay_ids": list(self.relay_ids),
                "signing_key_id": "0" * 64 if mode == "wrong_kid" else kid,
                "heartbeat_url": f"{self.base_url}/v1/agents/{agent_id}/heartbeats",
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "server_time": _rfc3339(dt.datetime.now(dt.UTC)),
            }
            entry["used_by"] = request_id
            entry["response"] = response
            self.enrolled_institutions.add(code)
            self.agents[agent_id] = {
                "agent_id": agent_id,
                "institution_code": code,
                "endpoint": dict(endpoint),
                "spki": {_spki(leaf.public_key())},
                "kids": [kid],
                "signing_keys": {kid: signing_public},
            }
            return 201, response

    def _heartbeat(self, agent: dict[str, Any], data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.heartbeats.append(data)
            self.heartbeat_times.append(time.monotonic())
            if self.heartbeat_down:
                raise _Problem(503, "unavailable", "relay down")
            if self.heartbeat_status >= 300:
                raise _Problem(self.heartbeat_status, "error", "heartbeat refused")
            now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.server_time_offset_s)
            body: dict[str, Any] = {"server_time": _rfc3339(now)}
            if self.next_interval_s is not None:
                body["next_interval_s"] = self.next_interval_s
            body.update(self.heartbeat_extra)
            return self.heartbeat_status, body

    def _renew(self, agent: dict[str, Any], data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.renewals.append(data)
            if self.renewal_status is not None:
                raise _Problem(self.renewal_status, "refused", "renewal refused")
        self._take_failure()
        if set(data) != {"sent_at", "server_csr_pem"}:
            raise _Problem(422, "invalid-request", "members missing or unknown")
        csr = self._check_csr(data["server_csr_pem"])
        with self._lock:
            cert_pem, leaf = self._issue(
                self.renewal_mode, csr, agent["institution_code"], agent["endpoint"]["host"]
            )
            agent["spki"].add(_spki(leaf.public_key()))
        return 201, {"server_certificate_pem": cert_pem}

    def _signing_key(self, agent: dict[str, Any], data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Signing-key rotation: the endorsement by the current key is checked strictly; the
        proof of the new key is recorded (``proof_verified``) because §10 does not fix its message."""
        self._take_failure()
        expected = {
            "sent_at",
            "signing_public_key_pem",
            "signing_key_proof",
            "previous_kid",
            "previous_key_endorsement",
        }
        if set(data) != expected:
            raise _Problem(422, "invalid-request", "members missing or unknown")
        try:
            new_public = serialization.load_pem_public_key(
                str(data["signing_public_key_pem"]).encode("ascii")
            )
        except ValueError:
            raise _Problem(422, "invalid-key", "signing_public_key_pem is not a public key") from None
        if not isinstance(new_public, ec.EllipticCurvePublicKey):
            raise _Problem(422, "invalid-key", "signing key is not ECDSA")
        new_kid = kid_of(new_public)
        message = f"{ROTATE_PREFIX}{agent['agent_id']}\n{new_kid}".encode()
        with self._lock:
            previous = agent["signing_keys"].get(data["previous_kid"])
            if previous is None or data["previous_kid"] != agent["kids"][-1]:
                raise _Problem(409, "unknown-previous-key", "previous_kid is not the current key")
            if not verify_es256(previous, message, str(data["previous_key_endorsement"])):
                raise _Problem(422, "invalid-endorsement", "previous_key_endorsement does not verify")
            agent["signing_keys"][new_kid] = new_public
            agent["kids"].append(new_kid)
            self.signing_keys.append(
                {
                    **data,
                    "kid": new_kid,
                    "proof_verified": verify_es256(new_public, message, str(data["signing_key_proof"])),
                }
            )
        return 201, {"signing_key_id": new_kid}


class _TLSServer(ThreadingHTTPServer):
    """TLS per connection, with the handshake done in the handler thread (a slow client never
    blocks the accept loop)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:  # refused handshakes are normal
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "relay-sim"
    sys_version = ""
    sim: RelaySimulator

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        self._dispatch("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        peer = self.request.getpeercert(binary_form=True)
        path = self.path.split("?", 1)[0]
        status, payload = self.sim.handle(method, path, body, peer)
        with self.sim._lock:
            self.sim.requests.append((method, path, status))
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        ctype = "application/json" if status < 400 else "application/problem+json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # request lines would carry nothing useful
        return


__all__ = ["MODES", "RelaySimulator", "new_token"]
