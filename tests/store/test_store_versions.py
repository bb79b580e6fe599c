"""Versions, file outcomes and the ingest ledger (documents.md §9, exports.md §4)."""

from __future__ import annotations

from agent.store import ACCEPTED, DUPLICATE, QUARANTINED, SUPERSEDED, Store
from tests.store.storehelp import commit_docs, make_doc


def test_new_file_is_accepted_and_every_record_gets_a_stable_random_doc_id(store: Store) -> None:
    out = commit_docs(store, [make_doc(i) for i in range(4)])
    assert out.outcome == ACCEPTED and out.versions_stored == 4
    assert len(set(out.doc_ids)) == 4
    assert all(d.startswith("doc_") and len(d) == 30 for d in out.doc_ids)
    again = commit_docs(store, [make_doc(0, version=2)])
    assert again.outcome == SUPERSEDED
    assert again.doc_ids == [store.find_doc_id("99000001", "receipt", "T00000000")]
    assert again.doc_ids[0] in out.doc_ids  # stable across versions of the natural key


def test_byte_identical_file_is_duplicate_and_stores_nothing(store: Store) -> None:
    docs = [make_doc(1)]
    commit_docs(store, docs)
    out = commit_docs(store, docs)
    assert out.outcome == DUPLICATE and out.versions_stored == 0
    assert store.counts()["documents"]["versions_total"] == 1


def test_file_whose_records_are_all_noops_is_duplicate(store: Store) -> None:
    commit_docs(store, [make_doc(1), make_doc(2)])
    # Different bytes (other order), same key/version/content: every record a no-op.
    out = commit_docs(store, [make_doc(2), make_doc(1)], path="/inbox/other.json")
    assert out.outcome == DUPLICATE and out.noop_records == 2


def test_one_noop_and_one_new_record_is_accepted_with_one_version(store: Store) -> None:
    commit_docs(store, [make_doc(1)])
    out = commit_docs(store, [make_doc(1), make_doc(2)])
    assert out.outcome == ACCEPTED and out.versions_stored == 1 and out.noop_records == 1


def test_same_version_different_content_is_r010_and_nothing_of_the_file_is_stored(store: Store) -> None:
    commit_docs(store, [make_doc(1)])
    changed = make_doc(1)
    changed["institution"]["name"] = "다른의원"
    before = store.counts()
    out = commit_docs(store, [make_doc(7), changed])
    assert out.outcome == QUARANTINED
    assert [(p.rule, p.record) for p in out.problems] == [("R-010", 1)]
    assert store.counts()["documents"] == before["documents"]
    assert store.find_doc_id("99000001", "prescription", "T00000007") is None  # record 0 rolled back
    assert store.counts()["ingest"]["files_accepted"] == before["ingest"]["files_accepted"]


def test_older_version_after_newer_is_r010(store: Store) -> None:
    commit_docs(store, [make_doc(1, version=5)])
    out = commit_docs(store, [make_doc(1, version=3)])
    assert out.outcome == QUARANTINED and out.problems[0].rule == "R-010"


def test_rrn_change_on_new_version_is_r014(store: Store) -> None:
    commit_docs(store, [make_doc(1)])
    out = commit_docs(store, [make_doc(1, version=2, rrn="9202021000009")])
    assert out.outcome == QUARANTINED and out.problems[0].rule == "R-014"


def test_cancellation_is_a_version_keeping_previous_content_with_hash_of_the_record_as_received(
    store: Store,
) -> None:
    first = commit_docs(store, [make_doc(0)])
    doc_id = first.doc_ids[0]
    cancel = {
        "schema_version": "1.0",
        "document_type": "receipt",
        "document_no": "T00000000",
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "institution": {"ykiho": "99000001", "name": "예시가정의원"},
        "patient": {"name": make_doc(0)["patient"]["name"]},
    }
    out = commit_docs(store, [cancel])
    assert out.outcome == SUPERSEDED
    current = store.get_current(doc_id)
    assert current is not None and current.status == "cancelled" and current.version == 2
    assert current.document["total_charge"] == 64500  # previous content kept for audit
    assert current.document["patient"]["rrn"] == make_doc(0)["patient"]["rrn"]
    from agent.documents.canonical import content_hash

    assert current.content_hash == content_hash(cancel)
    # Re-exported identical cancellation: duplicate.
    assert commit_docs(store, [cancel], path="/again").outcome == DUPLICATE
    counts = store.counts()["documents"]
    assert counts == {"current_active": 0, "current_cancelled": 1, "versions_total": 2}
    assert [v.version for v in store.history(doc_id)] == [1, 2]
    assert [v.is_current for v in store.history(doc_id)] == [False, True]


