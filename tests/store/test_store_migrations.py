"""Schema migrations keyed by PRAGMA user_version: every earlier version upgrades to the latest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.store.schema import SCHEMA_VERSION, migrate, user_version
from tests.store.storehelp import commit_docs, make_doc, open_store


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    finally:
        conn.close()


def _fresh_schema(tmp_path: Path) -> set[str]:
    path = tmp_path / "fresh.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    conn.close()
    return _tables(path)


@pytest.mark.parametrize("start", range(SCHEMA_VERSION))
def test_store_at_every_earlier_version_migrates_to_latest_and_works(
    config, tmp_path: Path, start: int
) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / "store.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, start)
    assert user_version(conn) == start
    conn.close()
    store = open_store(config)
    try:
        assert user_version(sqlite3.connect(path)) == SCHEMA_VERSION
        assert _tables(path) == _fresh_schema(tmp_path)
        assert commit_docs(store, [make_doc(0)]).versions_stored == 1
        assert store.verify().ok
    finally:
        store.close()


def test_data_written_at_version_1_survives_later_migrations(config) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / "store.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, 1)
    conn.execute(
        "INSERT INTO documents (doc_id, ykiho, document_type, document_no, current_version, current_status, "
        "issued_on, updated_at) VALUES ('doc_X', '99000001', 'receipt', 'A1', 1, 'active', '2025-01-01', 'x')"
    )
    conn.close()
    store = open_store(config)
    try:
        assert store.find_doc_id("99000001", "receipt", "A1") == "doc_X"
    finally:
        store.close()


def test_newer_schema_than_the_code_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError):
        migrate(conn)


def test_encrypted_documents_written_at_version_3_are_readable_searchable_and_linked_after_migration(
    config,
) -> None:
    """3 -> 4 moves subject ciphertexts into their version rows unchanged (same record ids and
    AADs, so they still authenticate); 4 -> 5 adds link columns that the store backfills at start."""
    from agent.documents.canonical import canonical_form, content_hash
    from agent.keys import load_keyring
    from agent.store import crypto
    from tests.store.storehelp import example

    keyring = load_keyring(config.keys_dir)
    kek = (keyring.current_kek_id, keyring.current_kek)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(config.data_dir / "store.db", isolation_level=None)
    migrate(conn, 3)
    receipt = canonical_form(example("receipt"))
    doc_id, subject_id = "doc_01JBX5B3W8Q6E2N4T7Y9R1K3M5", "sub_01JBX5B3W8Q6E2N4T7Y9R1K3M5"
    stored = dict(
        receipt,
        content_hash=content_hash(receipt),
        received_at="2025-03-14T09:05:12.000Z",
        validation={"warnings": [], "cross_warnings": []},
    )
    sealed = crypto.seal(crypto.KIND_DOC, doc_id, 1, json.dumps(stored).encode(), *kek)
    subject = crypto.seal(crypto.KIND_SUBJECT, subject_id, 1, json.dumps(receipt["patient"]).encode(), *kek)
    rrn_bidx = keyring.rrn_index(receipt["patient"]["rrn"])
    conn.execute(
        "INSERT INTO documents (doc_id, ykiho, document_type, document_no, current_version, current_status, "
        "issued_on, care_start, care_end, total_charge, rrn_bidx, updated_at) "
        "VALUES (?,?,?,?,1,'active','2025-03-14','2025-03-14','2025-03-14',64500,?,'x')",
        (doc_id, "99000001", "receipt", receipt["document_no"], rrn_bidx),
    )
    conn.execute(
        "INSERT INTO versions (doc_id, version, status, content_hash, issued_on, received_at, kek_id, "
        "wrap_nonce, wrapped_dek, nonce, ciphertext) VALUES (?,1,'active',?,'2025-03-14','x',?,?,?,?,?)",
        (doc_id, stored["content_hash"], *sealed.columns()),
    )
    conn.execute(
        "INSERT INTO subjects (subject_id, doc_id, version, rrn_bidx, kek_id, wrap_nonce, wrapped_dek, nonce, "
        "ciphertext) VALUES (?,?,1,?,?,?,?,?,?)",
        (subject_id, doc_id, rrn_bidx, *subject.columns()),
    )
    conn.execute("INSERT INTO rate_limited (day, client, count) VALUES ('2025-11-03', 'fp', 2)")
    conn.close()

    store = open_store(config)
    try:
        current = store.get_current(doc_id)
        assert current is not None and current.document["total_charge"] == 64500
        hits = store.search(
            rrn=receipt["patient"]["rrn"],
            name=receipt["patient"]["name"],
            period_from="2025-03-01",
            period_to="2025-03-31",
        ).hits
        assert [h.doc_id for h in hits] == [doc_id]
        assert store.verify().ok and store.kv_get("backfill_links") is None
        detail = example("receipt_detail")
        detail["totals"]["copay"] += 10
        commit_docs(store, [detail])
        refreshed = store.get_current(doc_id)
        assert refreshed is not None
        assert refreshed.document["validation"]["cross_warnings"] == [{"rule": "W-501", "path": "totals"}]
        assert store.rotate_kek().rewrapped > 0 and store.verify().ok
    finally:
        store.close()
