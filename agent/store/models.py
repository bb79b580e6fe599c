"""Values that cross the store's boundary: inputs to ``commit_file`` and what reads return.

None of these carries personal data in a field that could be logged by accident: decrypted
documents and quarantine contents are only in the explicitly named ``document`` / ``content`` /
``original_name`` fields, and no ``__repr__`` shows them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.documents.problems import Problem

# File outcomes (exports.md §4), in precedence order.
QUARANTINED = "quarantined"
DUPLICATE = "duplicate"
SUPERSEDED = "superseded"
ACCEPTED = "accepted"
COMMITTED_OUTCOMES = (ACCEPTED, DUPLICATE, SUPERSEDED)


@dataclasses.dataclass(frozen=True)
class FileFingerprint:
    """How the ingest ledger recognises a file: path (kept only as HMAC + ciphertext), size, mtime, digest."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @property
    def file_id(self) -> str:
        """First 16 hex of the SHA-256: how logs and outcomes name a file (architecture.md)."""
        return self.sha256[:16]

    def __repr__(self) -> str:  # the path may contain a patient's name
        return f"FileFingerprint(file_id={self.file_id!r}, size={self.size})"


@dataclasses.dataclass(frozen=True)
class StoreRecord:
    """One validated record as the store takes it (``agent.pipeline.ValidatedRecord`` works too).

    ``document`` is the canonical form of documents.md §9.3 (agent-managed fields removed);
    ``content_hash`` is its hash; ``warnings`` are the record's own W- problems.
    """

    index: int
    document: dict[str, Any]
    content_hash: str
    warnings: tuple[Problem, ...] = ()

    def __repr__(self) -> str:
        return f"StoreRecord(index={self.index}, content_hash={self.content_hash[:12]}…)"


@dataclasses.dataclass
class FileOutcome:
    """What ``commit_file`` did with one file."""

    outcome: str
    file_id: str
    problems: list[Problem] = dataclasses.field(default_factory=list)  # when quarantined
    warnings: list[Problem] = dataclasses.field(default_factory=list)  # W-011/W-012/W-013
    doc_ids: list[str] = dataclasses.field(default_factory=list)  # documents given a new version
    # W-5xx (documents.md §7) of every document whose cross-document warnings were evaluated in this
    # commit — those given a new current version and their counterparts: doc id -> problems.
    cross_warnings: dict[str, list[Problem]] = dataclasses.field(default_factory=dict)
    versions_stored: int = 0
    noop_records: int = 0
    ledger_id: int | None = None


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    ledger_id: int
    file_id: str
    sha256: str
    size: int | None
    mtime_ns: int | None
    outcome: str
    records_committed: int
    committed_at: str


@dataclasses.dataclass(frozen=True)
class StoredDocument:
    """One stored version, decrypted. ``document`` is the stored form (with source, validation…)."""

    doc_id: str
    version: int
    status: str
    content_hash: str
    received_at: str
    is_current: bool
    document: dict[str, Any] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One document listed by a search (relay-api.md §6.2 response members)."""

    doc_id: str
    document_type: str
    document_no: str
    version: int
    issued_on: str
    care_period: dict[str, str] | None
    total_amount_krw: int | None
    institution_code: str
    identity_match: str  # "rrn" | "rrn_prefix"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.doc_id,
            "type": self.document_type,
            "document_no": self.document_no,
            "version": self.version,
            "issued_on": self.issued_on,
            "care_period": self.care_period,
            "total_amount_krw": self.total_amount_krw,
            "institution_code": self.institution_code,
            "identity_match": self.identity_match,
        }


@dataclasses.dataclass(frozen=True)
class SearchResult:
    subject_ref: str  # the rrn blind index (claim bindings, audit)
    hits: list[SearchHit]
    withheld_ids: list[str]  # matched by RRN, not by name: never listed, never bound

    @property
    def withheld_count(self) -> int:
        return len(self.withheld_ids)


@dataclasses.dataclass(frozen=True)
class Binding:
    claim_no: str
    consent_id: str
    subject_ref: str
    allowed_ids: frozenset[str]
    expires_at: float  # epoch seconds


@dataclasses.dataclass(frozen=True)
class BindingUpdate:
    """Result of a search's binding update: ``conflict`` means B3 (binding unchanged)."""

    conflict: bool
    binding: Binding | None


@dataclasses.dataclass(frozen=True)
class QuarantineEntry:
    qid: str
    file_id: str | None
    created_at: str
    reason: dict[str, Any]
    size: int | None
    has_content: bool


@dataclasses.dataclass(frozen=True)
class QuarantineItem:
    entry: QuarantineEntry
    original_name: str = dataclasses.field(repr=False)
    content: bytes | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    dry_run: bool
    counts: dict[str, int]
    doc_ids: list[str]


@dataclasses.dataclass
class VerifyReport:
    ok: bool
    integrity_check: str
    records_checked: int
    errors: list[str]


@dataclasses.dataclass(frozen=True)
class RotationResult:
    new_kek_id: str
    rewrapped: int
    retired: list[str]
    kept: list[str]  # old KEKs still needed (e.g. by a backup inside the backup retention)
