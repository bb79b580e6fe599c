"""``record_config_hash``: a changed config file is recorded once, with both hashes (S-39)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.audit import AuditLog, record_config_hash
from tests.audit.audithelp import load, write_installation


def test_config_edit_between_starts_writes_one_record_with_old_and_new_hash(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst", keys=False)
    first = record_config_hash(load(config_path))
    assert first is not None and first["old_hash"] is None
    assert first["new_hash"] == hashlib.sha256(config_path.read_bytes()).hexdigest()
    assert record_config_hash(load(config_path)) is None  # unchanged: nothing new

    old_hash = first["new_hash"]
    config_path.write_text(config_path.read_text() + "\n[validation]\ndefault_valid_days = 5\n")
    changed = record_config_hash(load(config_path))
    assert changed is not None
    assert changed["action"] == "admin.config.changed"
    assert changed["old_hash"] == old_hash
    assert changed["new_hash"] == hashlib.sha256(config_path.read_bytes()).hexdigest()
    assert changed["file_owner_uid"] == config_path.stat().st_uid
    assert changed["file_mtime"].endswith("Z")
    with AuditLog.open(load(config_path)) as log:
        assert log.verify().ok and log.head()[0] == 2
