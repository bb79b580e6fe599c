"""Store schema and migrations, keyed by ``PRAGMA user_version``.

``MIGRATIONS[n]`` takes a database from ``user_version = n`` to ``n + 1``; each runs in the same
transaction as the ``user_version`` bump, so a crash leaves the database at the old or the new
version, never between. Never edit a released migration: append a new one.

Clear (unencrypted) columns are limited to what security.md §6.1 allows: ids, type, version,
status, ykiho, document_no, issued_on, care period, total_charge, blind indexes and other keyed
HMACs, class-O link numbers (receipt_no, prescription_issue_no), key ids, timestamps, sizes,
digests and rule ids. Everything personal lives in the ``ciphertext`` / ``subject_ciphertext``
columns.
"""

from __future__ import annotations

import sqlite3

# Every encrypted record has the same five sealed columns (agent.store.crypto.Sealed); ``versions``
# holds two records per row (the document, and its subject with the ``subject_`` column prefix).
_SEALED = (
    "kek_id TEXT NOT NULL, wrap_nonce BLOB NOT NULL, wrapped_dek BLOB NOT NULL, "
    "nonce BLOB NOT NULL, ciphertext BLOB NOT NULL"
)

MIGRATIONS: list[str] = [
    # 0 -> 1: documents, versions, subjects, ingest ledger.
    f"""
    CREATE TABLE documents (
        doc_id TEXT PRIMARY KEY,
        ykiho TEXT NOT NULL,
        document_type TEXT NOT NULL,
        document_no TEXT NOT NULL,
        current_version INTEGER NOT NULL,
        current_status TEXT NOT NULL,
        issued_on TEXT NOT NULL,
        care_start TEXT,
        care_end TEXT,
        total_charge INTEGER,
        rrn_bidx TEXT,
        rrn7_bidx TEXT,
        updated_at TEXT NOT NULL,
        UNIQUE (ykiho, document_type, document_no)
    );
    CREATE INDEX documents_rrn_bidx ON documents (rrn_bidx) WHERE rrn_bidx IS NOT NULL;
    CREATE INDEX documents_rrn7_bidx ON documents (rrn7_bidx) WHERE rrn7_bidx IS NOT NULL;
    CREATE INDEX documents_issued_on ON documents (issued_on);
    CREATE TABLE ledger (
        ledger_id INTEGER PRIMARY KEY AUTOINCREMENT,
        file_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER,
        mtime_ns INTEGER,
        path_hmac TEXT,
        outcome TEXT NOT NULL,
        records_committed INTEGER NOT NULL DEFAULT 0,
        committed_at TEXT NOT NULL,
        path_id TEXT,
        kek_id TEXT, wrap_nonce BLOB, wrapped_dek BLOB, nonce BLOB, ciphertext BLOB
    );
    CREATE INDEX ledger_sha256 ON ledger (sha256);
    CREATE INDEX ledger_path ON ledger (path_hmac, size, mtime_ns);
    CREATE TABLE versions (
        doc_id TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        issued_on TEXT NOT NULL,
        care_start TEXT,
        care_end TEXT,
        total_charge INTEGER,
        ledger_id INTEGER,
        received_at TEXT NOT NULL,
        warning_rules TEXT NOT NULL DEFAULT '[]',
        cross_warning_rules TEXT NOT NULL DEFAULT '[]',
        {_SEALED},
        PRIMARY KEY (doc_id, version)
    );
    CREATE INDEX versions_ledger ON versions (ledger_id);
    CREATE TABLE subjects (
        subject_id TEXT NOT NULL,
        doc_id TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        rrn_bidx TEXT,
        rrn7_bidx TEXT,
        {_SEALED},
        PRIMARY KEY (doc_id, version)
    );
    """,
    # 1 -> 2: encrypted archive of ingested files and quarantine entries.
    f"""
    CREATE TABLE archive (
        archive_id TEXT PRIMARY KEY,
        ledger_id INTEGER NOT NULL,
        size INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        {_SEALED}
    );
    CREATE INDEX archive_ledger ON archive (ledger_id);
    CREATE TABLE quarantine (
        qid TEXT PRIMARY KEY,
        file_id TEXT,
        created_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        size INTEGER,
        has_content INTEGER NOT NULL,
        {_SEALED}
    );
    """,
    # 2 -> 3: relay-side state: replay ids, claim bindings, 429 counters, key/value state.
    """
    CREATE TABLE replay (
        request_id TEXT PRIMARY KEY,
        first_seen REAL NOT NULL
    );
    CREATE INDEX replay_first_seen ON replay (first_seen);
    CREATE TABLE bindings (
        claim_no TEXT PRIMARY KEY,
        consent_id TEXT NOT NULL,
        subject_ref TEXT NOT NULL,
        allowed_ids TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX bindings_expires ON bindings (expires_at);
    CREATE TABLE rate_limited (
        day TEXT NOT NULL,
        client TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (day, client)
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 3 -> 4: the subject record (RRN/name ciphertext) moves into its version row, so a new version
    # is one row instead of two (insert throughput). It stays a record of its own — own record id
    # ``sub_…`` (always derived from the doc id, ``ids.subject_id_for``, so not stored again), own
    # DEK, AAD prefix "silson:v1:subject:" (security.md §6.2) — so the ciphertexts are moved
    # unchanged and still authenticate. The per-version blind indexes of ``subjects`` were
    # never read (search uses the ones on ``documents``) and are not carried over. ``secure_delete``
    # (set on the writer connection before migrating) zeroes the dropped table's pages.
    """
    ALTER TABLE versions ADD COLUMN subject_kek_id TEXT;
    ALTER TABLE versions ADD COLUMN subject_wrap_nonce BLOB;
    ALTER TABLE versions ADD COLUMN subject_wrapped_dek BLOB;
    ALTER TABLE versions ADD COLUMN subject_nonce BLOB;
    ALTER TABLE versions ADD COLUMN subject_ciphertext BLOB;
    UPDATE versions SET subject_kek_id = s.kek_id, subject_wrap_nonce = s.wrap_nonce,
        subject_wrapped_dek = s.wrapped_dek, subject_nonce = s.nonce, subject_ciphertext = s.ciphertext
        FROM subjects AS s WHERE s.doc_id = versions.doc_id AND s.version = versions.version;
    DROP TABLE subjects;
    """,
    # 4 -> 5: clear link columns for the cross-document rules (documents.md §7.1) of the current
    # version. ``receipt_no`` (of a receipt_detail) and ``prescription_issue_no`` (of a pharmacy
    # receipt) are class O (documents.md §10). ``patient_reg_no`` is personal data, so the §7.1
    # fallback link uses ``preg_hmac`` = HMAC-SHA-256(blind-index key, "preg:v1:" + ykiho + ":" +
    # patient_reg_no), never the number. Indexes are partial so that each document pays only for the
    # links it can take part in: receipts are found for a fallback detail by care start (dates
    # arrive in order, so that index grows at its end) and then by ``preg_hmac`` in the row; an
    # index on the random HMAC of every receipt would dirty a random page per insert. Rows stored
    # before this migration get their links filled in by the store at its next start
    # (``backfill_links`` marks that work; it needs the keys).
    """
    ALTER TABLE documents ADD COLUMN receipt_no TEXT;
    ALTER TABLE documents ADD COLUMN prescription_issue_no TEXT;
    ALTER TABLE documents ADD COLUMN preg_hmac TEXT;
    CREATE INDEX documents_receipt_no ON documents (ykiho, receipt_no) WHERE receipt_no IS NOT NULL;
    CREATE INDEX documents_rx_issue_no ON documents (prescription_issue_no) WHERE prescription_issue_no IS NOT NULL;
    CREATE INDEX documents_detail_preg ON documents (preg_hmac)
        WHERE document_type = 'receipt_detail' AND preg_hmac IS NOT NULL;
    CREATE INDEX documents_receipt_care ON documents (care_start) WHERE document_type = 'receipt';
    CREATE INDEX documents_prescription_no ON documents (document_no) WHERE document_type = 'prescription';
    INSERT INTO kv (key, value) SELECT 'backfill_links', '1' WHERE EXISTS (SELECT 1 FROM documents);
    """,
    # 5 -> 6: the per-day 429 counters live in the audit log (``AuditLog.count_rate_limited``, read by
    # the monthly report, security.md §7.5); the store's copy was never read and is dropped.
    """
    DROP TABLE rate_limited;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply every migration from the current ``user_version`` up to ``target``; returns it.

    ``conn`` must be in autocommit mode (``isolation_level=None``). A database newer than this
    code is refused rather than guessed at.
    """
    current = user_version(conn)
    if current > SCHEMA_VERSION:
        from agent.errors import ConfigError

        raise ConfigError(
            f"store schema version {current} is newer than this agent supports "
            f"({SCHEMA_VERSION}); upgrade silson-agent"
        )
    while current < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated meanwhile: re-read under the write lock.
            current = user_version(conn)
            if current >= target:
                conn.execute("COMMIT")
                break
            for statement in _statements(MIGRATIONS[current]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current += 1
    return current


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would COMMIT our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
