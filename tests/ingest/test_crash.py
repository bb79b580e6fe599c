"""Crash test (cli.md §6): SIGKILL the real daemon at random instants while it ingests.

10,000 synthetic documents in mixed formats (JSON, JSONL, XML, CSV; some documents with a
correction in the same file) are dropped batch by batch; the daemon is killed ≥ 20 times at random
instants and restarted — often while its look-ahead worker processes are reading ahead; those
must die with it. At the end: every expected (document, version) stored exactly once, the
current version is the highest, nothing quarantined, and the folder holds nothing.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from agent.formats import write_export

from .daemon_helpers import DaemonProcess, alive
from .helpers import make_installation, receipt

FORMATS = ("json", "jsonl", "xml", "csv")


def _corpus(total_docs: int, docs_per_file: int, seed: int):
    rng = random.Random(seed)
    files: list[tuple[str, bytes]] = []
    expected: set[tuple[str, int]] = set()
    n = 0
    while n < total_docs:
        docs = []
        for _ in range(docs_per_file):
            if n >= total_docs:
                break
            if rng.random() < 0.1 and n + 1 < total_docs:  # a correction travels with its original
                docs += [receipt(n, 2), receipt(n, 1)]
                expected |= {(f"202503-{n:06d}", 1), (f"202503-{n:06d}", 2)}
            else:
                docs.append(receipt(n))
                expected.add((f"202503-{n:06d}", 1))
            n += 1
        fmt = FORMATS[len(files) % len(FORMATS)]
        files.append((f"export-{len(files):05d}.{fmt}", write_export(docs, format=fmt)))
    return files, expected


def _drop(inbox: Path, batch: list[tuple[str, bytes]]) -> None:
    for name, data in batch:
        tmp = inbox / (name + ".tmp")
        tmp.write_bytes(data)
        os.rename(tmp, inbox / name)  # write-then-rename: the preferred hand-over


@pytest.mark.slow
def test_sigkill_at_random_instants_loses_and_duplicates_nothing(tmp_path: Path):
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    inbox = tmp_path / "inst" / "inbox"
    files, expected = _corpus(10_000, 20, seed=7)
    rng = random.Random(11)
    kills = pool_runs = 0
    orphans_to_be: list[tuple[int, bytes]] = []  # processes below a killed daemon: they must exit too
    batches = [files[i::22] for i in range(22)]
    started = time.monotonic()
    for batch in batches:
        _drop(inbox, batch)
        with DaemonProcess(toml) as daemon:
            daemon.start(wait_ready=False)
            time.sleep(rng.uniform(0.6, 2.0))  # sometimes during start-up, mostly while ingesting
            below = daemon.descendants()
            daemon.kill()
            kills += 1
        pool_runs += bool(below)
        orphans_to_be += below
    assert kills >= 20
    assert pool_runs >= 5  # the look-ahead pool was running when killed, several times
    with DaemonProcess(toml) as daemon:  # the last run drains the folder, then stops cleanly
        daemon.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(inbox.iterdir()):
            time.sleep(0.3)
        assert daemon.terminate() == 0
    assert sorted(p.name for p in inbox.iterdir()) == []
    # Look-ahead workers (and their fork server) die with the daemon: nothing is left after a SIGKILL.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in orphans_to_be):
        time.sleep(0.1)
    assert not [p for p in orphans_to_be if alive(p)], "processes outlived the daemon"
    db = sqlite3.connect(f"file:{tmp_path / 'inst' / 'data' / 'store.db'}?mode=ro", uri=True)
    stored = db.execute(
        "SELECT d.document_no, v.version FROM versions v JOIN documents d USING (doc_id)"
    ).fetchall()
    assert len(stored) == len(set(stored)), "a version stored twice"
    assert set(stored) == expected, (
        f"lost {len(expected - set(stored))}, unexpected {len(set(stored) - expected)}"
    )
    wrong_current = db.execute(
        "SELECT COUNT(*) FROM documents d WHERE current_version != "
        "(SELECT MAX(version) FROM versions v WHERE v.doc_id = d.doc_id)"
    ).fetchone()[0]
    assert wrong_current == 0
    assert db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 0
    committed = db.execute(
        "SELECT COUNT(*) FROM ledger WHERE outcome IN ('accepted','superseded')"
    ).fetchone()[0]
    assert committed == len(files)  # every file committed exactly once
    print(
        f"crash test: {kills} kills ({pool_runs} with look-ahead workers), {len(files)} files, "
        f"{len(expected)} versions, "
        f"{time.monotonic() - started:.1f} s"
    )
