"""documents.md conformance: worked examples (§12), canonical form and content_hash (§9.3),
decimals (§2.1), cancellations (§9.4) and the rule tables (§2.7, §3.6, §4.4, §5.3, §6.4).

Rules are observed through ``check`` (documents.md §2.7 R-034: ``check`` validates like ingest,
with the time of the check as ``received_at``). All single-document rule cases are written into
one folder and checked by a single ``check`` run (fast); each case is still its own test.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from pathlib import Path

import pytest

from tests.conformance._ingest_support import (
    DELETE,
    EXAMPLES,
    cli,
    content_hash,
    example,
    jdump,
    minimal_cancellation,
    problems,
    rules_of,
    set_path,
)

TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")


def _stored_hash(name: str) -> str:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))["content_hash"]


# =========================================================================== §12 worked examples


@pytest.mark.parametrize("name", TYPES)
def test_example_content_hash_is_sha256_of_jcs(name):
    """Self-check of the helper against the spec: the example hashes are JCS + SHA-256."""
    assert content_hash(example(name)) == _stored_hash(name)


@pytest.mark.parametrize("name", TYPES)
def test_worked_example_is_valid_with_its_recorded_warnings(name, tmp_path):
    full = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    p = tmp_path / f"{name}.json"
    p.write_bytes(jdump(example(name)))
    r = cli("check", p, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    found = {x["rule"] for x in problems(r.stdout)}
    recorded = {w["rule"] if isinstance(w, dict) else w for w in full["validation"]["warnings"]}
    assert found == recorded, (found, recorded)


def test_worked_examples_together_in_one_file(tmp_path):
    p = tmp_path / "visit.json"
    p.write_bytes(jdump([example(n) for n in TYPES]))
    r = cli("check", p, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    r = cli("convert", p, cwd=tmp_path)
    docs = json.loads(r.stdout)
    assert [content_hash(_clean(d)) for d in docs] == [_stored_hash(n) for n in TYPES]


def _clean(d: dict) -> dict:
    d = dict(d)
    for k in ("source", "received_at", "content_hash", "validation"):
        d.pop(k, None)
    return d


def _convert_one(tmp_path: Path, doc: dict) -> dict:
    p = tmp_path / "c.json"
    p.write_bytes(jdump(doc))
    r = cli("convert", p, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    return _clean(out[0] if isinstance(out, list) else out)


def test_worked_example_identities_hold():
    """§12.1/§12.4 numbers as in the example files (so the rule tests below start from valid data)."""
    r = example("receipt")
    assert r["total_charge"] == r["insurer_charge_total"] + r["patient_charge_total"] == 64500
    p = example("pharmacy_receipt")
    assert p["total_charge"] == 12300 and p["patient_charge_total"] == 3900


# =========================================================================== §9.3 canonical form


def test_canonical_decimals_trailing_zeros_removed(tmp_path):
    rx = example("prescription")
    rx["lines"][0]["dose"] = "1.0000"
    rx["lines"][1]["dose"] = "2.50"
    rx["lines"][2]["dose"] = "0.500"
    rx["lines"][3]["dose"] = "3.0"
    out = _convert_one(tmp_path, rx)
    assert [ln["dose"] for ln in out["lines"]] == ["1", "2.5", "0.5", "3"]
    assert content_hash(out) == _stored_hash("prescription")


def test_canonical_decimals_detail_amounts(tmp_path):
    d = example("receipt_detail")
    d["lines"][3]["amount"] = "3000.0"
    d["lines"][0]["amount"] = "18000.00"
    d["lines"][4]["count"] = "3.0000"
    out = _convert_one(tmp_path, d)
    assert out["lines"][3]["amount"] == "3000" and out["lines"][0]["amount"] == "18000"
    assert out["lines"][4]["count"] == "3"
    assert content_hash(out) == _stored_hash("receipt_detail")


def test_canonical_null_is_absent(tmp_path):
    r = example("receipt")
    r["department_name"] = None
    r["institution"]["phone"] = None
    out = _convert_one(tmp_path, r)
    assert "department_name" not in out and "phone" not in out["institution"]
    assert "null" not in json.dumps(out)


def test_canonical_keeps_explicit_false_and_never_adds_it(tmp_path):
    r = example("receipt")
    out = _convert_one(tmp_path, r)
    assert out["night_care"] is False and out["holiday_care"] is False
    del r["night_care"]
    out2 = _convert_one(tmp_path, r)
    assert "night_care" not in out2
    assert content_hash(out2) != _stored_hash("receipt")


def test_canonical_empty_optional_array_is_no_value(tmp_path):
    rx = example("prescription")
    rx["diagnosis_codes"] = []
    rx["diagnosis_withheld"] = True
    out = _convert_one(tmp_path, rx)
    assert "diagnosis_codes" not in out


def test_canonical_diagnosis_codes_normalised(tmp_path):
    rx = example("prescription")
    rx["diagnosis_codes"] = ["j069"]
    out = _convert_one(tmp_path, rx)
    assert out["diagnosis_codes"] == ["J06.9"]
    assert content_hash(out) == _stored_hash("prescription")
    rx["diagnosis_codes"] = [" J06.9† "]
    assert _convert_one(tmp_path, rx)["diagnosis_codes"] == ["J06.9"]


def test_canonical_version_and_status_are_part_of_hash(tmp_path):
    r = example("receipt")
    r["version"] = 2
    assert content_hash(_convert_one(tmp_path, r)) != _stored_hash("receipt")


def test_canonical_agent_fields_are_replaced(tmp_path):
    full = json.loads((EXAMPLES / "receipt.json").read_text(encoding="utf-8"))
    full["content_hash"] = "0" * 64
    full["received_at"] = "2000-01-01T00:00:00+09:00"
    p = tmp_path / "w.json"
    p.write_bytes(jdump(full))
    r = cli("convert", p, cwd=tmp_path)
    assert r.returncode == 0
    out = json.loads(r.stdout)
    out = out[0] if isinstance(out, list) else out
    assert out.get("content_hash") in (None, _stored_hash("receipt"))
    assert content_hash(_clean(out)) == _stored_hash("receipt")


# =========================================================================== rule table

R = example("receipt")
D = example("receipt_detail")
P = example("prescription")
F = example("pharmacy_receipt")


def mut(base: dict, *changes) -> dict:
    doc = copy.deepcopy(base)
    for path, value in changes:
        doc = set_path(doc, path, value)
    return doc


def _detail_line5(total: int, copay: int) -> dict:
    d = copy.deepcopy(D)
    d["lines"][4]["total"] = total
    d["lines"][4]["copay"] = copay
    d["totals"]["total"] += total - 2000
    d["totals"]["copay"] += copay - 600
    return d


# (id, document, rules that must be reported, rules that must not be reported)
CASES: list[tuple[str, dict, set[str], set[str]]] = [
    # ---- §2 envelope / common
    ("schema-1.1-accepted", mut(R, ("schema_version", "1.1")), set(), {"R-006"}),
    ("schema-2.0", mut(R, ("schema_version", "2.0")), {"R-006"}, set()),
    ("schema-number", mut(R, ("schema_version", 1.0)), {"R-006"}, {"R-021"}),
    ("schema-missing", mut(R, ("schema_version", DELETE)), {"R-006"}, {"R-020"}),
    ("schema-1", mut(R, ("schema_version", "1")), {"R-006"}, set()),
    ("doctype-unknown", mut(R, ("document_type", "invoice")), {"R-005"}, {"R-026"}),
    ("doctype-missing", mut(R, ("document_type", DELETE)), {"R-005"}, {"R-020"}),
    ("version-0", mut(R, ("version", 0)), {"R-011"}, {"R-028"}),
    ("version-string", mut(R, ("version", "1")), {"R-011"}, {"R-021"}),
    ("version-2^53", mut(R, ("version", 2**53)), {"R-011"}, set()),
    ("version-2^53-1", mut(R, ("version", 2**53 - 1)), set(), {"R-011"}),
    ("status-void", mut(R, ("status", "void")), {"R-012"}, {"R-026"}),
    ("cancel-reason-active", mut(R, ("cancel_reason", "환불")), {"R-013"}, set()),
    ("revision-reason-bad", mut(R, ("revision_reason", "typo")), {"R-026"}, set()),
    ("document-no-charset", mut(R, ("document_no", "2025 03#1")), {"R-029"}, set()),
    ("document-no-41", mut(R, ("document_no", "A" * 41)), {"R-029|R-023"}, set()),
    ("required-missing", mut(R, ("patient_category", DELETE)), {"R-020"}, set()),
    ("money-as-string", mut(R, ("total_charge", "64500")), {"R-021"}, set()),
    ("money-fraction", mut(R, ("total_charge", 64500.5)), {"R-021"}, set()),
    ("money-float-zero", mut(R, ("prepaid", 0.0)), {"R-021"}, set()),
    ("money-too-large", mut(R, ("prepaid", 100_000_000_000)), {"R-028"}, set()),
    ("object-expected", mut(R, ("paid", 41400)), {"R-021"}, set()),
    ("empty-string", mut(R, ("institution.phone", "")), {"R-022"}, set()),
    ("control-char", mut(R, ("institution.address", "서울\u0007")), {"R-023"}, set()),
    ("too-long", mut(R, ("department_name", "가" * 51)), {"R-023"}, set()),
    ("multiline-lf-ok", mut(R, ("remarks", "첫 줄\n둘째 줄")), set(), {"R-023"}),
    ("lf-not-multiline", mut(R, ("department_name", "가정\n의학과")), {"R-023"}, set()),
    ("bad-date", mut(R, ("issued_on", "2025-02-30")), {"R-024"}, set()),
    ("bad-datetime-no-offset", mut(R, ("issued_at", "2025-03-14T10:42:00")), {"R-024"}, set()),
    ("bad-datetime-no-seconds", mut(R, ("issued_at", "2025-03-14T10:42+09:00")), {"R-024"}, set()),
    ("unknown-field", mut(R, ("colour", "red")), {"R-025"}, set()),
    ("unknown-nested-field", mut(R, ("institution.colour", "red")), {"R-025"}, set()),
    (
        "fax-email-allowed",
        mut(R, ("institution.fax", "02-000-0001"), ("institution.email", "a@example.invalid")),
        set(),
        {"R-025"},
    ),
    ("enum-bad", mut(R, ("patient_category", "vip")), {"R-026"}, set()),
    ("phone-pattern", mut(R, ("institution.phone", "02-000-000O")), {"R-029"}, set()),
    ("reg-no-pattern", mut(R, ("patient.patient_reg_no", "0001 2345")), {"R-029"}, set()),
    ("ykiho-7", mut(R, ("institution.ykiho", "9900001")), {"R-030"}, {"R-029"}),
    ("ykiho-number", mut(R, ("institution.ykiho", 99000001)), {"R-030"}, {"R-021"}),
    ("brn-hyphen", mut(R, ("institution.business_reg_no", "123-45-67891")), {"R-031"}, {"R-029"}),
    ("brn-checksum", mut(R, ("institution.business_reg_no", "1234567890")), {"R-031"}, set()),
    ("brn-pharmacy-ok", mut(F, ("institution.business_reg_no", "1112233332")), set(), {"R-031"}),
    ("rrn-hyphen", mut(R, ("patient.rrn", "900101-1000001")), {"R-032"}, {"R-029"}),
    ("rrn-g9", mut(R, ("patient.rrn", "9001019000001")), {"R-032"}, set()),
    ("rrn-g0", mut(R, ("patient.rrn", "9001010000001")), {"R-032"}, set()),
    ("rrn-bad-date", mut(R, ("patient.rrn", "9002301000001")), {"R-032"}, set()),
    ("rrn-foreigner-ok", mut(R, ("patient.rrn", "9001015000001")), set(), {"R-032"}),
    ("rrn-no-checksum", mut(R, ("patient.rrn", "9001011000002")), set(), {"R-032"}),
    ("rrn-born-after-issue", mut(R, ("patient.rrn", "3001013000001")), {"R-035"}, {"R-032"}),
    ("rrn-and-masked", mut(R, ("patient.rrn_masked", "9001011******")), {"R-033"}, set()),
    (
        "masked-malformed",
        mut(R, ("patient.rrn", DELETE), ("patient.rrn_masked", "900101-1******")),
        {"R-033"},
        set(),
    ),
    (
        "masked-only",
        mut(R, ("patient.rrn", DELETE), ("patient.rrn_masked", "9001011******")),
        {"W-021"},
        set(),
    ),
    ("rrn-absent", mut(R, ("patient.rrn", DELETE)), {"W-020"}, set()),
    (
        "issued-before-2000",
        mut(
            R,
            ("issued_on", "1999-12-31"),
            ("issued_at", DELETE),
            ("care_period", {"start": "1999-12-31", "end": "1999-12-31"}),
        ),
        {"R-035"},
        set(),
    ),
    ("w002-issued-at-date", mut(R, ("issued_at", "2025-03-13T10:00:00+09:00")), {"W-002"}, set()),
    ("w002-kst-date-same", mut(R, ("issued_at", "2025-03-13T16:00:00Z")), set(), {"W-002"}),
    ("w002-kst-date-differs", mut(R, ("issued_at", "2025-03-14T16:00:00Z")), {"W-002"}, set()),
    ("type-code-number", mut(R, ("institution.type_code", 31)), {"R-021"}, {"W-022"}),
    ("type-code-unknown", mut(R, ("institution.type_code", "99")), {"W-022"}, set()),
    ("type-code-absent", mut(R, ("institution.type_code", DELETE)), {"W-022"}, set()),
    ("null-is-omitted", mut(R, ("night_care", None)), set(), {"R-021", "R-022"}),
    ("leading-space-trimmed", mut(R, ("institution.name", " 예시가정의원 ")), set(), {"R-023"}),
    (
        "length-counted-after-nfc",
        mut(R, ("department_name", unicodedata.normalize("NFD", "가" * 50))),
        set(),
        {"R-023"},
    ),
    ("length-counted-after-trim", mut(R, ("department_name", "  " + "가" * 50 + "  ")), set(), {"R-023"}),
    ("version-float", mut(R, ("version", 1.0)), {"R-011"}, set()),
    ("date-not-padded", mut(R, ("issued_on", "2025-3-14")), {"R-024"}, set()),
    ("datetime-hour-24", mut(R, ("issued_at", "2025-03-14T24:00:00+09:00")), {"R-024"}, set()),
    ("datetime-fraction-ok", mut(R, ("issued_at", "2025-03-14T10:42:00.123+09:00")), set(), {"R-024"}),
    ("cancel-reason-201", dict(minimal_cancellation(R, 2), cancel_reason="가" * 201), {"R-023"}, set()),
    ("rrn-as-number", mut(R, ("patient.rrn", 9001011000001)), {"R-032"}, {"R-021"}),
    ("brn-as-number", mut(R, ("institution.business_reg_no", 1234567891)), {"R-031"}, {"R-021"}),
    ("brn-required-on-receipt", mut(R, ("institution.business_reg_no", DELETE)), {"R-020"}, set()),
    ("brn-optional-on-prescription", mut(P, ("institution.business_reg_no", DELETE)), set(), {"R-020"}),
    ("reg-no-required-on-receipt", mut(R, ("patient.patient_reg_no", DELETE)), {"R-020"}, set()),
    ("reg-no-optional-on-pharmacy", mut(F, ("patient.patient_reg_no", DELETE)), set(), {"R-020"}),
    ("agent-field-w001", mut(R, ("validation", {"warnings": []})), {"W-001"}, set()),
    # ---- §3 receipt
    ("r101-outpatient-bill-type", mut(R, ("inpatient_bill_type", "discharge")), {"R-101"}, set()),
    ("r101-inpatient-without", mut(R, ("visit_type", "inpatient")), {"R-101"}, {"R-020"}),
    ("r102", mut(R, ("care_period", {"start": "2025-03-14", "end": "2025-03-13"})), {"R-102"}, set()),
    ("r103", mut(R, ("care_period", {"start": "2025-03-15", "end": "2025-03-15"})), {"R-103"}, set()),
    ("w102", mut(R, ("care_period", {"start": "2025-03-14", "end": "2025-03-16"})), {"W-102"}, set()),
    ("r104-letters", mut(R, ("department_code", "2A")), {"R-104"}, {"R-029"}),
    ("r104-one-digit", mut(R, ("department_code", "1")), {"R-104"}, set()),
    ("w104", mut(R, ("department_code", "99")), {"W-104"}, set()),
    ("r105-legacy-column-in-current", mut(R, ("lines.0.selective", 0)), {"R-105"}, {"R-025"}),
    ("r105-legacy-missing", mut(R, ("amount_layout", "legacy_selective")), {"R-105"}, set()),
    ("r106-duplicate-item", mut(R, ("lines.1.item", "consultation")), {"R-106"}, set()),
    ("r106-other-optional-no-label", mut(R, ("lines.5.item", "other_optional")), {"R-106"}, set()),
    ("r108", mut(R, ("totals.copay", 9901)), {"R-108"}, set()),
    ("r109", mut(R, ("total_charge", 64501)), {"R-109"}, set()),
    ("r110-negative", mut(R, ("cap_excess", -1)), {"R-110"}, set()),
    ("r110-over-copay", mut(R, ("cap_excess", 9901)), {"R-110"}, set()),
    ("r111", mut(R, ("insurer_charge_total", 23101)), {"R-111"}, set()),
    ("r112", mut(R, ("patient_charge_total", 41401)), {"R-112"}, set()),
    ("r113", mut(R, ("amount_due", 41401)), {"R-113"}, set()),
    ("r114", mut(R, ("paid.total", 41401)), {"R-114"}, set()),
    ("r115", mut(R, ("unpaid", 1)), {"R-115"}, set()),
    ("r116-empty-lines", mut(R, ("lines", [])), {"R-116"}, {"R-020", "R-028"}),
    (
        "r117",
        mut(
            R,
            ("amount_due_rounding", 100),
            ("amount_due", 41300),
            ("paid.total", 41300),
            ("paid.card", 39900),
        ),
        {"R-117"},
        {"R-028"},
    ),
    (
        "w106-rounding",
        mut(
            R, ("amount_due_rounding", 10), ("amount_due", 41390), ("paid.total", 41390), ("paid.card", 39990)
        ),
        {"W-106"},
        set(),
    ),
    ("w107-unpaid", mut(R, ("unpaid", 400), ("paid.total", 41000), ("paid.card", 39600)), {"W-107"}, set()),
    ("w111-general", mut(R, ("patient_category", "general")), {"W-111"}, set()),
    ("w112-representative", mut(R, ("institution.representative", DELETE)), {"W-112"}, set()),
    ("w113-approval-without-cash", mut(R, ("paid.cash_receipt", 0), ("paid.card", 41400)), {"W-113"}, set()),
    ("other-category-needs-text", mut(R, ("patient_category", "other")), {"R-020"}, set()),
    ("money-negative", mut(R, ("lines.0.copay", -5400), ("totals.copay", -900)), {"R-028"}, set()),
    (
        "receipt-lines-101",
        mut(
            R,
            (
                "lines",
                [
                    dict(R["lines"][0], item="other_optional", label=f"L{i}", copay=0, insurer=0)
                    for i in range(101)
                ],
            ),
        ),
        {"R-028"},
        set(),
    ),
    # ---- §4 itemised statement
    ("rd2-within-1-silent", copy.deepcopy(D), set(), {"W-201", "R-204"}),
    ("w201", _detail_line5(2003, 603), {"W-201"}, {"R-204"}),
    ("r204", _detail_line5(2012, 612), {"R-204"}, set()),
    ("r202", mut(D, ("care_period", {"start": "2025-03-14", "end": "2025-03-13"})), {"R-202"}, {"R-102"}),
    ("r203", mut(D, ("lines.2.line_no", 2)), {"R-203"}, set()),
    ("r205", mut(D, ("lines.0.total", 18001), ("totals.total", 64501)), {"R-205"}, set()),
    ("r206", mut(D, ("totals.total", 64501)), {"R-206"}, set()),
    ("r208-item-without-date", mut(D, ("lines.0.date", DELETE)), {"R-208"}, {"R-020"}),
    ("r208-adjustment-with-date", mut(D, ("lines.7.date", "2025-03-14")), {"R-208"}, set()),
    (
        "r210",
        mut(
            D,
            ("lines.7.copay", 10000),
            ("lines.7.insurer", -10000),
            ("totals.copay", 19890),
            ("totals.insurer", 13110),
        ),
        {"R-210"},
        set(),
    ),
    ("r211", mut(D, ("lines.0.code_type", DELETE)), {"R-211"}, set()),
    ("r212", mut(D, ("lines", [])), {"R-212"}, {"R-020", "R-028"}),
    ("detail-count-0", mut(D, ("lines.0.count", "0")), {"R-028"}, set()),
    ("detail-amount-negative", mut(D, ("lines.0.amount", "-1")), {"R-028"}, set()),
    ("detail-dec-as-number", mut(D, ("lines.0.amount", 18000)), {"R-021"}, set()),
    ("detail-dec-3-fraction", mut(D, ("lines.4.amount", "666.667")), {"R-027"}, set()),
    ("detail-dec-plus", mut(D, ("lines.0.amount", "+18000")), {"R-027"}, set()),
    ("detail-dec-trailing-dot", mut(D, ("lines.0.amount", "18000.")), {"R-027"}, set()),
    ("detail-dec-leading-zero", mut(D, ("lines.0.amount", "018000")), {"R-027"}, set()),
    ("w202", mut(D, ("lines.0.date", "2025-03-13")), {"W-202"}, set()),
    ("w205", mut(D, ("lines.0.code", "AA9")), {"W-205"}, {"R-305"}),
    ("w207", mut(D, ("receipt_no", DELETE)), {"W-207"}, set()),
    # ---- §5 prescription
    ("r301-format", mut(P, ("document_no", "2025031400017")), {"R-301"}, {"R-029"}),
    ("r301-serial-0", mut(P, ("document_no", "20250314-00000")), {"R-301"}, set()),
    ("r301-date", mut(P, ("document_no", "20250230-00017")), {"R-301"}, set()),
    ("r302", mut(P, ("document_no", "20250313-00017")), {"R-302"}, set()),
    ("r303", mut(P, ("lines", []), ("injection_dispensing", DELETE)), {"R-303"}, {"R-020", "R-028"}),
    ("r304-dose-0", mut(P, ("lines.0.dose", "0")), {"R-304"}, {"R-028"}),
    ("r304-dose-large", mut(P, ("lines.0.dose", "100000")), {"R-304"}, set()),
    ("r304-daily-0", mut(P, ("lines.0.daily_count", 0)), {"R-304"}, {"R-028"}),
    ("r304-days-1000", mut(P, ("lines.0.days", 1000)), {"R-304"}, {"R-028"}),
    ("dose-5-fraction-digits", mut(P, ("lines.0.dose", "1.00001")), {"R-027"}, set()),
    ("dose-as-number", mut(P, ("lines.1.dose", 2.5)), {"R-021"}, set()),
    ("r305-code", mut(P, ("lines.0.code", "69999999")), {"R-305"}, set()),
    ("r305-code-without-type", mut(P, ("lines.0.code_type", DELETE)), {"R-305"}, set()),
    ("r307", mut(P, ("diagnosis_withheld", True)), {"R-307"}, set()),
    ("r308", mut(P, ("diagnosis_codes", ["123"])), {"R-308"}, set()),
    ("r308-normalised-ok", mut(P, ("diagnosis_codes", ["s7200"])), set(), {"R-308"}),
    (
        "diagnosis-11-codes",
        mut(P, ("diagnosis_codes", [f"J0{i % 10}.{i}" for i in range(11)])),
        {"R-028"},
        set(),
    ),
    ("diagnosis-number", mut(P, ("diagnosis_codes", [69])), {"R-308"}, {"R-021"}),
    ("license-type-number", mut(P, ("prescriber.license_type", 1)), {"R-310"}, {"R-021"}),
    (
        "prescription-lines-201",
        mut(
            P,
            ("lines", [dict(P["lines"][0], line_no=i + 1) for i in range(201)]),
            ("injection_dispensing", DELETE),
        ),
        {"R-028"},
        set(),
    ),
    ("r309-missing", mut(P, ("injection_dispensing", DELETE)), {"R-309"}, set()),
    ("r309-without-injection", mut(P, ("lines", P["lines"][:3])), {"R-309"}, set()),
    ("r310", mut(P, ("prescriber.license_type", "nurse")), {"R-310"}, {"R-026"}),
    ("r311", mut(P, ("valid_days", 0)), {"R-311"}, {"R-028"}),
    ("r311-366", mut(P, ("valid_days", 366)), {"R-311"}, set()),
    ("r312", mut(P, ("patient.rrn", DELETE)), {"R-312"}, {"W-020"}),
    (
        "r312-masked-ok",
        mut(P, ("patient.rrn", DELETE), ("patient.rrn_masked", "9001011******")),
        set(),
        {"R-312"},
    ),
    ("r313", mut(P, ("dispensing", {"dispensed_on": "2025-03-13"})), {"R-313"}, set()),
    ("r314", mut(P, ("lines.1.line_no", 1)), {"R-314"}, set()),
    ("w301", mut(P, ("diagnosis_codes", DELETE)), {"W-301"}, set()),
    ("w302", mut(P, ("valid_days", DELETE)), {"W-302"}, set()),
    ("w303", mut(P, ("valid_days", 31)), {"W-303"}, set()),
    ("w304", mut(P, ("lines.0.code", DELETE), ("lines.0.code_type", DELETE)), {"W-304"}, set()),
    ("w305", mut(P, ("lines.0.days", 181)), {"W-305"}, set()),
    ("w306", mut(P, ("copay_exemption_code", "v252")), {"W-306"}, set()),
    ("w307", mut(P, ("prescriber.license_no", "A9999")), {"W-307"}, set()),
    ("w308", mut(P, ("lines.1.code", "699999991")), {"W-308"}, set()),
    ("w309", mut(P, ("institution.type_code", "81")), {"W-309"}, set()),
    # ---- §6 pharmacy receipt
    ("r401", mut(F, ("total_charge", 12301)), {"R-401"}, set()),
    ("r402", mut(F, ("patient_charge_total", 3901)), {"R-402"}, set()),
    ("r403", mut(F, ("paid.total", 3901)), {"R-403"}, set()),
    ("r404", mut(F, ("prescription_issue_no", "20250314-17")), {"R-404"}, {"R-029"}),
    ("r404-serial-0", mut(F, ("prescription_issue_no", "20250314-00000")), {"R-404"}, set()),
    ("r405", mut(F, ("days_supplied", 0)), {"R-405"}, {"R-028"}),
    ("r406", mut(F, ("fee_breakdown", {"dispensing_fee": 1000, "drug_cost": 1000})), {"R-406"}, set()),
    ("r406-ok", mut(F, ("fee_breakdown", {"dispensing_fee": 4300, "drug_cost": 8000})), set(), {"R-406"}),
    ("r407", mut(F, ("fee_breakdown", {"dispensing_fee": -100, "drug_cost": 12400})), {"R-407"}, {"R-028"}),
    ("r408", mut(F, ("lines.1.line_no", 1)), {"R-408"}, set()),
    ("r409", mut(F, ("prescription_issue_no", "20250315-00017")), {"R-409"}, set()),
    ("prescribing-ykiho-bad", mut(F, ("prescribing_institution.ykiho", "123")), {"R-030"}, set()),
    ("w401", mut(F, ("paid.total", 3800), ("paid.card", 3800)), {"W-401"}, set()),
    ("w402", mut(F, ("dispensed_on", "2025-03-15")), {"W-402"}, set()),
    ("w403", mut(F, ("pharmacist_name", DELETE)), {"W-403"}, set()),
    ("w404", mut(F, ("institution.type_code", "31")), {"W-404"}, set()),
    (
        "w405",
        mut(F, ("dispensed_on", "2025-04-20"), ("issued_on", "2025-04-20"), ("issued_at", DELETE)),
        {"W-405"},
        set(),
    ),
    ("w406", mut(F, ("lines.1.coverage", "covered")), {"W-406"}, set()),
    ("w407", mut(F, ("lines.0.code", "abc")), {"W-407"}, set()),
    (
        "w408",
        mut(F, ("lines.0.amount", 100), ("lines.1.amount", 100), ("lines.2.amount", 100)),
        {"W-408"},
        set(),
    ),
    ("w408-not-all-lines", mut(F, ("lines.0.amount", 100)), set(), {"W-408"}),
    ("pharmacy-no-lines", mut(F, ("lines", DELETE)), set(), {"R-020", "R-303"}),
    # ---- §9.4 cancellations (minimal records)
    ("cancel-minimal-receipt", minimal_cancellation(R, 2), set(), {"W-020", "W-022", "W-112", "R-020"}),
    ("cancel-minimal-detail", minimal_cancellation(D, 2), set(), {"W-020", "W-022", "W-207", "R-020"}),
    (
        "cancel-minimal-prescription",
        minimal_cancellation(P, 2),
        set(),
        {"R-312", "W-301", "W-302", "R-020", "W-022"},
    ),
    ("cancel-minimal-pharmacy", minimal_cancellation(F, 2), set(), {"W-020", "W-022", "W-403", "R-020"}),
    (
        "cancel-with-reason",
        dict(minimal_cancellation(R, 2), cancel_reason="전액환불", revision_reason="cancellation"),
        set(),
        {"R-013"},
    ),
    ("cancel-missing-patient-name", mut(minimal_cancellation(R, 2), ("patient", {})), {"R-020"}, set()),
    (
        "cancel-present-fields-validated",
        mut(minimal_cancellation(R, 2), ("patient.rrn", "900101-1000001")),
        {"R-032"},
        set(),
    ),
]

_IDS = [c[0] for c in CASES]
assert len(_IDS) == len(set(_IDS))


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, set[str]]:
    folder = tmp_path_factory.mktemp("rules")
    paths = []
    for cid, doc, _must, _must_not in CASES:
        p = folder / f"{cid}.json"
        p.write_bytes(jdump(doc))
        paths.append(p)
    r = cli("check", *paths, cwd=folder, timeout=300)
    assert r.returncode in (0, 3), r.stderr
    out: dict[str, set[str]] = {cid: set() for cid in _IDS}
    for pr in problems(r.stdout):
        out[Path(pr["file"]).stem].add(pr["rule"])
    return out


@pytest.mark.parametrize("cid", _IDS)
def test_rule(checked, cid):
    _cid, _doc, must, must_not = next(c for c in CASES if c[0] == cid)
    got = checked[cid]
    for m in must:  # "R-029|R-023": either reading of the spec is fine
        assert set(m.split("|")) & got, f"expected {m}, got {sorted(got)}"
    assert not (must_not & got), f"must not report {sorted(must_not & got)}; got {sorted(got)}"
    if not any(x.startswith("R-") for x in must):
        assert not any(x.startswith("R-") for x in got), f"valid document rejected: {sorted(got)}"


def test_rule_cases_individually_exit_codes(tmp_path):
    """Exit status per file agrees with the batch run (3 iff an R- rule, documents.md §2.6)."""
    bad = tmp_path / "bad.json"
    bad.write_bytes(jdump(mut(R, ("total_charge", 1))))
    warn = tmp_path / "warn.json"
    warn.write_bytes(jdump(mut(R, ("institution.representative", DELETE))))
    assert cli("check", bad, cwd=tmp_path).returncode == 3
    r = cli("check", warn, cwd=tmp_path)
    assert r.returncode == 0 and "W-112" in rules_of(r)


def test_problem_paths_are_json_paths(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(jdump(mut(D, ("lines.3.total", 3001), ("totals.total", 64501))))
    r = cli("check", "--json", p, cwd=tmp_path)
    text = r.stdout
    assert "lines[3].total" in text or "lines.3.total" in text or "/lines/3/total" in text, text


# =========================================================================== §11 FHIR rendering


BASE = "https://silson-agent.invalid/fhir"
KR = "http://www.hl7korea.or.kr"


def _fhir(tmp_path: Path, doc: dict) -> dict:
    p = tmp_path / "f.json"
    p.write_bytes(jdump(doc))
    r = cli("convert", "--to", "fhir", p, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    b = out[0] if isinstance(out, list) else out
    assert "9001011000001" not in r.stdout and "900101-1" not in r.stdout
    return b


def _resources(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _resolve(bundle: dict, ref: dict) -> dict:
    target = ref["reference"]
    for e in bundle["entry"]:
        r = e["resource"]
        if e.get("fullUrl") == target or f"{r['resourceType']}/{r.get('id')}" == target:
            return r
    raise AssertionError(f"unresolved reference {target}")


def _codings(cc: dict) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in cc.get("coding", [])}


def _money(m: dict, value: int) -> None:
    assert m["value"] == value and m["currency"] == "KRW", m


def _validate_r4b(bundle: dict) -> None:
    r4b = pytest.importorskip("fhir.resources.R4B.bundle")
    r4b.Bundle.model_validate(bundle)


def test_fhir_composition_common(tmp_path):
    for name in TYPES:
        doc = example(name)
        b = _fhir(tmp_path, doc)
        comp = b["entry"][0]["resource"]
        assert comp["resourceType"] == "Composition"
        assert comp["status"] == "final"
        assert (f"{BASE}/CodeSystem/document-type", name) in _codings(comp["type"])
        ident = comp["identifier"] if isinstance(comp["identifier"], dict) else comp["identifier"][0]
        assert ident == {
            **ident,
            "system": f"{BASE}/sid/{name}/{doc['institution']['ykiho']}",
            "value": doc["document_no"],
        }
        assert comp["meta"]["versionId"] == "1" and b["meta"]["versionId"] == "1"
        assert comp.get("title")
        assert _resolve(b, comp["subject"])["resourceType"] == "Patient"
        authors = {_resolve(b, a)["resourceType"] for a in comp["author"]}
        assert "Organization" in authors
        if name == "prescription":
            assert "Practitioner" in authors
        assert comp["section"][0]["entry"]
        expected_date = doc.get("issued_at") or doc["issued_on"]
        assert comp["date"].startswith(doc["issued_on"]) and comp["date"] in (expected_date, doc["issued_on"])
        _validate_r4b(b)


def test_fhir_organization_and_patient(tmp_path):
    b = _fhir(tmp_path, example("receipt"))
    comp = b["entry"][0]["resource"]
    org = [
        o for o in _resources(b, "Organization") if any(i.get("value") == "99000001" for i in o["identifier"])
    ][0]
    ids = {(i["system"], i["value"]) for i in org["identifier"]}
    assert (f"{KR}/Identifier/hira-krnpi", "99000001") in ids
    assert (f"{BASE}/sid/business-reg-no", "1234567891") in ids
    assert org["name"] == "예시가정의원"
    assert org["address"][0]["text"] == "서울특별시 예시구 예시로 1"
    assert any(t.get("value") == "02-000-0000" for t in org["telecom"])
    assert any(
        (f"{KR}/CodeSystem/hira-healthcare-organization-types", "31") in _codings(t) for t in org["type"]
    )
    pat = _resolve(b, comp["subject"])
    assert pat["name"][0]["text"] == "홍길동"
    assert {(i["system"], i["value"]) for i in pat["identifier"]} == {
        (f"{BASE}/sid/patient-reg-no/99000001", "00012345")
    }


def test_fhir_receipt_invoice(tmp_path):
    b = _fhir(tmp_path, example("receipt"))
    inv = _resources(b, "Invoice")
    assert len(inv) == 1
    inv = inv[0]
    assert inv["status"] == "issued"
    _money(inv["totalGross"], 64500)
    _money(inv["totalNet"], 41400)
    items = inv["lineItem"]
    assert [li["sequence"] for li in items] == [1, 2, 3, 4, 5, 6]
    assert (f"{BASE}/CodeSystem/receipt-item", "consultation") in _codings(
        items[0]["chargeItemCodeableConcept"]
    )
    pcs = items[0]["priceComponent"]
    assert pcs[0]["type"] == "base"
    _money(pcs[0]["amount"], 18000)
    info = {
        c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in pcs[1:] if c["type"] == "informational"
    }
    assert info.get("copay") == 5400 and info.get("insurer") == 12600


def test_fhir_prescription_medication_requests(tmp_path):
    b = _fhir(tmp_path, example("prescription"))
    mrs = _resources(b, "MedicationRequest")
    assert len(mrs) == 4
    by_id = {}
    for mr in mrs:
        ids = mr["identifier"]
        by_id[ids[0]["value"]] = mr
    assert set(by_id) == {f"20250314-00017-{i}" for i in (1, 2, 3, 4)}
    mr = by_id["20250314-00017-2"]
    assert mr["status"] == "active" and mr["intent"] == "order"
    assert mr["groupIdentifier"]["system"] == f"{BASE}/sid/prescription/99000001"
    assert mr["groupIdentifier"]["value"] == "20250314-00017"
    assert (f"{KR}/CodeSystem/hira-edi-medication", "699999992") in _codings(mr["medicationCodeableConcept"])
    assert _resolve(b, mr["requester"])["resourceType"] == "Practitioner"
    assert mr["authoredOn"].startswith("2025-03-14")
    assert any((f"{KR}/CodeSystem/kostat-kcd-8", "J06.9") in _codings(rc) for rc in mr["reasonCode"])
    dose = mr["dosageInstruction"][0]
    assert dose["timing"]["repeat"]["frequency"] == 3
    assert dose["timing"]["repeat"]["period"] == 1 and dose["timing"]["repeat"]["periodUnit"] == "d"
    bd = dose["timing"]["repeat"]["boundsDuration"]
    assert bd["value"] == 3 and (bd.get("unit") == "d" or bd.get("code") == "d")
    dq = dose["doseAndRate"][0]["doseQuantity"]
    assert dq["value"] == 2.5 and dq.get("unit") == "mL"
    assert dose.get("text") == "1일 3회 식후 30분"
    vp = mr["dispenseRequest"]["validityPeriod"]
    assert vp["start"].startswith("2025-03-14") and vp["end"].startswith("2025-03-16")
    esd = mr["dispenseRequest"]["expectedSupplyDuration"]
    assert esd["value"] == 3
    pr = _resolve(b, mr["requester"])
    assert pr["name"][0]["text"] == "이몽룡"
    q = pr["qualification"][0]
    assert any(
        i.get("value") == "99999" and i.get("system") == f"{KR}/Identifier/mohw-md-license-id"
        for i in q["identifier"]
    )


def test_fhir_prescription_withheld_diagnosis_not_rendered(tmp_path):
    rx = example("prescription")
    rx["diagnosis_withheld"] = True
    del rx["diagnosis_codes"]
    b = _fhir(tmp_path, rx)
    for mr in _resources(b, "MedicationRequest"):
        assert not mr.get("reasonCode")


def test_fhir_pharmacy_receipt(tmp_path):
    b = _fhir(tmp_path, example("pharmacy_receipt"))
    inv = _resources(b, "Invoice")[0]
    _money(inv["totalGross"], 12300)
    _money(inv["totalNet"], 3900)
    assert _resolve(b, inv["issuer"])["name"] == "예시약국"
    assert len(inv["lineItem"]) == 3
    mds = _resources(b, "MedicationDispense")
    assert len(mds) == 3
    md = mds[0]
    assert md["whenHandedOver"].startswith("2025-03-14")
    assert md["daysSupply"]["value"] == 3
    auth = md["authorizingPrescription"][0]["identifier"]
    assert auth == {**auth, "system": f"{BASE}/sid/prescription/99000001", "value": "20250314-00017"}
    perf = _resolve(b, md["performer"][0]["actor"])
    assert perf["resourceType"] == "Practitioner" and perf["name"][0]["text"] == "성춘향"
    _validate_r4b(b)


def test_fhir_pharmacy_receipt_without_lines_has_one_of_each(tmp_path):
    ph = example("pharmacy_receipt")
    del ph["lines"]
    b = _fhir(tmp_path, ph)
    assert len(_resources(b, "Invoice")[0]["lineItem"]) == 1
    assert len(_resources(b, "MedicationDispense")) == 1
    _validate_r4b(b)


def test_fhir_receipt_detail(tmp_path):
    b = _fhir(tmp_path, example("receipt_detail"))
    cis = _resources(b, "ChargeItem")
    assert len(cis) == 7
    assert all(ci["status"] == "billed" for ci in cis)
    codes = [_codings(ci["code"]) for ci in cis]
    assert (f"{KR}/CodeSystem/hira-edi-procedure", "AA999") in codes[0]
    assert (f"{KR}/CodeSystem/hira-edi-medication", "699999994") in codes[4]
    assert (f"{KR}/CodeSystem/hira-edi-material", "J9999999") in codes[5]
    assert (f"{BASE}/CodeSystem/local-item/99000001", "NC-0001") in codes[6]
    _money(cis[0]["priceOverride"], 18000)
    assert cis[4]["quantity"]["value"] == 3
    inv = _resources(b, "Invoice")[0]
    refs = [li for li in inv["lineItem"] if "chargeItemReference" in li]
    assert len(refs) == 7
    adj = [li for li in inv["lineItem"] if "chargeItemCodeableConcept" in li]
    assert adj and (f"{BASE}/CodeSystem/receipt-item", "rounding_adjustment") in _codings(
        adj[0]["chargeItemCodeableConcept"]
    )
    _validate_r4b(b)


def test_fhir_cancelled_is_tombstone(tmp_path):
    b = _fhir(tmp_path, minimal_cancellation(R, 2))
    comp = b["entry"][0]["resource"]
    assert comp["status"] == "entered-in-error"
    assert "subject" not in comp and "section" not in comp
    kinds = {e["resource"]["resourceType"] for e in b["entry"]}
    assert kinds == {"Composition", "Organization"}
    assert "홍길동" not in json.dumps(b, ensure_ascii=False)
    assert b["meta"]["versionId"] == "2"


def test_fhir_same_version_renders_identically(tmp_path):
    a = _fhir(tmp_path, example("prescription"))
    b = _fhir(tmp_path, example("prescription"))
    assert a == b


# =========================================================================== §9.5 version rules inside one file (check)


def _check_rules(tmp_path: Path, docs: list[dict]) -> tuple[int, set[str]]:
    p = tmp_path / "v.json"
    p.write_bytes(jdump(docs))
    r = cli("check", p, cwd=tmp_path)
    return r.returncode, rules_of(r)


def test_check_reports_conflict_inside_one_file(tmp_path):
    b = copy.deepcopy(R)
    b["remarks"] = "다른 내용"
    code, rules = _check_rules(tmp_path, [R, b])
    assert code == 3 and "R-010" in rules


def test_check_reports_identity_swap_inside_one_file(tmp_path):
    b = mut(R, ("version", 2), ("patient.rrn", "9203152000003"))
    code, rules = _check_rules(tmp_path, [R, b])
    assert code == 3 and "R-014" in rules


def test_check_flags_a_name_change_between_versions_inside_one_file(tmp_path):
    b = mut(R, ("version", 2), ("patient.name", "홍길순"))
    code, rules = _check_rules(tmp_path, [R, b])
    assert code == 0 and "W-011" in rules  # a warning: the file is still valid


def test_check_flags_reactivation_after_a_cancellation_inside_one_file(tmp_path):
    code, rules = _check_rules(tmp_path, [R, minimal_cancellation(R, 2), mut(R, ("version", 3))])
    assert code == 0 and "W-013" in rules and "W-011" not in rules


def test_check_does_not_guess_w012_for_a_lone_cancellation(tmp_path):
    # Offline, the earlier version may already be stored by the agent (decision 39).
    code, rules = _check_rules(tmp_path, [minimal_cancellation(R, 2)])
    assert code == 0 and "W-012" not in rules


def test_check_same_record_twice_is_fine(tmp_path):
    code, rules = _check_rules(tmp_path, [R, R])
    assert code == 0
