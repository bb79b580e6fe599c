"""Patient search (relay-api.md §6.2), quarantine entries, replay ids, bindings, kv (429 counters: audit log)."""

from __future__ import annotations

import datetime as dt
import threading

from agent.store import Store
from tests.store.storehelp import commit_docs, make_doc, rrn_for

PERIOD = {"period_from": "2025-01-01", "period_to": "2025-12-31"}


def test_search_matches_rrn_and_normalised_name_and_withholds_name_mismatch(store: Store) -> None:
    rrn = "9001011000001"
    commit_docs(
        store,
        [
            make_doc(0, rrn=rrn, name="홍길동"),
            make_doc(1, rrn=rrn, name="홍 길동"),
            make_doc(2, rrn=rrn, name="김철수"),
            make_doc(3, rrn="9001011000019", name="홍길동"),
        ],
    )
    found = store.search(rrn="900101-1000001", name=" 홍\u3000길동 ", **PERIOD)
    assert len(found.hits) == 2 and {h.identity_match for h in found.hits} == {"rrn"}
    assert found.withheld_count == 1
    none = store.search(rrn=rrn, name="김영희", **PERIOD)
    assert none.hits == [] and none.withheld_count == 3
    assert found.subject_ref == store.keyring.rrn_index(rrn)


def test_search_casefolds_latin_names(store: Store) -> None:
    commit_docs(store, [make_doc(0, name="John SMITH")])
    assert len(store.search(rrn=rrn_for(0), name="john smith", **PERIOD).hits) == 1


def test_masked_only_document_matches_by_rrn_prefix(store: Store) -> None:
    commit_docs(store, [make_doc(5, rrn="8505051000001", masked=True, name="박환자")])
    hits = store.search(rrn="8505051999999", name="박환자", **PERIOD).hits
    assert [h.identity_match for h in hits] == ["rrn_prefix"]


def test_search_filters_type_period_and_current_active(store: Store) -> None:
    rrn = "9001011000001"
    commit_docs(
        store,
        [
            make_doc(0, rrn=rrn, name="가", doc_type="receipt", issued_on="2025-03-14"),
            make_doc(1, rrn=rrn, name="가", doc_type="prescription", issued_on="2025-05-01"),
            make_doc(2, rrn=rrn, name="가", doc_type="receipt", issued_on="2024-03-14"),
        ],
    )
    assert len(store.search(rrn=rrn, name="가", **PERIOD).hits) == 2
    only = store.search(rrn=rrn, name="가", document_types=["prescription"], **PERIOD).hits
    assert [h.document_type for h in only] == ["prescription"] and only[0].care_period is None
    assert len(store.search(rrn=rrn, name="가", period_from="2025-03-14", period_to="2025-03-14").hits) == 1
    commit_docs(
        store,
        [
            make_doc(
                0,
                rrn=rrn,
                name="가",
                doc_type="receipt",
                issued_on="2025-03-14",
                version=2,
                status="cancelled",
            )
        ],
    )
    hits = store.search(rrn=rrn, name="가", **PERIOD).hits
    assert [h.document_type for h in hits] == ["prescription"]
    receipt_hits = store.search(rrn=rrn, name="가", period_from="2024-01-01", period_to="2024-12-31").hits
    assert receipt_hits[0].total_amount_krw == 64500 and receipt_hits[0].care_period == {
        "start": "2024-03-14",
        "end": "2024-03-14",
    }


def test_search_results_sorted_by_issued_on_then_id(store: Store) -> None:
    rrn = "9001011000001"
    commit_docs(store, [make_doc(i, rrn=rrn, name="가", issued_on=f"2025-0{9 - i}-01") for i in range(4)])
    hits = store.search(rrn=rrn, name="가", **PERIOD).hits
    assert [h.issued_on for h in hits] == sorted(h.issued_on for h in hits)


def test_quarantine_entry_round_trip_keeps_name_only_encrypted(store: Store) -> None:
    qid = store.quarantine_add(
        b"\x00bad bytes", {"rules": ["R-002"], "records": [None]}, "홍길동_영수증.json"
    )
    [entry] = store.quarantine_list()
    assert entry.qid == qid and entry.reason["rules"] == ["R-002"] and entry.size == 10
    item = store.quarantine_get(qid)
    assert (
        item is not None and item.original_name == "홍길동_영수증.json" and item.content == b"\x00bad bytes"
    )
    assert "홍길동" not in repr(item)
    assert store.quarantine_remove(qid) and store.quarantine_list() == []
    assert store.quarantine_get(qid) is None


