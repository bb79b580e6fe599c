"""Durability: SIGKILL at random instants during a 10,000-document commit loop (cli.md §6)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.store.crash_child import BATCHES, PER_BATCH, batch_sha
from tests.store.storehelp import make_config

REPO = Path(__file__).resolve().parents[2]


def _check(root: Path) -> int:
    """integrity_check ok; every committed batch complete; no document without its batch marker."""
    db = make_config(root).data_dir / "store.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        committed = {sha for (sha,) in conn.execute("SELECT sha256 FROM ledger WHERE outcome = 'accepted'")}
        batches = {b for b in range(BATCHES) if batch_sha(b) in committed}
        assert len(batches) == len(committed)  # no duplicate ledger rows for a batch
        expected = {f"T{b * PER_BATCH + k:08d}" for b in batches for k in range(PER_BATCH)}
        present = {no for (no,) in conn.execute("SELECT document_no FROM documents")}
        assert present == expected
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == len(expected)
        assert conn.execute("SELECT COUNT(*) FROM versions WHERE subject_ciphertext IS NOT NULL").fetchone()[
            0
        ] == len(expected)
        assert conn.execute("SELECT COUNT(*) FROM archive").fetchone()[0] == len(batches)
        return len(batches)
    finally:
        conn.close()


def _start(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_child", str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_sigkill_during_commit_loop_never_leaves_a_half_batch(tmp_path: Path) -> None:
    root = tmp_path / "inst"
    make_config(root)
    rng = random.Random(20251103)
    progress = []
    deadline = time.monotonic() + 50
    for _ in range(20):
        child = _start(root)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        progress.append(_check(root))
        assert time.monotonic() < deadline, "crash loop took too long"
    assert progress == sorted(progress)  # committed batches are never lost
    assert 0 < progress[-1]
    assert len(set(progress)) >= 5  # the kills landed at different points of the loop
    child = _start(root)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and "done" in out
    assert _check(root) == BATCHES