def test_cancellation_for_unknown_key_is_stored_with_w012_and_later_lower_original_conflicts(
    store: Store,
) -> None:
    cancel = make_doc(3, version=5, status="cancelled")
    out = commit_docs(store, [cancel])
    assert out.outcome == ACCEPTED and [w.rule for w in out.warnings] == ["W-012"]
    assert commit_docs(store, [make_doc(3, version=1)]).outcome == QUARANTINED


def test_reactivation_warns_w013_and_name_change_warns_w011(store: Store) -> None:
    commit_docs(store, [make_doc(1)])
    commit_docs(store, [make_doc(1, version=2, status="cancelled")])
    out = commit_docs(store, [make_doc(1, version=3, name="개명자")])
    assert sorted(w.rule for w in out.warnings) == ["W-011", "W-013"]
    stored = store.get_current(out.doc_ids[0])
    assert stored is not None
    assert {"rule": "W-013", "path": "status"} in stored.document["validation"]["warnings"]


def test_records_of_one_file_are_ordered_by_version_not_by_position(store: Store) -> None:
    out = commit_docs(store, [make_doc(1, version=2), make_doc(1, version=1)])
    assert out.outcome == ACCEPTED and out.versions_stored == 2
    assert store.get_current(out.doc_ids[0]).version == 2  # type: ignore[union-attr]


def test_stored_form_has_source_received_at_hash_and_validation(store: Store, clock) -> None:
    out = commit_docs(store, [make_doc(2)], name="receipt_0001.json")
    doc = store.get_current(out.doc_ids[0]).document  # type: ignore[union-attr]
    assert doc["source"]["file_name"] == "receipt_0001.json" and doc["source"]["record_index"] == 0
    assert doc["received_at"].startswith("2025-11-03T05:12")
    assert len(doc["content_hash"]) == 64 and doc["validation"] == {"warnings": [], "cross_warnings": []}


def test_ledger_knows_files_by_digest_and_by_path_size_mtime(store: Store) -> None:
    out = commit_docs(store, [make_doc(1)], path="/inbox/홍길동.json")
    import hashlib

    from tests.store.storehelp import file_of

    data = file_of([make_doc(1)])
    sha = hashlib.sha256(data).hexdigest()
    assert store.file_known(sha) and not store.file_known("0" * 64)
    entry = store.ledger_lookup("/inbox/홍길동.json", len(data), 1)
    assert entry is not None and entry.outcome == ACCEPTED and entry.file_id == out.file_id
    assert store.ledger_lookup("/inbox/홍길동.json", len(data), 2) is None
    archived = store.archive_get(entry.ledger_id)
    assert archived == ("export.json", data)


def test_counts_for_status(store: Store) -> None:
    commit_docs(store, [make_doc(i) for i in range(3)])
    commit_docs(store, [make_doc(0, version=2)])
    commit_docs(store, [make_doc(0, version=2)], path="/dup")
    store.quarantine_add(b"junk", {"rules": ["R-003"]}, "bad.xml")
    c = store.counts()
    assert c["documents"] == {"current_active": 3, "current_cancelled": 0, "versions_total": 4}
    ing = c["ingest"]
    assert (
        ing["files_accepted"],
        ing["files_duplicate"],
        ing["files_quarantined"],
        ing["records_committed"],
    ) == (2, 1, 1, 4)
    assert ing["last_commit_at"] == "2025-11-03T05:12:00Z"


def _selects_traced(config, clock, docs_per_file: list[list[dict]]) -> list[int]:
    from tests.store.storehelp import open_store

    traced: list[str] = []
    store = open_store(config, clock=clock, trace=traced.append)
    counts = []
    try:
        for k, docs in enumerate(docs_per_file):
            traced.clear()
            out = commit_docs(store, docs, path=f"/inbox/{k}.json")
            assert out.versions_stored == len(docs)
            counts.append(sum(1 for s in traced if s.lstrip().upper().startswith("SELECT")))
    finally:
        store.close()
    return counts


def test_a_files_look_ups_are_batched_not_one_query_per_record(config, clock, tmp_path) -> None:
    """Insert throughput: the number of SELECTs of a commit does not grow with its records."""
    from tests.store.storehelp import make_config

    small = _selects_traced(
        config, clock, [[make_doc(i) for i in range(4)], [make_doc(i, version=2) for i in range(4)]]
    )
    large = _selects_traced(
        make_config(tmp_path / "large"),
        clock,
        [[make_doc(i) for i in range(400)], [make_doc(i, version=2) for i in range(400)]],
    )
    assert large == small  # new documents, then a new version of each: same statement count
