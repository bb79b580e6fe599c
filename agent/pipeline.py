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


def validate_export(data: bytes, *, file_name: str, received_at: dt.datetime, profile: Any = None,
                    max_file_size: int | None = None, default_valid_days: int = 3) -> FileCheck:
    """Read and validate one export file held in memory."""
    sha = hashlib.sha256(data).hexdigest()
    if max_file_size is not None and len(data) > max_file_size:
        return FileCheck(file_name, sha, len(data), None, None, [problem("R-001", "")], [])
    result = read_export(data, file_name=file_name, profile=profile)
    records = []
    for record in result.records:
        validation = validate_document(record.document, received_at=received_at,
                                       default_valid_days=default_valid_days)
        records.append(ValidatedRecord(record.index, validation))
    return FileCheck(file_name, sha, len(data), result.format, result.encoding, list(result.problems), records)
