"""Shared black-box machinery for the relay-api / security conformance tests (no tests in here).

Everything talks to a REAL agent process started with ``python -m agent run`` over real TLS on
127.0.0.1. The installation is made with ``python -m agent init --dir D --dev-certs``; the test
replaces ``tls/relay-ca.crt`` by a bundle holding its own relay-client CA (so it can issue as many
client certificates as it likes) plus the dev relay CA of ``init``.

Imported by the ``test_relay_*`` / ``test_security_*`` modules through ``load_support()`` below
(works whether or not ``tests/conformance`` is a package).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "spec"
EXAMPLES = SPEC / "examples"
PY = sys.executable
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
KST = dt.timezone(dt.timedelta(hours=9))
PROBLEM_PREFIX = "urn:silson-agent:problem:"

# relay-api.md §7.1 — name: (status, title)
PROBLEM_TABLE: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Malformed request body"),
    "relay-not-allowed": (403, "Relay is not allowed"),
    "claim-not-bound": (403, "No search binds this claim"),
    "not-found": (404, "No such resource"),
    "document-not-found": (404, "Document not available"),
    "method-not-allowed": (405, "Method not allowed"),
    "replay-detected": (409, "Request id already used"),
    "claim-conflict": (409, "Claim is bound to another subject or consent"),
    "payload-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-failed": (422, "Request body does not match the schema"),
    "clock-skew": (422, "Request timestamp outside the accepted window"),
    "too-many-documents": (422, "Too many documents requested"),
    "too-many-results": (422, "Search matches too many documents"),
    "response-too-large": (422, "Response would be too large"),
    "rate-limited": (429, "Too many requests"),
    "internal-error": (500, "Internal error"),
    "overloaded": (503, "Agent is busy"),
    "audit-unavailable": (503, "Audit log unavailable"),
    "storage-unavailable": (503, "Document store unavailable"),
}

# --------------------------------------------------------------------------------------------------
# Synthetic patients and documents
# --------------------------------------------------------------------------------------------------
A_NAME, A_RRN = "홍길동", "9001011000001"  # the spec fixture (900101-1000001)
A_NAME2 = "홍길순"  # same RRN, other name (name changed)
B_NAME, B_RRN = "김영희", "8505052000002"
E_NAME, E_RRN = "이취소", "8808081000008"  # cancelled between search and fetch
G_NAME, G_RRN = "정대량", "7707071000007"  # 1,001 documents (C-19)
H_NAME, H_RRN = "박형식", "6606061000006"  # FHIR / misc
M_NAME, M_RRN = "최가명", "9202022000009"  # only rrn_masked documents (own patient)
L_NAME, L_RRN = "MÜLLER STRASSE", "7001015000003"  # Latin name (casefold), foreigner number
ALL_NAMES = [A_NAME, A_NAME2, B_NAME, E_NAME, G_NAME, H_NAME, M_NAME, L_NAME]
ALL_RRNS = [A_RRN, B_RRN, E_RRN, G_RRN, H_RRN, M_RRN, L_RRN]
MARCH = ("2025-03-01", "2025-03-31")


def hyph(rrn13: str) -> str:
    return rrn13[:6] + "-" + rrn13[6:]


def phi_strings(names: Iterable[str] = ALL_NAMES, rrns: Iterable[str] = ALL_RRNS) -> list[str]:
    """security.md §12 "fixture PHI": names, RRNs (13 digits, hyphenated) and the masked forms."""
    out = list(names)
    for r in rrns:
        out += [r, hyph(r), r[:7] + "******", r[:6] + "-" + r[6] + "******"]
    return out


def example(doc_type: str) -> dict[str, Any]:
    doc = json.loads((EXAMPLES / f"{doc_type}.json").read_text(encoding="utf-8"))
    for key in AGENT_FIELDS:
        doc.pop(key, None)
    return doc


def make_doc(
    doc_type: str,
    document_no: str,
    *,
    name: str,
    rrn: str | None = None,
    rrn_masked: str | None = None,
    issued_on: str = "2025-03-14",
    care: tuple[str, str] | None = None,
    version: int = 1,
    status: str = "active",
) -> dict[str, Any]:
    doc = copy.deepcopy(example(doc_type))
    doc["document_no"] = document_no
    doc["version"] = version
    doc["status"] = status
    if version > 1:
        doc["revision_reason"] = "correction"
    if status == "cancelled":
        doc["revision_reason"] = "cancellation"
        doc["cancel_reason"] = "전액환불"
    patient = doc["patient"]
    patient["name"] = name
    patient.pop("rrn", None)
    patient.pop("rrn_masked", None)
    if rrn:
        patient["rrn"] = rrn
    if rrn_masked:
        patient["rrn_masked"] = rrn_masked
    doc["issued_on"] = issued_on
    if "issued_at" in doc:
        doc["issued_at"] = issued_on + doc["issued_at"][10:]
    if doc_type in ("receipt", "receipt_detail"):
        start, end = care or (issued_on, issued_on)
        doc["care_period"] = {"start": start, "end": end}
        if doc_type == "receipt_detail":
            doc["receipt_no"] = document_no
            for line in doc.get("lines", []):
                if "date" in line:
                    line["date"] = start
    if doc_type == "pharmacy_receipt":
        doc["dispensed_on"] = issued_on
    return doc


def main_documents() -> list[dict[str, Any]]:
    """The corpus of the shared agent. Keys (ykiho, type, document_no) are referred to by tests."""
    d: list[dict[str, Any]] = []
    # patient A, March 2025
    d.append(make_doc("receipt", "202503-000123", name=A_NAME, rrn=A_RRN))
    d.append(make_doc("receipt_detail", "202503-000123", name=A_NAME, rrn=A_RRN))
    d.append(make_doc("prescription", "20250314-00017", name=A_NAME, rrn=A_RRN))
    d.append(make_doc("pharmacy_receipt", "P202503-000042", name=A_NAME, rrn=A_RRN))
    # care period reaching into March although... issued in March; overlaps at 03-01
    d.append(
        make_doc(
            "receipt",
            "202503-000200",
            name=A_NAME,
            rrn=A_RRN,
            issued_on="2025-03-05",
            care=("2025-02-20", "2025-03-01"),
        )
    )
    # issued in March but care period entirely in February: NOT a March document (care period rules)
    d.append(
        make_doc(
            "receipt",
            "202503-000201",
            name=A_NAME,
            rrn=A_RRN,
            issued_on="2025-03-03",
            care=("2025-02-20", "2025-02-28"),
        )
    )
    # February document
    d.append(make_doc("receipt", "202502-000300", name=A_NAME, rrn=A_RRN, issued_on="2025-02-10"))
    # corrected: version 2 is current
    d.append(make_doc("receipt", "202503-000400", name=A_NAME, rrn=A_RRN, issued_on="2025-03-20"))
    d.append(make_doc("receipt", "202503-000400", name=A_NAME, rrn=A_RRN, issued_on="2025-03-20", version=2))
    # cancelled: version 2 cancelled, never listed
    d.append(make_doc("receipt", "202503-000500", name=A_NAME, rrn=A_RRN, issued_on="2025-03-21"))
    d.append(
        make_doc(
            "receipt",
            "202503-000500",
            name=A_NAME,
            rrn=A_RRN,
            issued_on="2025-03-21",
            version=2,
            status="cancelled",
        )
    )
    # cancelled, then re-activated: version 3 is current and active
    d.append(make_doc("receipt", "202503-000510", name=A_NAME, rrn=A_RRN, issued_on="2025-03-23"))
    d.append(
        make_doc(
            "receipt",
            "202503-000510",
            name=A_NAME,
            rrn=A_RRN,
            issued_on="2025-03-23",
            version=2,
            status="cancelled",
        )
    )
    d.append(make_doc("receipt", "202503-000510", name=A_NAME, rrn=A_RRN, issued_on="2025-03-23", version=3))
    # same RRN, other recorded name: withheld from a 홍길동 search
    d.append(make_doc("receipt", "202503-000600", name=A_NAME2, rrn=A_RRN, issued_on="2025-03-22"))
    # masked RRN only: rrn_prefix
    d.append(
        make_doc(
            "receipt", "202503-000700", name=A_NAME, rrn_masked=A_RRN[:7] + "******", issued_on="2025-03-25"
        )
    )
    # no RRN at all: never listed
    d.append(make_doc("receipt", "202503-000800", name=A_NAME, issued_on="2025-03-26"))
    # patient B
    d.append(make_doc("receipt", "202503-001000", name=B_NAME, rrn=B_RRN, issued_on="2025-03-14"))
    d.append(make_doc("prescription", "20250314-00099", name=B_NAME, rrn=B_RRN, issued_on="2025-03-14"))
    # patient E: cancelled between search and fetch by the tombstone test
    d.append(make_doc("receipt", "202503-002000", name=E_NAME, rrn=E_RRN, issued_on="2025-03-10"))
    # patient L: Latin name
    d.append(make_doc("receipt", "202503-003000", name=L_NAME, rrn=L_RRN, issued_on="2025-03-11"))
    # patient M: masked RRN only
    d.append(
        make_doc(
            "receipt", "202503-004000", name=M_NAME, rrn_masked=M_RRN[:7] + "******", issued_on="2025-03-12"
        )
    )
    # patient H: one of each type for FHIR
    d.append(make_doc("receipt", "202504-000010", name=H_NAME, rrn=H_RRN, issued_on="2025-04-02"))
    d.append(make_doc("receipt_detail", "202504-000010", name=H_NAME, rrn=H_RRN, issued_on="2025-04-02"))
    d.append(make_doc("prescription", "20250402-00005", name=H_NAME, rrn=H_RRN, issued_on="2025-04-02"))
    d.append(make_doc("pharmacy_receipt", "P202504-000007", name=H_NAME, rrn=H_RRN, issued_on="2025-04-02"))
    return d


# what a 홍길동 / 900101-1000001 search over March 2025 must list (document_type, document_no, version)
A_MARCH_EXPECTED = {
    ("receipt", "202503-000123", 1),
    ("receipt_detail", "202503-000123", 1),
    ("prescription", "20250314-00017", 1),
    ("pharmacy_receipt", "P202503-000042", 1),
    ("receipt", "202503-000200", 1),
    ("receipt", "202503-000400", 2),
    ("receipt", "202503-000700", 1),
    ("receipt", "202503-000510", 3),
}


def bulk_documents(n: int = 1001) -> list[dict[str, Any]]:
    """n receipts for patient G: one per day from 2020-01-01 (C-19)."""
    start = dt.date(2020, 1, 1)
    out = []
    for i in range(n):
        day = (start + dt.timedelta(days=i)).isoformat()
        out.append(make_doc("receipt", f"BULK-{i:06d}", name=G_NAME, rrn=G_RRN, issued_on=day))
    return out


def write_export(inbox: Path, name: str, docs: Sequence[dict[str, Any]], *, jsonl: bool = False) -> Path:
    """Write then rename (exports.md §1): the file is read at once."""
    final = inbox / name
    tmp = inbox / (name + ".tmp")
    if jsonl:
        data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in docs)
    else:
        data = json.dumps(list(docs), ensure_ascii=False)
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, cn),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "conformance"),
        ]
    )


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca_key: Any,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    key: Any = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    self_signed: bool = False,
) -> tuple[Any, x509.Certificate]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=365)
    issuer = _name(cn) if self_signed else ca_cert.subject
    signer = key if self_signed else ca_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if not self_signed:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    return key, builder.sign(signer, hashes.SHA256())


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spki_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()


def write_pair(directory: Path, stem: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
    c.write_bytes(cert_pem(cert))
    k.write_bytes(key_pem(key))
    os.chmod(k, 0o600)
    return c, k


# --------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------
def utc_z(moment: dt.datetime | None = None, *, offset_s: float = 0) -> str:
    moment = (moment or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=offset_s)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_claim() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12].upper()
    return {"claim_no": f"CLM-T-{tag}", "consent_id": f"CNS-T-{tag}"}


def search_body(
    name: str = A_NAME,
    rrn: str = hyph(A_RRN),
    *,
    claim: dict[str, str] | None = None,
    period: tuple[str, str] = MARCH,
    types: list[str] | None = None,
    request_id: str | None = None,
    sent_at: str | None = None,
    relay_id: str = "silson24-relay-01",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id or str(uuid.uuid4()),
        "sent_at": sent_at or utc_z(),
        "relay_id": relay_id,
        "claim": dict(claim or new_claim()),
        "patient": {"name": name, "rrn": rrn},
        "period": {"from": period[0], "to": period[1]},
    }
    if types is not None:
        body["document_types"] = types
    return body


def fetch_body(
    claim: dict[str, str],
    ids: list[str],
    *,
    fmt: str | None = None,
    request_id: str | None = None,
    sent_at: str | None = None,
    relay_id: str = "silson24-relay-01",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id or str(uuid.uuid4()),
        "sent_at": sent_at or utc_z(),
        "relay_id": relay_id,
        "claim": dict(claim),
        "document_ids": list(ids),
    }
    if fmt is not None:
        body["format"] = fmt
    return body


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_es256(public_key: ec.EllipticCurvePublicKey, data: bytes, value: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    raw = b64url_decode(value)
    if len(raw) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(has_float(v) for v in value)
    return False


def strict_json(raw: bytes) -> Any:
    """json.loads that keeps floats detectable (a parsed float stays float)."""
    return json.loads(raw.decode("utf-8"))


# --------------------------------------------------------------------------------------------------
# The agent process
# --------------------------------------------------------------------------------------------------
class AgentProcess:
    """One installation in ``root`` and (while running) its ``python -m agent run`` process."""

    def __init__(
        self,
        root: Path,
        *,
        limits: dict[str, Any] | None = None,
        api: dict[str, Any] | None = None,
        clock_file: Path | None = None,
        extra_toml: str = "",
        prelude: str = "",
    ) -> None:
        self.root = root
        self.config = root / "agent.toml"
        self.tls = root / "tls"
        self.data = root / "data"
        self.logs = root / "logs"
        self.inbox = root / "inbox"
        self.certs = root / "test-certs"
        self.clock_file = clock_file
        self.prelude = prelude
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_lines: list[str] = []
        self.api_port = 0
        self.admin_port = 0
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._sessions: dict[tuple[str, str], requests.Session] = {}
        r = subprocess.run(
            [PY, "-m", "agent", "init", "--dir", str(root), "--dev-certs"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        self._edit_config(limits or {}, api or {}, extra_toml)
        # our own relay-client CA, bundled with the dev relay CA of init
        self.ca_key, self.ca_cert = make_ca("conformance relay-client CA")
        dev_relay_ca = (self.tls / "relay-ca.crt").read_bytes()
        (self.tls / "relay-ca.crt").write_bytes(dev_relay_ca + cert_pem(self.ca_cert))
        self.client_cert, self.client_key, self.client_x509 = self.issue_client("silson24-relay-01")
        self.server_ca = self.tls / "dev-ca.crt"

    # -- set-up ---------------------------------------------------------------------------------
    def _edit_config(self, limits: dict[str, Any], api: dict[str, Any], extra: str) -> None:
        text = self.config.read_text(encoding="utf-8")
        text = re.sub(r'(?m)^listen = "0\.0\.0\.0:8443"', 'listen = "127.0.0.1:0"', text)
        text = re.sub(r'(?m)^listen = "127\.0\.0\.1:8780"', 'listen = "127.0.0.1:0"', text)
        if api:
            lines = "".join(f"{k} = {toml_value(v)}\n" for k, v in api.items())
            text = text.replace(
                'client_ca = "tls/relay-ca.crt"\n', 'client_ca = "tls/relay-ca.crt"\n' + lines
            )
        if limits:
            text += "\n[api.limits]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in limits.items())
        text += extra
        self.config.write_text(text, encoding="utf-8")

    def set_api_option(self, key: str, value: Any) -> None:
        text = self.config.read_text(encoding="utf-8")
        text = re.sub(rf"(?m)^{re.escape(key)} = .*\n", "", text)
        text = text.replace(
            'client_ca = "tls/relay-ca.crt"\n',
            f'client_ca = "tls/relay-ca.crt"\n{key} = {toml_value(value)}\n',
        )
        self.config.write_text(text, encoding="utf-8")

    def issue_client(self, cn: str, **kwargs: Any) -> tuple[Path, Path, x509.Certificate]:
        key, cert = make_leaf(self.ca_key, self.ca_cert, cn, **kwargs)
        stem = f"{cn}-{uuid.uuid4().hex[:8]}"
        c, k = write_pair(self.certs, stem, key, cert)
        return c, k, cert

    # -- process --------------------------------------------------------------------------------
    def command(self) -> list[str]:
        if self.clock_file is None and not self.prelude:
            return [PY, "-m", "agent", "run", "--config", str(self.config)]
        if self.clock_file is None:
            return [
                PY,
                "-c",
                self.prelude + "\nimport sys\nfrom agent.cli import main\n"
                f"sys.exit(main(['run', '--config', {str(self.config)!r}]))\n",
            ]
        # A fake clock for the real process: SystemClock.now() adds the offset (seconds) found in
        # clock_file, read at every call (relay-api.md C-20 "fake clock", security.md S-15).
        code = (
            "import sys, datetime as dt\n"
            "from pathlib import Path\n"
            "import agent.clock as c\n"
            f"_f = Path({str(self.clock_file)!r})\n"
            "def _now(self):\n"
            "    try:\n"
            "        off = float(_f.read_text() or 0)\n"
            "    except (OSError, ValueError):\n"
            "        off = 0.0\n"
            "    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=off)\n"
            "c.SystemClock.now = _now\n"
            "from agent.cli import main\n"
            f"sys.exit(main(['run', '--config', {str(self.config)!r}]))\n"
        )
        return [PY, "-c", code]

    def start(self, timeout: float = 40.0, expect_ready: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self._ready.clear()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
        self._reader.start()
        if not expect_ready:
            return
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError("agent did not become ready:\n" + "\n".join(self.stderr_lines[-30:]))

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_lines.append(line)
            m = re.search(r"ready: api=(\S+) admin=(\S+)", line)
            if m:
                self.api_port = int(m.group(1).rsplit(":", 1)[1])
                self.admin_port = int(m.group(2).rsplit(":", 1)[1])
                self._ready.set()

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return rc

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_sessions()

    def close(self) -> None:
        self.stop()
        self._close_sessions()

    def _close_sessions(self) -> None:
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()

    # -- CLI ------------------------------------------------------------------------------------
    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "agent", *args, "--config", str(self.config)],
            cwd=REPO,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def wait_ingest(self, min_records: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            ing = st["ingest"]
            left = [p for p in self.inbox.iterdir() if not p.name.endswith(".tmp")]
            if (
                ing.get("files_pending", 0) == 0
                and ing.get("records_committed", 0) >= min_records
                and not left
            ):
                return st
            time.sleep(0.3)
        raise AssertionError(f"ingest did not finish: {st.get('ingest')}")

    def public_key(self) -> tuple[ec.EllipticCurvePublicKey, str, str]:
        r = self.cli("keys", "public")
        assert r.returncode == 0, r.stderr
        pem = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", r.stdout, re.S)
        assert pem, r.stdout
        key = serialization.load_pem_public_key(pem.group(0).encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key, r.stdout, pem.group(0)

    # -- HTTP -----------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"https://localhost:{self.api_port}"

    @property
    def admin_base(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def session(self, cert: tuple[Path, Path] | None = None) -> requests.Session:
        c, k = cert or (self.client_cert, self.client_key)
        s = requests.Session()
        s.trust_env = False
        s.cert = (str(c), str(k))
        s.verify = str(self.server_ca)
        return s

    def _shared(self, cert: tuple[Path, Path] | None) -> requests.Session:
        c, k = cert or (self.client_cert, self.client_key)
        key = (str(c), str(k))
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = self.session((c, k))
        return s

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        cert: tuple[Path, Path] | None = None,
        timeout: float = 30,
    ) -> requests.Response:
        hdrs = {"Content-Type": "application/json"}
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
        if data is None:
            hdrs = {}
        hdrs.update(headers or {})
        s = self.session(cert)  # fresh session each time: thread-safe under concurrent use
        try:
            return s.request(method, self.base + path, data=data, headers=hdrs, timeout=timeout)
        finally:
            s.close()

    def search(self, body: dict[str, Any], **kw: Any) -> requests.Response:
        return self.request("POST", "/v1/documents/search", json_body=body, **kw)

    def fetch(self, body: dict[str, Any], **kw: Any) -> requests.Response:
        return self.request("POST", "/v1/documents/fetch", json_body=body, **kw)

    def health(self, **kw: Any) -> requests.Response:
        return self.request("GET", "/v1/health", **kw)

    def search_ok(self, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A search that must succeed; returns (claim, response json)."""
        claim = kw.pop("claim", None) or new_claim()
        r = self.search(search_body(claim=claim, **kw))
        assert r.status_code == 200, r.text
        return claim, r.json()

    # -- TLS ------------------------------------------------------------------------------------
    def client_context(
        self,
        cert: tuple[Path, Path] | None = None,
        *,
        use_default_cert: bool = True,
        version: ssl.TLSVersion | None = None,
        ciphers: str | None = None,
        max_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.server_ca)
        if cert is not None:
            ctx.load_cert_chain(*cert)
        elif use_default_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        if version is not None:
            ctx.minimum_version = version
            ctx.maximum_version = version
        if max_version is not None:
            ctx.maximum_version = max_version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        return ctx

    def raw_exchange(
        self,
        ctx: ssl.SSLContext,
        request: bytes = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        timeout: float = 5.0,
    ) -> tuple[bool, bytes]:
        """(handshake completed on the client side, every byte received before EOF/error/timeout)."""
        return raw_exchange(("127.0.0.1", self.api_port), ctx, request, timeout)

    def head_only(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """Send only a request head (announcing a body that never comes) and read the answer:
        (status, lower-case headers, parsed JSON body or {})."""
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        _, data = self.raw_exchange(self.client_context(), head.encode("latin-1"), timeout=8)
        raw_head, _, body = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        assert lines and lines[0].startswith("HTTP/1.1 "), data[:200]
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        return status, hdrs, json.loads(body) if body else {}

    # -- audit ----------------------------------------------------------------------------------
    def audit_records(self) -> list[dict[str, Any]]:
        db = self.data / "audit.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT record FROM records ORDER BY seq").fetchall()
        finally:
            conn.close()
        return [json.loads(r[0]) for r in rows]

    def audit_for(self, request_id: str, wait: float = 3.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait
        while True:
            found = [r for r in self.audit_records() if r.get("request_id") == request_id]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def log_text(self) -> str:
        parts = []
        for p in sorted(self.logs.rglob("*")):
            if p.is_file():
                parts.append(p.read_bytes().decode("utf-8", "replace"))
        return "\n".join(parts) + "\n" + "\n".join(self.stderr_lines)

    def metrics(self) -> str:
        r = requests.get(self.admin_base + "/metrics", timeout=10)
        assert r.status_code == 200
        return r.text


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: an agent never outlives a test process that was killed hard."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


_SHARED: dict[str, AgentProcess] = {}


def shared_agent(tmp_path_factory: Any) -> AgentProcess:
    """One functional agent per test process (corpus + 1,001 bulk documents, rate limits off), shared by
    the modules that only read. Stopped at interpreter exit."""
    agent = _SHARED.get("main")
    if agent is not None and agent.proc is not None and agent.proc.poll() is None:
        return agent
    import atexit

    root = tmp_path_factory.mktemp("shared") / "inst"
    agent = AgentProcess(root, limits={"rate_per_s": 0, "health_rate_per_s": 0})
    docs = main_documents()
    write_export(agent.inbox, "corpus.json", docs)
    write_export(agent.inbox, "bulk.jsonl", bulk_documents(1001), jsonl=True)
    agent.start()
    atexit.register(agent.close)
    agent.wait_ingest(len(docs) + 1001, timeout=120)
    _SHARED["main"] = agent
    return agent


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def raw_exchange(
    address: tuple[str, int], ctx: ssl.SSLContext, request: bytes, timeout: float = 5.0
) -> tuple[bool, bytes]:
    raw = socket.create_connection(address, timeout=timeout)
    try:
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            return False, b""
        received = b""
        try:
            tls.sendall(request)
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass
        return True, received
    finally:
        raw.close()


def start_main_agent(root: Path, **kw: Any) -> tuple[AgentProcess, dict[str, str]]:
    """The shared functional agent: rate limits off, main corpus ingested. Returns (agent, ids by key)."""
    agent = AgentProcess(root, limits={"rate_per_s": 0, "health_rate_per_s": 0}, **kw)
    docs = main_documents()
    write_export(agent.inbox, "corpus.json", docs)
    agent.start()
    agent.wait_ingest(len(docs))
    return agent, {}


def doc_ids_by_key(
    agent: AgentProcess, claim_searches: Sequence[dict[str, Any]]
) -> dict[tuple[str, str], str]:
    out = {}
    for body in claim_searches:
        r = agent.search(body)
        assert r.status_code == 200, r.text
        for d in r.json()["documents"]:
            out[(d["type"], d["document_no"])] = d["id"]
    return out


def load_support() -> Any:
    return sys.modules[__name__]
