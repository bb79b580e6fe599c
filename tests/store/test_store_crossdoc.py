"""Cross-document warnings W-5xx in the store (documents.md §7): evaluated when either side of a
linked pair gets a new current version, stored on BOTH current versions, recomputed on change.

Pairs come from the §12 worked example (spec/examples); arrival order never changes the result.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.store import Store
from tests.store.storehelp import commit_docs, example, make_config, open_store


def _cross(store: Store, doc_id: str) -> list[dict[str, str]]:
    """validation.cross_warnings of the current version (decrypted) — checked against the clear column."""
    current = store.get_current(doc_id)
    assert current is not None
    listed = current.document["validation"]["cross_warnings"]
    raw = sqlite3.connect(store.db.path)
    try:
        column = raw.execute(
            "SELECT cross_warning_rules FROM versions WHERE doc_id = ? AND version = ?",
            (doc_id, current.version),
        ).fetchone()[0]
    finally:
        raw.close()
    assert json.loads(column) == sorted({w["rule"] for w in listed})
    return listed  # type: ignore[no-any-return]


def _rules(store: Store, doc_id: str) -> set[str]:
    return {w["rule"] for w in _cross(store, doc_id)}


def _id(store: Store, doc: dict[str, Any]) -> str:
    doc_id = store.find_doc_id(doc["institution"]["ykiho"], doc["document_type"], doc["document_no"])
    assert doc_id is not None
    return doc_id


def _arrive(store: Store, docs: list[dict[str, Any]], order: str) -> None:
    """Commit ``docs`` as one file (``together``), one file each in order, or in reverse order."""
    if order == "together":
        commit_docs(store, docs, path="/inbox/both.json")
        return
    for k, doc in enumerate(docs if order == "forward" else list(reversed(docs))):
        commit_docs(store, [doc], path=f"/inbox/{order}-{k}.json")


def _broken_detail() -> dict[str, Any]:
    detail = example("receipt_detail")
    detail["totals"]["copay"] += 10  # detail.totals.copay no longer equals the receipt's (W-501)
    return detail


ORDERS = ["together", "forward", "reverse"]


@pytest.mark.parametrize("order", ORDERS)
def test_worked_example_receipt_and_detail_have_no_cross_warnings(store: Store, order: str) -> None:
    receipt, detail = example("receipt"), example("receipt_detail")
    _arrive(store, [receipt, detail], order)
    assert _cross(store, _id(store, receipt)) == [] and _cross(store, _id(store, detail)) == []


@pytest.mark.parametrize("order", ORDERS)
def test_broken_detail_total_warns_w501_on_both_documents_in_any_arrival_order(
    store: Store, order: str
) -> None:
    receipt, detail = example("receipt"), _broken_detail()
    _arrive(store, [receipt, detail], order)
    expected = [{"rule": "W-501", "path": "totals"}]
    assert _cross(store, _id(store, receipt)) == expected
    assert _cross(store, _id(store, detail)) == expected


def test_commit_outcome_lists_the_cross_warnings_of_both_sides(store: Store) -> None:
    receipt_id = commit_docs(store, [example("receipt")]).doc_ids[0]
    out = commit_docs(store, [_broken_detail()], path="/inbox/detail.json")
    detail_id = out.doc_ids[0]
    assert {d: [p.rule for p in ps] for d, ps in out.cross_warnings.items()} == {
        receipt_id: ["W-501"],
        detail_id: ["W-501"],
    }
    # The receipt's stored version was re-sealed in place: still version 1, still decrypts, verify ok.
    current = store.get_current(receipt_id)
    assert current is not None and current.version == 1
    assert store.verify().ok


@pytest.mark.parametrize("order", ORDERS)
def test_pharmacy_receipt_dispensed_after_valid_days_warns_w507_on_both(store: Store, order: str) -> None:
    prescription, pharmacy = example("prescription"), example("pharmacy_receipt")
    pharmacy["dispensed_on"] = "2025-03-17"  # issued 03-14, valid_days 3: last valid day 03-16
    _arrive(store, [prescription, pharmacy], order)
    expected = [{"rule": "W-507", "path": "dispensed_on"}]
    assert _cross(store, _id(store, prescription)) == expected
    assert _cross(store, _id(store, pharmacy)) == expected


def test_worked_example_prescription_and_pharmacy_receipt_have_no_cross_warnings(store: Store) -> None:
    prescription, pharmacy = example("prescription"), example("pharmacy_receipt")
    commit_docs(store, [pharmacy])
    commit_docs(store, [prescription], path="/inbox/rx.json")
    assert _cross(store, _id(store, prescription)) == [] and _cross(store, _id(store, pharmacy)) == []


@pytest.mark.parametrize(("valid_days", "expected"), [(3, {"W-507"}), (7, set())])
def test_default_valid_days_comes_from_config(tmp_path: Path, valid_days: int, expected: set[str]) -> None:
    config = make_config(tmp_path / "inst", validation={"default_valid_days": valid_days})
    store = open_store(config)
    try:
        prescription, pharmacy = example("prescription"), example("pharmacy_receipt")
        del prescription["valid_days"]
        pharmacy["dispensed_on"] = "2025-03-18"
        commit_docs(store, [prescription, pharmacy])
        assert _rules(store, _id(store, prescription)) == _rules(store, _id(store, pharmacy)) == expected
    finally:
        store.close()


@pytest.mark.parametrize("cancelled_side", ["receipt", "receipt_detail"])
def test_cancelling_one_side_warns_w512_on_both_and_both_cancelled_clears_it(
    store: Store, cancelled_side: str
) -> None:
    receipt, detail = example("receipt"), _broken_detail()
    commit_docs(store, [receipt, detail])
    docs = {"receipt": receipt, "receipt_detail": detail}
    other_side = "receipt_detail" if cancelled_side == "receipt" else "receipt"
    for side in (cancelled_side, other_side):
        cancel = dict(docs[side], version=2, status="cancelled", cancel_reason="환불")
        commit_docs(store, [cancel], path=f"/inbox/cancel-{side}.json")
        expected = [{"rule": "W-512", "path": "status"}] if side == cancelled_side else []
        # A cancelled pair is compared only by W-512 (the broken total is no longer reported).
        assert _cross(store, _id(store, receipt)) == expected
        assert _cross(store, _id(store, detail)) == expected


def test_correcting_the_detail_recomputes_the_receipt(store: Store) -> None:
    receipt = example("receipt")
    commit_docs(store, [receipt, _broken_detail()])
    assert _rules(store, _id(store, receipt)) == {"W-501"}
    fixed = dict(example("receipt_detail"), version=2)
    commit_docs(store, [fixed], path="/inbox/fixed.json")
    assert _cross(store, _id(store, receipt)) == [] and _cross(store, _id(store, fixed)) == []
    # History keeps what was evaluated then: version 1 of the receipt is still the current one.
    assert [v.version for v in store.history(_id(store, receipt))] == [1]


def test_detail_moving_to_another_receipt_recomputes_the_receipt_it_left(store: Store) -> None:
    first, second = example("receipt"), example("receipt")
    second["document_no"] = "202503-000124"
    commit_docs(store, [first, second, _broken_detail()])
    assert _rules(store, _id(store, first)) == {"W-501"} and _cross(store, _id(store, second)) == []
    moved = _broken_detail()
    moved.update(version=2, receipt_no="202503-000124")
    commit_docs(store, [moved], path="/inbox/moved.json")
    assert _cross(store, _id(store, first)) == []
    assert _rules(store, _id(store, second)) == {"W-501"} == _rules(store, _id(store, moved))


@pytest.mark.parametrize("order", ORDERS)
def test_fallback_link_uses_a_keyed_hmac_of_the_registration_number_never_the_number(
    store: Store, order: str
) -> None:
    receipt, detail = example("receipt"), _broken_detail()
    del detail["receipt_no"]  # §7.1 fallback: same ykiho, patient_reg_no and care_period
    _arrive(store, [receipt, detail], order)
    assert _rules(store, _id(store, receipt)) == {"W-501"} == _rules(store, _id(store, detail))
    raw = sqlite3.connect(store.db.path)
    try:
        pregs = {r[0] for r in raw.execute("SELECT preg_hmac FROM documents")}
        clear = " ".join(str(v) for row in raw.execute("SELECT * FROM documents") for v in row)
    finally:
        raw.close()
    assert pregs == {store.preg_hmac("99000001", "00012345")}
    assert "00012345" not in clear


def test_fallback_link_with_two_candidate_receipts_links_nothing(store: Store) -> None:
    first, second = example("receipt"), example("receipt")
    second["document_no"] = "202503-000124"
    detail = _broken_detail()
    del detail["receipt_no"]
    commit_docs(store, [first, second])
    commit_docs(store, [detail], path="/inbox/detail.json")
    for doc in (first, second, detail):
        assert _cross(store, _id(store, doc)) == []


def test_documents_stored_before_the_link_columns_are_backfilled_at_start(config) -> None:
    store = open_store(config)
    receipt = example("receipt")
    try:
        commit_docs(store, [receipt])
    finally:
        store.close()
    # As left by schema migration 4 -> 5 on a store that already held documents.
    raw = sqlite3.connect(config.data_dir / "store.db")
    raw.execute("UPDATE documents SET receipt_no = NULL, prescription_issue_no = NULL, preg_hmac = NULL")
    raw.execute("INSERT INTO kv (key, value) VALUES ('backfill_links', '1')")
    raw.commit()
    raw.close()
    store = open_store(config)
    try:
        assert store.kv_get("backfill_links") is None
        commit_docs(store, [_broken_detail()], path="/inbox/detail.json")
        assert _rules(store, _id(store, receipt)) == {"W-501"}
    finally:
        store.close()


def test_purging_one_side_clears_the_cross_warning_kept_on_the_other(store: Store) -> None:
    receipt, detail = example("receipt"), _broken_detail()
    _arrive(store, [receipt, detail], "together")
    receipt_id, detail_id = _id(store, receipt), _id(store, detail)
    assert _rules(store, receipt_id) == {"W-501"}
    far_future = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # both past retention; only the detail goes
    result = store.purge(far_future, only=[detail_id])
    assert result.doc_ids == [detail_id] and store.get_current(detail_id) is None
    assert _cross(store, receipt_id) == []  # no partner any more: no W-501 (documents.md §7)
    current = store.get_current(receipt_id)
    assert current is not None and current.version == 1
    assert store.verify().ok