def test_replay_check_and_insert_is_atomic_and_forgets_after_24h(store: Store) -> None:
    now = dt.datetime(2025, 11, 3, tzinfo=dt.UTC)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(store.replay_check_and_insert("0b6c2f3e-7d0a-4c1e-9a51-3f1f5f2d8a10", now))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert not store.replay_check_and_insert(
        "0b6c2f3e-7d0a-4c1e-9a51-3f1f5f2d8a10", now + dt.timedelta(hours=23)
    )
    assert store.replay_check_and_insert(
        "0b6c2f3e-7d0a-4c1e-9a51-3f1f5f2d8a10", now + dt.timedelta(hours=24, seconds=1)
    )


def test_replay_ids_survive_reopen(config, store: Store) -> None:
    now = dt.datetime(2025, 11, 3, tzinfo=dt.UTC)
    assert store.replay_check_and_insert("01JBX5B3W8Q6E2N4T7Y9R1K3M5", now)
    store.close()
    from tests.store.storehelp import open_store

    again = open_store(config)
    try:
        assert not again.replay_check_and_insert("01JBX5B3W8Q6E2N4T7Y9R1K3M5", now)
    finally:
        again.close()


def test_binding_create_extend_conflict_and_expire(store: Store) -> None:
    t0 = dt.datetime(2025, 11, 3, tzinfo=dt.UTC)
    a = store.binding_upsert("CLM-1", consent_id="CNS-1", subject_ref="a" * 64, add_ids=["doc_1"], now=t0)
    assert not a.conflict and a.binding is not None and a.binding.allowed_ids == {"doc_1"}
    b = store.binding_upsert(
        "CLM-1",
        consent_id="CNS-1",
        subject_ref="a" * 64,
        add_ids=["doc_2"],
        now=t0 + dt.timedelta(minutes=30),
    )
    assert b.binding is not None and b.binding.allowed_ids == {"doc_1", "doc_2"}
    assert store.binding_upsert(
        "CLM-1",
        consent_id="CNS-1",
        subject_ref="b" * 64,
        add_ids=["doc_9"],
        now=t0 + dt.timedelta(minutes=31),
    ).conflict
    assert store.binding_get("CLM-1", t0 + dt.timedelta(minutes=89)) is not None
    assert store.binding_get("CLM-1", t0 + dt.timedelta(minutes=91)) is None
    assert store.binding_prune(t0 + dt.timedelta(minutes=91)) == 1


def test_store_keeps_no_429_counters_the_audit_log_does(store: Store) -> None:
    """One counter (STYLE "one way to do each thing"): AuditLog.count_rate_limited feeds the monthly report."""
    import sqlite3

    assert not hasattr(store, "count_rate_limited") and not hasattr(store, "rate_limited_counts")
    raw = sqlite3.connect(store.db.path)
    try:
        assert raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'rate_limited'").fetchone() is None
    finally:
        raw.close()


def test_kv_state(store: Store) -> None:
    assert store.kv_get("agent_id") is None
    store.kv_set("agent_id", "agt-1")
    assert store.kv_get("agent_id") == "agt-1"


def test_binding_with_documents_reads_only_what_the_binding_allows_in_one_snapshot(store: Store) -> None:
    t0 = dt.datetime(2025, 11, 3, tzinfo=dt.UTC)
    ids = commit_docs(store, [make_doc(i) for i in range(3)]).doc_ids
    store.binding_upsert("CLM-1", consent_id="CNS-1", subject_ref="a" * 64, add_ids=ids[:2], now=t0)
    binding, docs = store.binding_with_documents("CLM-1", "CNS-1", ids[:2], t0)
    assert binding is not None and binding.allowed_ids == set(ids[:2])
    assert sorted(docs) == sorted(ids[:2])
    for doc_id in ids[:2]:
        current = store.get_current(doc_id)
        assert current is not None and docs[doc_id].document == current.document
        assert (docs[doc_id].version, docs[doc_id].status) == (current.version, current.status)
    # B4/B5: another consent, or one id the binding does not allow → the binding, no document.
    assert store.binding_with_documents("CLM-1", "CNS-2", ids[:1], t0)[1] == {}
    assert store.binding_with_documents("CLM-1", "CNS-1", [ids[0], ids[2]], t0)[1] == {}
    assert store.binding_with_documents("CLM-1", "CNS-1", [], t0)[1] == {}
    # No live binding: nothing at all.
    assert store.binding_with_documents("CLM-9", "CNS-1", ids[:1], t0) == (None, {})
    assert store.binding_with_documents("CLM-1", "CNS-1", ids[:1], t0 + dt.timedelta(hours=2)) == (None, {})
    # A document gone since the search (its rows removed) is absent; the other is still read.
    store.db.write(lambda conn: conn.execute("DELETE FROM documents WHERE doc_id = ?", (ids[1],)))
    binding, docs = store.binding_with_documents("CLM-1", "CNS-1", ids[:2], t0)
    assert binding is not None and list(docs) == [ids[0]]
