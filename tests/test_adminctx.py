"""``audit_admin``: one call gives a command its attributed, fail-closed admin record."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import pytest

from agent.adminctx import admin_actor, audit_admin
from agent.audit import AuditLog
from agent.errors import AuditUnavailableError, ExitStatus
from tests.audit.audithelp import load, write_installation


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="sudo sets SUDO_USER for root only"
)
def test_actor_under_sudo_is_the_invoking_user() -> None:
    actor = admin_actor({"SUDO_USER": "clinic-it", "SUDO_UID": "1001", "USER": "root"})
    assert actor == {"kind": "admin", "os_user": "clinic-it", "uid": 1001, "host": socket.gethostname()}


def test_actor_without_sudo_is_the_real_account_not_a_spoofed_user_variable() -> None:
    actor = admin_actor({"USER": "someone-else", "LOGNAME": "someone-else"})
    assert actor["os_user"] == pwd.getpwuid(os.getuid()).pw_name
    assert actor["uid"] == os.getuid() and actor["kind"] == "admin"


def test_audit_admin_writes_a_local_admin_record(tmp_path: Path) -> None:
    config = load(write_installation(tmp_path / "inst", keys=False))
    record = audit_admin(
        config, "quarantine.show", reason="profile fix", environ={}, extra={"document_ids": ["q_01TEST"]}
    )
    assert record["action"] == "admin.quarantine.show"
    assert record["actor"]["os_user"] == pwd.getpwuid(os.getuid()).pw_name
    assert record["source"]["local"] is True and "tty" in record["source"]
    assert record["reason"] == "profile fix" and record["document_ids"] == ["q_01TEST"]
    with AuditLog.open(config) as log:
        assert log.last_record("admin.quarantine.show") == record


def test_extra_cannot_override_who_or_the_chain(tmp_path: Path) -> None:
    config = load(write_installation(tmp_path / "inst", keys=False))
    for key in ("actor", "seq", "hash", "action"):
        with pytest.raises(ValueError):
            audit_admin(config, "backup", extra={key: "x"})


def test_unwritable_audit_log_raises_exit_5(tmp_path: Path) -> None:
    config = load(write_installation(tmp_path / "inst", keys=False))
    AuditLog.open(config).close()
    (config.data_dir / "audit.db").chmod(0o400)
    with pytest.raises(AuditUnavailableError) as info:
        audit_admin(config, "purge")
    assert info.value.exit_status == ExitStatus.UNAVAILABLE
