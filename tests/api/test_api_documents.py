"""Search, claim binding, fetch, signatures, renderings and audit over the real TLS port and the
real Store/AuditLog (relay-api.md §6, §8; security.md §7; C-12, C-15–C-28, C-34, S-05, S-07,
S-11–S-16, S-18, S-22)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent import metrics
from agent.api.relaysim import now_rfc3339, verify_document
from agent.clock import FakeClock
from tests.api.conftest import (
    OTHER_NAME,
    OTHER_RRN,
    PATIENT_NAME,
    PATIENT_RRN,
    ingest,
    make_doc,
    start_agent,
    stop_agent,
)
from tests.api.test_api_requests import assert_problem

CLAIM = {"claim_no": "CLM-20250314-000001", "consent_id": "CNS-20250314-0001"}
PERIOD = {"period_from": "2025-03-01", "period_to": "2025-03-31"}
NO_LIMITS = {"rate_per_s": 0, "health_rate_per_s": 0}


def search(c, *, name: str = PATIENT_NAME, rrn: str = PATIENT_RRN, claim: dict[str, str] = CLAIM, **kw: Any):
    args = {**PERIOD, **kw}
    return c.search(claim_no=claim["claim_no"], consent_id=claim["consent_id"], name=name, rrn=rrn, **args)


def fetch(c, ids: list[str], *, claim: dict[str, str] = CLAIM, **kw: Any):
    return c.fetch(claim_no=claim["claim_no"], consent_id=claim["consent_id"], document_ids=ids, **kw)


def verify_raw(entry: dict[str, Any], public_key: ec.EllipticCurvePublicKey, content: bytes) -> bool:
    """ES256 r||s verification with ``cryptography`` directly (not agent.signing)."""
    raw = base64.urlsafe_b64decode(entry["signature"]["value"] + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public_key.verify(der, content, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@pytest.fixture
def patient_docs(agent) -> dict[str, str]:
    """The patient's four example documents plus decoys; returns name -> doc id."""
    ids = ingest(
        agent.store,
        make_doc("receipt"),
        make_doc("receipt_detail"),
        make_doc("prescription"),
        make_doc("pharmacy_receipt"),
        make_doc("receipt", document_no="R-OLD-1", issued_on="2025-01-10"),  # outside the period
        make_doc("receipt", document_no="R-MASKED", issued_on="2025-03-20", masked=True),
        make_doc("receipt", document_no="R-NORRN", issued_on="2025-03-21", no_rrn=True),
        make_doc("receipt", document_no="R-OTHER", rrn=OTHER_RRN, name=OTHER_NAME),
        make_doc("receipt", document_no="R-CANCEL", issued_on="2025-03-15"),
    )
    names = [
        "receipt",
        "receipt_detail",
        "prescription",
        "pharmacy_receipt",
        "old",
        "masked",
        "norrn",
        "other",
        "cancel",
    ]
    out = dict(zip(names, ids, strict=True))
    # R-CANCEL gets a cancellation as version 2: no longer listed.
    ingest(
        agent.store,
        make_doc("receipt", document_no="R-CANCEL", issued_on="2025-03-15", version=2, status="cancelled"),
    )
    return out


def test_search_lists_exactly_current_active_documents_in_period(agent, patient_docs) -> None:
    with agent.client() as c:
        resp = search(c)
    assert resp.status_code == 200
    body = resp.json()
    listed = {d["id"]: d for d in body["documents"]}
    expected = {
        patient_docs[k] for k in ("receipt", "receipt_detail", "prescription", "pharmacy_receipt", "masked")
    }
    assert set(listed) == expected and body["count"] == 5
    assert listed[patient_docs["masked"]]["identity_match"] == "rrn_prefix"
    assert listed[patient_docs["receipt"]]["identity_match"] == "rrn"
    keys = [(d["issued_on"], d["id"]) for d in body["documents"]]
    assert keys == sorted(keys)
    receipt = listed[patient_docs["receipt"]]
    assert receipt == {
        "id": patient_docs["receipt"],
        "type": "receipt",
        "document_no": "202503-000123",
        "version": 1,
        "issued_on": "2025-03-14",
        "care_period": {"start": "2025-03-14", "end": "2025-03-14"},
        "total_amount_krw": receipt["total_amount_krw"],
        "institution_code": "99000001",
        "identity_match": "rrn",
    }
    assert isinstance(receipt["total_amount_krw"], int)
    assert listed[patient_docs["prescription"]]["care_period"] is None
    assert listed[patient_docs["prescription"]]["total_amount_krw"] is None
    assert PATIENT_NAME not in resp.text and PATIENT_RRN.replace("-", "") not in resp.text
    with agent.client() as c:
        only = search(c, claim=CLAIM, document_types=["prescription"])
    assert [d["id"] for d in only.json()["documents"]] == [patient_docs["prescription"]]


