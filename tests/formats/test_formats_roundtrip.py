"""Writers and readers are inverse: JSON → CSV → XML → JSON is lossless for valid documents, and
every serialisation of one document reads to the identical dict (exports.md §2)."""

from __future__ import annotations

import copy
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.formats import read_export, write_export, write_exports_by_type
from agent.formats.text import clean_text
from tests.formats.formats_testdata import TYPES, example, examples

FORMATS = ("json", "jsonl", "xml", "csv")


def through(docs: list[dict[str, Any]], fmt: str, encoding: str = "utf-8") -> list[dict[str, Any]]:
    result = read_export(write_export(docs, format=fmt, encoding=encoding), file_name=f"t.{fmt}")
    assert result.problems == [], (fmt, result.problems)
    return [r.document for r in result.records]


@pytest.mark.parametrize("document_type", TYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_example_round_trips_in_each_format(document_type: str, fmt: str) -> None:
    doc = example(document_type)
    assert through([doc], fmt) == [doc]
    assert through([doc], fmt, "cp949") == [doc]


@pytest.mark.parametrize("document_type", TYPES)
def test_json_csv_xml_json_chain_is_lossless(document_type: str) -> None:
    doc = example(document_type)
    via_csv = through(through([doc], "json"), "csv")
    via_xml = through(via_csv, "xml")
    assert through(via_xml, "json") == [doc]


def test_pharmacy_receipt_without_lines_round_trips_through_csv() -> None:
    doc = example("pharmacy_receipt")
    del doc["lines"]
    second = copy.deepcopy(example("pharmacy_receipt"))
    second["document_no"] = "P202503-000043"
    assert through([doc, second], "csv") == [doc, second]


def test_write_exports_by_type_gives_one_csv_per_type() -> None:
    files = write_exports_by_type(examples(), format="csv")
    assert list(files) == list(TYPES)
    for document_type, data in files.items():
        docs = [r.document for r in read_export(data, file_name="x.csv").records]
        assert docs == [example(document_type)]


def test_csv_writer_rejects_duplicate_keys_and_semicolons() -> None:
    doc = example("prescription")
    with pytest.raises(ValueError):
        write_export([doc, doc], format="csv")
    bad = copy.deepcopy(doc)
    bad["diagnosis_codes"] = ["A;B"]
    with pytest.raises(ValueError):
        write_export([bad], format="csv")


# -------------------------------------------------------------------- hypothesis variations


def _is_clean(text: str) -> bool:
    return bool(text) and clean_text(text) == text and unicodedata.normalize("NFC", text) == text


clean_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co")), min_size=1, max_size=30
).filter(_is_clean)
money = st.integers(min_value=-99_999_999_999, max_value=99_999_999_999)


def _vary(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Replace every leaf with a random value of the same JSON kind; drop some lines."""

    def leaf(value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return data.draw(st.booleans(), label=path)
        if isinstance(value, int):
            return data.draw(money, label=path)
        if isinstance(value, str):
            if path == ".document_type":
                return value
            return data.draw(clean_texts, label=path)
        if isinstance(value, dict):
            return {k: leaf(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            items = [leaf(v, f"{path}[]") for v in value]
            if path == ".diagnosis_codes":
                items = [i.replace(";", "") or "X" for i in items if clean_text(i.replace(";", ""))] or ["X"]
            keep = data.draw(st.integers(min_value=1, max_value=len(items)), label=f"{path} len")
            return items[:keep]
        return value

    return leaf(doc, "")  # paths start with "." (".patient.name")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), document_type=st.sampled_from(TYPES))
def test_varied_documents_round_trip_through_every_format(data: st.DataObject, document_type: str) -> None:
    doc = _vary(example(document_type), data)
    for fmt in FORMATS:
        assert through([doc], fmt) == [doc], fmt
    chain = through(through(through([doc], "json"), "csv"), "xml")
    assert through(chain, "json") == [doc]
