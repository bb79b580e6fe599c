"""The pure stage shared by ``check``, ``convert`` and ingest: export bytes → validated records.

``validate_export`` decodes and parses a file (formats), validates every record (documents) and
returns everything a caller needs to decide the file's fate: file-level problems, and per record
its ``Validation``. No I/O, no clock: the caller passes ``received_at``. A file is all-or-nothing
(exports.md §4): ``ok`` is false as soon as any problem is an error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Any

from agent.documents.problems import Problem, problem
from agent.documents.validate import Validation, validate_document
from agent.documents.versions import StoredVersion, decide_version, merge_cancellation
from agent.formats import read_export


@dataclasses.dataclass
class ValidatedRecord:
    index: int
    validation: Validation

    @property
    def document(self) -> dict[str, Any] | None:
        return self.validation.document


@dataclasses.dataclass
class FileCheck:
    file_name: str
    sha256: str
    size: int
    format: str | None
    encoding: str | None
    file_problems: list[Problem]
    records: list[ValidatedRecord]

    @property
    def problems(self) -> list[Problem]:
        """Every problem of the file: file-level first, then per record in file order."""
        out = list(self.file_problems)
        for record in self.records:
            out.extend(p.with_record(record.index) for p in record.validation.problems)
        return out

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_export(
    data: bytes,
    *,
    file_name: str,
    received_at: dt.datetime,
    profile: Any = None,
    max_file_size: int | None = None,
    default_valid_days: int = 3,
    version_warnings: bool = False,
) -> FileCheck:
    """Read and validate one export file held in memory. ``version_warnings``: also flag W-011 and
    W-013 among the file's own versions (``check``; ingest has the store decide them, against
    every stored version, when it commits)."""
    sha = hashlib.sha256(data).hexdigest()
    if max_file_size is not None and len(data) > max_file_size:
        return FileCheck(file_name, sha, len(data), None, None, [problem("R-001", "")], [])
    result = read_export(data, file_name=file_name, profile=profile)
    records = []
    for record in result.records:
        validation = validate_document(
            record.document, received_at=received_at, default_valid_days=default_valid_days
        )
        records.append(ValidatedRecord(record.index, validation))
    # The records of one file are committed together, in version order per key (as the store does:
    # §9.2 "version order is the only ordering"), so that is the order they are checked in.
    history: dict[tuple[Any, Any, Any], tuple[list[StoredVersion], dict[str, Any]]] = {}
    valid = [r.validation for r in records if r.validation.ok and r.validation.document is not None]
    for validation in sorted(valid, key=_version_of):
        _versions_within_file(validation, history, warnings=version_warnings)
    return FileCheck(
        file_name, sha, len(data), result.format, result.encoding, list(result.problems), records
    )


def _version_of(validation: Validation) -> int:
    version = (validation.document or {}).get("version")
    return version if isinstance(version, int) else 0


def _versions_within_file(
    validation: Validation,
    history: dict[tuple[Any, Any, Any], tuple[list[StoredVersion], dict[str, Any]]],
    *,
    warnings: bool,
) -> None:
    """§9.2 among the records of one file, in file order, as ingest will commit them: the same key
    and version with other content (R-010), a late lower version (R-010) or an identity change
    (R-014) makes the file invalid even before anything is stored; a later version of the file
    changing the patient's name or registration number (W-011) or re-activating a version the
    file cancelled (W-013) is flagged as ingest will flag it, when ``warnings``. Problems are appended to the
    record's validation so ``check`` reports them like every other rule. W-012 (a cancellation
    of a key with no earlier version) is left to ingest: offline, an earlier version may well be
    stored already (decision 39)."""
    doc = validation.document
    assert doc is not None
    key = ((doc.get("institution") or {}).get("ykiho"), doc.get("document_type"), doc.get("document_no"))
    stored, current = history.get(key, ([], {}))
    content_hash = validation.content_hash or ""
    decision = decide_version(doc, content_hash, stored, current or None)
    for p in decision.problems:
        if p.is_error:
            validation.problems.append(p)
            validation.errors.append(p)
        elif warnings and p.rule != "W-012":
            validation.problems.append(p)
            validation.warnings.append(p)
    if decision.action == "new":
        merged = merge_cancellation(current, doc) if doc.get("status") == "cancelled" and current else doc
        history[key] = (stored + [StoredVersion(doc["version"], content_hash, doc["status"])], merged)
