"""Property tests: readers never raise on arbitrary input; they return problems instead
(security.md §9 "must never raise anything but the reader's own problem type")."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.documents.problems import Problem
from agent.formats import read_export
from agent.formats.encoding import decode_export
from agent.formats.result import Record
from tests.formats.formats_testdata import example

EXTENSIONS = ("json", "jsonl", "ndjson", "xml", "csv")


def check(data: bytes, ext: str) -> None:
    result = read_export(data, file_name=f"f.{ext}")
    records = list(result.records)
    problems = result.problems
    assert all(isinstance(p, Problem) for p in problems)
    assert all(isinstance(r, Record) and isinstance(r.document, dict) for r in records)
    assert records or problems  # a file without records is always R-004 (or worse)
    for problem in problems:
        assert problem.rule in {"R-002", "R-003", "R-004", "R-005", "R-021", "R-025"}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), ext=st.sampled_from(EXTENSIONS))
def test_arbitrary_bytes_never_raise(data: bytes, ext: str) -> None:
    check(data, ext)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), ext=st.sampled_from(EXTENSIONS), codec=st.sampled_from(["utf-8", "cp949"]))
def test_arbitrary_text_never_raises(text: str, ext: str, codec: str) -> None:
    try:
        data = text.encode(codec)
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    check(data, ext)


_JSON_TEXT = json.dumps(example("prescription"), ensure_ascii=False)


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(_JSON_TEXT)),
    junk=st.text(max_size=5),
    ext=st.sampled_from(EXTENSIONS),
)
def test_truncated_or_spliced_exports_never_raise(cut: int, junk: str, ext: str) -> None:
    check((_JSON_TEXT[:cut] + junk + _JSON_TEXT[cut:][:cut]).encode("utf-8", "surrogatepass"), ext)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_decoding_never_produces_replacement_characters(data: bytes) -> None:
    decoded = decode_export(data)
    if not isinstance(decoded, Problem):
        text, _ = decoded
        assert text.count("\ufffd") == data.count("\ufffd".encode()) or decoded[1] == "cp949"
        assert "\ufffd" not in text or "\ufffd".encode() in data
