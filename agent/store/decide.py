"""Version decision for one incoming record against a stored key (documents.md §9.2, §9.4, §9.5).

Pure: no I/O. The store feeds it the stored versions of the natural key and the decrypted current
document and applies the answer inside its transaction. (``agent.documents.versions`` is the
project's shared home of this logic; this module implements the same contract so the store does
not depend on its arrival — see the report.)
"""

from __future__ import annotations

import copy
import dataclasses
import unicodedata
from collections.abc import Sequence
from typing import Any

NEW = "new"
DUPLICATE = "duplicate"
CONFLICT = "conflict"


@dataclasses.dataclass(frozen=True)
class StoredVersion:
    version: int
    content_hash: str
    status: str


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: str  # new | duplicate | conflict
    rule: str | None = None  # for a conflict
    path: str = ""
    warnings: tuple[tuple[str, str], ...] = ()  # (rule, path): W-011 / W-012 / W-013


def compare_name(name: str) -> str:
    """documents.md §2.1 name comparison: NFC, drop ``str.isspace`` characters, no other folding."""
    return "".join(ch for ch in unicodedata.normalize("NFC", name) if not ch.isspace())


def decide(document: dict[str, Any], content_hash: str, stored: Sequence[StoredVersion],
           current: dict[str, Any] | None) -> Decision:
    """Decide what to do with ``document`` (canonical form) given the stored versions of its key."""
    version = int(document["version"])
    cancelled = document.get("status") == "cancelled"
    if not stored:
        return Decision(NEW, warnings=(("W-012", "status"),) if cancelled else ())
    same = [s for s in stored if s.version == version]
    if same:
        if same[0].content_hash == content_hash:
            return Decision(DUPLICATE)
        return Decision(CONFLICT, "R-010", "version")
    top = max(stored, key=lambda s: s.version)
    if version < top.version:
        return Decision(CONFLICT, "R-010", "version")
    warnings: list[tuple[str, str]] = []
    if current is not None:
        for path, new, old in (
            ("institution.ykiho", document.get("institution", {}).get("ykiho"),
             current.get("institution", {}).get("ykiho")),
            ("document_type", document.get("document_type"), current.get("document_type")),
            ("document_no", document.get("document_no"), current.get("document_no")),
        ):
            if new != old:
                return Decision(CONFLICT, "R-014", path)
        new_rrn = document.get("patient", {}).get("rrn")
        old_rrn = current.get("patient", {}).get("rrn")
        # A cancellation that omits the RRN does not change it (§9.5); a different one is a swap.
        if new_rrn is not None and old_rrn is not None and new_rrn != old_rrn:
            return Decision(CONFLICT, "R-014", "patient.rrn")
        if not cancelled:
            new_patient, old_patient = document.get("patient", {}), current.get("patient", {})
            if (isinstance(new_patient.get("name"), str) and isinstance(old_patient.get("name"), str)
                    and compare_name(new_patient["name"]) != compare_name(old_patient["name"])):
                warnings.append(("W-011", "patient.name"))
            if new_patient.get("patient_reg_no") != old_patient.get("patient_reg_no") and \
                    old_patient.get("patient_reg_no") is not None:
                warnings.append(("W-011", "patient.patient_reg_no"))
            if top.status == "cancelled":
                warnings.append(("W-013", "status"))
    return Decision(NEW, warnings=tuple(warnings))


def merge_cancellation(previous: dict[str, Any] | None, cancel: dict[str, Any]) -> dict[str, Any]:
    """§9.4: the stored cancelled version keeps the previous content; fields of the cancel record win."""
    if previous is None:
        return copy.deepcopy(cancel)
    merged = copy.deepcopy(previous)
    _deep_update(merged, cancel)
    return merged


def _deep_update(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
