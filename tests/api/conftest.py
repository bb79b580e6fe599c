"""Fixtures for the relay API tests: certificates made on the spot, a real Store and AuditLog in
tmp_path, and a RelayServer on 127.0.0.1:0. All patient data is synthetic (spec examples with
invented names/RRNs)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import pki
from agent.api.relaysim import RelayClient
from agent.api.server import RelayServer
from agent.audit import AuditLog
from agent.clock import Clock, SystemClock
from agent.config import Config, build_config
from agent.documents.canonical import canonical_form, content_hash
from agent.keys import generate_keys, load_keyring
from agent.store import FileFingerprint, Store, StoreRecord

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "spec" / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
PATIENT_RRN = "900101-1000001"
PATIENT_NAME = "홍길동"
OTHER_RRN = "850505-2000002"
OTHER_NAME = "김영희"


@dataclasses.dataclass
class Certs:
    dir: Path
    relay_ca: Path
    server_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client: Any  # x509 cert
    relay_ca_key: Any
    relay_ca_cert: Any

    def issue_client(self, name: str, **kwargs: Any) -> tuple[Path, Path, Any]:
        """Another client certificate from the relay CA (kwargs as ``pki.make_cert``)."""
        kwargs.setdefault("client", True)
        key, cert = pki.make_cert(self.relay_ca_key, self.relay_ca_cert, name, **kwargs)
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        pki.write_certs(cert_path, cert)
        pki.write_key(key_path, key)
        return cert_path, key_path, cert


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    server_ca_key, server_ca = pki.make_ca("test server CA")
    server_key, server = pki.make_cert(
        server_ca_key, server_ca, "99000001", dns=["localhost"], ips=["127.0.0.1"], server=True
    )
    relay_ca_key, relay_ca = pki.make_ca("test relay-client CA")
    client_key, client = pki.make_cert(relay_ca_key, relay_ca, "silson24-relay-01", client=True)
    pki.write_certs(directory / "server-ca.crt", server_ca)
    pki.write_certs(directory / "server.crt", server, server_ca)
    pki.write_key(directory / "server.key", server_key)
    pki.write_certs(directory / "relay-ca.crt", relay_ca)
    pki.write_certs(directory / "client.crt", client)
    pki.write_key(directory / "client.key", client_key)
    return Certs(
        directory,
        directory / "relay-ca.crt",
        directory / "server-ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
        client,
        relay_ca_key,
        relay_ca,
    )


def make_config(
    root: Path, certs: Certs, *, limits: dict[str, Any] | None = None, api: dict[str, Any] | None = None
) -> Config:
    raw: dict[str, Any] = {
        "agent": {
            "institution_code": "99000001",
            "data_dir": str(root / "data"),
            "log_dir": str(root / "logs"),
        },
        "api": {
            "listen": "127.0.0.1:0",
            "server_cert": str(certs.server_cert),
            "server_key": str(certs.server_key),
            "client_ca": str(certs.relay_ca),
            **(api or {}),
        },
        "admin": {"listen": "127.0.0.1:0"},
    }
    raw["api"]["limits"] = dict(limits or {})
    return build_config(raw, None, root)


def example(doc_type: str) -> dict[str, Any]:
    doc = json.loads((EXAMPLES / f"{doc_type}.json").read_text(encoding="utf-8"))
    for key in AGENT_FIELDS:
        doc.pop(key, None)
    return doc


def make_doc(
    doc_type: str,
    *,
    document_no: str | None = None,
    rrn: str = PATIENT_RRN,
    name: str = PATIENT_NAME,
    issued_on: str | None = None,
    version: int = 1,
    status: str = "active",
    masked: bool = False,
    no_rrn: bool = False,
) -> dict[str, Any]:
    doc = copy.deepcopy(example(doc_type))
    if document_no:
        doc["document_no"] = document_no
    doc["version"] = version
    doc["status"] = status
    if status == "cancelled":
        doc["cancel_reason"] = "환불"
    patient = doc["patient"]
    patient["name"] = name
    patient.pop("rrn", None)
    rrn13 = rrn.replace("-", "")
    if masked:
        patient["rrn_masked"] = rrn13[:7] + "******"
    elif not no_rrn:
        patient["rrn"] = rrn13
    if issued_on:
        doc["issued_on"] = issued_on
        doc.pop("issued_at", None)
        if isinstance(doc.get("care_period"), dict):
            doc["care_period"] = {"start": issued_on, "end": issued_on}
    return doc


_file_counter = [0]


def ingest(store: Store, *docs: dict[str, Any]) -> list[str]:
    """Commit documents through the store's own API (one synthetic file); returns their doc ids."""
    records = []
    for index, doc in enumerate(docs):
        canon = canonical_form(doc)
        records.append(StoreRecord(index, canon, content_hash(canon)))
    _file_counter[0] += 1
    payload = json.dumps(docs, ensure_ascii=False, sort_keys=True).encode() + str(_file_counter[0]).encode()
    fingerprint = FileFingerprint(
        path=f"/inbox/f{_file_counter[0]}.json",
        size=len(payload),
        mtime_ns=0,
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    outcome = store.commit_file(
        fingerprint, records, file_meta={"file_name": "export.json", "format": "json"}
    )
    assert outcome.outcome in ("accepted", "superseded"), outcome
    ids = []
    for doc in docs:
        doc_id = store.find_doc_id(doc["institution"]["ykiho"], doc["document_type"], doc["document_no"])
        assert doc_id
        ids.append(doc_id)
    return ids


@dataclasses.dataclass
class Agent:
    """A running RelayServer over a real Store and AuditLog."""

    root: Path
    certs: Certs
    config: Config
    store: Store
    audit: AuditLog
    keyring: Any
    server: RelayServer
    clock: Clock

    @property
    def base_url(self) -> str:
        host, port = self.server.address
        return f"https://{host}:{port}"

    def client(self, cert: Path | None = None, key: Path | None = None, **kwargs: Any) -> RelayClient:
        return RelayClient(
            self.base_url,
            cert or self.certs.client_cert,
            key or self.certs.client_key,
            self.certs.server_ca,
            **kwargs,
        )

    def audit_records(self) -> list[dict[str, Any]]:
        import sqlite3

        conn = sqlite3.connect(self.root / "data" / "audit.db")
        try:
            return [json.loads(r[0]) for r in conn.execute("SELECT record FROM records ORDER BY seq")]
        finally:
            conn.close()

    def relay_records(self) -> list[dict[str, Any]]:
        return [r for r in self.audit_records() if r.get("action", "").startswith("documents.")]

    def tls_context(self) -> ssl.SSLContext:
        """A client context presenting the default relay client certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.certs.server_ca)
        ctx.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        return ctx


def start_agent(
    root: Path,
    *,
    certs: Certs | None = None,
    limits: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    clock: Clock | None = None,
    **server_kwargs: Any,
) -> Agent:
    certs = certs or make_certs(root / "tls")
    config = make_config(root, certs, limits=limits, api=api)
    keys_dir = config.keys_dir
    if not (keys_dir / "kek-1.key").exists():
        generate_keys(keys_dir)
    keyring = load_keyring(keys_dir, require_signing=True)
    clock = clock or SystemClock()
    store = Store.open(config, keyring=keyring, clock=clock)
    audit = AuditLog.open(config, signer=keyring.signer, clock=clock)
    server = RelayServer(config, store=store, audit=audit, keyring=keyring, clock=clock, **server_kwargs)
    server.start()
    return Agent(root, certs, config, store, audit, keyring, server, clock)


def stop_agent(agent: Agent) -> None:
    agent.server.stop()
    agent.store.close()
    agent.audit.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    # Rate limits off by default so functional tests never trip them; the rate tests set them.
    a = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0})
    yield a
    stop_agent(a)


def search_body_defaults() -> dict[str, Any]:
    return {
        "claim_no": "CLM-20250314-000001",
        "consent_id": "CNS-20250314-0001",
        "name": PATIENT_NAME,
        "rrn": PATIENT_RRN,
        "period_from": "2025-03-01",
        "period_to": "2025-03-31",
    }


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
