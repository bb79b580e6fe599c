"""Schema migrations keyed by PRAGMA user_version: every earlier version upgrades to the latest."""

from __future__ import annotations

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
def test_store_at_every_earlier_version_migrates_to_latest_and_works(config, tmp_path: Path, start: int) -> None:
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
    conn.execute("INSERT INTO documents (doc_id, ykiho, document_type, document_no, current_version, current_status, "
                 "issued_on, updated_at) VALUES ('doc_X', '99000001', 'receipt', 'A1', 1, 'active', '2025-01-01', 'x')")
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
