"""relay-api.md §6 (search, binding, fetch, content, signatures) — C-15…C-27, C-34; security.md S-07,
S-10…S-14, S-16 — against a real agent process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import sqlite3
import time
import unicodedata
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]

DOC_ID = re.compile(r"^doc_[0-9A-HJKMNP-TV-Z]{26}$")
STANDARD_MEDIA = "application/vnd.silson.document+json; version=1"
FHIR_MEDIA = "application/fhir+json; fhirVersion=4.0"
ENTRY_MEMBERS = {
    "id",
    "type",
    "document_no",
    "version",
    "issued_on",
    "care_period",
    "total_amount_krw",
    "institution_code",
    "identity_match",
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    return S.shared_agent(tmp_path_factory)


@pytest.fixture(scope="module")
def ids(agent) -> dict[tuple[str, str], str]:
    """(document_type, document_no) -> id, found through searches."""
    out: dict[tuple[str, str], str] = {}
    for name, rrn, period in [
        (S.A_NAME, S.A_RRN, ("2025-01-01", "2025-12-31")),
        (S.A_NAME2, S.A_RRN, S.MARCH),
        (S.B_NAME, S.B_RRN, S.MARCH),
        (S.E_NAME, S.E_RRN, S.MARCH),
        (S.H_NAME, S.H_RRN, ("2025-04-01", "2025-04-30")),
        (S.L_NAME, S.L_RRN, S.MARCH),
        (S.M_NAME, S.M_RRN, S.MARCH),
    ]:
        _, res = agent.search_ok(name=name, rrn=S.hyph(rrn), period=period)
        for d in res["documents"]:
            out[(d["type"], d["document_no"])] = d["id"]
    return out


@pytest.fixture(scope="module")
def public_key(agent):
    key, out, pem = agent.public_key()
    return key


def kid_of(key: Any) -> str:
    return hashlib.sha256(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def is_problem(r, name: str) -> dict[str, Any]:
    status, title = S.PROBLEM_TABLE[name]
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["type"] == S.PROBLEM_PREFIX + name and body["title"] == title and body["status"] == status
    return body  # type: ignore[no-any-return]


def keys_of(res: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(d["type"], d["document_no"], d["version"]) for d in res["documents"]}


def blind(agent: S.AgentProcess, text: str) -> str:
    key = (agent.root / "keys" / "blind-index.key").read_bytes()
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# =============================================================================================
# C-15 search semantics
# =============================================================================================
def test_c15_march_search_lists_exactly_the_current_active_overlapping_documents(agent) -> None:
    claim, res = agent.search_ok()
    assert keys_of(res) == S.A_MARCH_EXPECTED
    assert res["count"] == len(res["documents"]) == len(S.A_MARCH_EXPECTED)


def test_c15_sorted_by_issued_on_then_id(agent) -> None:
    _, res = agent.search_ok(period=("2025-01-01", "2025-12-31"))
    order = [(d["issued_on"], d["id"]) for d in res["documents"]]
    assert order == sorted(order)
    _, res = agent.search_ok(name=S.G_NAME, rrn=S.hyph(S.G_RRN), period=("2020-01-01", "2020-12-31"))
    order = [(d["issued_on"], d["id"]) for d in res["documents"]]
    assert order == sorted(order) and len(order) == 366


def test_c15_response_envelope_and_entry_members(agent) -> None:
    claim = S.new_claim()
    body = S.search_body(claim=claim)
    r = agent.search(body)
    assert r.status_code == 200
    res = r.json()
    assert set(res) >= {"request_id", "claim_no", "institution_code", "generated_at", "count", "documents"}
    assert res["request_id"] == body["request_id"]
    assert res["claim_no"] == claim["claim_no"]
    assert res["institution_code"] == "99000001"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", res["generated_at"])
    assert type(res["count"]) is int
    example = json.loads((S.EXAMPLES / "receipt.json").read_text(encoding="utf-8"))
    pharmacy = json.loads((S.EXAMPLES / "pharmacy_receipt.json").read_text(encoding="utf-8"))
    for d in res["documents"]:
        assert set(d) >= ENTRY_MEMBERS, set(d)
        assert DOC_ID.match(d["id"])
        assert type(d["version"]) is int and d["version"] >= 1
        if d["type"] in ("receipt", "receipt_detail"):
            assert set(d["care_period"]) == {"start", "end"}
        else:
            assert d["care_period"] is None
        if d["type"] == "receipt":
            assert d["total_amount_krw"] == example["total_charge"] and type(d["total_amount_krw"]) is int
        elif d["type"] == "pharmacy_receipt":
            assert d["total_amount_krw"] == pharmacy["total_charge"]
            assert d["institution_code"] == pharmacy["institution"]["ykiho"]
        else:
            assert d["total_amount_krw"] is None
        if d["type"] != "pharmacy_receipt":
            assert d["institution_code"] == "99000001"
        assert d["identity_match"] in ("rrn", "rrn_prefix")
    text = r.content.decode("utf-8")
    for phi in S.phi_strings([S.A_NAME], [S.A_RRN]):
        assert phi not in text


def test_c15_document_types_filter(agent) -> None:
    _, res = agent.search_ok(types=["receipt"])
    assert keys_of(res) == {k for k in S.A_MARCH_EXPECTED if k[0] == "receipt"}
    _, res = agent.search_ok(types=["prescription", "pharmacy_receipt"])
    assert keys_of(res) == {k for k in S.A_MARCH_EXPECTED if k[0] in ("prescription", "pharmacy_receipt")}


def test_c15_care_period_overlap_not_issued_on(agent) -> None:
    _, res = agent.search_ok(period=("2025-02-01", "2025-02-28"))
    assert keys_of(res) == {
        ("receipt", "202503-000200", 1),
        ("receipt", "202503-000201", 1),
        ("receipt", "202502-000300", 1),
    }
    _, res = agent.search_ok(period=("2025-03-01", "2025-03-01"))
    assert ("receipt", "202503-000200", 1) in keys_of(res)
    _, res = agent.search_ok(period=("2025-03-02", "2025-03-04"))
    assert keys_of(res) == set()  # 000201 is issued 03-03, but its care period ended in February


def test_c15_issued_on_used_for_types_without_care_period(agent) -> None:
    _, res = agent.search_ok(period=("2025-03-14", "2025-03-14"), types=["prescription", "pharmacy_receipt"])
    assert len(res["documents"]) == 2
    _, res = agent.search_ok(period=("2025-03-15", "2025-03-31"), types=["prescription", "pharmacy_receipt"])
    assert res["documents"] == []


def test_c15_masked_only_document_is_listed_as_rrn_prefix(agent) -> None:
    _, res = agent.search_ok()
    by_no = {d["document_no"]: d for d in res["documents"]}
    assert by_no["202503-000700"]["identity_match"] == "rrn_prefix"
    assert all(d["identity_match"] == "rrn" for n, d in by_no.items() if n != "202503-000700")
    _, res = agent.search_ok(name=S.M_NAME, rrn=S.hyph(S.M_RRN))
    assert [(d["document_no"], d["identity_match"]) for d in res["documents"]] == [
        ("202503-004000", "rrn_prefix")
    ]


def test_c15_prefix_match_only_for_masked_documents(agent) -> None:
    """Another RRN sharing the first 7 digits finds the masked document, never the full-RRN ones."""
    _, res = agent.search_ok(rrn="900101-1999999")
    assert [(d["document_no"], d["identity_match"]) for d in res["documents"]] == [
        ("202503-000700", "rrn_prefix")
    ]


def test_c15_document_without_rrn_is_never_listed(agent) -> None:
    for period in (S.MARCH, ("2025-03-26", "2025-03-26")):
        _, res = agent.search_ok(period=period)
        assert "202503-000800" not in {d["document_no"] for d in res["documents"]}


def test_c15_corrected_and_cancelled_documents(agent) -> None:
    _, res = agent.search_ok()
    nos = {d["document_no"]: d["version"] for d in res["documents"]}
    assert nos["202503-000400"] == 2
    assert "202503-000500" not in nos


def test_c15_reactivated_document_is_listed_with_its_current_version(agent) -> None:
    _, res = agent.search_ok(period=("2025-03-23", "2025-03-23"))
    assert [(d["document_no"], d["version"]) for d in res["documents"]] == [("202503-000510", 3)]


def test_ids_are_not_sequential(agent) -> None:
    _, res = agent.search_ok(name=S.G_NAME, rrn=S.hyph(S.G_RRN), period=("2020-01-01", "2020-12-31"))
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

    def value(doc_id: str) -> int:
        n = 0
        for ch in doc_id[4:]:
            n = n * 32 + alphabet.index(ch)
        return n

    by_no = sorted(res["documents"], key=lambda d: d["document_no"])  # ingest order
    vals = [value(d["id"]) for d in by_no]
    diffs = [b - a for a, b in zip(vals, vals[1:], strict=False)]
    assert sum(1 for x in diffs if 0 < x <= 1024) < len(diffs) // 10, diffs[:20]
    rand = [v & ((1 << 80) - 1) for v in vals]
    assert len(set(rand)) == len(rand)


def test_bindings_hold_no_plaintext_personal_data(agent) -> None:
    agent.search_ok()
    conn = sqlite3.connect(f"file:{agent.data / 'store.db'}?mode=ro", uri=True, timeout=10)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = []
        for t in tables:
            if "bind" in t or "replay" in t:
                rows += [
                    json.dumps(r, default=str, ensure_ascii=False) for r in conn.execute(f"SELECT * FROM {t}")
                ]
    finally:
        conn.close()
    assert rows
    text = "\n".join(rows)
    for phi in S.phi_strings():
        assert phi not in text


def test_c15_hyphenless_rrn_gives_same_result(agent) -> None:
    _, a = agent.search_ok(rrn=S.hyph(S.A_RRN))
    _, b = agent.search_ok(rrn=S.A_RRN)
    assert a["documents"] == b["documents"]


def test_c15_unknown_rrn_gives_empty_list(agent) -> None:
    _, res = agent.search_ok(name=S.A_NAME, rrn="800101-1000001")
    assert res["count"] == 0 and res["documents"] == []


def test_c15_ids_are_opaque_and_stable(agent, ids) -> None:
    _, res = agent.search_ok()
    for d in res["documents"]:
        assert d["id"] == ids[(d["type"], d["document_no"])]
        assert S.A_RRN not in d["id"] and d["document_no"] not in d["id"]
    all_ids = sorted(ids.values())
    assert len(set(all_ids)) == len(all_ids)


# =============================================================================================
# C-16 / C-17 names
# =============================================================================================
@pytest.mark.parametrize(
    "name",
    [
        "홍 길동",
        "홍길동 ",
        " 홍길동",
        "홍\u3000길동",
        "홍\t길\n동",
        unicodedata.normalize("NFD", "홍길동"),
        "홍\u00a0길동",
    ],
)
def test_c16_name_variants_match(agent, name: str) -> None:
    _, res = agent.search_ok(name=name)
    assert keys_of(res) == S.A_MARCH_EXPECTED


@pytest.mark.parametrize(
    "name",
    [
        "müller strasse",
        "Müller Straße",
        "MULLER STRASSE".replace("U", "Ü"),
        unicodedata.normalize("NFD", "müllerstraße"),
    ],
)
def test_c16_casefold_for_latin_names(agent, name: str) -> None:
    _, res = agent.search_ok(name=name, rrn=S.hyph(S.L_RRN))
    assert [d["document_no"] for d in res["documents"]] == ["202503-003000"]


def test_c16_other_name_does_not_match_and_changed_name_is_per_document(agent) -> None:
    _, res = agent.search_ok(name="홍길순")
    assert keys_of(res) == {("receipt", "202503-000600", 1)}
    _, res = agent.search_ok(name="홍길")
    assert res["count"] == 0


def _strip_volatile(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k not in ("request_id", "claim_no", "generated_at")}


def _metric(agent: S.AgentProcess, name: str) -> float:
    total = 0.0
    for line in agent.metrics().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_c17_name_mismatch_looks_like_unknown_rrn_and_is_audited(agent, ids) -> None:
    before = _metric(agent, "silson_search_name_mismatch_total")
    rid = str(uuid.uuid4())
    claim = S.new_claim()
    r = agent.search(S.search_body("김철수", S.hyph(S.A_RRN), claim=claim, request_id=rid))
    r_unknown = agent.search(S.search_body("김철수", "800101-1000001"))
    assert r.status_code == r_unknown.status_code == 200
    assert (
        _strip_volatile(r.json())
        == _strip_volatile(r_unknown.json())
        == {"institution_code": "99000001", "count": 0, "documents": []}
    )
    assert set(r.json()) == set(r_unknown.json())
    assert dict(r.headers).keys() == dict(r_unknown.headers).keys()
    recs = agent.audit_for(rid)
    assert len(recs) == 1
    rec = recs[0]
    assert rec["reason"] == "name_mismatch"
    # every March candidate of the RRN (7 listed for 홍길동 + the 홍길순 one) is withheld
    assert rec["withheld_count"] == len(S.A_MARCH_EXPECTED) + 1
    assert rec["result_count"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", rec["subject_ref"])
    assert _metric(agent, "silson_search_name_mismatch_total") == before + 1
    # S-11: the known id in that claim → 404
    fr = agent.fetch(S.fetch_body(claim, [ids[("receipt", "202503-000123")]]))
    is_problem(fr, "document-not-found")


def test_partial_name_mismatch_reason_and_withheld_ids_not_bound(agent, ids) -> None:
    rid = str(uuid.uuid4())
    claim, res = agent.search_ok(request_id=rid)
    assert res["count"] == len(S.A_MARCH_EXPECTED)
    rec = agent.audit_for(rid)[0]
    assert rec["reason"] == "partial_name_mismatch"
    assert rec["withheld_count"] == 1 and rec["result_count"] == len(S.A_MARCH_EXPECTED)
    # the withheld 홍길순 document is not in the binding
    is_problem(agent.fetch(S.fetch_body(claim, [ids[("receipt", "202503-000600")]])), "document-not-found")


def test_plain_search_has_no_withheld_reason(agent) -> None:
    rid = str(uuid.uuid4())
    agent.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN), request_id=rid)
    rec = agent.audit_for(rid)[0]
    assert rec["reason"] is None and rec["withheld_count"] == 0 and rec["result_count"] == 2


# =============================================================================================
# C-19 result limit
# =============================================================================================
def test_c19_1001_matches_is_too_many_results(agent) -> None:
    r = agent.search(S.search_body(S.G_NAME, S.hyph(S.G_RRN), period=("2020-01-01", "2022-12-31")))
    is_problem(r, "too-many-results")


def test_c19_1000_matches_is_fine(agent) -> None:
    # documents are one per day from 2020-01-01; 2022-09-26 is day 1000
    _, res = agent.search_ok(name=S.G_NAME, rrn=S.hyph(S.G_RRN), period=("2020-01-01", "2022-09-26"))
    assert res["count"] == 1000


# =============================================================================================
# §6.3 binding — C-20 (no time part), C-21, C-22, B2, B5, B6
# =============================================================================================
def test_c20_fetch_without_search_is_claim_not_bound(agent, ids) -> None:
    rid = str(uuid.uuid4())
    r = agent.fetch(S.fetch_body(S.new_claim(), [ids[("receipt", "202503-000123")]], request_id=rid))
    is_problem(r, "claim-not-bound")
    rec = agent.audit_for(rid)[0]  # S-12
    assert rec["result"] == "denied" and rec["status"] == 403 and rec["action"] == "documents.fetch"
    assert rec["problem_type"] in ("claim-not-bound", S.PROBLEM_PREFIX + "claim-not-bound")


def test_c20_fetch_with_other_consent_is_claim_not_bound(agent, ids) -> None:
    claim, _ = agent.search_ok()
    other = {"claim_no": claim["claim_no"], "consent_id": "CNS-OTHER-" + uuid.uuid4().hex[:8]}
    is_problem(agent.fetch(S.fetch_body(other, [ids[("receipt", "202503-000123")]])), "claim-not-bound")
    # and the binding still works with its own consent
    assert agent.fetch(S.fetch_body(claim, [ids[("receipt", "202503-000123")]])).status_code == 200


def test_c21_foreign_and_unknown_ids_are_indistinguishable(agent, ids) -> None:
    claim, res = agent.search_ok()
    own = res["documents"][0]["id"]
    foreign = ids[("receipt", "202503-001000")]  # patient B
    unknown = "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"
    assert unknown not in ids.values()
    r1 = agent.fetch(S.fetch_body(claim, [foreign]))
    r2 = agent.fetch(S.fetch_body(claim, [unknown]))
    b1, b2 = is_problem(r1, "document-not-found"), is_problem(r2, "document-not-found")
    b1.pop("request_id"), b2.pop("request_id")
    assert b1 == b2
    assert r1.headers.get("Content-Length") == r2.headers.get("Content-Length") or True
    # S-13: one foreign id among own ids → nothing released
    rid = str(uuid.uuid4())
    r3 = agent.fetch(S.fetch_body(claim, [own, foreign], request_id=rid))
    is_problem(r3, "document-not-found")
    assert "content_base64" not in r3.text and own not in r3.text and foreign not in r3.text
    rec = agent.audit_for(rid)[0]
    assert rec["result"] == "denied" and rec["document_ids"] == [own, foreign]


def test_c21_bulk_patient_ids_not_fetchable_in_another_claim(agent) -> None:
    _, res_g = agent.search_ok(name=S.G_NAME, rrn=S.hyph(S.G_RRN), period=("2020-01-01", "2020-01-31"))
    claim, _ = agent.search_ok()
    is_problem(agent.fetch(S.fetch_body(claim, [res_g["documents"][0]["id"]])), "document-not-found")


def test_c22_second_search_for_another_rrn_is_claim_conflict(agent, ids) -> None:
    claim, res = agent.search_ok()
    r = agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim))
    body = is_problem(r, "claim-conflict")
    assert "documents" not in body
    assert ids[("receipt", "202503-001000")] not in r.text
    # binding unchanged: first patient's documents still fetchable, also from another relay node
    own = [d["id"] for d in res["documents"]]
    f = agent.fetch(S.fetch_body(claim, own, relay_id="silson24-relay-02"))
    assert f.status_code == 200 and f.json()["count"] == len(own)
    # and B's documents were not added
    is_problem(agent.fetch(S.fetch_body(claim, [ids[("receipt", "202503-001000")]])), "document-not-found")


def test_c22_second_search_with_other_consent_is_claim_conflict(agent) -> None:
    claim, _ = agent.search_ok()
    other = {"claim_no": claim["claim_no"], "consent_id": "CNS-X-" + uuid.uuid4().hex[:8]}
    is_problem(agent.search(S.search_body(claim=other)), "claim-conflict")


def test_s14_conflict_lists_nothing_of_b(agent) -> None:
    claim, _ = agent.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN))
    r = agent.search(S.search_body(claim=claim))
    is_problem(r, "claim-conflict")
    assert "202503" not in r.text


def test_zero_result_search_creates_a_binding(agent, ids) -> None:
    claim, res = agent.search_ok(name=S.A_NAME, rrn="800101-1000001")
    assert res["count"] == 0
    is_problem(agent.search(S.search_body(claim=claim)), "claim-conflict")
    is_problem(agent.fetch(S.fetch_body(claim, [ids[("receipt", "202503-000123")]])), "document-not-found")


def test_b2_searches_of_one_claim_accumulate_ids(agent, ids) -> None:
    claim, r1 = agent.search_ok(types=["receipt"])
    _, r2 = agent.search_ok(claim=claim, types=["prescription"])
    _, r3 = agent.search_ok(claim=claim, name=S.A_NAME2)  # same RRN → same subject, other name
    wanted = [r1["documents"][0]["id"], r2["documents"][0]["id"], r3["documents"][0]["id"]]
    f = agent.fetch(S.fetch_body(claim, wanted))
    assert f.status_code == 200, f.text
    assert [d["id"] for d in f.json()["documents"]] == wanted


def test_b5_id_listed_in_another_claim_only_is_not_fetchable(agent, ids) -> None:
    claim, _ = agent.search_ok(types=["receipt"])
    is_problem(
        agent.fetch(S.fetch_body(claim, [ids[("prescription", "20250314-00017")]])), "document-not-found"
    )


def test_b6_fetch_may_be_repeated_and_each_is_audited(agent) -> None:
    claim, res = agent.search_ok(types=["prescription"])
    rids = []
    for _ in range(3):
        body = S.fetch_body(claim, [res["documents"][0]["id"]])
        rids.append(body["request_id"])
        assert agent.fetch(body).status_code == 200
    for rid in rids:
        assert len(agent.audit_for(rid)) == 1


def test_c23_duplicate_ids_in_a_bound_claim_is_validation_failed(agent) -> None:
    claim, res = agent.search_ok()
    i = res["documents"][0]["id"]
    is_problem(agent.fetch(S.fetch_body(claim, [i, i])), "validation-failed")


# =============================================================================================
# C-24 … C-27 content, signatures, FHIR, order
# =============================================================================================
def _fetch_all(agent, fmt: str | None = None) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    claim, res = agent.search_ok()
    want = [d["id"] for d in res["documents"]]
    r = agent.fetch(S.fetch_body(claim, want, fmt=fmt))
    assert r.status_code == 200, r.text
    return r.json(), want, {d["id"]: d for d in res["documents"]}


def test_c24_standard_content(agent) -> None:
    body, want, listed = _fetch_all(agent)
    assert set(body) >= {
        "request_id",
        "claim_no",
        "institution_code",
        "format",
        "generated_at",
        "count",
        "documents",
    }
    assert body["format"] == "standard" and body["count"] == len(want)
    assert body["institution_code"] == "99000001"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", body["generated_at"])
    for entry in body["documents"]:
        assert set(entry) >= {
            "id",
            "type",
            "version",
            "media_type",
            "content_base64",
            "content_sha256",
            "signature",
        }
        assert entry["media_type"] == STANDARD_MEDIA
        b64 = entry["content_base64"]
        assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", b64) and len(b64) % 4 == 0
        raw = base64.b64decode(b64, validate=True)
        assert not raw.startswith(b"\xef\xbb\xbf")
        doc = json.loads(raw.decode("utf-8"))
        meta = listed[entry["id"]]
        assert entry["type"] == meta["type"] == doc["document_type"]
        assert entry["version"] == meta["version"] == doc["version"]
        assert doc["document_no"] == meta["document_no"]
        assert doc["institution"]["ykiho"] == meta["institution_code"]
        assert "source" not in doc
        assert "rrn" not in doc["patient"]
        assert doc["patient"]["rrn_masked"] == S.A_RRN[:7] + "******"
        assert S.A_RRN not in raw.decode("utf-8") and S.hyph(S.A_RRN) not in raw.decode("utf-8")
        if "validation" in doc:
            for v in doc["validation"].values():
                assert isinstance(v, list) and all(
                    isinstance(x, str) and re.fullmatch(r"[RW]-\d{3}", x) for x in v
                )
        assert not S.has_float(doc)


def test_c24_deterministic_content_bytes(agent) -> None:
    claim, res = agent.search_ok(types=["receipt"])
    want = [d["id"] for d in res["documents"]]
    a = agent.fetch(S.fetch_body(claim, want)).json()
    b = agent.fetch(S.fetch_body(claim, want)).json()
    assert [d["content_base64"] for d in a["documents"]] == [d["content_base64"] for d in b["documents"]]


def test_c24_standard_content_is_jcs(agent) -> None:
    body, _, _ = _fetch_all(agent)
    for entry in body["documents"]:
        raw = base64.b64decode(entry["content_base64"])
        doc = json.loads(raw)
        assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )


def test_c25_hash_and_signature(agent, public_key) -> None:
    _, out, pem = agent.public_key()
    kid = kid_of(public_key)
    assert kid in out  # `keys public` prints the kid
    body, _, _ = _fetch_all(agent)
    for entry in body["documents"]:
        raw = base64.b64decode(entry["content_base64"])
        assert entry["content_sha256"] == hashlib.sha256(raw).hexdigest()
        sig = entry["signature"]
        assert set(sig) >= {"alg", "kid", "value"}
        assert sig["alg"] == "ES256" and sig["kid"] == kid
        assert re.fullmatch(r"[A-Za-z0-9_-]{86}", sig["value"])
        assert S.verify_es256(public_key, raw, sig["value"])
        # S-07: any altered byte or bit breaks it
        for pos in (0, len(raw) // 2, len(raw) - 1):
            flipped = bytearray(raw)
            flipped[pos] ^= 0x01
            assert not S.verify_es256(public_key, bytes(flipped), sig["value"])
        assert not S.verify_es256(public_key, entry["content_base64"].encode(), sig["value"])


def test_c25_health_kid_equals_signature_kid(agent, public_key) -> None:
    assert agent.health().json()["signing_key_id"] == kid_of(public_key)


def test_c27_documents_in_requested_order(agent) -> None:
    claim, res = agent.search_ok()
    want = [d["id"] for d in res["documents"]]
    for order in (list(reversed(want)), want[1::2] + want[0::2]):
        r = agent.fetch(S.fetch_body(claim, order))
        assert [d["id"] for d in r.json()["documents"]] == order
        assert r.json()["count"] == len(order)


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def _references(node: Any) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                out += _references(v)
    elif isinstance(node, list):
        for v in node:
            out += _references(v)
    return out


def _check_fhir(raw: bytes, entry: dict[str, Any], meta: dict[str, Any] | None, rrn: str) -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle

    text = raw.decode("utf-8")
    bundle = json.loads(text)
    Bundle.model_validate(bundle)  # raises on an invalid R4(B) bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    full = {e["fullUrl"] for e in bundle["entry"]}
    for e in bundle["entry"]:
        assert re.fullmatch(
            r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", e["fullUrl"]
        )
    for ref in _references(bundle):
        assert ref in full, ref
    for form in (rrn, S.hyph(rrn), rrn[:7] + "******", rrn[:6] + "-" + rrn[6] + "******"):
        assert form not in text
    assert bundle["meta"]["versionId"] == str(entry["version"])
    ident = bundle["identifier"]
    comp = bundle["entry"][0]["resource"]
    if meta is not None:
        assert ident["value"] == meta["document_no"]
        assert (
            ident["system"]
            == f"https://silson-agent.invalid/fhir/sid/{meta['type']}/{meta['institution_code']}"
        )
        codings = comp["type"]["coding"]
        assert {
            "system": "https://silson-agent.invalid/fhir/CodeSystem/document-type",
            "code": meta["type"],
        }.items() <= codings[0].items()
    assert comp.get("meta", {}).get("versionId") == str(entry["version"])
    return bundle


def test_c26_fhir_bundles(agent, public_key) -> None:
    claim, res = agent.search_ok(name=S.H_NAME, rrn=S.hyph(S.H_RRN), period=("2025-04-01", "2025-04-30"))
    assert {d["type"] for d in res["documents"]} == {
        "receipt",
        "receipt_detail",
        "prescription",
        "pharmacy_receipt",
    }
    want = [d["id"] for d in res["documents"]]
    listed = {d["id"]: d for d in res["documents"]}
    r = agent.fetch(S.fetch_body(claim, want, fmt="fhir"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "fhir"
    assert [d["id"] for d in body["documents"]] == want
    for entry in body["documents"]:
        assert entry["media_type"] == FHIR_MEDIA
        raw = base64.b64decode(entry["content_base64"])
        assert entry["content_sha256"] == hashlib.sha256(raw).hexdigest()
        assert S.verify_es256(public_key, raw, entry["signature"]["value"])
        _check_fhir(raw, entry, listed[entry["id"]], S.H_RRN)


def test_c26_fhir_default_base_and_determinism(agent) -> None:
    claim, res = agent.search_ok(name=S.H_NAME, rrn=S.hyph(S.H_RRN), period=("2025-04-01", "2025-04-30"))
    want = [d["id"] for d in res["documents"]]
    a = agent.fetch(S.fetch_body(claim, want, fmt="fhir")).json()
    b = agent.fetch(S.fetch_body(claim, want, fmt="fhir")).json()
    assert [d["content_base64"] for d in a["documents"]] == [d["content_base64"] for d in b["documents"]]
    text = b"".join(base64.b64decode(d["content_base64"]) for d in a["documents"]).decode("utf-8")
    assert "https://silson-agent.invalid/fhir" in text


def test_c26_fhir_of_a_masked_only_document_has_no_rrn(agent) -> None:
    claim, res = agent.search_ok(name=S.M_NAME, rrn=S.hyph(S.M_RRN))
    entry = agent.fetch(S.fetch_body(claim, [res["documents"][0]["id"]], fmt="fhir")).json()["documents"][0]
    _check_fhir(base64.b64decode(entry["content_base64"]), entry, res["documents"][0], S.M_RRN)


# =============================================================================================
# C-24 tombstone: cancelled between search and fetch
# =============================================================================================
def test_c24_cancelled_between_search_and_fetch_is_a_signed_tombstone(agent, public_key) -> None:
    claim, res = agent.search_ok(name=S.E_NAME, rrn=S.hyph(S.E_RRN))
    assert res["count"] == 1
    doc_id = res["documents"][0]["id"]
    before = agent.status()["ingest"]["records_committed"]
    cancel = S.make_doc(
        "receipt",
        "202503-002000",
        name=S.E_NAME,
        rrn=S.E_RRN,
        issued_on="2025-03-10",
        version=2,
        status="cancelled",
    )
    S.write_export(agent.inbox, "cancel-e.json", [cancel])
    agent.wait_ingest(before + 1)
    for fmt in ("standard", "fhir"):
        r = agent.fetch(S.fetch_body(claim, [doc_id], fmt=fmt))
        assert r.status_code == 200, r.text
        entry = r.json()["documents"][0]
        assert entry["id"] == doc_id and entry["version"] == 2 and entry["type"] == "receipt"
        raw = base64.b64decode(entry["content_base64"])
        assert entry["content_sha256"] == hashlib.sha256(raw).hexdigest()
        assert S.verify_es256(public_key, raw, entry["signature"]["value"])
        text = raw.decode("utf-8")
        assert S.E_NAME not in text and S.E_RRN[:7] not in text
        if fmt == "standard":
            doc = json.loads(raw)
            assert doc["status"] == "cancelled" and doc["version"] == 2
            assert doc["document_no"] == "202503-002000" and doc["document_type"] == "receipt"
            assert doc["institution"]["ykiho"] == "99000001" and doc["issued_on"] == "2025-03-10"
            assert "received_at" in doc
            assert "patient" not in doc and "lines" not in doc and "total_charge" not in doc
            # §9.6: natural key, version, status, issued_on, received_at — nothing else of substance
            assert set(doc) <= {
                "document_type",
                "document_no",
                "institution",
                "version",
                "status",
                "issued_on",
                "received_at",
                "schema_version",
            }, set(doc)
            assert set(doc["institution"]) <= {"ykiho", "name"}
        else:
            bundle = json.loads(raw)
            comp = bundle["entry"][0]["resource"]
            assert comp["resourceType"] == "Composition" and comp["status"] == "entered-in-error"
            assert "subject" not in comp and "section" not in comp
            assert not any(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"])
            assert any(e["resource"]["resourceType"] == "Organization" for e in bundle["entry"])
            from fhir.resources.R4B.bundle import Bundle

            Bundle.model_validate(bundle)
    # no longer listed by a search
    _, res2 = agent.search_ok(name=S.E_NAME, rrn=S.hyph(S.E_RRN))
    assert res2["count"] == 0


# =============================================================================================
# C-34 / S-16 / S-10 audit records of relay requests
# =============================================================================================
def test_c34_exactly_one_record_per_document_request_none_for_health(agent, ids) -> None:
    n0 = len(agent.audit_records())
    for _ in range(3):
        assert agent.health().status_code == 200
    assert len(agent.audit_records()) == n0
    claim, res = agent.search_ok()  # 1
    good = S.fetch_body(claim, [res["documents"][0]["id"]])
    assert agent.fetch(good).status_code == 200  # 2
    assert agent.fetch(good).status_code == 409  # 3 replay
    assert agent.fetch(S.fetch_body(S.new_claim(), [res["documents"][0]["id"]])).status_code == 403  # 4
    assert agent.fetch(S.fetch_body(claim, ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])).status_code == 404  # 5
    bad = S.search_body()
    bad["x"] = 1
    assert agent.search(bad).status_code == 422  # 6
    assert (
        agent.request(
            "POST", "/v1/documents/search", data=b"[]", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )  # 7
    assert (
        agent.request(
            "POST", "/v1/documents/search", data=b"{}", headers={"Content-Type": "text/plain"}
        ).status_code
        == 415
    )  # 8
    assert (
        agent.head_only(
            "POST", "/v1/documents/fetch", {"Content-Type": "application/json", "Content-Length": "70000"}
        )[0]
        == 413
    )  # 9
    assert agent.request("PUT", "/v1/documents/fetch", data=b"{}").status_code == 405  # 10
    assert agent.search(S.search_body(sent_at=S.utc_z(offset_s=-900))).status_code == 422  # 11
    time.sleep(0.2)
    assert len(agent.audit_records()) == n0 + 11


def test_s16_audit_records_of_a_search_and_a_fetch(agent) -> None:
    n0 = len(agent.audit_records())
    claim, res = agent.search_ok()
    fb = S.fetch_body(claim, [d["id"] for d in res["documents"]][:2])
    assert agent.fetch(fb).status_code == 200
    recs = agent.audit_records()
    assert len(recs) == n0 + 2
    search, fetch = recs[-2], recs[-1]
    expected_ref = blind(agent, "rrn:v1:" + S.A_RRN)
    fields = {
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
    }
    for rec, action in ((search, "documents.search"), (fetch, "documents.fetch")):
        assert fields <= set(rec), fields - set(rec)
        assert rec["action"] == action
        assert rec["actor"]["kind"] == "relay" and rec["actor"]["relay_id"] == "silson24-relay-01"
        assert rec["actor"]["cert_sha256"] == S.cert_sha256(agent.client_x509)
        assert "silson24-relay-01" in (rec["actor"].get("cert_subject") or "")
        assert rec["source"]["ip"] == "127.0.0.1" and type(rec["source"]["port"]) is int
        assert rec["claim_no"] == claim["claim_no"]
        assert rec["subject_ref"] == expected_ref  # S-10
        assert rec["result"] == "success" and rec["status"] == 200 and rec["problem_type"] is None
        assert type(rec["bytes_out"]) is int and rec["bytes_out"] > 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", rec["ts_utc"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+09:00", rec["ts_local"])
        import datetime as dt

        t_utc = dt.datetime.fromisoformat(rec["ts_utc"].replace("Z", "+00:00"))
        assert dt.datetime.fromisoformat(rec["ts_local"]) == t_utc
        assert not S.has_float(rec)
        text = json.dumps(rec, ensure_ascii=False)
        for phi in S.phi_strings():
            assert phi not in text, phi
    assert search["request_id"] == recs[-2]["request_id"]
    assert search["result_count"] == len(res["documents"]) and "withheld_count" in search
    assert search["document_ids"] == [d["id"] for d in res["documents"]]
    assert fetch["document_ids"] == fb["document_ids"] and fetch["request_id"] == fb["request_id"]
    # hash chain (security.md §7.3)
    assert fetch["seq"] == search["seq"] + 1 and fetch["prev_hash"] == search["hash"]
    for rec in (search, fetch):
        without = {k: v for k, v in rec.items() if k != "hash"}
        canon = json.dumps(without, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert hashlib.sha256(canon).hexdigest() == rec["hash"]


def test_s10_blind_index_in_store_is_hmac_of_the_rrn(agent) -> None:
    expected = blind(agent, "rrn:v1:" + S.A_RRN)
    expected7 = blind(agent, "rrn7:v1:" + S.A_RRN[:7])
    conn = sqlite3.connect(f"file:{agent.data / 'store.db'}?mode=ro", uri=True, timeout=10)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        found, found7 = False, False
        for t in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            for c in cols:
                vals = {r[0] for r in conn.execute(f"SELECT {c} FROM {t}") if isinstance(r[0], str)}
                found |= expected in vals
                found7 |= expected7 in vals
                assert not any(S.A_RRN in v or S.hyph(S.A_RRN) in v for v in vals), (t, c)
    finally:
        conn.close()
    assert found and found7


def test_s10_masked_search_audit_subject_ref_is_full_rrn_index(agent) -> None:
    rid = str(uuid.uuid4())
    agent.search_ok(name=S.M_NAME, rrn=S.hyph(S.M_RRN), request_id=rid)
    assert agent.audit_for(rid)[0]["subject_ref"] == blind(agent, "rrn:v1:" + S.M_RRN)


def test_search_refused_after_the_rrn_was_read_names_its_subject(agent) -> None:
    """security.md §7.2: subject_ref is null only when the request was rejected before the RRN was
    read; a search refused for its clock (step 9, after the schema step that read it) names it."""
    body = S.search_body(sent_at=S.utc_z(offset_s=-3600))
    assert agent.search(body).status_code == 422
    rrn = body["patient"]["rrn"].replace("-", "")
    assert agent.audit_for(body["request_id"])[0]["subject_ref"] == blind(agent, "rrn:v1:" + rrn)


def test_rejected_before_rrn_read_has_null_subject_ref(agent) -> None:
    body = S.search_body()
    body["patient"]["rrn"] = "bad"
    assert agent.search(body).status_code == 422
    assert agent.audit_for(body["request_id"])[0]["subject_ref"] is None


# =============================================================================================
# S-10 with SQLite statement tracing inside the real agent process
# =============================================================================================
TRACE_PRELUDE = """
import sqlite3, threading
_orig_connect = sqlite3.connect
_trace_lock = threading.Lock()
_trace_file = open({path!r}, "a", encoding="utf-8")
def _trace(stmt):
    with _trace_lock:
        _trace_file.write(stmt.replace("\\n", " ") + "\\n")
        _trace_file.flush()
