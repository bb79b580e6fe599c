"""§9 version decisions and §9.4 cancellation merge."""

from __future__ import annotations

from agent.documents.canonical import content_hash
from agent.documents.validate import validate_document
from agent.documents.versions import StoredVersion, decide_version, merge_cancellation

from ._examples import RECEIVED_AT, example


def canonical(doc: dict) -> tuple[dict, str]:
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert result.ok
    return result.document, result.content_hash


def stored_of(doc: dict, status: str = "active") -> StoredVersion:
    return StoredVersion(doc["version"], content_hash(doc), status)


def rules(decision) -> set[str]:
    return {p.rule for p in decision.problems}


def test_first_version_is_new() -> None:
    doc, h = canonical(example("receipt"))
    d = decide_version(doc, h, [], None)
    assert d.action == "new" and d.problems == []


def test_identical_reexport_is_duplicate() -> None:
    doc, h = canonical(example("receipt"))
    d = decide_version(doc, h, [stored_of(doc)], doc)
    assert d.action == "duplicate" and d.problems == []


def test_same_version_other_content_is_r010() -> None:
    v1, _ = canonical(example("receipt"))
    changed = example("receipt")
    del changed["night_care"]  # omitting an explicit false is a content change (§9.3)
    doc, h = canonical(changed)
    d = decide_version(doc, h, [stored_of(v1)], v1)
    assert d.action == "conflict" and rules(d) == {"R-010"}


def test_older_unknown_version_is_r010_but_equal_older_is_duplicate() -> None:
    v1, _ = canonical(example("receipt"))
    v3 = example("receipt") | {"version": 3}
    v3c, _ = canonical(v3)
    older = example("receipt") | {"version": 2}
    doc, h = canonical(older)
    assert rules(decide_version(doc, h, [stored_of(v1), stored_of(v3c)], v3c)) == {"R-010"}
    assert decide_version(v1, content_hash(v1), [stored_of(v1), stored_of(v3c)], v3c).action == "duplicate"


def test_higher_version_is_new_and_name_change_is_w011() -> None:
    v1, _ = canonical(example("receipt"))
    v2 = example("receipt") | {"version": 2}
    v2["patient"]["name"] = "홍 길 동"  # white space is not a change (§2.1)
    doc, h = canonical(v2)
    assert decide_version(doc, h, [stored_of(v1)], v1).problems == []
    v2["patient"]["name"] = "홍길순"
    v2["patient"]["patient_reg_no"] = "00099999"
    doc, h = canonical(v2)
    d = decide_version(doc, h, [stored_of(v1)], v1)
    assert d.action == "new" and [p.path for p in d.problems] == ["patient.name", "patient.patient_reg_no"]
    assert rules(d) == {"W-011"}


def test_rrn_change_is_r014_but_cancellation_without_rrn_is_not() -> None:
    v1, _ = canonical(example("receipt"))
    v2 = example("receipt") | {"version": 2}
    v2["patient"]["rrn"] = "9202022000001"
    doc, h = canonical(v2)
    assert rules(decide_version(doc, h, [stored_of(v1)], v1)) == {"R-014"}
    cancel = cancellation_record()
    doc, h = canonical(cancel)
    d = decide_version(doc, h, [stored_of(v1)], v1)
    assert d.action == "new" and d.problems == []


def cancellation_record() -> dict:
    return {
        "schema_version": "1.0",
        "document_type": "receipt",
        "document_no": "202503-000123",
        "version": 2,
        "status": "cancelled",
        "revision_reason": "cancellation",
        "cancel_reason": "전액환불",
        "issued_on": "2025-03-14",
        "institution": {"ykiho": "99000001", "name": "예시가정의원"},
        "patient": {"name": "홍길동"},
    }


def test_cancellation_for_unknown_key_is_stored_with_w012_and_later_original_conflicts() -> None:
    doc, h = canonical(cancellation_record())
    d = decide_version(doc, h, [], None)
    assert d.action == "new" and rules(d) == {"W-012"}
    v1, h1 = canonical(example("receipt"))
    assert rules(decide_version(v1, h1, [StoredVersion(2, h, "cancelled")], doc)) == {"R-010"}


def test_reactivation_is_w013() -> None:
    cancel, hc = canonical(cancellation_record())
    v3 = example("receipt") | {"version": 3}
    doc, h = canonical(v3)
    d = decide_version(doc, h, [StoredVersion(1, "x", "active"), StoredVersion(2, hc, "cancelled")], cancel)
    assert d.action == "new" and rules(d) == {"W-013"}


def test_merge_cancellation_keeps_previous_content_and_cancel_fields_win() -> None:
    v1, _ = canonical(example("receipt"))
    cancel = cancellation_record()
    merged = merge_cancellation(v1, cancel)
    assert merged["status"] == "cancelled" and merged["version"] == 2
    assert merged["cancel_reason"] == "전액환불" and merged["total_charge"] == 64500
    assert merged["patient"]["rrn"] == "9001011000001"
    # the hash is over the record as received, so a re-export is a duplicate
    assert content_hash(cancel) != content_hash(merged)
    assert (
        decide_version(
            cancel, content_hash(cancel), [StoredVersion(2, content_hash(cancel), "cancelled")], merged
        ).action
        == "duplicate"
    )
