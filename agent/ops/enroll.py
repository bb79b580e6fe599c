"""Enrollment with the relay and certificate renewal (relay-api.md §10, security.md §5, §7).

``enroll(config, token=...)`` runs the §10 flow exactly:

1. a new ECDSA P-256 TLS key and a PKCS#10 CSR (``CN=<institution_code>``, SAN = the endpoint
   host), plus the document-signing key of ``init`` (made here when absent) and its proof of
   possession; new private keys go to a staging folder under ``data_dir/tmp`` (0700/0600) first;
2. ``POST {URL}/v1/enrollments`` with ``requests``: ``verify=`` the pinned bundle
   (``relay.server_ca``; never the system store), connect 5 s / total 30 s, network errors and
   5xx retried after 2, 4 and 8 s with the same body;
3. the ``201`` answer is checked before anything is installed (certificate key = CSR key; chain
   to a CA of ``relay_server_ca_pem`` or the pinned bundle; SAN covers the endpoint host; valid now
   and ≥ 30 more days; ``signing_key_id`` = local ``kid``; ``client_ca_pem`` does not contain the
   issuer — or any other CA — of the new certificate's chain);
4. ``admin.enroll`` is audited (fail closed: no audit, nothing installed), then every file is
   renamed into place from staging (fsync file, rename, fsync directory) and the agent state goes
   into the store kv: ``enrollment`` (agent id, relay ids, heartbeat URL/interval, endpoint, relay
   URL) and ``relay_ids`` (the JSON list the relay API checks ``relay_id`` against).

Any failure leaves no key, certificate or state behind: the staging folder is wiped and files
already renamed are put back as they were. The token is never logged, stored, printed or put in
an exception message; only the request body carries it.

The endpoint the relay dials: the CLI has only ``--relay`` and ``--token``, so the host is the
``api.listen`` address when that is a specific address, else the machine's fully qualified host
name; the port is the ``api.listen`` port. Callers that know better (``provision``) pass
``endpoint="host:port"``.

``renew_if_due(config, store, keyring, clock)`` is the daily C-38 job: with ≤ 30 days left on
``api.server_cert`` it sends a new CSR to ``POST {URL}/v1/agents/{agent_id}/certificates`` over
mutual TLS and installs the answer with the same checks; the caller then calls
``RelayServer.reload_tls()`` so new connections get the new certificate.

``relay_post`` is the one outbound HTTP call of the agent (also used by the heartbeat).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from agent import API_REVISION, __version__
from agent.clock import Clock, SystemClock, parse_utc, utc_iso
from agent.config import Config, parse_listen
from agent.errors import AgentError, AuditUnavailableError, ConfigError, UnavailableError, UsageError
from agent.fsutil import atomic_write, ensure_dir, fsync_dir, write_new
from agent.keys import SIGNING_FILE, load_keyring, load_signing_key, private_key_pem, write_signing_key
from agent.signing import kid_of, public_pem, sign_es256

log = logging.getLogger("agent.enroll")

PROOF_PREFIX = "silson-agent-enroll-v1\n"
STATE_KEY = "enrollment"  # store kv: the agent state of §10 step 4 (JSON object)
RELAY_IDS_KEY = "relay_ids"  # store kv: JSON list read by the relay API (handlers: relay_id check)
CONNECT_TIMEOUT = 5.0
ENROLL_TOTAL_TIMEOUT = 30.0
RETRY_DELAYS = (2.0, 4.0, 8.0)
MIN_REMAINING = dt.timedelta(days=30)  # a new certificate must be valid this much longer
RENEW_WHEN_LEFT = dt.timedelta(days=30)  # renew with this much left (or less)
MAX_RESPONSE_BYTES = 1 << 20
_TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,512}\Z")  # printable ASCII, no spaces
_SAFE_WORD = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}
CERT_MODE = 0o600  # security.md §10: every file the agent creates is 0600, certificates too


# -- outbound HTTP ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RelayResponse:
    status: int
    body: Any  # parsed JSON, or None when the body was empty or not JSON


class RelayProtocolError(Exception):
    """The relay answered something that is not an acceptable HTTP/JSON response."""


def relay_post(
    url: str,
    body: Mapping[str, Any],
    *,
    verify: Path,
    cert: tuple[Path, Path] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    total_timeout: float = ENROLL_TOTAL_TIMEOUT,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> RelayResponse:
    """POST JSON to the relay; raises ``requests.RequestException`` / ``RelayProtocolError``.

    ``verify`` is the pinned bundle (never the system store: requests then loads only that file);
    ``cert`` the client certificate chain and key for mutual TLS. ``requests`` has no total
    timeout, so the body is streamed and the deadline checked between chunks. Redirects are not
    followed (a body carrying a token is never re-sent elsewhere).
    """
    deadline = time.monotonic() + total_timeout
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with requests.Session() as session:
        session.trust_env = False  # no netrc, no REQUESTS_CA_BUNDLE; proxies are taken explicitly below
        proxies = requests.utils.get_environ_proxies(url)
        response = session.post(
            url,
            data=data,
            verify=str(verify),
            cert=(str(cert[0]), str(cert[1])) if cert else None,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"silson-agent/{__version__}",
            },
            timeout=(connect_timeout, total_timeout),
            stream=True,
            allow_redirects=False,
            proxies=proxies,
        )
        with response:
            chunks, size = [], 0
            for chunk in response.iter_content(16384):
                size += len(chunk)
                if size > max_bytes:
                    raise RelayProtocolError("response too large")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise requests.Timeout("total timeout exceeded")
            if time.monotonic() > deadline:
                raise requests.Timeout("total timeout exceeded")
            raw = b"".join(chunks)
    parsed: Any = None
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
    return RelayResponse(response.status_code, parsed)


# -- pieces of the request -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}


def endpoint_for(config: Config, override: str | None = None, *, hostname: str | None = None) -> Endpoint:
    """The host and port the relay will dial (see the module docstring for the choice)."""
    listen_host, listen_port = parse_listen(config.api.listen)
    if override:
        override = override.strip()
        try:
            ipaddress.ip_address(override.strip("[]"))
            return Endpoint(override.strip("[]").lower(), listen_port)  # an address without a port
        except ValueError:
            pass
        try:
            host, port = parse_listen(override)
        except ValueError:
            host, port = override, listen_port
        return Endpoint(host.lower(), port)
    if listen_host not in _WILDCARD_HOSTS:
        return Endpoint(listen_host.lower(), listen_port)
    name = hostname or socket.getfqdn() or socket.gethostname()
    if name in ("localhost", "localhost.localdomain") or not name:
        name = socket.gethostname()
    return Endpoint(name.lower().rstrip("."), listen_port)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def build_csr(
    key: ec.EllipticCurvePrivateKey, institution_code: str, host: str
) -> x509.CertificateSigningRequest:
    """PKCS#10: ``CN=<institution_code>``, SAN = the endpoint host (DNS name or IP address)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, institution_code)]))
        .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def enrollment_proof(
    signing_key: ec.EllipticCurvePrivateKey, institution_code: str, token: str, kid: str
) -> str:
    """ES256 over ``"silson-agent-enroll-v1\\n" + code + "\\n" + token + "\\n" + kid`` (§10 step 2)."""
    return sign_es256(signing_key, f"{PROOF_PREFIX}{institution_code}\n{token}\n{kid}".encode())


