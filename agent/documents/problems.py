"""The value every rule produces: a `Problem` naming a rule id and a JSON path, never a value.

Errors are rule ids starting with ``R-`` (the file is quarantined), warnings start with ``W-``
(documents.md §2.6). Messages are fixed texts per rule so they cannot leak personal data (§10).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One rule violation: rule id (``R-204``), JSON path (``lines[3].total``), value-free message."""

    rule: str
    path: str
    message: str
    record: int | None = None

    @property
    def is_error(self) -> bool:
        return self.rule.startswith("R-")

    @property
    def is_warning(self) -> bool:
        return self.rule.startswith("W-")

    def with_record(self, record: int | None) -> Problem:
        """The same problem attributed to a record index of a file (readers, ingest)."""
        return Problem(self.rule, self.path, self.message, record)


def join_path(parent: str, name: str | int) -> str:
    """JSON path as used in problems: ``lines[3].total``, ``patient.rrn``; root is ``""``."""
    if isinstance(name, int):
        return f"{parent}[{name}]"
    return f"{parent}.{name}" if parent else name
