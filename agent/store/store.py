"""The encrypted document store: one SQLite file ``data_dir/store.db`` behind one writer thread.

What it owns (architecture.md): documents and their versions (encrypted, envelope per version;
each version row also holds its subject record — RRN/name ciphertext — while the keyed blind
indexes sit on ``documents``), the clear cross-document link columns and the W-5xx results
(``agent/store/links.py``), the ingest ledger, the encrypted archive of ingested files (blobs in the
database, so archive and records commit in one transaction), quarantine entries, replay ids, claim
bindings and a small key/value table. Per-day 429 counters are not here: the audit log keeps them
(``AuditLog.count_rate_limited``), next to the monthly report that reads them.

Rules it protects:
- No plaintext RRN or name in any table, index, WAL page, temp file, SQL text or bound parameter:
  look-ups bind the HMAC blind index; names are compared after decryption (relay-api.md §6.2).
- A file is all-or-nothing: ``commit_file`` decides and writes every record, the ledger row and
  the archive blob in one transaction (exports.md §4).
- Any authentication failure is ``IntegrityError`` naming the row (doc id/version), never "not
  found" and never partial plaintext.
- The current KEK is re-read from ``keys/`` at every write transaction, so a ``keys rotate`` run
  from the CLI while the daemon runs never leaves new rows wrapped under a KEK about to be retired;
  unknown KEK ids met on read are loaded from their key file (the other process made them).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.clock import KST, Clock, SystemClock, utc_iso
from agent.config import Config
from agent.documents.problems import Problem
from agent.documents.versions import StoredVersion, decide_version, merge_cancellation
from agent.errors import IntegrityError, UsageError
from agent.fsutil import ensure_dir
from agent.keys import KeyRing, check_key_file, kek_files, load_keyring
from agent.store import crypto
from agent.store.crypto import Sealed
from agent.store.db import Database, TraceCallback
from agent.store.ids import new_doc_id, new_entry_id, subject_id_for
from agent.store.links import LINK_COLUMNS, CrossEvaluator, LinkRow, link_values
from agent.store.models import (
    ACCEPTED,
    COMMITTED_OUTCOMES,
    QUARANTINED,
    SUPERSEDED,
    Binding,
    BindingUpdate,
    FileFingerprint,
    FileOutcome,
    LedgerEntry,
    PurgeResult,
    QuarantineEntry,
    QuarantineItem,
    RotationResult,
    SearchHit,
    SearchResult,
    StoredDocument,
    VerifyReport,
)
from agent.store.models import (
    DUPLICATE as OUT_DUPLICATE,
)

STORE_FILE = "store.db"
REPLAY_WINDOW_S = 24 * 3600  # relay-api.md §4: ids remembered 24 h (protocol value)
BINDING_LIFE_S = 60 * 60  # relay-api.md §6.3: latest search + 60 minutes
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
ALL_TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
_SEALED_COLS = "kek_id, wrap_nonce, wrapped_dek, nonce, ciphertext"
_SUBJECT_SEALED_COLS = (
    "subject_kek_id, subject_wrap_nonce, subject_wrapped_dek, subject_nonce, subject_ciphertext"
)
_SUBJECT_FIELDS = ("name", "rrn", "rrn_masked", "patient_reg_no")
# The subject record id is derived from the doc id (ids.subject_id_for), in SQL for the loops below.
_SUBJECT_ID_SQL = "'sub_' || substr(doc_id, 5)"


@dataclasses.dataclass(frozen=True)
class _SealedGroup:
    """Five sealed columns holding one kind of record: ``prefix`` + kek_id, wrap_nonce, … ."""

    table: str
    kind: str
    id_expr: str  # SQL giving the record id used in the AADs
    version_expr: str  # SQL giving the version used in the AADs
    label: str
    prefix: str = ""

    @property
    def kek_col(self) -> str:
        return self.prefix + "kek_id"

    @property
    def cols(self) -> str:
        return ", ".join(self.prefix + c for c in _SEALED_COLS.split(", "))


# Every place holding a wrapped DEK (verify, rotation, KEK usage walk these).
_ENCRYPTED: tuple[_SealedGroup, ...] = (
    _SealedGroup("versions", crypto.KIND_DOC, "doc_id", "version", "document"),
    _SealedGroup("versions", crypto.KIND_SUBJECT, _SUBJECT_ID_SQL, "version", "subject", "subject_"),
    _SealedGroup("archive", crypto.KIND_ARCHIVE, "archive_id", "0", "archive entry"),
    _SealedGroup("quarantine", crypto.KIND_QUARANTINE, "qid", "0", "quarantine entry"),
    _SealedGroup("ledger", crypto.KIND_LEDGER, "path_id", "0", "ledger entry"),
)
_Key = tuple[str, str, str]  # natural key (ykiho, document_type, document_no), documents.md §2.2


class _Rollback(Exception):
    """Raised inside a write job to roll the transaction back and hand a value out."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


def normalise_name(name: str) -> str:
    """relay-api.md §6.2 name match: NFC, drop every ``str.isspace`` character, casefold."""
    return "".join(ch for ch in unicodedata.normalize("NFC", name) if not ch.isspace()).casefold()


# Not sorted: the stored form is read back with json.loads, never compared as bytes (the content
# hash is over the canonical form, computed by ingest), and sorting costs ~15%. One encoder
# instance: json.dumps with options builds a new one per call (two calls per stored version).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def _rules_json(rules: Sequence[str]) -> str:
    """The clear rule-id column of a version (``["W-104"]``); most versions have none."""
    return json.dumps(sorted(set(rules))) if rules else "[]"


def _sealed(row: Sequence[Any], start: int = 0) -> Sealed:
    return Sealed(
        row[start], bytes(row[start + 1]), bytes(row[start + 2]), bytes(row[start + 3]), bytes(row[start + 4])
    )


def _pack(meta: dict[str, Any], content: bytes | None) -> bytes:
    """Encrypted entry payload: 4-byte length + JSON meta + raw content (no base64 blow-up)."""
    head = _dumps(meta)
    return len(head).to_bytes(4, "big") + head + (content or b"")


def _unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:4], "big")
    return json.loads(data[4 : 4 + n]), data[4 + n :]


class PendingCommit:
    """A file commit queued on the writer thread (``Store.submit_file``)."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[FileOutcome]) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> FileOutcome:
        """The file's outcome once durably committed (or rolled back as ``quarantined``)."""
        try:
            return Database.result(self.future)
        except _Rollback as rb:
            return rb.value  # type: ignore[no-any-return]


