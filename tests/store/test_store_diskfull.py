"""Disk full during a write: the transaction rolls back, DiskFullError, the store stays consistent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.errors import DiskFullError
from tests.store.storehelp import commit_docs, make_config, make_doc, open_store


def test_full_database_via_max_page_count_rolls_back_and_recovers(store) -> None:
    commit_docs(store, [make_doc(0)])
    before = store.counts()
    pages = store.db.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0], transaction=False)
    store.db.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}").fetchall(), transaction=False)
    with pytest.raises(DiskFullError):
        commit_docs(store, [make_doc(i) for i in range(1, 200)], archive=True)
    assert store.counts() == before
    assert store.verify().ok
    store.db.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall(), transaction=False)
    assert commit_docs(store, [make_doc(i) for i in range(1, 200)]).versions_stored == 199


def test_real_enospc_on_a_small_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a 2 MiB tmpfs needs root and CAP_SYS_ADMIN")
    try:
        config = make_config(tmp_path / "inst", agent={"data_dir": str(mnt / "data")})
        store = open_store(config)
        committed = 0
        with pytest.raises(DiskFullError):
            for b in range(1000):
                commit_docs(store, [make_doc(b * 10 + k) for k in range(10)], path=f"/b{b}", archive=True)
                committed += 10
        assert store.counts()["documents"]["versions_total"] == committed
        store.close()
        # After restart (space still short) the store is intact and holds exactly the committed files.
        store = open_store(config)
        report = store.verify()
        assert report.ok, report.errors
        assert store.counts()["documents"]["versions_total"] == committed
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
