"""Behaviour of validate_document beyond the one-rule-per-mutation table: robustness, §2.6
specific-before-generic, §9.4 cancellation records, text hygiene (R-023), canonical form."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.documents.validate import round_half_up, trunc10, validate_document

from ._examples import RECEIVED_AT, example

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize("value", [None, 1, "x", [], [{}], True, 1.5])
def test_non_object_input_gives_a_problem_not_an_exception(value: object) -> None:
    result = validate_document(value, received_at=RECEIVED_AT)  # type: ignore[arg-type]
    assert not result.ok and result.document is None


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_never_raises_on_any_json_value(value: object) -> None:
    validate_document(value, received_at=RECEIVED_AT)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["receipt", "receipt_detail", "prescription", "pharmacy_receipt"]),
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), min_size=1, max_size=3
    ),
    json_values,
)
def test_never_raises_when_any_field_is_replaced(document_type: str, path: list[str], value: object) -> None:
    doc = example(document_type)
    target = doc
    for key in path[:-1]:
        nxt = target.get(key) if isinstance(target, dict) else None
        if not isinstance(nxt, dict):
            break
        target = nxt
    target[path[-1]] = value
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert all(p.rule[:2] in ("R-", "W-") for p in result.problems)


def test_messages_never_contain_values() -> None:
    doc = example("receipt")
    doc["patient"]["rrn"] = "9013011000009"
    doc["patient"]["name"] = " 홍길동"
    result = validate_document(doc, received_at=RECEIVED_AT)
    text = json.dumps([p.message + p.path for p in result.problems], ensure_ascii=False)
    assert "9013011000009" not in text and "홍길동" not in text
    assert {p.rule for p in result.problems} == {"R-032", "R-023"}


def test_paths_index_lines() -> None:
    doc = example("receipt_detail")
    doc["lines"][3]["total"] = 3001
    doc["totals"]["total"] = 64501
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert [(p.rule, p.path) for p in result.problems] == [("R-205", "lines[3].total")]


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda d: d.__setitem__("version", "1"), "R-011"),
        (lambda d: d.__setitem__("status", 1), "R-012"),
        (lambda d: d.__setitem__("document_type", 3), "R-005"),
        (lambda d: d.__delitem__("schema_version"), "R-006"),
        (lambda d: d.__setitem__("schema_version", 1.0), "R-006"),
        (lambda d: d["institution"].__setitem__("ykiho", 99000001), "R-030"),
        (lambda d: d["institution"].__setitem__("business_reg_no", "123-45-67891"), "R-031"),
        (lambda d: d["patient"].__setitem__("rrn", "900101-1000001"), "R-032"),
        (lambda d: d.__setitem__("department_code", 23), "R-104"),
    ],
)
def test_specific_rule_replaces_generic_rule(mutate, rule: str) -> None:
    doc = example("receipt")
    mutate(doc)
    assert {p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems} == {rule}


def test_type_code_as_number_is_r021_only() -> None:
    doc = example("receipt")
    doc["institution"]["type_code"] = 31
    assert {p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems} == {"R-021"}


def test_schema_version_1_1_is_accepted() -> None:
    doc = example("receipt")
    doc["schema_version"] = "1.1"
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []


def test_birth_date_after_issue_is_r035_not_r032() -> None:
    doc = example("receipt")
    doc["patient"]["rrn"] = "2503153000001"  # 2025-03-15, one day after issued_on
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-035"]


@pytest.mark.parametrize("rrn", ["0001013000001", "9001015000001", "0402297000001"])
def test_valid_rrn_forms_are_accepted(rrn: str) -> None:
    doc = example("receipt")
    doc["patient"]["rrn"] = rrn
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []


@pytest.mark.parametrize("rrn", ["9001019000001", "9001010000001", "0502303000001", "900101100000"])
def test_invalid_rrn_forms_are_r032(rrn: str) -> None:
    doc = example("receipt")
    doc["patient"]["rrn"] = rrn
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-032"]


@pytest.mark.parametrize(
    "text", ["예시\x00의원", "예시\n의원", "예시\u0085의원", "e\u0301", "x" * 101, "예시의원\u3000"]
)
def test_text_hygiene_is_r023(text: str) -> None:
    doc = example("receipt")
    doc["institution"]["name"] = text
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-023"]


def test_multiline_field_allows_lf_only() -> None:
    doc = example("receipt")
    doc["remarks"] = "첫째 줄\n둘째 줄"
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []
    doc["remarks"] = "첫째 줄\r\n둘째 줄"
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-023"]


def test_max_length_counts_code_points() -> None:
    doc = example("receipt")
    doc["institution"]["name"] = "가" * 100
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []


def test_null_means_absent_and_is_not_in_canonical_form() -> None:
    doc = example("receipt")
    doc["room"] = None
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert result.problems == [] and "room" not in result.document
    assert result.content_hash == validate_document(example("receipt"), received_at=RECEIVED_AT).content_hash


def test_null_for_required_field_is_r020() -> None:
    doc = example("receipt")
    doc["visit_type"] = None
    assert [(p.rule, p.path) for p in validate_document(doc, received_at=RECEIVED_AT).problems] == [
        ("R-020", "visit_type")
    ]


def test_decimals_are_canonical_and_hash_alike() -> None:
    a = example("prescription")
    b = example("prescription")
    b["lines"][1]["dose"] = "2.50"
    b["lines"][0]["dose"] = "1.0"
    ra, rb = (validate_document(x, received_at=RECEIVED_AT) for x in (a, b))
    assert rb.ok and rb.document["lines"][1]["dose"] == "2.5" and rb.document["lines"][0]["dose"] == "1"
    assert ra.content_hash == rb.content_hash


def test_kcd_codes_are_normalised_before_checking() -> None:
    doc = example("prescription")
    doc["diagnosis_codes"] = ["j069", "A01†", "S72.00"]
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert result.ok and result.document["diagnosis_codes"] == ["J06.9", "A01", "S72.00"]


def test_empty_optional_array_is_no_value() -> None:
    doc = example("pharmacy_receipt")
    doc["lines"] = []
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert result.problems == [] and "lines" not in result.document


def test_explicit_false_stays_and_changes_the_hash() -> None:
    a = example("receipt")
    b = example("receipt")
    del b["night_care"]
    ra, rb = (validate_document(x, received_at=RECEIVED_AT) for x in (a, b))
    assert ra.document["night_care"] is False and "night_care" not in rb.document
    assert ra.content_hash != rb.content_hash


def test_money_with_fraction_or_as_string_is_r021() -> None:
    for value in (64500.0, "64500", True):
        doc = example("receipt")
        doc["total_charge"] = value
        assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-021"]


def test_decimal_as_json_number_is_r021_and_malformed_is_r027() -> None:
    doc = example("prescription")
    doc["lines"][0]["dose"] = 1
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-021"]
    for bad in ("+1", "1.", "01", "1e3", "1.00001", "1234567890"):
        doc = example("prescription")
        doc["lines"][0]["dose"] = bad
        assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-027"], bad


@pytest.mark.parametrize("value", ["2025-02-29", "2025-3-14", "20250314", "2025-03-14T00:00:00"])
def test_bad_dates_are_r024(value: str) -> None:
    doc = example("receipt")
    doc["care_period"]["start"] = value
    assert "R-024" in {p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems}


@pytest.mark.parametrize(
    "value", ["2025-03-14T10:42+09:00", "2025-03-14T10:42:00", "2025-03-14T10:42:60.5+24:00"]
)
def test_bad_datetimes_are_r024(value: str) -> None:
    doc = example("receipt")
    doc["issued_at"] = value
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-024"]


def test_issued_at_in_utc_with_same_kst_date_is_fine() -> None:
    doc = example("receipt")
    doc["issued_at"] = "2025-03-13T15:30:00Z"  # 2025-03-14 00:30 KST
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []


def test_future_document_uses_kst_date_of_received_at() -> None:
    doc = example("receipt")
    # 2025-03-13 16:00 UTC is already 2025-03-14 in Korea: not from the future.
    assert validate_document(doc, received_at=dt.datetime(2025, 3, 13, 16, 0, tzinfo=dt.UTC)).ok
    assert not validate_document(doc, received_at=dt.datetime(2025, 3, 13, 14, 0, tzinfo=dt.UTC)).ok


def test_array_limits() -> None:
    doc = example("prescription")
    doc["diagnosis_codes"] = ["J06.9"] * 11
    assert [p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems] == ["R-028"]


def test_cancellation_record_needs_only_the_listed_fields() -> None:
    record = {
        "schema_version": "1.0",
        "document_type": "prescription",
        "document_no": "20250314-00017",
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "cancel_reason": "환자 요청",
        "institution": {"ykiho": "99000001", "name": "예시가정의원"},
        "patient": {"name": "홍길동"},
    }
    result = validate_document(record, received_at=RECEIVED_AT)
    # W-022 for an absent type_code, W-301/W-302 and R-312 are not raised on cancellation records.
    assert result.problems == []
    for document_type, no in (
        ("receipt", "202503-000123"),
        ("receipt_detail", "202503-000123"),
        ("pharmacy_receipt", "P202503-000042"),
    ):
        r = validate_document(
            record | {"document_type": document_type, "document_no": no}, received_at=RECEIVED_AT
        )
        assert r.problems == [], document_type


def test_cancellation_record_fields_that_are_present_are_validated() -> None:
    record = example("receipt")
    record["status"] = "cancelled"
    record["total_charge"] = 1
    del record["patient"]["rrn"]
    assert {p.rule for p in validate_document(record, received_at=RECEIVED_AT).problems} == {"R-109"}


def test_cancellation_record_missing_listed_field_is_r020() -> None:
    record = {
        "schema_version": "1.0",
        "document_type": "receipt",
        "document_no": "202503-000123",
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "institution": {"ykiho": "99000001"},
        "patient": {"name": "홍길동"},
    }
    assert [(p.rule, p.path) for p in validate_document(record, received_at=RECEIVED_AT).problems] == [
        ("R-020", "institution.name")
    ]


def test_other_optional_lines_need_distinct_labels() -> None:
    doc = example("receipt")
    doc["lines"][5]["item"] = "other_optional"
    assert [(p.rule, p.path) for p in validate_document(doc, received_at=RECEIVED_AT).problems] == [
        ("R-106", "lines[5].label")
    ]
    doc["lines"][5]["label"] = "도수치료"
    doc["lines"].append(
        {
            "item": "other_optional",
            "label": "도수치료",
            "copay": 0,
            "insurer": 0,
            "full_copay": 0,
            "non_covered": 0,
        }
    )
    assert [(p.rule, p.path) for p in validate_document(doc, received_at=RECEIVED_AT).problems] == [
        ("R-106", "lines[6].label")
    ]


def test_legacy_receipt_is_valid_and_current_columns_required() -> None:
    from ._examples import legacy

    doc = legacy(example("receipt"))
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []
    del doc["lines"][0]["selective"]
    assert [(p.rule, p.path) for p in validate_document(doc, received_at=RECEIVED_AT).problems] == [
        ("R-105", "lines[0].selective")
    ]


def test_rd2_bands() -> None:
    for amount, rules in (
        ("18001", set()),
        ("18002", {"W-201"}),
        ("18010", {"W-201"}),
        ("18011", {"R-204"}),
        ("17990", {"W-201"}),
        ("17989", {"R-204"}),
    ):
        doc = example("receipt_detail")
        doc["lines"][0]["amount"] = amount
        assert {p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems} == rules, amount


def test_rd2_uses_dose_and_exact_decimal_half_up() -> None:
    doc = example("receipt_detail")
    line = doc["lines"][4]  # 666.67 × 3 = 2000.01 → 2000
    line["dose"] = "0.5"
    line["count"] = "6"
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []


def test_round_half_up_and_trunc10() -> None:
    from decimal import Decimal

    assert round_half_up(Decimal("2.5")) == 3
    assert round_half_up(Decimal("-2.5")) == -3
    assert round_half_up(Decimal("2.4999")) == 2
    assert round_half_up(Decimal("0.1") * 3) == 0
    assert trunc10(1803) == 1800 and trunc10(-1803) == -1800 and trunc10(Decimal("1197.9")) == 1190


def test_r102_does_not_hide_the_rules_on_each_end_of_the_period() -> None:
    """§2.6: R-103 (start after issued_on) and W-102 (end after issued_on) hold on their own even
    when the period is also inverted (R-102); an inverted detail period marks no line W-202."""

    d = example("receipt")
    d["care_period"] = {"start": "2025-03-16", "end": "2025-03-15"}  # issued_on 2025-03-14
    rules = {p.rule for p in validate_document(d, received_at=RECEIVED_AT).problems}
    assert {"R-102", "R-103", "W-102"} <= rules
    det = example("receipt_detail")
    det["care_period"] = {"start": "2025-03-14", "end": "2025-03-13"}
    rules = {p.rule for p in validate_document(det, received_at=RECEIVED_AT).problems}
    assert "R-202" in rules and "W-202" not in rules
