"""One file exactly once (exports.md §1, §4): real files, real store, the real processor."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.ingest.process import RECOVERED, FileProcessor
from agent.ingest.quarantine import retry_entry
from agent.ingest.scanner import Ready
from agent.ingest.storeport import IngestStore
from agent.store.store import Store

from .helpers import config_for, json_bytes, jsonl_bytes, make_installation, receipt


@pytest.fixture
def env(tmp_path: Path):
    toml = make_installation(tmp_path / "inst")
    config = config_for(toml)
    store = Store.open(config)
    yield config, store, Path(config.watch[0].path)
    store.close()


def _ready(root: Path, rel: str, *, signalled: bool = True) -> Ready:
    st = os.stat(root / rel)
    return Ready(0, rel, st.st_size, st.st_mtime_ns, None, signalled)


def test_accepted_file_is_stored_once_and_removed(env):
    config, store, inbox = env
    (inbox / "a.json").write_bytes(json_bytes([receipt(1), receipt(2)]))
    proc = FileProcessor(config, IngestStore(store))
    result = proc.process(_ready(inbox, "a.json"))
    assert result.outcome == "accepted" and result.records == 2
    assert not (inbox / "a.json").exists()
    counts = store.counts()
    assert counts["documents"]["versions_total"] == 2
    assert counts["ingest"]["files_accepted"] == 1


def test_same_content_under_another_name_is_a_duplicate(env):
    config, store, inbox = env
    data = json_bytes([receipt(1)])
    proc = FileProcessor(config, IngestStore(store))
    (inbox / "a.json").write_bytes(data)
    assert proc.process(_ready(inbox, "a.json")).outcome == "accepted"
    (inbox / "b.json").write_bytes(data)
    assert proc.process(_ready(inbox, "b.json")).outcome == "duplicate"
    assert not (inbox / "b.json").exists()
    assert store.counts()["documents"]["versions_total"] == 1
    assert store.counts()["ingest"]["files_duplicate"] == 1


def test_committed_but_not_removed_file_is_only_acknowledged(env):
    """The state a crash between commit and unlink leaves: same path, bytes and mtime."""
    config, store, inbox = env
    data = jsonl_bytes([receipt(5)])
    path = inbox / "c.jsonl"
    path.write_bytes(data)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    proc = FileProcessor(config, IngestStore(store))
    assert proc.process(_ready(inbox, "c.jsonl")).outcome == "accepted"
    path.write_bytes(data)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert proc.process(_ready(inbox, "c.jsonl")).outcome == RECOVERED
    assert not path.exists()
    counts = store.counts()
    assert counts["documents"]["versions_total"] == 1
    assert counts["ingest"]["files_duplicate"] == 0


def test_one_bad_record_quarantines_the_whole_file_then_retry_stores_all(env):
    config, store, inbox = env
    docs = [receipt(n) for n in range(1000)]
    docs[437]["issued_on"] = "2025-03-15"  # later than the date of receipt below → R-034
    docs[437]["care_period"] = {"start": "2025-03-15", "end": "2025-03-15"}
    clock = FakeClock(dt.datetime(2025, 3, 14, 3, 0, tzinfo=dt.UTC))  # 12:00 KST on 2025-03-14
    (inbox / "batch.json").write_bytes(json_bytes(docs))
    proc = FileProcessor(config, IngestStore(store), clock=clock)
    result = proc.process(_ready(inbox, "batch.json"))
    assert result.outcome == "quarantined"
    assert not (inbox / "batch.json").exists()
    assert store.counts()["documents"]["versions_total"] == 0
    [entry] = store.quarantine_list()
    assert entry.reason["records"] == [437]
    assert "R-034" in entry.reason["rules"]
    assert "batch" not in repr(entry.reason)  # no original file name in the clear reason
    # The fix: the date of receipt is no longer before issued_on.
    clock.advance(86400)
    retried = retry_entry(config, store, entry.qid, clock=clock)
    assert retried.outcome == "accepted" and retried.versions_stored == 1000
    assert store.quarantine_list() == []
    assert store.counts()["documents"]["versions_total"] == 1000


def test_unreadable_content_is_quarantined_encrypted_with_reason(env):
    config, store, inbox = env
    (inbox / "bad.json").write_bytes(b"{not json")
    result = FileProcessor(config, IngestStore(store)).process(_ready(inbox, "bad.json"))
    assert result.outcome == "quarantined"
    [entry] = store.quarantine_list()
    assert entry.reason["rules"] == ["R-004"]
    item = store.quarantine_get(entry.qid)
    assert item.content == b"{not json" and item.original_name == "bad.json"
    raw = (Path(config.data_dir) / "store.db").read_bytes()
    assert b"{not json" not in raw


def test_file_changed_since_the_scan_is_abandoned_without_effect(env):
    config, store, inbox = env
    path = inbox / "g.json"
    path.write_bytes(json_bytes([receipt(1)]))
    ready = _ready(inbox, "g.json", signalled=False)
    path.write_bytes(json_bytes([receipt(1), receipt(2)]))  # grew after it settled
    result = FileProcessor(config, IngestStore(store)).process(ready)
    assert result.outcome == "abandoned"
    assert path.exists()
    assert store.counts()["documents"]["versions_total"] == 0
    assert store.counts()["ingest"]["files_accepted"] == 0
