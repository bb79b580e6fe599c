"""The store's writer commits the writes already waiting as one transaction (group commit):
each caller sees its result only after the COMMIT, and a failing write rolls back only itself."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DiskFullError
from agent.store.db import Database


def test_concurrent_writes_share_commits_and_a_failure_rolls_back_only_itself(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.db")
    commits = []
    db._writer_conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    gate = threading.Event()
    results: dict[int, object] = {}

    def work(i: int) -> None:
        gate.wait()

        def fn(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (f"k{i}", "v"))
            if i == 7:
                raise ValueError("this write fails")
            return i

        try:
            results[i] = db.write(fn)
        except ValueError as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    try:
        with db.reader() as conn:
            keys = {r[0] for r in conn.execute("SELECT key FROM kv WHERE key LIKE 'k%'")}
    finally:
        db.close()
    assert isinstance(results[7], ValueError)
    assert keys == {f"k{i}" for i in range(40) if i != 7}
    assert all(results[i] == i for i in range(40) if i != 7)
    assert len(commits) < 40  # several writes shared one durable commit


def test_database_full_fails_only_the_write_that_hit_it(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.db")
    try:
        db.write(lambda conn: conn.execute("INSERT INTO kv (key, value) VALUES ('small', 'x')"))
        pages = db.write(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0], transaction=False)
        db.write(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages + 2}"), transaction=False)
        with pytest.raises((DiskFullError, sqlite3.Error)):
            db.write(
                lambda conn: conn.execute("INSERT INTO kv (key, value) VALUES ('big', ?)", ("x" * 200_000,))
            )
        db.write(lambda conn: conn.execute("INSERT INTO kv (key, value) VALUES ('after', 'y')"))
        with db.reader() as conn:
            keys = {r[0] for r in conn.execute("SELECT key FROM kv WHERE key IN ('small', 'big', 'after')")}
        assert keys == {"small", "after"}
    finally:
        db.close()


def test_single_statement_writes_run_without_savepoints_and_a_failing_one_leaves_nothing(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "store.db")
    statements: list[str] = []
    db._writer_conn.set_trace_callback(statements.append)
    db.write(lambda conn: conn.execute("INSERT INTO kv (key, value) VALUES ('taken', 'x')"))
    gate, running = threading.Event(), threading.Event()
    # Held on the writer so that the writes below queue up and share one transaction.
    blocker = db.submit(lambda conn: (running.set(), gate.wait(10)))
    assert running.wait(10)

    def insert(key: str) -> Any:
        return db.submit(
            lambda conn: conn.execute("INSERT INTO kv (key, value) VALUES (?, 'v')", (key,)).rowcount,
            single_statement=True,
        )

    statements.clear()
    futures = {key: insert(key) for key in ("s1", "taken", "s2")}
    gate.set()
    try:
        blocker.result(10)
        assert futures["s1"].result(10) == 1 and futures["s2"].result(10) == 1
        with pytest.raises(sqlite3.IntegrityError):
            futures["taken"].result(10)
        rows = dict(db.query("SELECT key, value FROM kv WHERE key IN ('s1', 's2', 'taken')"))
    finally:
        db.close()
    assert rows == {"s1": "v", "s2": "v", "taken": "x"}  # the failed insert changed nothing
    # After the blocker's transaction: one transaction for the three, without savepoints.
    after = statements[statements.index("COMMIT") + 1 :]
    after = after[: after.index("COMMIT") + 1]  # (closing adds a checkpoint)
    assert after[0] == "BEGIN IMMEDIATE" and after[-1] == "COMMIT"
    assert [s.split(" VALUES")[0] for s in after[1:-1]] == ["INSERT INTO kv (key, value)"] * 3