def enrollment_state(store: Any) -> dict[str, Any] | None:
    """The agent state written at enrollment (``None`` when not enrolled)."""
    raw = store.kv_get(STATE_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- checks of the relay's answer -----------------------------------------------------------------------
def _load_certs(pem: Any, what: str) -> list[x509.Certificate]:
    if not isinstance(pem, str | bytes) or not pem:
        raise UnavailableError(f"the relay's answer has no {what}; nothing was installed")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii") if isinstance(pem, str) else pem)
    except ValueError:
        raise UnavailableError(
            f"the relay's {what} is not a PEM certificate list; nothing was installed"
        ) from None
    return certs


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER,  # type: ignore[no-any-return]
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _same_ca(a: x509.Certificate, b: x509.Certificate) -> bool:
    """Same issuer identity: same subject and same key (a re-issued CA certificate counts)."""
    return a.subject == b.subject and _spki(a.public_key()) == _spki(b.public_key())


def check_certificate(
    chain: list[x509.Certificate],
    *,
    csr_key: ec.EllipticCurvePrivateKey,
    trust: list[x509.Certificate],
    host: str,
    now: dt.datetime,
    client_cas: list[x509.Certificate],
) -> list[x509.Certificate]:
    """§10 step 4 checks of a newly issued certificate; returns the verified chain (leaf first).

    Raises ``UnavailableError`` (exit 5) with a plain-words reason.
    """
    if not chain:
        raise UnavailableError("the relay returned no server certificate; nothing was installed")
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(csr_key.public_key()):
        raise UnavailableError(
            "the certificate from the relay is not for the key this agent generated; nothing was installed"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    wanted = _general_name(host)
    if san is None or not _san_covers(san, wanted):
        raise UnavailableError(
            f"the certificate from the relay does not name this server ({host}) in its "
            "subject alternative names; nothing was installed"
        )
    if leaf.not_valid_before_utc > now or leaf.not_valid_after_utc <= now:
        raise UnavailableError(
            "the certificate from the relay is not valid now (check this machine's clock); "
            "nothing was installed"
        )
    if leaf.not_valid_after_utc - now < MIN_REMAINING:
        raise UnavailableError(
            "the certificate from the relay is valid for less than 30 more days; nothing was installed"
        )
    if not trust:
        raise UnavailableError("no relay CA to verify the certificate against; nothing was installed")
    subject: verification.Subject = wanted  # type: ignore[assignment]
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(trust))
            .time(now)
            .build_server_verifier(subject)
        )
        verified = verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise UnavailableError(
            "the certificate from the relay does not chain to the pinned relay CA bundle "
            f"({_short(str(exc))}); nothing was installed"
        ) from None
    for ca in verified[1:]:
        if any(_same_ca(ca, c) for c in client_cas):
            raise UnavailableError(
                "the relay's client CA bundle contains the issuer of this agent's own "
                "certificate: any enrolled agent could then call this one as if it were "
                "the relay (relay-api.md §10); nothing was installed"
            )
    return list(verified)


