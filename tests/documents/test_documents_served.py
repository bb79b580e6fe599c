"""§9.6 served form and tombstone: minimisation of what the relay sees."""

from __future__ import annotations

import json

from agent.documents.served import served_form, tombstone

from ._examples import example


def test_served_form_masks_rrn_drops_source_and_reduces_validation() -> None:
    doc = example("receipt", keep_agent_fields=True)
    doc["validation"] = {"warnings": [{"rule": "W-104", "path": "department_code"}], "cross_warnings": []}
    served = served_form(doc)
    assert "source" not in served
    assert "rrn" not in served["patient"] and served["patient"]["rrn_masked"] == "9001011******"
    assert served["validation"] == {"warnings": ["W-104"], "cross_warnings": []}
    assert doc["patient"]["rrn"] == "9001011000001"  # input untouched
    assert "9001011000001" not in json.dumps(served)


def test_tombstone_has_key_and_no_patient_data() -> None:
    doc = example("receipt", keep_agent_fields=True) | {"status": "cancelled", "version": 2}
    t = tombstone(doc)
    assert t == {
        "document_type": "receipt",
        "document_no": "202503-000123",
        "institution": {"ykiho": "99000001"},
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "received_at": "2025-03-14T18:05:12+09:00",
    }
    text = json.dumps(t, ensure_ascii=False)
    assert "홍길동" not in text and "9001011" not in text
