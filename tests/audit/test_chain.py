"""The record format and hash rules of security.md §7.2/§7.3, checked without storage."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit.chain import (
    ZERO_HASH,
    AnchorRef,
    Row,
    build_record,
    canonical_text,
    parse_expect_head,
    parse_record,
    verify_chain,
)
from tests.audit.audithelp import relay_event

NOW = dt.datetime(2025, 11, 3, 5, 12, 5, 231000, tzinfo=dt.UTC)


def make_chain(n: int) -> list[dict]:
    records, prev = [], ZERO_HASH
    for i in range(1, n + 1):
        record = build_record(
            relay_event(i, reason="이름 불일치" if i % 3 == 0 else None),
            seq=i,
            prev_hash=prev,
            now=NOW + dt.timedelta(seconds=i),
        )
        records.append(record)
        prev = record["hash"]
    return records


def rows(records: list[dict]) -> list[Row]:
    return [Row(r["seq"], canonical_text(r).encode("utf-8")) for r in records]


def test_record_has_every_standard_member_and_both_timestamps() -> None:
    record = build_record({"action": "admin.backup"}, seq=1, prev_hash=ZERO_HASH, now=NOW)
    for member in (
        "seq",
        "ts_utc",
        "ts_local",
        "actor",
        "source",
        "action",
        "request_id",
        "claim_no",
        "subject_ref",
        "document_ids",
        "result",
        "status",
        "problem_type",
        "reason",
        "bytes_out",
        "prev_hash",
        "hash",
    ):
        assert member in record
    assert record["ts_utc"] == "2025-11-03T05:12:05.231Z"
    assert record["ts_local"] == "2025-11-03T14:12:05.231+09:00"
    assert record["document_ids"] == [] and record["request_id"] is None
    assert record["prev_hash"] == ZERO_HASH


def test_hash_is_sha256_of_the_canonical_json_without_hash() -> None:
    record = build_record(relay_event(1), seq=1, prev_hash=ZERO_HASH, now=NOW)
    body = {k: v for k, v in record.items() if k != "hash"}
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    assert record["hash"] == expected


def test_search_records_carry_result_and_withheld_counts() -> None:
    record = build_record({"action": "documents.search"}, seq=1, prev_hash=ZERO_HASH, now=NOW)
    assert record["result_count"] is None and record["withheld_count"] is None


def test_floats_are_refused_and_reason_is_capped_at_200_characters() -> None:
    with pytest.raises(TypeError):
        build_record({"action": "x", "bytes_out": 1.5}, seq=1, prev_hash=ZERO_HASH, now=NOW)
    record = build_record(
        {"action": "admin.backup", "reason": "가" * 500}, seq=1, prev_hash=ZERO_HASH, now=NOW
    )
    assert len(record["reason"]) == 200


def test_event_cannot_choose_its_own_seq_or_hash() -> None:
    record = build_record({"action": "x", "seq": 99, "hash": "0" * 64}, seq=1, prev_hash=ZERO_HASH, now=NOW)
    assert record["seq"] == 1 and record["hash"] != "0" * 64


def test_intact_chain_verifies_and_reports_its_head() -> None:
    records = make_chain(20)
    result = verify_chain(rows(records))
    assert result.ok and result.head == (20, records[-1]["hash"]) and result.records == 20


def test_non_canonical_spelling_of_the_same_value_is_detected() -> None:
    record = build_record({"action": "x", "reason": "a\x1fb"}, seq=1, prev_hash=ZERO_HASH, now=NOW)
    text = canonical_text(record)
    assert "\\u001f" in text
    assert parse_record(text) is not None
    assert parse_record(text.replace("\\u001f", "\\u001F")) is None  # same JSON value, other bytes


def test_anchor_beyond_the_head_means_truncation() -> None:
    records = make_chain(10)
    result = verify_chain(rows(records[:7]), anchors=[AnchorRef(10, records[9]["hash"], True)])
    assert not result.ok and result.kind == "truncated" and result.first_bad_seq == 8


def test_anchor_with_another_hash_or_bad_signature_fails() -> None:
    records = make_chain(10)
    assert verify_chain(rows(records), anchors=[AnchorRef(5, "e" * 64)]).kind == "anchor_mismatch"
    assert (
        verify_chain(rows(records), anchors=[AnchorRef(5, records[4]["hash"], False)]).kind
        == "anchor_signature"
    )
    assert verify_chain(rows(records), anchors=[AnchorRef(5, records[4]["hash"], True)]).ok


def test_chain_continues_from_the_pruning_point() -> None:
    records = make_chain(10)
    pruned = build_record(
        {"action": "system.audit.pruned", "last_pruned_seq": 10, "last_pruned_hash": records[9]["hash"]},
        seq=11,
        prev_hash=records[9]["hash"],
        now=NOW,
    )
    assert verify_chain(rows([pruned]), start=(10, records[9]["hash"])).ok
    # Without the pruned record naming that point, the point is not trusted.
    later = build_record({"action": "x"}, seq=11, prev_hash=records[9]["hash"], now=NOW)
    assert verify_chain(rows([later]), start=(10, records[9]["hash"])).kind == "prune_point"


def test_parse_expect_head() -> None:
    assert parse_expect_head("12:" + "AB" * 32) == (12, "ab" * 32)
    for bad in ("12", "x:" + "a" * 64, "12:" + "a" * 63, "12:" + "g" * 64):
        with pytest.raises(ValueError):
            parse_expect_head(bad)


CHAIN = make_chain(8)
TEXTS = [canonical_text(r).encode("utf-8") for r in CHAIN]


@settings(max_examples=500, deadline=None)
@given(index=st.integers(0, len(TEXTS) - 1), data=st.data())
def test_any_single_byte_change_to_any_record_text_is_detected(index: int, data: st.DataObject) -> None:
    text = TEXTS[index]
    position = data.draw(st.integers(0, len(text) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != text[position]))
    changed = text[:position] + bytes([byte]) + text[position + 1 :]
    stored = [Row(i + 1, changed if i == index else t) for i, t in enumerate(TEXTS)]
    result = verify_chain(stored)
    assert not result.ok
    assert result.first_bad_seq == index + 1