def _san_covers(san: x509.SubjectAlternativeName, wanted: x509.GeneralName) -> bool:
    if isinstance(wanted, x509.IPAddress):
        return wanted.value in san.get_values_for_type(x509.IPAddress)
    host = str(wanted.value).lower()
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower()
        if name == host or (name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]):
            return True
    return False


def _short(text: str) -> str:
    return text.replace("\n", " ")[:200]


# -- staging and installation ---------------------------------------------------------------------------
class _Staging:
    """``data_dir/tmp/enroll-<random>/`` (0700): new files are written here first (0600), then
    renamed into place. The folder is always wiped at the end, whatever happened."""

    def __init__(self, data_dir: Path) -> None:
        tmp = ensure_dir(data_dir / "tmp")
        self.dir = tmp / f"enroll-{secrets.token_hex(8)}"
        self.dir.mkdir(mode=0o700)
        self.planned: list[tuple[Path, Path, int]] = []  # (staged, target, final mode)
        self._previous: list[tuple[Path, bytes | None, int | None]] = []  # what install() replaced

    def add(self, target: Path, data: bytes, mode: int) -> None:
        staged = self.dir / f"{len(self.planned):02d}.{secrets.token_hex(4)}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.planned.append((staged, target, mode))

    def wipe(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def install(self) -> None:
        """Rename every staged file into place; on any failure put back what was there."""
        self._previous = []
        try:
            for staged, target, mode in self.planned:
                old: bytes | None = None
                old_mode: int | None = None
                if target.exists():
                    old = target.read_bytes()
                    old_mode = target.stat().st_mode & 0o777
                self._previous.append((target, old, old_mode))
                ensure_dir(target.parent)
                os.chmod(staged, mode)
                try:
                    os.replace(staged, target)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    atomic_write(target, staged.read_bytes(), mode)  # data_dir on another file system
                fsync_dir(target.parent)
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Put every file touched by ``install`` back as it was (absent files are removed)."""
        for target, old, old_mode in reversed(self._previous):
            with contextlib.suppress(OSError):
                if old is None:
                    target.unlink(missing_ok=True)
                    fsync_dir(target.parent)
                else:
                    atomic_write(target, old, old_mode if old_mode is not None else 0o600)
        self._previous = []


# -- enrollment ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EnrollResult:
    agent_id: str
    relay_ids: list[str]
    heartbeat_url: str
    heartbeat_interval_s: int | None
    signing_key_id: str
    endpoint: Endpoint
    certificate_expires_at: str
    clock_skew_s: int | None  # relay server_time minus local time, when the relay sent it
    created_signing_key: bool


def read_token(value: str, stdin: Any) -> str:
    """``--token TOKEN`` or ``--token -`` (first line of standard input)."""
    token = stdin.readline().strip() if value == "-" else value.strip()
    if not token:
        raise UsageError("enroll: no enrollment token given (use --token TOKEN or --token - and type it)")
    if not _TOKEN_RE.match(token):
        raise UsageError(
            "enroll: the enrollment token is not in the expected form (printable characters, "
            "no spaces); check what the relay operator gave you"
        )
    return token


def _relay_base(url: str | None) -> str:
    if not url:
        raise UsageError("enroll: no relay URL: give --relay URL or set relay.url in agent.toml")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError("enroll: the relay URL must start with https:// and name a host")
    return url.rstrip("/")


def _pinned_bundle(config: Config) -> tuple[Path, list[x509.Certificate]]:
    path = Path(config.relay.server_ca)
    if not path.is_file():
        raise ConfigError(
            f"the pinned relay CA bundle {path} (relay.server_ca) is missing; copy the relay "
            "program's CA bundle there before enrolling"
        )
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise ConfigError(
            f"the pinned relay CA bundle {path} (relay.server_ca) is not PEM certificates"
        ) from None
    return path, certs


def _explain_status(status: int, body: Any) -> str:
    kind = ""
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        last = body["type"].rstrip("/").rsplit("/", 1)[-1]
        if _SAFE_WORD.match(last):
            kind = f", {last}"
    if status in (400, 422):
        return (
            f"the relay refused the enrollment request as invalid (HTTP {status}{kind}): the certificate "
            "request or the signing-key proof was not accepted"
        )
    if status == 401:
        return (
            f"the relay did not accept the enrollment token (HTTP 401{kind}): it is unknown, already used "
            "or expired; ask the relay operator for a new one"
        )
    if status == 409:
        return (
            f"the relay says this institution is already enrolled (HTTP 409{kind}); ask the relay operator "
            "to reset the enrollment before enrolling again"
        )
    return f"the relay refused enrollment (HTTP {status}{kind})"


def _post_with_retries(
    url: str, body: Mapping[str, Any], *, verify: Path, sleep: Callable[[float], None]
) -> RelayResponse:
    """Network errors and 5xx are retried 3 times (after 2, 4, 8 s) with the same body (§10)."""
    host = urlsplit(url).hostname
    last = ""
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            sleep(RETRY_DELAYS[attempt - 1])
        try:
            response = relay_post(url, body, verify=verify, total_timeout=ENROLL_TOTAL_TIMEOUT)
        except requests.exceptions.SSLError:
            # Not transient: the relay's certificate does not verify against the pinned bundle.
            raise UnavailableError(
                f"the relay at {host} could not be verified against the pinned CA bundle "
                f"{verify} (TLS handshake failed); nothing was installed"
            ) from None
        except (requests.RequestException, RelayProtocolError) as exc:
            last = type(exc).__name__
            log.info("enrollment request failed", extra={"attempt": attempt + 1, "error_class": last})
            continue
        if response.status >= 500:
            last = f"HTTP {response.status}"
            log.info("enrollment request failed", extra={"attempt": attempt + 1, "status": response.status})
            continue
        return response
    raise UnavailableError(
        f"the relay at {host} is unreachable or failing ({last}) after "
        f"{len(RETRY_DELAYS) + 1} attempts; nothing was installed"
    )


def _string(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UnavailableError(f"the relay's enrollment answer lacks {key}; nothing was installed")
    return value


def enroll(
    config: Config,
    *,
    token: str,
    relay_url: str | None = None,
    clock: Clock | None = None,
    endpoint: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    environ: Mapping[str, str] | None = None,
) -> EnrollResult:
    """Enroll this installation (relay-api.md §10). Raises ``AgentError`` (exit 4/5) on failure,
    leaving no key, certificate or state behind."""
    from agent.adminctx import audit_admin
    from agent.audit import AuditLog

    clock = clock or SystemClock()
    base = _relay_base(relay_url or config.relay.url)
    code = str(config.agent.institution_code)
    pinned_path, pinned = _pinned_bundle(config)
    keyring = load_keyring(config.keys_dir)  # permission checks; exit 4 before any network call
    where = endpoint_for(config, endpoint)
    # Fail closed: an enrollment that cannot be audited does not start (security.md §7.3).
    audit = AuditLog.open(config)
    try:
        if not audit.healthy():
            raise AuditUnavailableError(
                f"the audit log in {config.data_dir} cannot be written; enrollment not started"
            )
        staging = _Staging(config.data_dir)
        try:
            return _enroll_staged(
                config,
                staging,
                audit,
                audit_admin,
                token=token,
                base=base,
                code=code,
                pinned_path=pinned_path,
                pinned=pinned,
                keyring=keyring,
                where=where,
                clock=clock,
                sleep=sleep,
                environ=environ,
            )
        finally:
            staging.wipe()
    finally:
        audit.close()


def _enroll_staged(
    config: Config,
    staging: _Staging,
    audit: Any,
    audit_admin: Any,
    *,
    token: str,
    base: str,
    code: str,
    pinned_path: Path,
    pinned: list[x509.Certificate],
    keyring: Any,
    where: Endpoint,
    clock: Clock,
    sleep: Callable[[float], None],
    environ: Mapping[str, str] | None,
) -> EnrollResult:
    def refuse(result: str, reason: str, error: AgentError) -> AgentError:
        with contextlib.suppress(AgentError):
            audit_admin(
                config,
                "enroll",
                result=result,
                reason=reason,
                log=audit,
                environ=environ,
                extra={"relay_host": urlsplit(base).hostname},
            )
        return error

    # 1. keys and CSR (private keys stay on this machine).
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(tls_key, code, where.host)
    signing_key = keyring.signing_key
    created_signing = signing_key is None
    if signing_key is None:
        signing_key = ec.generate_private_key(ec.SECP256R1())
    kid = kid_of(signing_key.public_key())
    staging.add(Path(config.api.server_key), private_key_pem(tls_key), 0o600)
    if created_signing:
        staging.add(config.keys_dir / SIGNING_FILE, private_key_pem(signing_key), 0o600)

    # 2. the request (the token travels only in this body).
    body = {
        "enrollment_token": token,
        "institution_code": code,
        "institution_type": str(config.agent.institution_type),
        "agent_version": __version__,
        "api_revision": API_REVISION,
        "endpoint": where.as_json(),
        "server_csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "signing_public_key_pem": public_pem(signing_key.public_key()),
        "signing_key_proof": enrollment_proof(signing_key, code, token, kid),
    }
    try:
        response = _post_with_retries(f"{base}/v1/enrollments", body, verify=pinned_path, sleep=sleep)
    except UnavailableError as exc:
        raise refuse("error", "relay_unreachable", exc) from None
    if response.status not in (200, 201):
        raise refuse(
            "denied",
            f"relay_http_{response.status}",
            UnavailableError(_explain_status(response.status, response.body) + "; nothing was installed"),
        )
    answer = response.body
    if not isinstance(answer, dict):
        raise refuse(
            "error",
            "bad_answer",
            UnavailableError("the relay's enrollment answer is not a JSON object; nothing was installed"),
        )

    # 3. check everything before installing anything.
    now = clock.now()
    try:
        agent_id = _string(answer, "agent_id")
        heartbeat_url = _string(answer, "heartbeat_url")
        if urlsplit(heartbeat_url).scheme != "https":
            raise UnavailableError("the relay's heartbeat_url is not https; nothing was installed")
        relay_ids = answer.get("relay_ids")
        if (
            not isinstance(relay_ids, list)
            or not relay_ids
            or not all(isinstance(r, str) and r for r in relay_ids)
        ):
            raise UnavailableError(
                "the relay's enrollment answer has no relay_ids list; nothing was installed"
            )
        if answer.get("signing_key_id") != kid:
            raise UnavailableError(
                "the relay registered a different signing key id than this agent's key "
                f"({kid}); nothing was installed"
            )
        chain = _load_certs(answer.get("server_certificate_pem"), "server certificate")
        client_cas = _load_certs(answer.get("client_ca_pem"), "client CA bundle")
        relay_cas = _load_certs(answer.get("relay_server_ca_pem"), "relay server CA bundle")
        verified = check_certificate(
            chain, csr_key=tls_key, trust=relay_cas + pinned, host=where.host, now=now, client_cas=client_cas
        )
    except UnavailableError as exc:
        raise refuse("denied", "answer_rejected", exc) from None
    interval = answer.get("heartbeat_interval_s")
    interval = interval if isinstance(interval, int) and not isinstance(interval, bool) else None
    server_time = parse_utc(answer.get("server_time"))
    skew = int((server_time - now).total_seconds()) if server_time else None

    leaf = verified[0]
    staging.add(Path(config.api.server_cert), pki_pem(chain), CERT_MODE)
    staging.add(Path(config.api.client_ca), pki_pem(client_cas), CERT_MODE)
    staging.add(Path(config.relay.server_ca), pki_pem(relay_cas), CERT_MODE)
    state = {
        "agent_id": agent_id,
        "relay_ids": list(relay_ids),
        "heartbeat_url": heartbeat_url,
        "heartbeat_interval_s": interval,
        "relay_url": base,
        "endpoint": where.as_json(),
        "signing_key_id": kid,
        "enrolled_at": utc_iso(now, millis=False),
        "certificate_sha256": leaf.fingerprint(hashes.SHA256()).hex(),
    }

    # 4./5. audit first (fail closed), then install, then the state.
    audit_admin(
        config,
        "enroll",
        log=audit,
        environ=environ,
        extra={
            "agent_id": agent_id,
            "relay_ids": list(relay_ids),
            "signing_key_id": kid,
            "relay_host": urlsplit(base).hostname,
            "cert_sha256": state["certificate_sha256"],
            "endpoint": where.as_json(),
        },
    )
    try:
        _install_with_state(config, staging, state)
    except Exception as exc:
        detail = exc.message if isinstance(exc, AgentError) else type(exc).__name__
        raise refuse(
            "error",
            "install_failed",
            UnavailableError(
                f"enrollment was accepted by the relay but could not be installed ({detail}); nothing was "
                "installed — ask the relay operator to reset the enrollment and run enroll again"
            ),
        ) from None
    log.info("enrolled", extra={"agent_id": agent_id, "kid": kid})
    return EnrollResult(
        agent_id=agent_id,
        relay_ids=list(relay_ids),
        heartbeat_url=heartbeat_url,
        heartbeat_interval_s=interval,
        signing_key_id=kid,
        endpoint=where,
        certificate_expires_at=utc_iso(leaf.not_valid_after_utc, millis=False),
        clock_skew_s=skew,
        created_signing_key=created_signing,
    )


def pki_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _install_with_state(config: Config, staging: _Staging, state: dict[str, Any]) -> None:
    from agent.store import Store

    staging.install()
    try:
        store = Store.open(config)
        try:
            store.kv_set(RELAY_IDS_KEY, json.dumps(state["relay_ids"]))
            store.kv_set(STATE_KEY, json.dumps(state, sort_keys=True))
        finally:
            store.close()
    except BaseException:
        staging.rollback()
        raise


# -- renewal (C-38) --------------------------------------------------------------------------------------
ROTATE_PREFIX = "silson-agent-rotate-v1\n"


def rotation_endorsement(previous: ec.EllipticCurvePrivateKey, agent_id: str, new_kid: str) -> str:
    """ES256 by the current key over ``"silson-agent-rotate-v1\\n" + agent_id + "\\n" + new_kid`` (§10)."""
    return sign_es256(previous, f"{ROTATE_PREFIX}{agent_id}\n{new_kid}".encode())


def announce_signing_key(
    config: Config,
    store: Any,
    previous: ec.EllipticCurvePrivateKey,
    new: ec.EllipticCurvePrivateKey,
    clock: Clock | None = None,
) -> bool:
    """Register a new document-signing key with the relay before it is used (relay-api.md §10).

    Returns False when the installation is not enrolled (the relay learns the key at enrollment).
    A relay that is unreachable or does not answer ``201`` with the new ``kid`` raises
    ``UnavailableError``: the caller then keeps signing with the current key. The proof of
    possession (§10 leaves its message open for a rotation) is an ES256 signature by the new key
    over the same message as the endorsement.
    """
    clock = clock or SystemClock()
    state = enrollment_state(store)
    if state is None:
        return False
    base = (config.relay.url or state.get("relay_url") or "").rstrip("/")
    if not base:
        return False
    agent_id = str(state["agent_id"])
    previous_kid, new_kid = kid_of(previous.public_key()), kid_of(new.public_key())
    message = f"{ROTATE_PREFIX}{agent_id}\n{new_kid}".encode()
    body = {
        "sent_at": utc_iso(clock.now(), millis=False),
        "signing_public_key_pem": public_pem(new.public_key()),
        "signing_key_proof": sign_es256(new, message),
        "previous_kid": previous_kid,
        "previous_key_endorsement": rotation_endorsement(previous, agent_id, new_kid),
    }
    pinned_path, _ = _pinned_bundle(config)
    cert = (Path(config.api.server_cert), Path(config.api.server_key))
    try:
        response = relay_post(
            f"{base}/v1/agents/{agent_id}/signing-keys",
            body,
            verify=pinned_path,
            cert=cert,
            total_timeout=ENROLL_TOTAL_TIMEOUT,
        )
    except (requests.RequestException, RelayProtocolError) as exc:
        raise UnavailableError(
            f"signing key rotation: relay unreachable ({type(exc).__name__}); the current key stays in use"
        ) from None
    if response.status != 201 or not isinstance(response.body, dict):
        raise UnavailableError(
            f"signing key rotation refused by the relay (HTTP {response.status}); the current key stays in use"
        )
    if response.body.get("signing_key_id", new_kid) != new_kid:
        raise UnavailableError(
            "the relay registered a different signing key id; the current key stays in use"
        )
    return True


SIGNING_ROTATE_EVERY = dt.timedelta(days=365)  # relay-api.md §10: "automatically every 365 days"


def rotate_signing_key(
    config: Config,
    store: Any,
    *,
    before: Callable[[str, str], None] | None = None,
    clock: Clock | None = None,
) -> tuple[str, str, bool]:
    """``keys rotate-signing`` (and the yearly job): returns (old kid, new kid, announced).

    ``before(old_kid, new_kid)`` runs first (the audit record: fail closed). The new key is
    registered with the relay (``announce_signing_key``) and only after its ``201`` installed:
    the old private key is kept as ``keys/signing-<kid16>.retired.key`` (removed 30 days later by
    the purge job), its public key as ``signing-<kid16>.pub.pem``, and ``keys/signing.key`` is
    replaced atomically. A refusing or unreachable relay raises ``UnavailableError`` with every
    file unchanged."""
    keys_dir = Path(config.keys_dir)
    path = keys_dir / SIGNING_FILE
    old = load_signing_key(path)
    old_kid = kid_of(old.public_key())
    new = ec.generate_private_key(ec.SECP256R1())
    new_kid = kid_of(new.public_key())
    if before is not None:
        before(old_kid, new_kid)
    announced = announce_signing_key(config, store, old, new, clock)
    retired = keys_dir / f"signing-{old_kid[:16]}.retired.key"
    if not retired.exists():
        write_new(retired, private_key_pem(old), 0o600)
    atomic_write(keys_dir / f"signing-{old_kid[:16]}.pub.pem", public_pem(old.public_key()).encode(), 0o600)
    write_signing_key(path, new, replace=True)
    os.chmod(path, 0o600)
    return old_kid, new_kid, announced


def signing_rotation_due(config: Config, now: dt.datetime) -> bool:
    """The signing key is older than 365 days (its file's mtime: set when it was installed)."""
    try:
        mtime = (Path(config.keys_dir) / SIGNING_FILE).stat().st_mtime
    except OSError:
        return False
    return now.timestamp() - mtime >= SIGNING_ROTATE_EVERY.total_seconds()


def renew_if_due(
    config: Config, store: Any, keyring: Any, clock: Clock | None = None, *, force: bool = False
) -> bool:
    """Renew ``api.server_cert`` through the relay when it has ≤ 30 days left; True when renewed.

    Not enrolled or no relay URL → False (nothing to do). A refused or failed renewal raises
    ``UnavailableError`` (the daily job logs and counts it; there are 30 days to succeed). The
    caller reloads the listener (``RelayServer.reload_tls()``) after a True.
    """
    clock = clock or SystemClock()
    state = enrollment_state(store)
    if state is None:
        return False
    base = (config.relay.url or state.get("relay_url") or "").rstrip("/")
    if not base:
        return False
    cert_path, key_path = Path(config.api.server_cert), Path(config.api.server_key)
    now = clock.now()
    try:
        current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        current = None
    if current is not None and not force and current.not_valid_after_utc - now > RENEW_WHEN_LEFT:
        return False
    code = str(config.agent.institution_code)
    host = str((state.get("endpoint") or {}).get("host") or endpoint_for(config).host)
    pinned_path, pinned = _pinned_bundle(config)
    try:
        client_cas = x509.load_pem_x509_certificates(Path(config.api.client_ca).read_bytes())
    except (OSError, ValueError):
        client_cas = []
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(new_key, code, host)
    body = {
        "sent_at": utc_iso(now, millis=False),
        "server_csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    url = f"{base}/v1/agents/{state['agent_id']}/certificates"
    try:
        response = relay_post(
            url, body, verify=pinned_path, cert=(cert_path, key_path), total_timeout=ENROLL_TOTAL_TIMEOUT
        )
    except (requests.RequestException, RelayProtocolError) as exc:
        raise UnavailableError(f"certificate renewal: relay unreachable ({type(exc).__name__})") from None
    if response.status not in (200, 201) or not isinstance(response.body, dict):
        raise UnavailableError(f"certificate renewal refused by the relay (HTTP {response.status})")
    chain = _load_certs(response.body.get("server_certificate_pem"), "server certificate")
    verified = check_certificate(
        chain, csr_key=new_key, trust=pinned, host=host, now=now, client_cas=client_cas
    )
    staging = _Staging(config.data_dir)
    try:
        staging.add(key_path, private_key_pem(new_key), 0o600)
        staging.add(cert_path, pki_pem(chain), CERT_MODE)
        staging.install()
    finally:
        staging.wipe()
    state["certificate_sha256"] = verified[0].fingerprint(hashes.SHA256()).hex()
    state["renewed_at"] = utc_iso(now, millis=False)
    with contextlib.suppress(Exception):  # the certificate is live; the note is informational
        store.kv_set(STATE_KEY, json.dumps(state, sort_keys=True))
    log.info(
        "server certificate renewed",
        extra={"expires_at": utc_iso(verified[0].not_valid_after_utc, millis=False)},
    )
    return True


__all__ = [
    "EnrollResult",
    "Endpoint",
    "RELAY_IDS_KEY",
    "RelayProtocolError",
    "RelayResponse",
    "STATE_KEY",
    "build_csr",
    "check_certificate",
    "endpoint_for",
    "enroll",
    "enrollment_proof",
    "enrollment_state",
    "read_token",
    "relay_post",
    "renew_if_due",
]
