"""The monthly review (security.md §7.5) from synthetic records, and formula-safe CSV (§9, S-28)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from agent.audit.chain import ZERO_HASH, VerifyResult, build_record
from agent.audit.csvsafe import safe_cell, write_csv
from agent.audit.report import build_report, month_bounds, render_csv, render_text
from tests.audit.audithelp import relay_event

KST = dt.timezone(dt.timedelta(hours=9))
OK = VerifyResult(True, None, None, (99, "c" * 64), 99)


def at(hour: int, minute: int = 0, day: int = 3) -> dt.datetime:
    return dt.datetime(2025, 11, day, hour, minute, tzinfo=KST)


def rec(seq: int, when: dt.datetime, event: dict) -> dict:
    return build_record(event, seq=seq, prev_hash=ZERO_HASH, now=when)


def report_of(records: list[dict], rate: list[dict] | None = None) -> dict:
    return build_report("2025-11", records, rate or [], OK, generated_at=at(12))


def test_month_bounds_are_seoul_calendar_months() -> None:
    start, end = month_bounds("2025-12")
    assert start.isoformat() == "2025-12-01T00:00:00+09:00"
    assert end.isoformat() == "2026-01-01T00:00:00+09:00"
    with pytest.raises(ValueError):
        month_bounds("2025-1")


def test_off_hours_are_22_to_07_local() -> None:
    records = [
        rec(1, at(21, 59), relay_event(1)),
        rec(2, at(22, 0), relay_event(2)),
        rec(3, at(6, 59), relay_event(3)),
        rec(4, at(7, 0), relay_event(4)),
    ]
    assert [r["seq"] for r in report_of(records)["off_hours"]["requests"]] == [2, 3]


def test_top_subjects_distinct_subjects_and_large_claims() -> None:
    records = []
    seq = 0
    for subject, fetches in (("1" * 64, 3), ("2" * 64, 5), ("3" * 64, 1)):
        for _ in range(fetches):
            seq += 1
            records.append(
                rec(
                    seq,
                    at(10),
                    relay_event(
                        seq, subject=subject, claim_no="CLM-BIG", document_ids=[f"doc_{seq:026d}"] * 1
                    ),
                )
            )
    report = report_of(records)
    assert report["distinct_subjects"] == 3
    assert [(t["subject_ref"][0], t["fetches"]) for t in report["top_subjects"]] == [
        ("2", 5),
        ("1", 3),
        ("3", 1),
    ]
    assert report["claims_over_20_documents"] == []
    many = [f"doc_{i:026d}" for i in range(21)]
    report = report_of(records + [rec(99, at(10), relay_event(99, claim_no="CLM-HUGE", document_ids=many))])
    assert report["claims_over_20_documents"] == [{"claim_no": "CLM-HUGE", "documents": 21}]


def test_selftest_records_are_counted_apart() -> None:
    selftest = relay_event(1)
    selftest["actor"] = {"kind": "selftest", "relay_id": "selftest"}
    report = report_of([rec(1, at(10), selftest), rec(2, at(23), relay_event(2))])
    assert report["selftest"]["count"] == 1
    assert report["records"] == 1 and report["by_action"] == {"documents.fetch": 1}


def test_backup_restore_and_quarantine_show_are_flagged_confirm_reason() -> None:
    admin = {"kind": "admin", "os_user": "clinic-it", "uid": 1000, "host": "emr-01"}
    records = [
        rec(1, at(10), {"action": "admin.backup", "actor": admin, "reason": "monthly offsite"}),
        rec(2, at(10), {"action": "admin.restore", "actor": admin}),
        rec(3, at(10), {"action": "admin.quarantine.show", "actor": admin, "reason": "fix profile"}),
        rec(4, at(10), {"action": "admin.keys.rotate", "actor": admin}),
    ]
    report = report_of(records)
    assert [(r["action"], r["reason"], r["flag"]) for r in report["reason_review"]] == [
        ("admin.backup", "monthly offsite", "confirm reason"),
        ("admin.restore", None, "confirm reason"),
        ("admin.quarantine.show", "fix profile", "confirm reason"),
    ]
    assert report["admin_actions"]["count"] == 4
    assert "confirm reason" in render_text(report)


def test_rate_limited_counts_are_summed_per_client() -> None:
    rate = [
        {"day": "2025-11-03", "client": "x", "count": 3},
        {"day": "2025-11-04", "client": "x", "count": 4},
    ]
    assert report_of([], rate)["rate_limited"]["by_client"] == [{"client": "x", "count": 7}]


@pytest.mark.parametrize("cell", ['=HYPERLINK("x")', "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_prefixed_with_a_quote(cell: str) -> None:
    assert safe_cell(cell) == "'" + cell
    parsed = next(csv.reader(io.StringIO(write_csv(["h"], [[cell]]).split("\r\n", 1)[1])))
    assert parsed == ["'" + cell]


def test_plain_cells_and_numbers_are_left_alone() -> None:
    assert safe_cell("documents.fetch") == "documents.fetch"
    assert safe_cell(-5) == "-5"
    assert safe_cell(None) == ""
    assert write_csv(["a", "b"], [["x,y", 'q"q']]) == 'a,b\r\n"x,y","q""q"\r\n'


def test_csv_report_defuses_an_operator_reason() -> None:
    admin = {"kind": "admin", "os_user": "clinic-it", "uid": 1000, "host": "emr-01"}
    report = report_of(
        [rec(1, at(10), {"action": "admin.backup", "actor": admin, "reason": '=HYPERLINK("x")'})]
    )
    cells = [c for row in csv.reader(io.StringIO(render_csv(report))) for c in row]
    assert '\'=HYPERLINK("x")' in cells and '=HYPERLINK("x")' not in cells