@pytest.mark.parametrize(
    "variant",
    ["홍 길동", "홍길동 ", "홍\u3000길동", "\u1112\u1169\u11bc\u1100\u1175\u11af\u1103\u1169\u11bc"],
)
def test_name_variants_match(agent, patient_docs, variant: str) -> None:
    with agent.client() as c:
        assert search(c, name=variant).json()["count"] == 5


def test_name_mismatch_is_indistinguishable_from_unknown_rrn_and_audited(agent, patient_docs) -> None:
    before = metrics.NAME_MISMATCH._value.get()
    with agent.client() as c:
        mismatch = search(c, name="홍길순")
        unknown = search(c, rrn="850101-1999999", claim={"claim_no": "CLM-2", "consent_id": "CNS-2"})
    assert mismatch.status_code == unknown.status_code == 200
    strip = lambda b: {k: v for k, v in b.items() if k not in ("request_id", "generated_at", "claim_no")}  # noqa: E731
    assert (
        strip(mismatch.json())
        == strip(unknown.json())
        == {"institution_code": "99000001", "count": 0, "documents": []}
    )
    assert metrics.NAME_MISMATCH._value.get() == before + 1
    rec = [r for r in agent.relay_records() if r["request_id"] == mismatch.json()["request_id"]][0]
    assert rec["reason"] == "name_mismatch" and rec["withheld_count"] == 5 and rec["result_count"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", rec["subject_ref"])
    # S-11: the known id is not fetchable in that claim.
    with agent.client() as c:
        assert_problem(fetch(c, [patient_docs["receipt"]]), 404, "document-not-found")


def test_partial_name_mismatch_lists_only_matching_documents(agent) -> None:
    ids = ingest(agent.store, make_doc("receipt"), make_doc("prescription", name="홍길순"))
    with agent.client() as c:
        resp = search(c)
    assert [d["id"] for d in resp.json()["documents"]] == [ids[0]]
    rec = agent.relay_records()[-1]
    assert (
        rec["reason"] == "partial_name_mismatch" and rec["withheld_count"] == 1 and rec["result_count"] == 1
    )


def test_search_then_fetch_returns_signed_latest_documents_in_requested_order(agent, patient_docs) -> None:
    public_key = agent.keyring.signer.public_key
    with agent.client() as c:
        listed = [d["id"] for d in search(c).json()["documents"]]
        order = list(reversed(listed))
        resp = fetch(c, order)
    assert resp.status_code == 200
    body = resp.json()
    assert [d["id"] for d in body["documents"]] == order and body["count"] == len(order)
    assert body["format"] == "standard" and body["claim_no"] == CLAIM["claim_no"]
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for entry in body["documents"]:
        content = base64.b64decode(entry["content_base64"])
        assert entry["content_sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["media_type"] == "application/vnd.silson.document+json; version=1"
        assert entry["signature"]["alg"] == "ES256"
        assert entry["signature"]["kid"] == hashlib.sha256(spki).hexdigest()
        assert re.fullmatch(r"[A-Za-z0-9_-]{86}", entry["signature"]["value"])
        assert verify_raw(entry, public_key, content)
        flipped = bytearray(content)
        flipped[len(flipped) // 2] ^= 0x01
        assert not verify_raw(entry, public_key, bytes(flipped))
        assert verify_document(entry, public_key) == content
        doc = json.loads(content.decode("utf-8"))
        assert doc["version"] == entry["version"] and doc["document_type"] == entry["type"]
        assert "rrn" not in doc["patient"] and "source" not in doc
        if entry["id"] != patient_docs["masked"]:
            assert doc["patient"]["rrn_masked"] == "9001011******"
        assert content == json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    # Deterministic content between fetches; signatures differ but both verify.
    with agent.client() as c:
        again = fetch(c, order).json()
    assert [d["content_base64"] for d in again["documents"]] == [
        d["content_base64"] for d in body["documents"]
    ]


def test_fhir_format_is_a_document_bundle_without_rrn(agent, patient_docs) -> None:
    from fhir.resources.R4B.bundle import Bundle

    with agent.client() as c:
        ids = [d["id"] for d in search(c).json()["documents"]]
        resp = fetch(c, ids, format="fhir")
    assert resp.status_code == 200
    for entry in resp.json()["documents"]:
        assert entry["media_type"] == "application/fhir+json; fhirVersion=4.0"
        content = verify_document(entry, agent.keyring.signer.public_key)
        bundle = json.loads(content)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
        assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
        assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
        Bundle.model_validate(bundle)
        text = content.decode()
        assert "9001011000001" not in text and "900101-1000001" not in text


def test_cancelled_between_search_and_fetch_is_served_as_tombstone(agent) -> None:
    [doc_id] = ingest(agent.store, make_doc("receipt"))
    with agent.client() as c:
        assert search(c).json()["count"] == 1
        ingest(agent.store, make_doc("receipt", version=2, status="cancelled"))
        resp = fetch(c, [doc_id])
    assert resp.status_code == 200
    entry = resp.json()["documents"][0]
    content = verify_document(entry, agent.keyring.signer.public_key)
    doc = json.loads(content)
    assert doc["status"] == "cancelled" and doc["version"] == 2 and entry["version"] == 2
    assert "patient" not in doc and PATIENT_NAME not in content.decode()


def test_fetch_of_other_patients_id_or_unknown_id_is_404_with_same_body(agent, patient_docs) -> None:
    with agent.client() as c:
        ids = [d["id"] for d in search(c).json()["documents"]]
        other = fetch(c, ids[:1] + [patient_docs["other"]])
        missing = fetch(c, ids[:1] + ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    a, b = (
        assert_problem(other, 404, "document-not-found"),
        assert_problem(missing, 404, "document-not-found"),
    )
    a.pop("request_id"), b.pop("request_id")
    assert a == b
    assert "content_base64" not in other.text
    rec = [r for r in agent.relay_records() if r["request_id"] == other.json()["request_id"]][0]
    assert rec["result"] == "denied" and rec["document_ids"] == ids[:1] + [patient_docs["other"]]
    assert rec["problem_type"] == "urn:silson-agent:problem:document-not-found"


def test_fetch_without_search_or_with_other_consent_is_claim_not_bound(agent, patient_docs) -> None:
    with agent.client() as c:
        assert_problem(fetch(c, [patient_docs["receipt"]]), 403, "claim-not-bound")
        search(c)
        assert_problem(
            fetch(c, [patient_docs["receipt"]], claim={**CLAIM, "consent_id": "CNS-OTHER"}),
            403,
            "claim-not-bound",
        )
    assert agent.relay_records()[0]["result"] == "denied"


def test_second_search_for_another_rrn_is_claim_conflict_and_binding_survives(agent, patient_docs) -> None:
    agent.store.kv_set("relay_ids", json.dumps(["silson24-relay-01", "silson24-relay-02"]))
    with agent.client() as c:
        ids = [d["id"] for d in search(c).json()["documents"]]
        conflict = search(c, rrn=OTHER_RRN, name=OTHER_NAME)
        assert_problem(conflict, 409, "claim-conflict")
        assert "R-OTHER" not in conflict.text
        consent = search(c, claim={**CLAIM, "consent_id": "CNS-X"})
        assert_problem(consent, 409, "claim-conflict")
        resp = fetch(c, ids, relay_id="silson24-relay-02")
    assert resp.status_code == 200 and resp.json()["count"] == len(ids)


def test_binding_expires_60_minutes_after_latest_search(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    agent = start_agent(tmp_path, limits=NO_LIMITS, clock=clock)
    try:
        [doc_id] = ingest(agent.store, make_doc("receipt"))
        with agent.client() as c:

            def sent() -> str:
                return now_rfc3339(clock.now())

            assert search(c, sent_at=sent()).json()["count"] == 1
            clock.advance(59 * 60)
            assert fetch(c, [doc_id], sent_at=sent()).status_code == 200  # fetch does not extend (B6)
            clock.advance(2 * 60)
            assert_problem(fetch(c, [doc_id], sent_at=sent()), 403, "claim-not-bound")
    finally:
        stop_agent(agent)


def test_fetch_limits_and_duplicates(agent, patient_docs) -> None:
    ids = [f"doc_01JBX4Q7M2T9K3V8N5R6W1Y{n:03d}".replace("0", "A") for n in range(101)]
    with agent.client() as c:
        assert_problem(fetch(c, ids), 422, "too-many-documents")
        dup = fetch(c, [patient_docs["receipt"], patient_docs["receipt"]])
    assert_problem(dup, 422, "validation-failed")
    assert {"pointer": "/document_ids/1", "code": "duplicate"} in dup.json()["errors"]


def test_search_matching_more_than_the_limit_is_too_many_results(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={**NO_LIMITS, "max_search_results": 3})
    try:
        ingest(agent.store, *[make_doc("receipt", document_no=f"R-{n}") for n in range(4)])
        with agent.client() as c:
            assert_problem(search(c), 422, "too-many-results")
    finally:
        stop_agent(agent)


def test_response_over_the_size_limit_is_422_and_nothing_released(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={**NO_LIMITS, "max_response_bytes": 3000})
    try:
        ids = ingest(agent.store, make_doc("receipt"), make_doc("receipt_detail"))
        with agent.client() as c:
            search(c)
            resp = fetch(c, ids)
        assert_problem(resp, 422, "response-too-large")
        assert "content_base64" not in resp.text
    finally:
        stop_agent(agent)


def test_same_request_id_twice_and_concurrently_is_replay(agent) -> None:
    rid = str(uuid.uuid4())
    with agent.client() as c:
        assert search(c, request_id=rid).status_code == 200
        assert_problem(search(c, request_id=rid), 409, "replay-detected")
    rid2 = str(uuid.uuid4())
    statuses: list[int] = []

    def send() -> None:
        with agent.client() as c:
            statuses.append(search(c, request_id=rid2).status_code)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 409]


def test_every_search_and_fetch_writes_exactly_one_audit_record(agent, patient_docs) -> None:
    with agent.client() as c:
        c.health()
        responses = [
            search(c),
            fetch(c, [patient_docs["receipt"]]),
            c.post("/v1/documents/search", b"[]"),
            c.post("/v1/documents/fetch", b"x" * 70000),
            c.session.put(agent.base_url + "/v1/documents/fetch", timeout=5),
            fetch(c, [patient_docs["other"]]),
        ]
        c.session.get(agent.base_url + "/metrics", timeout=5)
    records = agent.relay_records()
    assert [r["status"] for r in records] == [r.status_code for r in responses]
    s, f = records[0], records[1]
    # S-16: every member of §7.2.
    for rec in (s, f):
        assert {
            "seq",
            "ts_utc",
            "ts_local",
            "actor",
            "source",
            "action",
            "request_id",
            "claim_no",
            "subject_ref",
            "document_ids",
            "result",
            "status",
            "problem_type",
            "reason",
            "bytes_out",
            "prev_hash",
            "hash",
        } <= set(rec)
        assert rec["ts_local"].endswith("+09:00") and rec["source"]["ip"] == "127.0.0.1"
        assert rec["actor"]["kind"] == "relay" and rec["actor"]["relay_id"] == "silson24-relay-01"
        assert rec["actor"]["cert_sha256"] and rec["actor"]["cert_subject"] == "CN=silson24-relay-01"
        assert re.fullmatch(r"[0-9a-f]{64}", rec["subject_ref"])
        text = json.dumps(rec, ensure_ascii=False)
        for phi in (PATIENT_NAME, "9001011000001", PATIENT_RRN, "9001011******"):
            assert phi not in text
    assert s["action"] == "documents.search" and s["result_count"] == 5 and s["withheld_count"] == 0
    assert f["action"] == "documents.fetch" and f["document_ids"] == [patient_docs["receipt"]]
    assert f["bytes_out"] == len(responses[1].content) and f["result"] == "success"


def test_audit_unwritable_fails_closed_and_recovers(agent, patient_docs) -> None:
    with agent.client() as c:
        ids = [d["id"] for d in search(c).json()["documents"]]
        audit_db = agent.root / "data" / "audit.db"
        os.chmod(audit_db, 0o400)
        try:
            for resp in (fetch(c, ids), search(c), c.post("/v1/documents/search", b"[]")):
                assert_problem(resp, 503, "audit-unavailable")
                assert int(resp.headers["retry-after"]) >= 1
                assert "content_base64" not in resp.text and "202503-000123" not in resp.text
                assert PATIENT_NAME not in resp.text
            health = c.health()
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable" and health.json()["audit_log"] == "unavailable"
        finally:
            os.chmod(audit_db, 0o600)
        assert fetch(c, ids).status_code == 200  # no restart needed
        assert c.health().status_code == 200


def test_tampered_ciphertext_is_500_with_nothing_released_and_audited_as_integrity(
    agent, patient_docs
) -> None:
    a, b = patient_docs["receipt"], patient_docs["prescription"]
    with agent.client() as c:
        search(c)
    conn = sqlite3.connect(agent.root / "data" / "store.db")
    try:
        cols = "kek_id, wrap_nonce, wrapped_dek, nonce, ciphertext"
        row_a = conn.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (a,)).fetchone()
        row_b = conn.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (b,)).fetchone()
        sets = ", ".join(f"{col.strip()} = ?" for col in cols.split(","))
        conn.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*row_b, a))
        conn.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*row_a, b))
        conn.commit()
    finally:
        conn.close()
    with agent.client() as c:
        resp = fetch(c, [patient_docs["receipt_detail"], a])
    assert_problem(resp, 500, "internal-error")
    assert "content_base64" not in resp.text
    rec = agent.relay_records()[-1]
    assert rec["reason"] == "integrity" and rec["result"] == "error" and rec["status"] == 500


def test_concurrent_fetches_share_audit_commits_and_none_is_answered_before_its_record(
    agent, patient_docs
) -> None:
    """Group commit through the API: records of concurrent requests share transactions, and a
    response still waits for the commit of its own record (security.md §7.3)."""
    with agent.client() as c:
        assert search(c).status_code == 200
    # Hold the audit database's write lock (shorter than its busy timeout): nothing can commit.
    blocker = sqlite3.connect(agent.root / "data" / "audit.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    before = agent.audit.transactions
    answered: list[tuple[int, float]] = []

    def one() -> None:
        with agent.client() as c:
            resp = fetch(c, [patient_docs["receipt"]])
            answered.append((resp.status_code, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert answered == []  # every response is waiting for its audit record
    released = time.monotonic()
    blocker.execute("ROLLBACK")
    blocker.close()
    for t in threads:
        t.join()
    assert sorted(status for status, _ in answered) == [200] * 12
    assert all(at >= released for _, at in answered)
    fetches = [r for r in agent.relay_records() if r["action"] == "documents.fetch"]
    assert len(fetches) == 12 and len({r["request_id"] for r in fetches}) == 12
    assert agent.audit.transactions - before < 12
    assert agent.audit.verify().ok
