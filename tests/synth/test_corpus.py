"""Corpus structure: determinism, the realistic mixture, ordering of versions, forced formats."""

from __future__ import annotations

import collections
import random
import re

import pytest

from agent.synth import generate
from tests.synth.helpers import natural_key, read_back

NAME_RE = re.compile(r"^synth-[0-9]{6}\.(json|jsonl|xml|csv)$")


def _files(count: int, seed: int, **kw):
    return list(generate(count, seed, **kw))


def test_same_seed_gives_identical_bytes() -> None:
    random.seed(1)  # the global generator must not matter
    first = _files(300, 5, invalid_rate=0.2)
    random.seed(2)
    random.random()
    second = _files(300, 5, invalid_rate=0.2)
    assert [(f.name, f.data, f.expected) for f in first] == [(f.name, f.data, f.expected) for f in second]


def test_different_seed_gives_different_bytes() -> None:
    a = b"".join(f.data for f in _files(100, 5))
    b = b"".join(f.data for f in _files(100, 6))
    assert a != b


@pytest.mark.parametrize("count", [0, 1, 7, 333])
def test_files_hold_exactly_count_records(count: int) -> None:
    files = _files(count, 12, invalid_rate=0.1)
    assert sum(f.expected["records"] for f in files) == count
    assert all(f.expected["records"] >= 1 for f in files)


def test_file_names_are_sequential_and_free_of_personal_data() -> None:
    files = _files(200, 3)
    names = [f.name for f in files]
    assert all(NAME_RE.match(n) for n in names)
    assert names == sorted(names)
    assert [int(n[6:12]) for n in names] == list(range(1, len(names) + 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_at_count_500(seed: int) -> None:
    files = _files(500, seed)
    docs = [d for f in files for _, d, _ in read_back(f).records]
    types = collections.Counter(d["document_type"] for d in docs)
    assert set(types) == {"receipt", "receipt_detail", "prescription", "pharmacy_receipt"}
    assert {f.expected["format"] for f in files} == {"json", "jsonl", "xml", "csv"}
    assert {f.expected["encoding"] for f in files} == {"utf-8", "cp949"}
    active = [d for d in docs if d["status"] == "active"]
    assert any(d.get("amount_layout") == "legacy_selective" for d in active)
    assert any("drg_no" in d for d in active if d["document_type"] == "receipt")
    assert any(d["revision_reason"] == "correction" for d in active)
    assert any(d["revision_reason"] == "reissue" for d in active)
    cancelled = [d for d in docs if d["status"] == "cancelled"]
    assert any("lines" not in d for d in cancelled), "a §9.4 minimal cancellation record"
    assert any("lines" in d for d in cancelled), "a full record with status cancelled"
    assert any(
        ln["line_type"] == "rounding_adjustment"
        for d in active
        if d["document_type"] == "receipt_detail"
        for ln in d["lines"]
    )
    assert any(
        ln["kind"] == "injection" for d in active if d["document_type"] == "prescription" for ln in d["lines"]
    )
    assert any(d["totals"]["full_self_pay"] > 0 for d in active if d["document_type"] == "pharmacy_receipt")
    outcomes = collections.Counter(f.expected["outcome"] for f in files)
    assert outcomes["accepted"] and outcomes["superseded"] and outcomes["duplicate"] >= 2
    assert "quarantined" not in outcomes


def test_higher_versions_arrive_in_later_files_than_the_original() -> None:
    first_file: dict[tuple, int] = {}
    seen_versions: dict[tuple, int] = {}
    followups = 0
    for n, f in enumerate(_files(800, 4)):
        for _, d, _ in read_back(f).records:
            key = natural_key(d)
            if key not in first_file:
                first_file[key] = n
                seen_versions[key] = d["version"]
            elif d["version"] > seen_versions[key]:
                assert first_file[key] < n, "a correction/cancellation shares a file with its original"
                seen_versions[key] = d["version"]
                followups += 1
            else:
                assert d["version"] == seen_versions[key] or f.expected["outcome"] == "duplicate"
    assert followups > 5


def test_cancellations_of_a_receipt_also_cancel_its_statement() -> None:
    cancelled = {
        natural_key(d)
        for f in _files(1500, 7)
        for _, d, _ in read_back(f).records
        if d["status"] == "cancelled"
    }
    receipts = {(k[0], k[2]) for k in cancelled if k[1] == "receipt"}
    details = {(k[0], k[2]) for k in cancelled if k[1] == "receipt_detail"}
    assert details and details <= receipts  # a statement is cancelled only with its receipt (W-512)


@pytest.mark.parametrize(
    ("fmt", "encoding"), [("csv", "cp949"), ("xml", "utf-8"), ("jsonl", "cp949"), ("json", "utf-8")]
)
def test_format_and_encoding_can_be_forced(fmt: str, encoding: str) -> None:
    files = _files(150, 2, format=fmt, encoding=encoding)
    assert {f.expected["format"] for f in files} == {fmt}
    assert all(f.name.endswith("." + fmt) for f in files)
    for f in files:
        f.data.decode(encoding)  # strict
        assert not f.data.startswith(b"\xef\xbb\xbf")
    if encoding == "cp949":
        with pytest.raises(UnicodeDecodeError):
            b"".join(f.data for f in files).decode("utf-8")
    assert all(read_back(f).errors == set() for f in files)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        list(generate(10, 1, format="yaml"))
    with pytest.raises(ValueError):
        list(generate(10, 1, encoding="utf-16"))
    with pytest.raises(ValueError):
        list(generate(10, 1, invalid_rate=1.5))
