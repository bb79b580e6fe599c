"""The four spec examples are valid, hash to their golden content_hash (§9.3) and fit the schema."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from agent.documents.canonical import canonical_bytes, content_hash
from agent.documents.schema import json_schema
from agent.documents.validate import validate_document

from ._examples import RECEIVED_AT, example

TYPES = ["receipt", "receipt_detail", "prescription", "pharmacy_receipt"]


@pytest.mark.parametrize("document_type", TYPES)
def test_example_validates_with_only_agent_field_warnings(document_type: str) -> None:
    result = validate_document(example(document_type, keep_agent_fields=True), received_at=RECEIVED_AT)
    assert result.ok
    assert {(p.rule, p.path) for p in result.problems} == {
        ("W-001", "source"),
        ("W-001", "received_at"),
        ("W-001", "content_hash"),
        ("W-001", "validation"),
    }


@pytest.mark.parametrize("document_type", TYPES)
def test_example_content_hash_is_the_golden_value(document_type: str) -> None:
    doc = example(document_type, keep_agent_fields=True)
    golden = doc["content_hash"]
    assert content_hash(doc) == golden
    result = validate_document(doc, received_at=RECEIVED_AT)
    assert result.content_hash == golden
    assert result.document is not None and "source" not in result.document


@pytest.mark.parametrize("document_type", TYPES)
def test_canonical_bytes_are_sorted_compact_utf8(document_type: str) -> None:
    data = canonical_bytes(example(document_type))
    assert b", " not in data and b": " not in data
    assert "홍길동".encode() in data  # non-ASCII not escaped
    assert data.startswith(b'{"document_no"') or data.startswith(b'{"days_supplied"') or data[:2] == b'{"'


@pytest.mark.parametrize("document_type", TYPES)
def test_example_validates_against_its_json_schema(document_type: str) -> None:
    doc = example(document_type, keep_agent_fields=True)
    assert list(Draft202012Validator(json_schema(document_type)).iter_errors(doc)) == []
    assert list(Draft202012Validator(json_schema(None)).iter_errors(doc)) == []


def test_schema_declares_draft_2020_12_and_is_valid() -> None:
    for t in [*TYPES, None]:
        schema = json_schema(t)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_schema_rejects_unknown_field_and_wrong_type() -> None:
    validator = Draft202012Validator(json_schema("receipt"))
    doc = example("receipt")
    doc["colour"] = "blue"
    assert not validator.is_valid(doc)
    doc = example("receipt")
    doc["total_charge"] = "64500"
    assert not validator.is_valid(doc)
    doc = example("receipt")
    doc["document_type"] = "prescription"
    assert not validator.is_valid(doc)


def test_schema_accepts_a_minimal_cancellation_record() -> None:
    record = {
        "schema_version": "1.0",
        "document_type": "receipt",
        "document_no": "202503-000123",
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "institution": {"ykiho": "99000001", "name": "예시가정의원"},
        "patient": {"name": "홍길동"},
    }
    assert Draft202012Validator(json_schema("receipt")).is_valid(record)
    assert not Draft202012Validator(json_schema("receipt")).is_valid(record | {"status": "active"})
