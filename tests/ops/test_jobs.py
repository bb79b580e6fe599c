"""The daemon's scheduled purge and backup jobs, run directly against a real store and audit log
(security.md §11): they use the store's own ``purge``/``backup`` and write their audit records first."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest

from agent.audit.log import AuditLog
from agent.clock import FakeClock
from agent.errors import AuditUnavailableError
from agent.keys import load_keyring
from agent.ops.daemon import backup_job, purge_job
from agent.pipeline import validate_export
from agent.store.backup import verify_backup
from agent.store.models import FileFingerprint
from agent.store.store import Store
from tests.ingest.helpers import config_for, json_bytes, make_installation, receipt


def _issued(doc: dict, day: str) -> dict:
    doc["issued_on"] = day
    doc["issued_at"] = f"{day}T10:42:00+09:00"
    doc["care_period"] = {"start": day, "end": day}
    return doc


def _ingest(store: Store, docs: list[dict], received_at: dt.datetime, name: str) -> list[str]:
    data = json_bytes(docs)
    check = validate_export(data, file_name=name, received_at=received_at)
    assert check.ok, check.errors
    fp = FileFingerprint(f"/inbox/{name}", len(data), 1, hashlib.sha256(data).hexdigest())
    return store.commit_file(fp, check.records, archive=data, file_meta={"file_name": name}).doc_ids


@pytest.fixture
def site(tmp_path: Path):
    toml = make_installation(tmp_path / "inst")
    with open(toml, "a", encoding="utf-8") as handle:
        handle.write('\n[backup]\ndir = "data/backups"\nkeep = 2\n')
    config = config_for(toml)
    assert config.backup.keep == 2
    clock = FakeClock(dt.datetime(2025, 3, 15, 3, 0, tzinfo=dt.UTC))
    store = Store.open(config, clock=clock)
    audit = AuditLog.open(config, clock=clock)
    yield config, store, audit, clock
    audit.close()
    store.close()


def test_purge_job_deletes_documents_past_retention_and_writes_one_system_purge_record(site):
    config, store, audit, clock = site
    [old] = _ingest(store, [_issued(receipt(1), "2025-03-14")], clock.now(), "old.json")
    clock.advance(3 * 365 * 86400 + 7 * 86400)  # 2028-03-…: the old one is 3 years and a week old
    [recent] = _ingest(store, [_issued(receipt(2), "2028-03-01")], clock.now(), "recent.json")

    result = purge_job(store, audit, clock.now())

    assert result.doc_ids == [old] and not result.dry_run
    assert store.get_current(old) is None
    assert store.get_current(recent) is not None
    record = audit.last_record("system.purge")
    assert record is not None
    assert record["document_ids"] == [old] and record["actor"] == {"kind": "system"}
    assert record["counts"]["documents"] == 1
    assert audit.verify().ok


def test_purge_job_deletes_nothing_when_its_audit_record_cannot_be_written(site):
    config, store, audit, clock = site
    [old] = _ingest(store, [_issued(receipt(1), "2025-03-14")], clock.now(), "old.json")
    clock.advance(4 * 365 * 86400)
    os.chmod(config.data_dir / "audit.db", 0o400)  # the audit log becomes unwritable
    try:
        with pytest.raises(AuditUnavailableError):
            purge_job(store, audit, clock.now())
    finally:
        os.chmod(config.data_dir / "audit.db", 0o600)
    assert store.get_current(old) is not None


def test_backup_job_keeps_the_newest_backups_and_leaves_other_files_alone(site):
    config, store, audit, clock = site
    _ingest(store, [receipt(1), receipt(2)], clock.now(), "a.json")
    backup_dir = Path(config.backup.dir)
    written = []
    for day in range(4):
        written.append(backup_job(config, store, audit, clock.now()))
        if day == 0:
            (backup_dir / "backup-before-upgrade.sab").write_bytes(b"an operator's own file")
        if day == 1:  # two runs in the same second get distinct names
            written.append(backup_job(config, store, audit, clock.now()))
        clock.advance(86400)
    kept = sorted(p.name for p in backup_dir.glob("backup-2*.sab"))
    assert kept == sorted(p.name for p in written[-2:])
    assert (backup_dir / "backup-before-upgrade.sab").exists()
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in written[-2:])
    info = verify_backup(written[-1], load_keyring(config.keys_dir), config.data_dir / "tmp")
    assert {m["name"] for m in info["members"]} >= {"store.db"}
    records = list(audit.records_between(dt.datetime(2025, 1, 1, tzinfo=dt.UTC), clock.now()))
    assert [r["action"] for r in records].count("system.backup") == 5


def test_backup_rotation_retires_a_key_only_expired_backups_used(site):
    """security.md §11: backups expire under the backup retention, then the KEK they depend on is
    retired (crypto-shredding)."""
    config, store, audit, clock = site
    _ingest(store, [receipt(1)], clock.now(), "a.json")
    backup_job(config, store, audit, clock.now())  # under kek-1
    store.rotate_kek(retire=False)  # kek-2 current; kek-1 still needed by that backup
    assert (config.keys_dir / "kek-1.key").exists()
    for _ in range(2):
        clock.advance(86400)
        backup_job(config, store, audit, clock.now())  # keep = 2: the kek-1 backup expires
    assert not (config.keys_dir / "kek-1.key").exists()
    record = audit.last_record("system.keys.retire")
    assert record is not None and record["kek_ids"] == ["kek-1"]
