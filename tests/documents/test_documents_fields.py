"""The field table: field_kind answers, and docs/standard-format.md is generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.documents.fields import DOCUMENT_TYPES, KINDS, all_paths, field_kind, markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "standard-format.md"


@pytest.mark.parametrize(
    ("document_type", "path", "kind"),
    [
        ("receipt_detail", ("lines", "amount"), "dec"),
        ("receipt", ("lines", "copay"), "int"),
        ("receipt", ("patient", "rrn"), "str"),
        ("prescription", ("diagnosis_codes",), "array_str"),
        ("prescription", ("lines",), "array_object"),
        ("receipt", ("care_period",), "object"),
        ("receipt", ("care_period", "start"), "date"),
        ("receipt", ("issued_at",), "datetime"),
        ("receipt", ("night_care",), "bool"),
        ("pharmacy_receipt", ("fee_breakdown", "drug_cost"), "int"),
        ("pharmacy_receipt", ("prescribing_institution", "ykiho"), "str"),
        ("prescription", ("dispensing", "dispensed_on"), "date"),
        ("receipt", ("source",), "object"),
        ("receipt", ("source", "record_index"), "int"),
        ("receipt", ("received_at",), "datetime"),
        ("receipt", ("content_hash",), "str"),
        ("receipt", ("validation",), "object"),
        ("receipt", ("institution", "fax"), "str"),
        ("receipt_detail", ("totals", "total"), "int"),
    ],
)
def test_field_kind(document_type: str, path: tuple[str, ...], kind: str) -> None:
    assert field_kind(document_type, path) == kind


@pytest.mark.parametrize(
    ("document_type", "path"),
    [
        ("receipt", ("diagnosis_codes",)),
        ("prescription", ("totals",)),
        ("receipt", ("lines", "amount")),
        ("receipt", ("colour",)),
        ("invoice", ("document_no",)),
        ("receipt", ()),
    ],
)
def test_field_kind_none_for_unknown(document_type: str, path: tuple[str, ...]) -> None:
    assert field_kind(document_type, path) is None


def test_every_path_has_a_known_kind() -> None:
    for t in DOCUMENT_TYPES:
        for path in all_paths(t):
            assert field_kind(t, path) in KINDS


def test_standard_format_doc_is_up_to_date() -> None:
    assert DOC.read_text("utf-8") == markdown(), (
        "run: python -m agent.documents.fields --markdown > docs/standard-format.md"
    )
