"""Helpers for audit tests: a minimal installation, synthetic events, and direct DB tampering.

Tampering goes around ``AuditLog`` on purpose — with plain ``sqlite3`` on ``audit.db``, lifting
the append-only triggers first — because that is what an insider with file access would do.
All data is synthetic: relay ids, claim numbers and subject references are made up.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from agent.audit.chain import canonical_text, record_hash
from agent.audit.log import _NO_DELETE, _NO_UPDATE
from agent.config import Config, load_config
from agent.keys import generate_keys

SUBJECT_A = "a" * 64
SUBJECT_B = "b" * 64


def write_installation(root: Path, *, keys: bool = True) -> Path:
    """agent.toml with ``[agent] data_dir`` (+ key files); returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "agent.toml"
    config_path.write_text(
        '[agent]\ninstitution_code = "99000001"\ndata_dir = "data"\nlog_dir = "logs"\n', encoding="utf-8"
    )
    if keys:
        generate_keys(root / "keys")
    return config_path


def load(config_path: Path) -> Config:
    return load_config(config_path, {})


def relay_event(
    i: int, *, action: str = "documents.fetch", subject: str | None = SUBJECT_A, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "actor": {
            "kind": "relay",
            "relay_id": "test-relay-01",
            "cert_sha256": "f" * 64,
            "cert_subject": "CN=test-relay-01,O=TEST",
        },
        "source": {"ip": "192.0.2.10", "port": 40000 + i % 1000},
        "action": action,
        "request_id": f"00000000-0000-4000-8000-{i:012d}",
        "claim_no": f"CLM-TEST-{i % 7:04d}",
        "subject_ref": subject,
        "document_ids": [f"doc_01TEST{i:020d}"] if action == "documents.fetch" else [],
        "result": "success",
        "status": 200,
        "bytes_out": 100 + i,
    }
    event.update(extra)
    return event


def copy_install(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst / "agent.toml"


class Tamper:
    """Direct edits of ``audit.db`` with the guard triggers lifted."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        self.conn.execute("DROP TRIGGER IF EXISTS records_no_delete")

    def text(self, seq: int) -> str:
        return self.conn.execute("SELECT record FROM records WHERE seq = ?", (seq,)).fetchone()[0]

    def record(self, seq: int) -> dict[str, Any]:
        return json.loads(self.text(seq))

    def set_text(self, seq: int, text: str | bytes) -> None:
        self.conn.execute("UPDATE records SET record = ? WHERE seq = ?", (text, seq))

    def delete(self, *seqs: int) -> None:
        for seq in seqs:
            self.conn.execute("DELETE FROM records WHERE seq = ?", (seq,))

    def swap(self, a: int, b: int) -> None:
        """Exchange everything but the key column, as an insider reordering rows would."""
        cols = "ts_utc, action, subject_ref, record"
        row_a = self.conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (a,)).fetchone()
        row_b = self.conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (b,)).fetchone()
        update = "UPDATE records SET ts_utc = ?, action = ?, subject_ref = ?, record = ? WHERE seq = ?"
        self.conn.execute(update, (*row_b, a))
        self.conn.execute(update, (*row_a, b))

    def insert_forged_after(self, seq: int) -> dict[str, Any]:
        """Shift the rows after ``seq`` up by one and put a correctly hashed forgery in the gap."""
        head = self.conn.execute("SELECT max(seq) FROM records").fetchone()[0]
        for s in range(head, seq, -1):
            self.conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (s + 1, s))
        before = self.record(seq)
        forged = dict(before)
        forged.update({"seq": seq + 1, "prev_hash": before["hash"], "claim_no": "CLM-FORGED-0001"})
        forged["hash"] = record_hash(forged)
        self.conn.execute(
            "INSERT INTO records (seq, ts_utc, action, subject_ref, record) VALUES (?, ?, ?, ?, ?)",
            (seq + 1, forged["ts_utc"], forged["action"], forged["subject_ref"], canonical_text(forged)),
        )
        return forged

    def close(self) -> None:
        self.conn.execute(_NO_UPDATE)
        self.conn.execute(_NO_DELETE)
        self.conn.close()