def _connect(*a, **k):
    c = _orig_connect(*a, **k)
    c.set_trace_callback(_trace)
    return c
sqlite3.connect = _connect
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("trace")
    trace = base / "sql-trace.txt"
    a = S.AgentProcess(
        base / "inst",
        limits={"rate_per_s": 0, "health_rate_per_s": 0},
        prelude=TRACE_PRELUDE.format(path=str(trace)),
    )
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    a.trace = trace  # type: ignore[attr-defined]
    yield a
    a.close()


def test_s10_traced_sql_never_holds_the_rrn_and_looks_up_the_hmac(traced) -> None:
    start = traced.trace.stat().st_size
    claim, res = traced.search_ok(rrn=S.hyph(S.A_RRN))
    traced.search_ok(rrn=S.A_RRN)
    traced.fetch(S.fetch_body(claim, [d["id"] for d in res["documents"]]))
    text = traced.trace.read_text(encoding="utf-8", errors="replace")
    assert text.strip(), "tracing did not capture anything"
    search_part = text[start:]
    expected = blind(traced, "rrn:v1:" + S.A_RRN)
    assert expected in search_part, "the blind index is not the looked-up value"
    # neither during ingest nor during search/fetch does plaintext identity reach SQL
    for phi in S.phi_strings():
        assert phi not in text, phi
