"""JSON and JSONL readers (exports.md §2, security.md §9)."""

from __future__ import annotations

import json
import time

import pytest

from agent.formats import read_export
from tests.formats.formats_testdata import example


def rules(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.rule for p in result.problems]


def test_single_object_is_one_record() -> None:
    doc = example("receipt")
    result = read_export(json.dumps(doc).encode(), file_name="r.json")
    assert result.format == "json" and result.problems == []
    assert [(r.index, r.document) for r in result.records] == [(0, doc)]


def test_array_gives_records_in_order() -> None:
    docs = [example("receipt"), example("prescription")]
    result = read_export(json.dumps(docs).encode(), file_name="r.JSON")
    assert [r.index for r in result.records] == [0, 1]
    assert [r.document for r in result.records] == docs


@pytest.mark.parametrize("content", [b"", b"  \n", b"[]", b"[ ]"])
def test_zero_records_is_r004(content: bytes) -> None:
    assert rules(read_export(content, file_name="e.json")) == ["R-004"]


def test_duplicate_key_is_r004() -> None:
    result = read_export(b'{"document_no": "1", "patient": {"name": "a", "name": "b"}}', file_name="d.json")
    assert rules(result) == ["R-004"] and list(result.records) == []


def test_10000_deep_json_is_r004_without_recursion_error() -> None:
    data = b"[" * 10000 + b"]" * 10000
    started = time.monotonic()
    assert rules(read_export(data, file_name="deep.json")) == ["R-004"]
    assert time.monotonic() - started < 2


def test_depth_32_is_allowed_and_33_is_not() -> None:
    ok = b'{"a":' * 31 + b"[1]" + b"}" * 31  # 31 objects + 1 array = 32
    assert rules(read_export(ok, file_name="d.json")) == []
    bad = b'{"a":' * 32 + b"[1]" + b"}" * 32
    assert rules(read_export(bad, file_name="d.json")) == ["R-004"]


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    doc = {"remarks": "[" * 100 + '{"' * 50}
    result = read_export(json.dumps(doc).encode(), file_name="s.json")
    assert rules(result) == []


def test_string_longer_than_1_mib_is_r004() -> None:
    data = json.dumps({"remarks": "가" * (1024 * 1024 // 3 + 10)}, ensure_ascii=False).encode()
    assert rules(read_export(data, file_name="s.json")) == ["R-004"]
    fine = json.dumps({"remarks": "a" * (1024 * 1024 - 10)}).encode()
    assert rules(read_export(fine, file_name="s.json")) == []


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_r004(literal: bytes) -> None:
    assert rules(read_export(b'{"total_charge": ' + literal + b"}", file_name="n.json")) == ["R-004"]


@pytest.mark.parametrize("content", [b"not json", b"<documents/>", b'{"a": 1', b"42", b'"text"', b"[1, 2]"])
def test_json_extension_with_other_content_is_r004(content: bytes) -> None:
    result = read_export(content, file_name="x.json")
    assert result.problems and set(rules(result)) == {"R-004"}


def test_strings_are_nfc_normalised_and_trimmed_empty_stays_empty() -> None:
    nfd = "\u1112\u1169\u11bc\u1100\u1175\u11af\u1103\u1169\u11bc"  # 홍길동 decomposed
    data = json.dumps(
        {"patient": {"name": "\u3000 " + nfd + "\t"}, "remarks": "  ", "lines": [{"name": " x "}]}
    )
    doc = next(iter(read_export(data.encode(), file_name="n.json").records)).document
    assert doc["patient"]["name"] == "홍길동"
    assert doc["remarks"] == ""  # the validator reports R-022
    assert doc["lines"][0]["name"] == "x"


def test_json_types_are_kept_for_the_validator() -> None:
    doc = next(
        iter(read_export(b'{"version": "1", "total_charge": 1.5}', file_name="t.json").records)
    ).document
    assert doc == {"version": "1", "total_charge": 1.5}


def test_jsonl_streams_records_and_skips_blank_lines() -> None:
    docs = [example("receipt"), example("pharmacy_receipt")]
    data = (
        "\n" + json.dumps(docs[0], ensure_ascii=False) + "\r\n\n  \n" + json.dumps(docs[1]) + "\n"
    ).encode()
    result = read_export(data, file_name="b.ndjson")
    assert result.format == "jsonl"
    assert [(r.index, r.document) for r in result.records] == [(0, docs[0]), (1, docs[1])]
    assert result.problems == []


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_jsonl_without_records_is_r004(content: bytes) -> None:
    assert rules(read_export(content, file_name="b.jsonl")) == ["R-004"]


def test_jsonl_bad_line_is_r004_with_its_record_index() -> None:
    data = b'{"a": 1}\n\n{"b": \n[1]\n{"c": 3}\n'
    result = read_export(data, file_name="b.jsonl")
    assert [(p.rule, p.record) for p in result.problems] == [("R-004", 1), ("R-004", 2)]
    assert [r.index for r in result.records] == [0, 3]


def test_jsonl_problems_are_complete_whichever_is_read_first() -> None:
    data = b'{"a": 1}\n{"a": 1, "a": 2}\n'
    first = read_export(data, file_name="b.jsonl")
    assert [p.record for p in first.problems] == [1]
    assert [r.index for r in first.records] == [0]
    second = read_export(data, file_name="b.jsonl")
    assert [r.index for r in second.records] == [0]
    assert [p.record for p in second.problems] == [1]


def test_jsonl_records_is_a_generator_not_a_list() -> None:
    result = read_export(b'{"a": 1}\n', file_name="b.jsonl")
    assert not isinstance(result.records, list)
    assert [r.document for r in result.records] == [{"a": 1}]
    assert [r.document for r in result.records] == [{"a": 1}]  # re-iterable


def test_u2028_inside_a_jsonl_string_is_not_a_line_break() -> None:
    result = read_export('{"remarks": "a\u2028b"}\n'.encode(), file_name="b.jsonl")
    assert [r.document for r in result.records] == [{"remarks": "a\u2028b"}]


def test_unknown_extension_is_reported_not_raised() -> None:
    assert rules(read_export(b"{}", file_name="x.txt")) == ["R-004"]