class Store:
    """The store of one installation. Open with ``Store.open(config)``; close (or use ``with``)."""

    def __init__(
        self,
        db: Database,
        keyring: KeyRing,
        clock: Clock,
        data_dir: Path,
        retention_keep_s: int,
        backup_dir: Path | None = None,
        *,
        default_valid_days: int = 3,
        backup_keep_days: int = 7,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.clock = clock
        self.data_dir = data_dir
        self.retention_keep_s = retention_keep_s
        self.backup_dir = backup_dir
        self.backup_keep_days = backup_keep_days  # backup.keep: how long a backup's KEK is kept
        self.default_valid_days = default_valid_days  # W-507 (config validation.default_valid_days)
        self._keys_stamp: int | None = None  # mtime of the key folder at the last KEK refresh

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        config: Config,
        *,
        keyring: KeyRing | None = None,
        clock: Clock | None = None,
        trace: TraceCallback | None = None,
    ) -> Store:
        """Open (creating and migrating as needed) ``data_dir/store.db``."""
        data_dir = ensure_dir(config.data_dir)
        ensure_dir(data_dir / "tmp")
        keyring = keyring or load_keyring(config.keys_dir)
        db = Database(data_dir / STORE_FILE, trace=trace)
        store = cls(
            db,
            keyring,
            clock or SystemClock(),
            data_dir,
            int(config.retention.keep),
            backup_dir=config.backup.dir,
            default_valid_days=int(config.validation.default_valid_days),
            backup_keep_days=int(config.backup.keep),
        )
        store._ensure_identity()
        store._backfill_links()
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_identity(self) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO kv (key, value) VALUES ('store_id', ?)", (new_entry_id("store"),)
            )
            conn.execute("INSERT OR IGNORE INTO kv (key, value) VALUES ('generation', '0')")
            conn.execute(
                "INSERT OR IGNORE INTO kv (key, value) VALUES ('created_at', ?)", (utc_iso(self.clock.now()),)
            )

        self.db.write(job)

    def _backfill_links(self, batch: int = 500) -> None:
        """Fill the link columns of documents stored before schema migration 4 -> 5.

        The migration cannot do it (it has no keys): it leaves ``backfill_links`` in ``kv`` when
        there were documents. Each batch decrypts current versions and is one short write
        transaction; the marker goes only after the last batch, so an interrupted start resumes.
        Cross-document warnings of pairs stored before are computed when either side next changes.
        """
        if self.kv_get("backfill_links") is None:
            return
        last = ""
        while True:

            def job(conn: sqlite3.Connection, after: str = last) -> str | None:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT doc_id FROM documents WHERE doc_id > ? ORDER BY doc_id LIMIT ?",
                        (after, batch),
                    )
                ]
                if not ids:
                    conn.execute("DELETE FROM kv WHERE key = 'backfill_links'")
                    return None
                rows = []
                for doc_id, stored in self._load_current_many(conn, ids).items():
                    rows.append((*link_values(stored.document, self.preg_hmac), doc_id))
                conn.executemany(
                    "UPDATE documents SET receipt_no = ?, prescription_issue_no = ?, preg_hmac = ? "
                    "WHERE doc_id = ?",
                    rows,
                )
                return ids[-1]

            nxt = self.db.write(job)
            if nxt is None:
                return
            last = nxt

    # -- keys ----------------------------------------------------------------------------------
    def _kek(self, kek_id: str, what: str) -> bytes:
        kek = self.keyring.keks.get(kek_id)
        if kek is not None:
            return kek
        # Another process (``keys rotate``) may have created it since we loaded the keyring.
        path = self.keyring.keys_dir / f"{kek_id}.key"
        if path.exists():
            check_key_file(path)
            data = path.read_bytes()
            if len(data) == 32:
                self.keyring.keks[kek_id] = data
                return data
        raise IntegrityError(f"integrity error: {what}: its key-encryption key {kek_id} is not available")

    def _refresh_current_kek(self) -> tuple[str, bytes]:
        """The newest KEK on disk is current: picks up a rotation done by another process.

        The key folder is listed again only when its mtime changed (a rotation adds a file)."""
        try:
            stamp = os.stat(self.keyring.keys_dir).st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._keys_stamp:
            return self.keyring.current_kek_id, self.keyring.current_kek
        files = kek_files(self.keyring.keys_dir)
        # Trusted only once the folder's mtime is safely in the past: a coarse file-system clock
        # could give a rotation in the same tick the same mtime as this listing.
        self._keys_stamp = stamp if stamp is not None and time.time_ns() - stamp > 2_000_000_000 else None
        if files:
            newest = max(files, key=lambda k: int(k.split("-")[1]))
            if int(newest.split("-")[1]) > int(self.keyring.current_kek_id.split("-")[1]):
                self._kek(newest, "current key")
                self.keyring.current_kek_id = newest
        return self.keyring.current_kek_id, self.keyring.current_kek

    def _open(self, kind: str, record_id: str, version: int | str, sealed: Sealed, what: str) -> bytes:
        return crypto.open_sealed(kind, record_id, version, sealed, self._kek(sealed.kek_id, what), what=what)

    def path_hmac(self, path: str) -> str:
        """Keyed HMAC of a source path for ledger look-up (the path itself is stored encrypted)."""
        return hmac.new(
            self.keyring.blind_index_key, b"path:v1:" + path.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    # -- helpers for write jobs -----------------------------------------------------------------
    def _bump_generation(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE kv SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _insert_ledger(
        self,
        conn: sqlite3.Connection,
        fp: FileFingerprint | None,
        sha256: str,
        outcome: str,
        meta: dict[str, Any] | None,
        now_iso: str,
        kek: tuple[str, bytes],
    ) -> int:
        path_id = sealed = None
        path_h = size = mtime = None
        if fp is not None:
            path_h, size, mtime = self.path_hmac(fp.path), fp.size, fp.mtime_ns
            path_id = new_entry_id("led")
            sealed = crypto.seal(
                crypto.KIND_LEDGER, path_id, 0, _dumps({"path": fp.path, "meta": meta or {}}), *kek
            )
        cur = conn.execute(
            "INSERT INTO ledger (file_id, sha256, size, mtime_ns, path_hmac, outcome, committed_at, path_id, "
            f"{_SEALED_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                sha256[:16],
                sha256,
                size,
                mtime,
                path_h,
                outcome,
                now_iso,
                path_id,
                *(
                    (sealed.kek_id, sealed.wrap_nonce, sealed.wrapped_dek, sealed.nonce, sealed.ciphertext)
                    if sealed
                    else (None,) * 5
                ),
            ),
        )
        return int(cur.lastrowid or 0)

    # -- ingest --------------------------------------------------------------------------------
    def file_known(self, sha256: str) -> bool:
        """True when a byte-identical file was already committed (accepted/duplicate/superseded)."""
        with self.db.reader() as conn:
            row = conn.execute(
                "SELECT 1 FROM ledger WHERE sha256 = ? AND outcome IN (?,?,?) LIMIT 1",
                (sha256, *COMMITTED_OUTCOMES),
            ).fetchone()
        return row is not None

    def ledger_lookup(self, path: str, size: int, mtime_ns: int) -> LedgerEntry | None:
        """The latest ledger row for this path with this size and mtime (``keep`` mode), if any."""
        with self.db.reader() as conn:
            row = conn.execute(
                "SELECT ledger_id, file_id, sha256, size, mtime_ns, outcome, records_committed, committed_at "
                "FROM ledger WHERE path_hmac = ? AND size = ? AND mtime_ns = ? ORDER BY ledger_id DESC LIMIT 1",
                (self.path_hmac(path), size, mtime_ns),
            ).fetchone()
        return LedgerEntry(*row) if row else None

    def commit_file(
        self,
        fingerprint: FileFingerprint,
        records: Sequence[Any],
        *,
        archive: bytes | None = None,
        file_meta: dict[str, Any] | None = None,
    ) -> FileOutcome:
        """Commit every record of one file in ONE transaction and return the file's outcome
        (``submit_file`` and wait)."""
        return self.submit_file(fingerprint, records, archive=archive, file_meta=file_meta).result()

    def submit_file(
        self,
        fingerprint: FileFingerprint,
        records: Sequence[Any],
        *,
        archive: bytes | None = None,
        file_meta: dict[str, Any] | None = None,
    ) -> PendingCommit:
        """Queue the commit of every record of one file as ONE transaction and return at once.

        Files submitted one after another are committed in that order (the writer may group them
        into one COMMIT, each in its own savepoint); ``PendingCommit.result()`` returns the file's
        outcome only once it is durable, so a caller acknowledges a file only after that.

        ``records``: ``StoreRecord`` or ``agent.pipeline.ValidatedRecord`` (index, canonical document,
        content hash, warnings), all already valid. ``file_meta``: ``file_name``, ``profile``,
        ``format``, ``encoding`` for the ``source`` block (stored only encrypted). On a version
        conflict (R-010/R-014) nothing is written and the outcome is ``quarantined`` with the
        problems; the caller quarantines the file. Cross-document warnings (W-5xx) of every document
        given a new current version, and of its counterparts, are recomputed in the same transaction.

        Throughput: the whole file is decided in memory first (one look-up query per institution and
        type, not one per record), then written with one ``executemany`` per table; each new version
        is one ``versions`` row holding both of its sealed records (document and subject).
        """
        meta = dict(file_meta or {})
        inputs = [_record_input(r) for r in records]
        now_iso = utc_iso(self.clock.now())
        file_id = fingerprint.file_id
        # The source block is the same for every record of the file but its index: build it once.
        source = {
            k: v
            for k, v in {
                "file_name": meta.get("file_name"),
                "sha256": fingerprint.sha256,
                "record_index": 0,
                "profile": meta.get("profile", "standard"),
                "format": meta.get("format"),
                "encoding": meta.get("encoding"),
            }.items()
            if v is not None
        }

        def job(conn: sqlite3.Connection) -> FileOutcome:
            kek = self._refresh_current_kek()
            if conn.execute(
                "SELECT 1 FROM ledger WHERE sha256 = ? AND outcome IN (?,?,?) LIMIT 1",
                (fingerprint.sha256, *COMMITTED_OUTCOMES),
            ).fetchone():
                ledger_id = self._insert_ledger(
                    conn, fingerprint, fingerprint.sha256, OUT_DUPLICATE, meta, now_iso, kek
                )
                self._bump_generation(conn)
                return FileOutcome(OUT_DUPLICATE, file_id, noop_records=len(inputs), ledger_id=ledger_id)
            ledger_id = self._insert_ledger(
                conn, fingerprint, fingerprint.sha256, ACCEPTED, meta, now_iso, kek
            )
            outcome = FileOutcome(ACCEPTED, file_id, ledger_id=ledger_id)
            # Version order is the only ordering (documents.md §9.2): sort a file's records per key.
            ordered = sorted(inputs, key=lambda r: (r.key, r.version))
            states = self._load_key_states(conn, ordered)
            for rec in ordered:
                state = states[rec.key]
                result = self._decide_record(state, rec, source, now_iso)
                if isinstance(result, Problem):
                    outcome.problems.append(result)
                elif result is None:
                    outcome.noop_records += 1
                else:
                    outcome.warnings.extend(result)
                    outcome.versions_stored += 1
                    if state.doc_id not in outcome.doc_ids:
                        outcome.doc_ids.append(state.doc_id)
            if outcome.problems:
                raise _Rollback(
                    FileOutcome(
                        QUARANTINED,
                        file_id,
                        problems=sorted(outcome.problems, key=lambda p: (p.record or 0, p.rule)),
                    )
                )
            changed = [s for s in states.values() if s.pending]
            if changed:
                self._write_documents(conn, changed, now_iso)
                outcome.cross_warnings = self._cross_evaluate(conn, changed, kek)
                self._insert_versions(conn, changed, ledger_id, now_iso, kek)
            if inputs and outcome.versions_stored == 0:
                outcome.outcome = OUT_DUPLICATE
            elif any(s.existed for s in changed):
                outcome.outcome = SUPERSEDED
            conn.execute(
                "UPDATE ledger SET outcome = ?, records_committed = ? WHERE ledger_id = ?",
                (outcome.outcome, outcome.versions_stored, ledger_id),
            )
            if archive is not None and outcome.versions_stored:
                archive_id = new_entry_id("arc")
                sealed = crypto.seal(
                    crypto.KIND_ARCHIVE,
                    archive_id,
                    0,
                    _pack({"original_name": meta.get("file_name")}, archive),
                    *kek,
                )
                conn.execute(
                    f"INSERT INTO archive (archive_id, ledger_id, size, created_at, {_SEALED_COLS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (archive_id, ledger_id, len(archive), now_iso, *sealed.columns()),
                )
            conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('last_commit_at', ?)", (now_iso,))
            self._bump_generation(conn)
            return outcome

        return PendingCommit(self.db.submit(job))

    def _load_key_states(self, conn: sqlite3.Connection, ordered: Sequence[_Input]) -> dict[_Key, _KeyState]:
        """What the store holds for every natural key of a file, in a few batched queries."""
        states: dict[_Key, _KeyState] = {}
        by_group: dict[tuple[str, str], list[str]] = {}
        for rec in ordered:
            key = rec.key
            if key not in states:
                states[key] = _KeyState(key)
                by_group.setdefault(key[:2], []).append(key[2])
        existing: dict[str, _KeyState] = {}
        for (ykiho, doc_type), numbers in by_group.items():
            for chunk in _chunks(numbers, 400):
                for row in conn.execute(
                    "SELECT document_no, doc_id, receipt_no, prescription_issue_no, preg_hmac, "
                    f"care_start, care_end FROM documents WHERE ykiho = ? AND document_type = ? "
                    f"AND document_no IN ({','.join('?' * len(chunk))})",
                    (ykiho, doc_type, *chunk),
                ):
                    state = states[(ykiho, doc_type, row[0])]
                    state.doc_id, state.existed = row[1], True
                    state.previous_links = LinkRow(row[1], doc_type, ykiho, row[0], *row[2:])
                    existing[row[1]] = state
        for chunk in _chunks(list(existing), 400):
            for doc_id, version, chash, status in conn.execute(
                "SELECT doc_id, version, content_hash, status FROM versions "
                f"WHERE doc_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                existing[doc_id].stored.append(StoredVersion(version, chash, status))
        # The current content is needed only by a record that is not a re-export of a stored
        # version (R-014, W-011, cancellation merge): decrypt just those, fetched in one query.
        incoming: dict[_Key, set[int]] = {}
        for rec in ordered:
            incoming.setdefault(rec.key, set()).add(rec.version)
        need = [s.doc_id for s in existing.values() if incoming[s.key] - {v.version for v in s.stored}]
        if need:
            for doc_id, stored in self._load_current_many(conn, need).items():
                existing[doc_id].content = {k: v for k, v in stored.document.items() if k not in AGENT_FIELDS}
        for state in states.values():
            if not state.existed:
                state.doc_id = new_doc_id()
        return states

    def _decide_record(
        self, state: _KeyState, rec: _Input, source: dict[str, Any], now_iso: str
    ) -> Problem | list[Problem] | None:
        """Apply documents.md §9 to one record against the key's state (stored + earlier in the file).

        Returns the R-010/R-014 problem, ``None`` for a no-op, or the W-011/W-012/W-013 warnings of a
        new version (which is then pending on ``state``).
        """
        doc = rec.document
        version = rec.version
        known = any(v.version == version for v in state.stored)
        # A known version is decided by its hash alone; decide_version never reads ``current`` then.
        decision = decide_version(doc, rec.content_hash, state.stored, None if known else state.content)
        if decision.action == "conflict":
            return decision.errors[0].with_record(rec.index)
        if decision.action == "duplicate":
            return None
        decided = [p.with_record(rec.index) for p in decision.problems if not p.is_error]
        status = doc["status"]
        content = merge_cancellation(state.content, doc) if status == "cancelled" and state.content else doc
        warnings = list(rec.warnings) + [{"rule": p.rule, "path": p.path} for p in decided]
        stored_doc = dict(content)
        stored_doc["source"] = {**source, "record_index": rec.index}
        stored_doc["received_at"] = now_iso
        stored_doc["content_hash"] = rec.content_hash
        stored_doc["validation"] = {"warnings": warnings, "cross_warnings": []}
        state.pending.append(
            _Pending(
                version,
                status,
                rec.content_hash,
                content,
                stored_doc,
                _rules_json([w["rule"] for w in warnings]),
                canonical=rec.canonical if content is doc else None,
            )
        )
        state.stored.append(StoredVersion(version, rec.content_hash, status))
        state.content = content
        return decided

    def _write_documents(self, conn: sqlite3.Connection, changed: Sequence[_KeyState], now_iso: str) -> None:
        """One ``documents`` row per changed key, holding the clear columns of its new current version."""
        inserts, updates = [], []
        for state in changed:
            cur = state.pending[-1]
            content = cur.content
            care = content.get("care_period") if isinstance(content.get("care_period"), dict) else None
            care_start = care.get("start") if care else None
            care_end = care.get("end") if care else None
            total = content.get("total_charge") if state.key[1] in ("receipt", "pharmacy_receipt") else None
            patient = content.get("patient") or {}
            rrn_bidx = rrn7_bidx = None
            if isinstance(patient.get("rrn"), str) and len(patient["rrn"]) == 13:
                rrn_bidx = self.keyring.rrn_index(patient["rrn"])
            elif isinstance(patient.get("rrn_masked"), str):
                rrn7_bidx = self.keyring.rrn7_index(patient["rrn_masked"][:7])
            receipt_no, issue_no, preg = link_values(content, self.preg_hmac)
            ykiho, doc_type, document_no = state.key
            state.links = LinkRow(
                state.doc_id, doc_type, ykiho, document_no, receipt_no, issue_no, preg, care_start, care_end
            )
            values = (
                cur.version,
                cur.status,
                str(content.get("issued_on")),
                care_start,
                care_end,
                total,
                rrn_bidx,
                rrn7_bidx,
                receipt_no,
                issue_no,
                preg,
                now_iso,
            )
            if state.existed:
                updates.append((*values, state.doc_id))
            else:
                inserts.append((state.doc_id, *state.key, *values))
        tail = (
            "current_version, current_status, issued_on, care_start, care_end, total_charge, rrn_bidx, "
            "rrn7_bidx, receipt_no, prescription_issue_no, preg_hmac, updated_at"
        )
        if inserts:
            conn.executemany(
                f"INSERT INTO documents (doc_id, ykiho, document_type, document_no, {tail}) "
                f"VALUES ({','.join('?' * 16)})",
                inserts,
            )
        if updates:
            sets = ", ".join(f"{c} = ?" for c in tail.split(", "))
            conn.executemany(f"UPDATE documents SET {sets} WHERE doc_id = ?", updates)

    def _cross_evaluate(
        self,
        conn: sqlite3.Connection,
        changed: Sequence[_KeyState],
        kek: tuple[str, bytes],
        gone: Sequence[LinkRow] = (),
    ) -> dict[str, list[Problem]]:
        """W-5xx for the changed documents and their counterparts (documents.md §7), same transaction.

        Changed documents get theirs in the pending current version (sealed once, just after); a
        counterpart already stored gets its current version re-sealed (fresh DEK) only when its
        result changed. ``gone``: link rows of documents deleted in this transaction (purge) — their
        former counterparts are evaluated again.
        """
        pending = {s.doc_id: s.pending[-1].content for s in changed}
        stored: dict[str, StoredDocument] = {}

        def load(doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            found = self._load_current_many(conn, doc_ids)
            stored.update(found)
            return {d: s.document for d, s in found.items()}

        evaluator = CrossEvaluator(conn, pending, load, default_valid_days=self.default_valid_days)
        results = evaluator.run(
            [s.links for s in changed if s.links is not None],
            [*(s.previous_links for s in changed if s.previous_links is not None), *gone],
        )
        by_id = {s.doc_id: s for s in changed}
        updates = []
        for doc_id, problems in results.items():
            listed = [{"rule": p.rule, "path": p.path} for p in problems]
            if doc_id in by_id:
                by_id[doc_id].pending[-1].stored_doc["validation"]["cross_warnings"] = listed
                by_id[doc_id].pending[-1].cross_rules = _rules_json([p.rule for p in problems])
                continue
            current = stored.get(doc_id)
            if current is None or (current.document.get("validation") or {}).get("cross_warnings") == listed:
                continue
            document = dict(current.document)
            document["validation"] = {**(document.get("validation") or {}), "cross_warnings": listed}
            sealed = crypto.seal(crypto.KIND_DOC, doc_id, current.version, _dumps(document), *kek)
            updates.append(
                (_rules_json([p.rule for p in problems]), *sealed.columns(), doc_id, current.version)
            )
        if updates:
            conn.executemany(
                "UPDATE versions SET cross_warning_rules = ?, kek_id = ?, wrap_nonce = ?, "
                "wrapped_dek = ?, nonce = ?, ciphertext = ? WHERE doc_id = ? AND version = ?",
                updates,
            )
        return results

    def _insert_versions(
        self,
        conn: sqlite3.Connection,
        changed: Sequence[_KeyState],
        ledger_id: int,
        now_iso: str,
        kek: tuple[str, bytes],
    ) -> None:
        """Seal and insert every pending version: one row, two records (document + subject)."""
        rows = []
        for state in changed:
            doc_id = state.doc_id
            subject_id = subject_id_for(doc_id)
            for p in state.pending:
                content = p.content
                care = content.get("care_period") if isinstance(content.get("care_period"), dict) else None
                total = (
                    content.get("total_charge") if state.key[1] in ("receipt", "pharmacy_receipt") else None
                )
                patient = content.get("patient") or {}
                subject = {k: patient[k] for k in _SUBJECT_FIELDS if k in patient}
                sealed = crypto.seal(crypto.KIND_DOC, doc_id, p.version, p.sealed_bytes(), *kek)
                ssealed = crypto.seal(crypto.KIND_SUBJECT, subject_id, p.version, _dumps(subject), *kek)
                rows.append(
                    (
                        doc_id,
                        p.version,
                        p.status,
                        p.content_hash,
                        str(content.get("issued_on")),
                        care.get("start") if care else None,
                        care.get("end") if care else None,
                        total,
                        ledger_id,
                        now_iso,
                        p.warning_rules,
                        p.cross_rules,
                        *sealed.columns(),
                        *ssealed.columns(),
                    )
                )
        conn.executemany(
            "INSERT INTO versions (doc_id, version, status, content_hash, issued_on, care_start, care_end, "
            f"total_charge, ledger_id, received_at, warning_rules, cross_warning_rules, {_SEALED_COLS}, "
            f"{_SUBJECT_SEALED_COLS}) VALUES ({','.join('?' * 22)})",
            rows,
        )

    def preg_hmac(self, ykiho: str, patient_reg_no: str) -> str:
        """Keyed HMAC of an institution's patient registration number (§7.1 fallback link only).

        Same key as the RRN blind index with its own prefix, so it can never equal an RRN index;
        the ykiho is inside so one number at two institutions does not link.
        """
        return hmac.new(
            self.keyring.blind_index_key,
            f"preg:v1:{ykiho}:{patient_reg_no}".encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).hexdigest()

    # -- reads ---------------------------------------------------------------------------------
    def _read_version(
        self, conn: sqlite3.Connection, doc_id: str, version: int, current_version: int | None = None
    ) -> StoredDocument:
        row = conn.execute(
            f"SELECT status, content_hash, received_at, {_SEALED_COLS} FROM versions "
            "WHERE doc_id = ? AND version = ?",
            (doc_id, version),
        ).fetchone()
        what = f"document {doc_id} version {version}"
        if row is None:
            raise IntegrityError(f"integrity error: {what}: version row missing")
        plain = self._open(crypto.KIND_DOC, doc_id, version, _sealed(row, 3), what)
        document = json.loads(plain)
        if current_version is None:
            cur = conn.execute("SELECT current_version FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            current_version = cur[0] if cur else None
        return StoredDocument(doc_id, version, row[0], row[1], row[2], version == current_version, document)

    def _reading(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a read; on an integrity failure re-read once in a fresh snapshot.

        A rotation may re-wrap a row and retire its old KEK between our SELECT and our decrypt;
        the second read sees the re-wrapped row. Real tampering fails the second time too.
        """

        def read() -> Any:
            with self.db.reader() as conn:
                return fn(conn)

        return _retry_integrity(read)

    def get_current(self, doc_id: str) -> StoredDocument | None:
        """The current (highest) version of a document, decrypted; ``None`` when unknown or purged."""

        def fn(conn: sqlite3.Connection) -> StoredDocument | None:
            row = conn.execute("SELECT current_version FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            return self._read_version(conn, doc_id, int(row[0]), int(row[0])) if row else None

        return self._reading(fn)  # type: ignore[no-any-return]

    def _load_current_many(
        self, conn: sqlite3.Connection, doc_ids: Sequence[str]
    ) -> dict[str, StoredDocument]:
        """Current versions of several documents, decrypted, with one query per 400 ids."""
        out: dict[str, StoredDocument] = {}
        for chunk in _chunks(list(doc_ids), 400):
            for row in conn.execute(
                f"SELECT v.doc_id, v.version, v.status, v.content_hash, v.received_at, "
                f"v.{_SEALED_COLS.replace(', ', ', v.')} FROM documents d JOIN versions v "
                "ON v.doc_id = d.doc_id AND v.version = d.current_version "
                f"WHERE d.doc_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                out[row[0]] = self._open_current(row, 0)
        return out

    def _open_current(self, row: Sequence[Any], at: int) -> StoredDocument:
        """The current version of a document from ``row[at:]``: doc id, version, status, content
        hash, received at, then the sealed columns; decrypted."""
        doc_id, version = row[at], row[at + 1]
        what = f"document {doc_id} version {version}"
        document = json.loads(self._open(crypto.KIND_DOC, doc_id, version, _sealed(row, at + 5), what))
        return StoredDocument(doc_id, version, row[at + 2], row[at + 3], row[at + 4], True, document)

    def binding_with_documents(
        self, claim_no: str, consent_id: str, doc_ids: Sequence[str], now: dt.datetime
    ) -> tuple[Binding | None, dict[str, StoredDocument]]:
        """A relay fetch's reads in one snapshot: the claim's live binding (B4) and — only when it
        carries ``consent_id`` and allows every id of ``doc_ids`` (B5, all or nothing) — their
        current versions, decrypted. An id purged since the search is absent from the dict."""

        ids = list(dict.fromkeys(doc_ids))
        if not 0 < len(ids) <= 400:

            def fn(conn: sqlite3.Connection) -> tuple[Binding | None, dict[str, StoredDocument]]:
                binding = self._binding_in(conn, claim_no, now)
                if binding is None or binding.consent_id != consent_id:
                    return binding, {}
                if not binding.allowed_ids.issuperset(ids):
                    return binding, {}
                return binding, self._load_current_many(conn, ids)

            return self._reading(fn)  # type: ignore[no-any-return]
        # The usual fetch (a few ids): binding and sealed rows in one statement, hence one
        # snapshot; the rows are opened only when the binding allows every id.
        sql = (
            "SELECT b.claim_no, b.consent_id, b.subject_ref, b.allowed_ids, b.expires_at, "
            f"v.doc_id, v.version, v.status, v.content_hash, v.received_at, "
            f"v.{_SEALED_COLS.replace(', ', ', v.')} FROM bindings b "
            f"LEFT JOIN documents d ON d.doc_id IN ({','.join('?' * len(ids))}) "
            "LEFT JOIN versions v ON v.doc_id = d.doc_id AND v.version = d.current_version "
            "WHERE b.claim_no = ? AND b.expires_at > ?"
        )
        params = (*ids, claim_no, now.timestamp())

        def read() -> tuple[Binding | None, dict[str, StoredDocument]]:
            rows = self.db.query(sql, params)
            if not rows:
                return None, {}
            binding = _binding_of(rows[0])
            if binding.consent_id != consent_id or not binding.allowed_ids.issuperset(ids):
                return binding, {}
            out: dict[str, StoredDocument] = {}
            for row in rows:
                if row[5] is not None:  # else purged since the search
                    out[row[5]] = self._open_current(row, 5)
            return binding, out

        return _retry_integrity(read)  # type: ignore[no-any-return]

    def get_current_many(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """Current versions of several documents read in one snapshot (fetch: all or nothing)."""
        return self._reading(lambda conn: self._load_current_many(conn, doc_ids))  # type: ignore[no-any-return]

    def get_version(self, doc_id: str, version: int) -> StoredDocument | None:
        def fn(conn: sqlite3.Connection) -> StoredDocument | None:
            if not conn.execute(
                "SELECT 1 FROM versions WHERE doc_id = ? AND version = ?", (doc_id, version)
            ).fetchone():
                return None
            return self._read_version(conn, doc_id, version)

        return self._reading(fn)  # type: ignore[no-any-return]

    def history(self, doc_id: str) -> list[StoredDocument]:
        """Every stored version of a document, oldest first (operators and audit; never served)."""

        def fn(conn: sqlite3.Connection) -> list[StoredDocument]:
            cur = conn.execute("SELECT current_version FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            if not cur:
                return []
            versions = [
                v
                for (v,) in conn.execute(
                    "SELECT version FROM versions WHERE doc_id = ? ORDER BY version", (doc_id,)
                )
            ]
            return [self._read_version(conn, doc_id, v, int(cur[0])) for v in versions]

        return self._reading(fn)  # type: ignore[no-any-return]

    def find_doc_id(self, ykiho: str, document_type: str, document_no: str) -> str | None:
        """The stable doc id of a natural key (documents.md §2.2), if stored."""
        with self.db.reader() as conn:
            row = conn.execute(
                "SELECT doc_id FROM documents WHERE ykiho = ? AND document_type = ? AND document_no = ?",
                (ykiho, document_type, document_no),
            ).fetchone()
        return row[0] if row else None

    def doc_ids(self, *, current_active_only: bool = False) -> list[str]:
        with self.db.reader() as conn:
            sql = "SELECT doc_id FROM documents" + (
                " WHERE current_status = 'active'" if current_active_only else ""
            )
            return [r[0] for r in conn.execute(sql + " ORDER BY doc_id")]

    def search(
        self,
        *,
        rrn: str,
        name: str,
        period_from: str | dt.date,
        period_to: str | dt.date,
        document_types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> SearchResult:
        """relay-api.md §6.2 matching; the plaintext RRN never reaches SQL (only its HMAC is bound).

        ``limit``: stop decrypting after more than ``limit`` hits (the caller answers 422).
        """
        rrn13 = rrn.replace("-", "")
        if len(rrn13) != 13 or not rrn13.isdigit():
            raise UsageError("an RRN is 13 digits (with or without the hyphen)")
        bidx = self.keyring.rrn_index(rrn13)
        bidx7 = self.keyring.rrn7_index(rrn13[:7])
        types = tuple(document_types) if document_types else ALL_TYPES
        wanted = normalise_name(name)
        p_from, p_to = str(period_from), str(period_to)
        marks = ",".join("?" * len(types))
        sql = (
            "SELECT d.doc_id, d.document_type, d.document_no, d.current_version, d.issued_on, d.care_start, "
            f"d.care_end, d.total_charge, d.ykiho, v.{_SUBJECT_SEALED_COLS.replace(', ', ', v.')} "
            "FROM documents d JOIN versions v ON v.doc_id = d.doc_id AND v.version = d.current_version "
            "WHERE d.{col} = ? AND d.current_status = 'active' AND v.subject_kek_id IS NOT NULL "
            f"AND d.document_type IN ({marks}) "
            "AND COALESCE(d.care_start, d.issued_on) <= ? AND COALESCE(d.care_end, d.issued_on) >= ?"
        )

        def fn(conn: sqlite3.Connection) -> SearchResult:
            hits: list[SearchHit] = []
            withheld: list[str] = []
            for col, value, match in (("rrn_bidx", bidx, "rrn"), ("rrn7_bidx", bidx7, "rrn_prefix")):
                for row in conn.execute(sql.format(col=col), (value, *types, p_to, p_from)):
                    doc_id, version = row[0], row[3]
                    subject = json.loads(
                        self._open(
                            crypto.KIND_SUBJECT,
                            subject_id_for(doc_id),
                            version,
                            _sealed(row, 9),
                            f"subject of document {doc_id} version {version}",
                        )
                    )
                    if not isinstance(subject.get("name"), str) or normalise_name(subject["name"]) != wanted:
                        withheld.append(doc_id)
                        continue
                    care = {"start": row[5], "end": row[6]} if row[5] else None
                    hits.append(
                        SearchHit(doc_id, row[1], row[2], version, row[4], care, row[7], row[8], match)
                    )
                    if limit is not None and len(hits) > limit:
                        break
            hits.sort(key=lambda h: (h.issued_on, h.doc_id))
            return SearchResult(bidx, hits, sorted(withheld))

        return self._reading(fn)  # type: ignore[no-any-return]

    # -- quarantine ----------------------------------------------------------------------------
    def quarantine_add(
        self,
        file_bytes: bytes | None,
        reason: dict[str, Any],
        original_name: str,
        *,
        fingerprint: FileFingerprint | None = None,
    ) -> str:
        """Store a quarantined file encrypted; ``reason`` (rule ids, record indexes, messages) is clear.

        The original name lives only inside the encrypted entry (security.md §6.3). A ledger row with
        outcome ``quarantined`` is written in the same transaction (status counts).
        """
        sha = (
            fingerprint.sha256
            if fingerprint
            else (hashlib.sha256(file_bytes).hexdigest() if file_bytes else "")
        )
        now_iso = utc_iso(self.clock.now())
        qid = new_entry_id("q")

        def job(conn: sqlite3.Connection) -> str:
            kek = self._refresh_current_kek()
            sealed = crypto.seal(
                crypto.KIND_QUARANTINE, qid, 0, _pack({"original_name": original_name}, file_bytes), *kek
            )
            conn.execute(
                f"INSERT INTO quarantine (qid, file_id, created_at, reason, size, has_content, {_SEALED_COLS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    qid,
                    sha[:16] or None,
                    now_iso,
                    json.dumps(reason, ensure_ascii=False, sort_keys=True),
                    len(file_bytes) if file_bytes is not None else None,
                    int(file_bytes is not None),
                    sealed.kek_id,
                    sealed.wrap_nonce,
                    sealed.wrapped_dek,
                    sealed.nonce,
                    sealed.ciphertext,
                ),
            )
            self._insert_ledger(conn, fingerprint, sha, QUARANTINED, {"qid": qid}, now_iso, kek)
            self._bump_generation(conn)
            return qid

        return self.db.write(job)

    def quarantine_list(self) -> list[QuarantineEntry]:
        with self.db.reader() as conn:
            rows = conn.execute(
                "SELECT qid, file_id, created_at, reason, size, has_content FROM quarantine "
                "ORDER BY created_at, qid"
            ).fetchall()
        return [QuarantineEntry(r[0], r[1], r[2], json.loads(r[3]), r[4], bool(r[5])) for r in rows]

    def quarantine_get(self, qid: str) -> QuarantineItem | None:
        def fn(conn: sqlite3.Connection) -> QuarantineItem | None:
            r = conn.execute(
                f"SELECT qid, file_id, created_at, reason, size, has_content, {_SEALED_COLS} "
                "FROM quarantine WHERE qid = ?",
                (qid,),
            ).fetchone()
            if r is None:
                return None
            meta, content = _unpack(
                self._open(crypto.KIND_QUARANTINE, qid, 0, _sealed(r, 6), f"quarantine entry {qid}")
            )
            entry = QuarantineEntry(r[0], r[1], r[2], json.loads(r[3]), r[4], bool(r[5]))
            return QuarantineItem(entry, meta.get("original_name", ""), content if r[5] else None)

        return self._reading(fn)  # type: ignore[no-any-return]

    def quarantine_remove(self, qid: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            n = conn.execute("DELETE FROM quarantine WHERE qid = ?", (qid,)).rowcount
            if n:
                self._bump_generation(conn)
            return bool(n)

        return self.db.write(job)

    def archive_get(self, ledger_id: int) -> tuple[str, bytes] | None:
        """The archived copy of a committed file: (original name, bytes)."""

        def fn(conn: sqlite3.Connection) -> tuple[str, bytes] | None:
            r = conn.execute(
                f"SELECT archive_id, {_SEALED_COLS} FROM archive WHERE ledger_id = ?", (ledger_id,)
            ).fetchone()
            if r is None:
                return None
            meta, content = _unpack(
                self._open(crypto.KIND_ARCHIVE, r[0], 0, _sealed(r, 1), f"archive entry {r[0]}")
            )
            return meta.get("original_name") or "", content

        return self._reading(fn)  # type: ignore[no-any-return]

    # -- relay state ---------------------------------------------------------------------------
    def replay_check_and_insert(self, request_id: str, now: dt.datetime) -> bool:
        """Atomically record a request id; False when seen within 24 h (→ 409)."""
        return self.db.write(lambda conn: _replay_insert(conn, request_id, now.timestamp()))

    def relay_request_record(self, request_id: str, now: dt.datetime, relay_id: str) -> str:
        """relay-api.md §4 rules 1 and 3 for one request, in one write transaction.

        ``"relay-not-allowed"`` when enrolled relay ids are stored and ``relay_id`` is not one of
        them (nothing is recorded); ``"replay"`` when ``request_id`` was accepted within 24 h;
        else the id is recorded: ``"recorded"``. Rule 2 (the clock window, between the two) is
        pure: the caller checks it first and, when it fails, reads ``relay_ids`` instead.
        """
        return self.db.result(self.relay_request_submit(request_id, now, relay_id))

    def relay_request_submit(
        self, request_id: str, now: dt.datetime, relay_id: str
    ) -> concurrent.futures.Future[str]:
        """``relay_request_record`` queued on the writer without waiting: the future resolves
        after the COMMIT that made the record durable (group-committed with the other writes
        queued meanwhile); ``Database.result(future)`` maps its errors."""
        ts = now.timestamp()

        def job(conn: sqlite3.Connection) -> str:
            allowed = _relay_ids_in(conn)
            if allowed is not None and relay_id not in allowed:
                return "relay-not-allowed"
            return "recorded" if _replay_insert(conn, request_id, ts) else "replay"

        # One changing statement (the INSERT), the last thing the job does: no savepoint needed.
        return self.db.submit(job, single_statement=True)

    def relay_ids(self) -> frozenset[str] | None:
        """The relay ids received at enrollment, or ``None`` when never enrolled (accept any)."""
        with self.db.reader() as conn:
            return _relay_ids_in(conn)

    def replay_prune(self, now: dt.datetime) -> int:
        return self.db.write(
            lambda c: (
                c.execute(
                    "DELETE FROM replay WHERE first_seen < ?", (now.timestamp() - REPLAY_WINDOW_S,)
                ).rowcount
            )
        )

    def binding_get(self, claim_no: str, now: dt.datetime) -> Binding | None:
        """The live binding of a claim (expired ones are treated as absent, B4)."""
        with self.db.reader() as conn:
            return self._binding_in(conn, claim_no, now)

    @staticmethod
    def _binding_in(conn: sqlite3.Connection, claim_no: str, now: dt.datetime) -> Binding | None:
        r = conn.execute(
            "SELECT claim_no, consent_id, subject_ref, allowed_ids, expires_at FROM bindings "
            "WHERE claim_no = ? AND expires_at > ?",
            (claim_no, now.timestamp()),
        ).fetchone()
        return _binding_of(r) if r else None

    def binding_upsert(
        self, claim_no: str, *, consent_id: str, subject_ref: str, add_ids: Iterable[str], now: dt.datetime
    ) -> BindingUpdate:
        """Rules B1–B3 of relay-api.md §6.3 in one transaction: create, extend, or report a conflict."""
        ts = now.timestamp()
        ids = set(add_ids)

        def job(conn: sqlite3.Connection) -> BindingUpdate:
            r = conn.execute(
                "SELECT consent_id, subject_ref, allowed_ids FROM bindings "
                "WHERE claim_no = ? AND expires_at > ?",
                (claim_no, ts),
            ).fetchone()
            if r is not None and (r[0] != consent_id or r[1] != subject_ref):
                return BindingUpdate(True, None)
            allowed = (set(json.loads(r[2])) if r else set()) | ids
            expires = ts + BINDING_LIFE_S
            conn.execute(
                "INSERT OR REPLACE INTO bindings (claim_no, consent_id, subject_ref, allowed_ids, expires_at) "
                "VALUES (?,?,?,?,?)",
                (claim_no, consent_id, subject_ref, json.dumps(sorted(allowed)), expires),
            )
            return BindingUpdate(
                False, Binding(claim_no, consent_id, subject_ref, frozenset(allowed), expires)
            )

        return self.db.write(job)

    def binding_prune(self, now: dt.datetime) -> int:
        return self.db.write(
            lambda c: c.execute("DELETE FROM bindings WHERE expires_at <= ?", (now.timestamp(),)).rowcount
        )

    def kv_get(self, key: str) -> str | None:
        with self.db.reader() as conn:
            r = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return r[0] if r else None

    def kv_set(self, key: str, value: str) -> None:
        self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
        )

    def kv_delete(self, *keys: str) -> None:
        self.db.write(lambda c: c.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys]))

    # -- status --------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """The store-derived members of ``status --json`` (cli.md §3.1)."""
        with self.db.reader() as conn:
            by_status = dict(
                conn.execute("SELECT current_status, COUNT(*) FROM documents GROUP BY current_status")
            )
            versions_total = conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
            by_outcome = dict(conn.execute("SELECT outcome, COUNT(*) FROM ledger GROUP BY outcome"))
            records = conn.execute("SELECT COALESCE(SUM(records_committed), 0) FROM ledger").fetchone()[0]
            last = conn.execute("SELECT value FROM kv WHERE key = 'last_commit_at'").fetchone()
        return {
            "documents": {
                "current_active": by_status.get("active", 0),
                "current_cancelled": by_status.get("cancelled", 0),
                "versions_total": versions_total,
            },
            "ingest": {
                "files_accepted": by_outcome.get(ACCEPTED, 0) + by_outcome.get(SUPERSEDED, 0),
                "files_duplicate": by_outcome.get(OUT_DUPLICATE, 0),
                "files_quarantined": by_outcome.get(QUARANTINED, 0),
                "records_committed": int(records),
                "last_commit_at": _seconds_iso(last[0]) if last else None,
            },
        }

    def generation(self) -> int:
        return int(self.kv_get("generation") or 0)

    def healthy(self) -> bool:
        """Can the store take a durable write right now (replay ids, bindings, ingest)?

        A real write through the writer thread (GET /v1/health is rate-limited per client, and the
        group commit shares the fsync with other writes): a store made read-only or a full disk
        shows as ``storage: unavailable`` at once, and as ``ok`` again without a restart.
        """
        try:
            self.db.write(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES ('health_probe', ?)",
                    (str(int(time.time())),),
                )
            )
        except Exception:  # noqa: BLE001 - any failure to write means "unavailable"
            return False
        return True

    # -- retention -----------------------------------------------------------------------------
    def purge(
        self, now: dt.datetime, *, dry_run: bool = False, only: Sequence[str] | None = None
    ) -> PurgeResult:
        """Delete documents whose issue date + ``retention.keep`` is before today (security.md §11).

        One transaction removes versions (ciphertext + wrapped DEKs, document and subject), archive entries
        no longer referenced, expired quarantine entries and binding references; then the WAL is
        checkpointed with TRUNCATE. ``secure_delete`` zeroes the freed pages. ``only`` restricts the
        run to ids found earlier (so an audit record written between a dry run and the run lists
        exactly what is deleted).
        """
        today = now.astimezone(KST).date()
        keep_days = self.retention_keep_s // 86400
        cutoff = (today - dt.timedelta(days=keep_days)).isoformat()  # issued_on + keep < today
        q_cutoff = utc_iso(now - dt.timedelta(seconds=self.retention_keep_s))

        def select(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT doc_id FROM documents WHERE issued_on < ? ORDER BY doc_id", (cutoff,)
                )
            ]
            if only is not None:
                allowed = set(only)
                ids = [i for i in ids if i in allowed]
            qids = [
                r[0] for r in conn.execute("SELECT qid FROM quarantine WHERE created_at < ?", (q_cutoff,))
            ]
            return ids, qids

        if dry_run:
            with self.db.reader() as conn:
                ids, qids = select(conn)
                versions = _count_in(conn, "versions", "doc_id", ids)
            return PurgeResult(
                True,
                {"documents": len(ids), "versions": versions, "quarantine": len(qids), "archive": 0},
                ids,
            )

        def job(conn: sqlite3.Connection) -> PurgeResult:
            ids, qids = select(conn)
            versions = _count_in(conn, "versions", "doc_id", ids)
            gone_links: list[LinkRow] = []
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                gone_links += [
                    LinkRow(*r)
                    for r in conn.execute(
                        f"SELECT {LINK_COLUMNS} FROM documents WHERE doc_id IN ({marks})", chunk
                    )
                ]
                conn.execute(f"DELETE FROM versions WHERE doc_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM documents WHERE doc_id IN ({marks})", chunk)
            if gone_links:  # a document kept whose partner was purged loses the partner's W-5xx
                self._cross_evaluate(conn, [], self._refresh_current_kek(), gone_links)
            archives = conn.execute(
                "DELETE FROM archive WHERE ledger_id NOT IN "
                "(SELECT ledger_id FROM versions WHERE ledger_id IS NOT NULL)"
            ).rowcount
            for chunk in _chunks(qids, 500):
                conn.execute(f"DELETE FROM quarantine WHERE qid IN ({','.join('?' * len(chunk))})", chunk)
            if ids:
                gone = set(ids)
                for claim_no, allowed in conn.execute(
                    "SELECT claim_no, allowed_ids FROM bindings"
                ).fetchall():
                    kept = [i for i in json.loads(allowed) if i not in gone]
                    conn.execute(
                        "UPDATE bindings SET allowed_ids = ? WHERE claim_no = ?", (json.dumps(kept), claim_no)
                    )
            self._bump_generation(conn)
            return PurgeResult(
                False,
                {"documents": len(ids), "versions": versions, "quarantine": len(qids), "archive": archives},
                ids,
            )

        result = self.db.write(job)
        self.checkpoint()
        return result

    def erase_rows(
        self, *, doc_ids: list[str], sha256: str, claim_no: str, last_commit_before: str | None
    ) -> dict[str, int]:
        """Remove exactly the rows one known ingest made (the acceptance self-test's), in one
        transaction through the single writer, then checkpoint the WAL.

        Unlike ``purge`` it ignores retention and also removes ledger rows: the versions (document
        and subject ciphertext) and documents of ``doc_ids``, the archive entries and ledger rows of
        the file with ``sha256``, quarantine entries that file caused, and the binding of
        ``claim_no``. ``last_commit_at`` goes back to ``last_commit_before`` when that file's commit
        is still the latest one. ``secure_delete`` zeroes the freed pages.
        """

        def job(conn: sqlite3.Connection) -> dict[str, int]:
            ledger = conn.execute(
                "SELECT ledger_id, committed_at FROM ledger WHERE sha256 = ?", (sha256,)
            ).fetchall()
            ledger_ids = [row[0] for row in ledger]

            def delete_in(table: str, column: str, ids: Sequence[Any]) -> int:
                deleted = 0
                for chunk in _chunks(ids, 500):
                    marks = ",".join("?" * len(chunk))
                    deleted += conn.execute(
                        f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk
                    ).rowcount
                return deleted

            counts = {
                "versions": delete_in("versions", "doc_id", doc_ids),
                "documents": delete_in("documents", "doc_id", doc_ids),
                "archive": delete_in("archive", "ledger_id", ledger_ids),
                "ledger": delete_in("ledger", "ledger_id", ledger_ids),
                "quarantine": conn.execute(
                    "DELETE FROM quarantine WHERE file_id = ?", (sha256[:16],)
                ).rowcount,
                "bindings": conn.execute("DELETE FROM bindings WHERE claim_no = ?", (claim_no,)).rowcount,
            }
            latest = conn.execute("SELECT value FROM kv WHERE key = 'last_commit_at'").fetchone()
            if latest is not None and latest[0] in {row[1] for row in ledger}:
                if last_commit_before is None:
                    conn.execute("DELETE FROM kv WHERE key = 'last_commit_at'")
                else:
                    conn.execute(
                        "UPDATE kv SET value = ? WHERE key = 'last_commit_at'", (last_commit_before,)
                    )
            self._bump_generation(conn)
            return counts

        counts: dict[str, int] = self.db.write(job)
        self.checkpoint()
        return counts

    def checkpoint(self) -> None:
        """``wal_checkpoint(TRUNCATE)``: old pages (ciphertext of purged rows) leave the WAL."""
        self.db.write(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), transaction=False)

    # -- integrity -----------------------------------------------------------------------------
    def verify(self, *, full: bool = True, sample: int = 50) -> VerifyReport:
        """``PRAGMA integrity_check`` + decrypt-and-verify every record (``full``) or a sample."""
        errors: list[str] = []
        checked = 0
        with self.db.reader() as conn:
            result = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall())
        if result != "ok":
            errors.append(f"sqlite integrity_check: {result[:500]}")
        for g in _ENCRYPTED:
            with self.db.reader() as conn:
                keys = conn.execute(
                    f"SELECT rowid, {g.id_expr}, {g.version_expr} FROM {g.table} "
                    f"WHERE {g.kek_col} IS NOT NULL"
                ).fetchall()
            if not full and len(keys) > sample:
                keys = random.sample(keys, sample)
            for rowid, record_id, version in keys:
                what = f"{g.label} {record_id}" + (f" version {version}" if g.version_expr != "0" else "")
                try:
                    with self.db.reader() as conn:
                        row = conn.execute(
                            f"SELECT {g.cols} FROM {g.table} WHERE rowid = ?", (rowid,)
                        ).fetchone()
                    if row is None:
                        continue
                    plain = self._open(g.kind, record_id, version, _sealed(row), what)
                    if g.kind in (crypto.KIND_DOC, crypto.KIND_SUBJECT, crypto.KIND_LEDGER):
                        json.loads(plain)
                    checked += 1
                except IntegrityError as exc:
                    errors.append(exc.message)
                except ValueError:
                    errors.append(f"integrity error: {what}: decrypted content is not valid JSON")
                except TypeError:  # e.g. a ciphertext column rewritten as TEXT
                    errors.append(f"integrity error: {what}: sealed columns have the wrong type")
        errors.extend(self._verify_consistency())
        return VerifyReport(not errors, result, checked, errors)

    def _verify_consistency(self) -> list[str]:
        with self.db.reader() as conn:
            missing = conn.execute(
                "SELECT d.doc_id, d.current_version FROM documents d LEFT JOIN versions v "
                "ON v.doc_id = d.doc_id AND v.version = d.current_version "
                "WHERE v.doc_id IS NULL LIMIT 10"
            ).fetchall()
        return [f"integrity error: document {d} version {v}: current version row missing" for d, v in missing]

    # -- keys ----------------------------------------------------------------------------------
    def rotate_kek(
        self, *, batch: int = 500, retire: bool = True, progress: Callable[[int, int], None] | None = None
    ) -> RotationResult:
        """``keys rotate``: new current KEK, re-wrap every DEK online, retire old KEKs no longer used.

        Each batch is one short write transaction updating ``kek_id`` and the wrapped DEK of a row
        together, so a concurrent reader always sees a consistent pair; the content ciphertext is
        never touched.
        """
        new_id = self.keyring.add_kek()
        new_kek = self.keyring.keks[new_id]
        with self.db.reader() as conn:
            total = sum(
                conn.execute(
                    f"SELECT COUNT(*) FROM {g.table} WHERE {g.kek_col} IS NOT NULL AND {g.kek_col} != ?",
                    (new_id,),
                ).fetchone()[0]
                for g in _ENCRYPTED
            )
        done = 0
        self.kv_set("rotation", json.dumps({"kek_id": new_id, "done": 0, "total": total}))
        for group in _ENCRYPTED:
            while True:

                def job(conn: sqlite3.Connection, g: _SealedGroup = group, done: int = done) -> int:
                    rows = conn.execute(
                        f"SELECT rowid, {g.id_expr}, {g.version_expr}, {g.cols} FROM {g.table} "
                        f"WHERE {g.kek_col} IS NOT NULL AND {g.kek_col} != ? LIMIT ?",
                        (new_id, batch),
                    ).fetchall()
                    for row in rows:
                        sealed = _sealed(row, 3)
                        what = f"{g.label} {row[1]}"
                        fresh = crypto.rewrap(
                            row[1], row[2], sealed, self._kek(sealed.kek_id, what), new_id, new_kek, what=what
                        )
                        conn.execute(
                            f"UPDATE {g.table} SET {g.kek_col} = ?, {g.prefix}wrap_nonce = ?, "
                            f"{g.prefix}wrapped_dek = ? WHERE rowid = ?",
                            (fresh.kek_id, fresh.wrap_nonce, fresh.wrapped_dek, row[0]),
                        )
                    if rows:
                        conn.execute(
                            "INSERT OR REPLACE INTO kv (key, value) VALUES ('rotation', ?)",
                            (json.dumps({"kek_id": new_id, "done": done + len(rows), "total": total}),),
                        )
                    return len(rows)

                n = self.db.write(job)
                if not n:
                    break
                done += n
                if progress:
                    progress(done, total)
        retired, kept = (
            self.retire_unused_keks() if retire else ([], [k for k in self.keyring.keks if k != new_id])
        )
        return RotationResult(new_id, done, retired, kept)

    def key_status(self) -> dict[str, Any]:
        """The current KEK and the progress of the last ``keys rotate`` (security.md §5: "Progress
        appears in status"): ``{kek_id, done, total, complete}``, or ``None`` before any rotation."""
        rotation: dict[str, Any] | None = None
        raw = self.kv_get("rotation")
        if raw:
            try:
                value = json.loads(raw)
                done, total = int(value["done"]), int(value["total"])
                rotation = {
                    "kek_id": str(value["kek_id"]),
                    "done": done,
                    "total": total,
                    "complete": done >= total,
                }
            except (ValueError, KeyError, TypeError):
                rotation = None
        return {"current_kek": self.keyring.current_kek_id, "rotation": rotation}

    def kek_usage(self) -> dict[str, int]:
        with self.db.reader() as conn:
            usage: dict[str, int] = {}
            for g in _ENCRYPTED:
                for kek_id, n in conn.execute(
                    f"SELECT {g.kek_col}, COUNT(*) FROM {g.table} "
                    f"WHERE {g.kek_col} IS NOT NULL GROUP BY {g.kek_col}"
                ):
                    usage[kek_id] = usage.get(kek_id, 0) + n
        return usage

    def backup_kek_ids(self) -> set[str]:
        """KEK ids a backup still inside the backup retention needs: those in ``backup.dir`` and
        those of every backup this store wrote in the last ``backup.keep`` days wherever it went
        (a `backup --out` elsewhere must stay restorable after `keys rotate`, security.md §5)."""
        from agent.store.backup import BACKUP_REGISTRY_PREFIX, backup_kek_ids

        ids = backup_kek_ids(self.backup_dir) if self.backup_dir else set()
        horizon = self.clock.now() - dt.timedelta(days=self.backup_keep_days + 1)
        stale = []
        with self.db.reader() as conn:
            rows = conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ?",
                (BACKUP_REGISTRY_PREFIX, BACKUP_REGISTRY_PREFIX + "\uffff"),
            ).fetchall()
        for key, value in rows:
            try:
                entry = json.loads(value)
                created = dt.datetime.fromisoformat(str(entry["created_at"]).replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                stale.append(key)
                continue
            if created < horizon:
                stale.append(key)
            else:
                ids.add(str(entry["kek_id"]))
        if stale:
            self.kv_delete(*stale)
        return ids

    def retire_unused_keks(self) -> tuple[list[str], list[str]]:
        """Retire every non-current KEK used by no row and by no backup in ``backup.dir``.

        The usage check runs in a write transaction, so no commit can slip a row wrapped under the
        old KEK in between (and writers pick the newest KEK on disk anyway).
        """
        in_backups = self.backup_kek_ids()
        retired, kept = [], []
        for kek_id in sorted(self.keyring.keks):
            if kek_id == self.keyring.current_kek_id:
                continue

            def job(conn: sqlite3.Connection, kek_id: str = kek_id) -> bool:
                for g in _ENCRYPTED:
                    if conn.execute(
                        f"SELECT 1 FROM {g.table} WHERE {g.kek_col} = ? LIMIT 1", (kek_id,)
                    ).fetchone():
                        return False
                return kek_id not in in_backups

            if self.db.write(job):
                kek = self.keyring.keks.get(kek_id)
                if kek is not None:
                    crypto.forget_kek(kek)  # no cached cipher context outlives the shredded key file
                self.keyring.retire_kek(kek_id)
                retired.append(kek_id)
            else:
                kept.append(kek_id)
        return retired, kept

    # -- backup --------------------------------------------------------------------------------
    def backup(self, out_path: Path) -> dict[str, Any]:
        """Online, encrypted backup of this store (and ``audit.db`` if present) to ``out_path``."""
        from agent.store.backup import write_backup

        return write_backup(self, out_path)


@dataclasses.dataclass(slots=True)
class _Pending:
    """A new version decided by ``commit_file``, sealed and inserted once the whole file is decided."""

    version: int
    status: str
    content_hash: str
    content: dict[str, Any]  # the version's content (agent fields removed)
    stored_doc: dict[str, Any]  # what is sealed: content + source, received_at, content_hash, validation
    warning_rules: str
    cross_rules: str = "[]"
    canonical: bytes | None = None  # the canonical JSON of ``content`` when validation gave it

    def sealed_bytes(self) -> bytes:
        """The JSON that is sealed: ``stored_doc``. With the canonical bytes of the content at hand
        (ingest: validation serialised them for the content hash) only the agent members are
        serialised and appended — same JSON object, members in another order; the stored form is
        only ever read back with json.loads, never compared as bytes."""
        if self.canonical is None or len(self.canonical) < 3 or not self.canonical.endswith(b"}"):
            return _dumps(self.stored_doc)
        extra = {k: self.stored_doc[k] for k in AGENT_FIELDS if k in self.stored_doc}
        return self.canonical[:-1] + b"," + _dumps(extra)[1:]


@dataclasses.dataclass(slots=True)
class _KeyState:
    """One natural key during a commit: what the store held before the file, plus the file's versions."""

    key: _Key
    doc_id: str = ""
    existed: bool = False
    stored: list[StoredVersion] = dataclasses.field(default_factory=list)
    content: dict[str, Any] | None = None  # current content (decrypted only when a record needs it)
    previous_links: LinkRow | None = None  # link columns before the file (old partners, §7)
    links: LinkRow | None = None  # link columns after the file
    pending: list[_Pending] = dataclasses.field(default_factory=list)


class _Input:
    """A record normalised from the accepted input shapes."""

    __slots__ = ("index", "document", "content_hash", "warnings", "key", "version", "canonical")

    def __init__(
        self,
        index: int,
        document: dict[str, Any],
        content_hash: str,
        warnings: list[dict[str, str]],
        canonical: bytes | None = None,
    ) -> None:
        self.index = index
        self.document = document
        self.content_hash = content_hash
        self.warnings = warnings
        self.canonical = canonical
        self.key = _natural_key(document)
        self.version = int(document["version"])


def _record_input(rec: Any) -> _Input:
    document = rec.document
    validation = getattr(rec, "validation", None)
    content_hash = getattr(rec, "content_hash", None) or (validation.content_hash if validation else None)
    warnings = getattr(rec, "warnings", None)
    if warnings is None and validation is not None:
        warnings = validation.warnings
    if document is None or not content_hash:
        raise ValueError("commit_file takes validated records only (document and content_hash required)")
    # Validated records come without agent fields; copy only when one slipped in (the store sets them).
    # The canonical bytes (validation's, if it kept them) are used only when they hash to content_hash.
    canonical = getattr(validation, "canonical", None) if validation is not None else None
    if any(k in document for k in AGENT_FIELDS):
        document = {k: v for k, v in document.items() if k not in AGENT_FIELDS}
        canonical = None
    if canonical is not None and hashlib.sha256(canonical).hexdigest() != content_hash:
        canonical = None
    return _Input(
        int(rec.index),
        document,
        str(content_hash),
        [{"rule": p.rule, "path": p.path} for p in warnings if p.rule.startswith("W-")] if warnings else [],
        canonical,
    )


def _natural_key(doc: dict[str, Any]) -> _Key:
    return (str(doc["institution"]["ykiho"]), str(doc["document_type"]), str(doc["document_no"]))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _count_in(conn: sqlite3.Connection, table: str, column: str, ids: Sequence[str]) -> int:
    total = 0
    for chunk in _chunks(ids, 500):
        total += conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})", chunk
        ).fetchone()[0]
    return total


def _seconds_iso(value: str) -> str:
    """``2026-11-23T05:12:00.481Z`` → ``2026-11-23T05:12:00Z`` (cli.md §3.1 shows whole seconds)."""
    return value[:19] + "Z" if len(value) > 20 else value


def _binding_of(row: Sequence[Any]) -> Binding:
    """A binding from its columns claim_no, consent_id, subject_ref, allowed_ids, expires_at."""
    return Binding(row[0], row[1], row[2], frozenset(json.loads(row[3])), row[4])


def _retry_integrity(read: Callable[[], Any]) -> Any:
    """``read()``; on an integrity failure once more, in a fresh snapshot (``Store._reading``)."""
    try:
        return read()
    except IntegrityError:
        return read()


def _replay_insert(conn: sqlite3.Connection, request_id: str, ts: float) -> bool:
    """Record ``request_id`` as first seen at ``ts``; False when it was seen within the window.

    An id older than the window is taken over in place (the hourly ``replay_prune`` removes the
    rest), so no request pays for deleting other requests' rows.
    """
    return (
        conn.execute(
            "INSERT INTO replay (request_id, first_seen) VALUES (?, ?) "
            "ON CONFLICT(request_id) DO UPDATE SET first_seen = excluded.first_seen "
            "WHERE replay.first_seen < ?",
            (request_id, ts, ts - REPLAY_WINDOW_S),
        ).rowcount
        == 1
    )


def _relay_ids_in(conn: sqlite3.Connection) -> frozenset[str] | None:
    """The enrolled relay ids (kv ``relay_ids``, a JSON list), ``None`` when never enrolled."""
    row = conn.execute("SELECT value FROM kv WHERE key = 'relay_ids'").fetchone()
    return None if row is None else frozenset(json.loads(row[0]))


__all__ = ["Store", "normalise_name", "STORE_FILE"]
