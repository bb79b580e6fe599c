"""Configuration change detection (security.md §7.1, S-39).

The daemon calls ``record_config_hash`` at start and on reload: the SHA-256 of the config file's
bytes is compared with ``new_hash`` of the last ``admin.config.changed`` record in the chain (the
chain itself is the memory, so the comparison is as tamper-evident as the log). A different hash —
or no earlier record — writes ``admin.config.changed`` with both hashes, the file's owner and its
mtime. Only hashes and metadata are recorded, never the file's content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from typing import Any

from agent.audit.log import CONFIG_ACTION, AuditLog
from agent.clock import utc_iso
from agent.config import Config


def config_file_hash(config: Config) -> str | None:
    """SHA-256 hex of the config file, ``None`` for embedded defaults (no file)."""
    if config.source is None:
        return None
    return hashlib.sha256(config.source.read_bytes()).hexdigest()


def _owner_name(uid: int) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return None


def record_config_hash(config: Config, log: AuditLog | None = None) -> dict[str, Any] | None:
    """Write ``admin.config.changed`` when the config file differs from the last recorded one.

    Returns the new record, or ``None`` when nothing changed (or there is no config file).
    Raises ``AuditUnavailableError`` when the record cannot be written.
    """
    new_hash = config_file_hash(config)
    if new_hash is None or config.source is None:
        return None
    own_log = log is None
    audit = log or AuditLog.open(config)
    try:
        last = audit.last_record(CONFIG_ACTION)
        old_hash = last.get("new_hash") if last else None
        if old_hash == new_hash:
            return None
        st = os.stat(config.source)
        mtime = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
        return audit.append(
            {
                "actor": {"kind": "system"},
                "source": {"local": True, "tty": None},
                "action": CONFIG_ACTION,
                "result": "success",
                "old_hash": old_hash,
                "new_hash": new_hash,
                "file_owner": _owner_name(st.st_uid) if os.name != "nt" else None,
                "file_owner_uid": st.st_uid if os.name != "nt" else None,
                "file_mtime": utc_iso(mtime),
            }
        )
    finally:
        if own_log:
            audit.close()
