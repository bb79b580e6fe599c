"""Encoding detection (exports.md §2 "Encoding", security.md §9): BOM → UTF-8 → CP949, else R-002."""

from __future__ import annotations

import codecs
import json

import pytest

from agent.documents.problems import Problem
from agent.formats import read_export
from agent.formats.encoding import decode_as, decode_export
from tests.formats.formats_testdata import example


def test_plain_utf8_is_utf8() -> None:
    assert decode_export("홍길동".encode()) == ("홍길동", "utf-8")


def test_utf8_bom_is_removed() -> None:
    assert decode_export(codecs.BOM_UTF8 + "예시".encode()) == ("예시", "utf-8")


def test_cp949_is_detected_when_not_utf8() -> None:
    assert decode_export("예시가정의원".encode("cp949")) == ("예시가정의원", "cp949")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_are_r002(codec: str) -> None:
    result = decode_export('{"a": "예시"}'.encode(codec))
    assert isinstance(result, Problem) and result.rule == "R-002"


def test_bom_followed_by_invalid_utf8_is_r002_without_cp949_fallback() -> None:
    # The bytes after the BOM are valid CP949: a fallback would accept them.
    data = codecs.BOM_UTF8 + "예시".encode("cp949")
    assert "예시".encode("cp949").decode("cp949") == "예시"
    result = decode_export(data)
    assert isinstance(result, Problem) and result.rule == "R-002"


def test_bytes_valid_in_neither_are_r002() -> None:
    result = decode_export(b"abc\xff\xfe\xfd")
    assert isinstance(result, Problem) and result.rule == "R-002"


def test_never_decodes_with_replacement_characters() -> None:
    result = decode_export(b"\x80abc")
    assert isinstance(result, Problem)


def test_explicit_replacement_character_is_kept() -> None:
    assert decode_export("a\ufffdb".encode()) == ("a\ufffdb", "utf-8")


def test_profile_encoding_cp949_rejects_bom() -> None:
    result = decode_as(codecs.BOM_UTF8 + b"abc", "cp949")
    assert isinstance(result, Problem) and result.rule == "R-002"


@pytest.mark.parametrize("ext", ["json", "jsonl", "xml", "csv"])
def test_read_export_utf16_file_is_r002_for_every_format(ext: str) -> None:
    result = read_export('{"a": 1}'.encode("utf-16"), file_name=f"f.{ext}")
    assert [p.rule for p in result.problems] == ["R-002"]
    assert list(result.records) == []


def test_cp949_and_utf8_files_read_to_identical_documents() -> None:
    doc = example("pharmacy_receipt")
    text = json.dumps(doc, ensure_ascii=False)
    utf8 = read_export(text.encode("utf-8"), file_name="a.json")
    cp949 = read_export(text.encode("cp949"), file_name="a.json")
    bom = read_export(codecs.BOM_UTF8 + text.encode("utf-8"), file_name="a.json")
    assert (utf8.encoding, cp949.encoding, bom.encoding) == ("utf-8", "cp949", "utf-8")
    docs = [[r.document for r in x.records] for x in (utf8, cp949, bom)]
    assert docs[0] == docs[1] == docs[2] == [doc]
