"""Version decision of documents.md §9: new / duplicate / conflict for an incoming record.

Pure: the store passes in what it holds for the natural key (every stored version's number,
hash and status, plus the current document) and applies the decision. `version` order is the only
ordering (§9.2); arrival order and timestamps never matter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from agent.documents.fields import AGENT_FIELDS
from agent.documents.problems import Problem, problem
from agent.documents.validate import names_equal


@dataclass(frozen=True)
class StoredVersion:
    version: int
    content_hash: str
    status: str


@dataclass(frozen=True)
class VersionDecision:
    """``action``: ``new`` (store as new current), ``duplicate`` (no-op) or ``conflict`` (error:
    R-010 or R-014 in ``problems``, nothing stored). Warnings W-011/W-012/W-013 go with ``new``."""

    action: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]


def _get(doc: dict[str, Any] | None, block: str, name: str) -> Any:
    if not isinstance(doc, dict):
        return None
    inner = doc.get(block)
    return inner.get(name) if isinstance(inner, dict) else None


def decide_version(
    incoming: dict[str, Any],
    incoming_hash: str,
    stored: list[StoredVersion],
    current: dict[str, Any] | None,
) -> VersionDecision:
    """Decide what to do with a validated incoming record (canonical form) for its natural key."""
    version = incoming.get("version")
    status = incoming.get("status")
    if not stored:
        return VersionDecision("new", [problem("W-012", "status")] if status == "cancelled" else [])
    for s in stored:
        if s.version == version:
            if s.content_hash == incoming_hash:
                return VersionDecision("duplicate")
            return VersionDecision("conflict", [problem("R-010", "version")])
    newest = max(stored, key=lambda s: s.version)
    if not isinstance(version, int) or version < newest.version:
        return VersionDecision("conflict", [problem("R-010", "version")])

    # A new current version: identity must not change.
    if current is not None:
        for path, a, b in (
            (
                "institution.ykiho",
                _get(incoming, "institution", "ykiho"),
                _get(current, "institution", "ykiho"),
            ),
            ("document_type", incoming.get("document_type"), current.get("document_type")),
            ("document_no", incoming.get("document_no"), current.get("document_no")),
        ):
            if a != b:
                return VersionDecision("conflict", [problem("R-014", path)])
        current_rrn = _get(current, "patient", "rrn")
        incoming_rrn = _get(incoming, "patient", "rrn")
        # A cancellation record may omit the rrn (§9.4); an active version must keep it.
        omitted_by_cancellation = incoming_rrn is None and status == "cancelled"
        if current_rrn is not None and incoming_rrn != current_rrn and not omitted_by_cancellation:
            return VersionDecision("conflict", [problem("R-014", "patient.rrn")])

    warnings: list[Problem] = []
    if status == "active" and current is not None:
        name_a, name_b = _get(incoming, "patient", "name"), _get(current, "patient", "name")
        if isinstance(name_a, str) and isinstance(name_b, str) and not names_equal(name_a, name_b):
            warnings.append(problem("W-011", "patient.name"))
        # Compared only when both carry it: a §9.4 cancellation record may omit it.
        reg_a, reg_b = _get(incoming, "patient", "patient_reg_no"), _get(current, "patient", "patient_reg_no")
        if reg_a is not None and reg_b is not None and reg_a != reg_b:
            warnings.append(problem("W-011", "patient.patient_reg_no"))
    current_status = current.get("status") if isinstance(current, dict) else newest.status
    if status == "active" and (current_status == "cancelled" or newest.status == "cancelled"):
        warnings.append(problem("W-013", "status"))
    return VersionDecision("new", warnings)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_cancellation(previous: dict[str, Any], cancel_record: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a cancellation (§9.4): the previous version's content for audit, with
    every field of the cancel record winning (nested objects merged key by key). The
    ``content_hash`` stays the hash of the cancel record as received, computed by the caller."""
    prev = {k: v for k, v in previous.items() if k not in AGENT_FIELDS}
    if prev.get("status") == "active":
        prev.pop("cancel_reason", None)
    cancel = {k: v for k, v in cancel_record.items() if k not in AGENT_FIELDS}
    return _merge(prev, cancel)
