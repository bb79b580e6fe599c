"""What the relay sees of a stored document (documents.md §9.6, relay-api.md §6.4).

The served form minimises: no `source` (file names may leak patient context), validation reduced
to rule ids, and never a full 주민등록번호 (`patient.rrn` → `patient.rrn_masked`). A cancelled
current version is served as a tombstone without any patient data.
"""

from __future__ import annotations

from typing import Any


def mask_rrn(rrn: str) -> str:
    """First 7 digits (birth date + gender digit) then six asterisks: ``9001011******``."""
    return rrn[:7] + "******"


def _rule_ids(entries: Any) -> list[str]:
    out: list[str] = []
    if isinstance(entries, list):
        for e in entries:
            rule = e.get("rule") if isinstance(e, dict) else e
            if isinstance(rule, str) and rule not in out:
                out.append(rule)
    return out


def served_form(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored document as served with ``format: "standard"`` (active current versions).

    Only the members it changes are copied (top level, ``patient``; ``validation`` is rebuilt):
    the rest is shared with ``doc``, which stays untouched. A deep copy cost more than the whole
    rest of a fetch; callers serialise the result, they never mutate it.
    """
    out = {k: v for k, v in doc.items() if k != "source"}
    validation = out.get("validation")
    if isinstance(validation, dict):
        out["validation"] = {k: _rule_ids(v) for k, v in validation.items()}
    patient = out.get("patient")
    if isinstance(patient, dict):
        patient = out["patient"] = dict(patient)
        rrn = patient.pop("rrn", None)
        if isinstance(rrn, str):
            patient["rrn_masked"] = mask_rrn(rrn)
    return out


def tombstone(doc: dict[str, Any]) -> dict[str, Any]:
    """§9.6 tombstone of a cancelled current version: natural key, version, status, issued_on,
    received_at — no patient data."""
    institution = doc.get("institution")
    out: dict[str, Any] = {
        "document_type": doc.get("document_type"),
        "document_no": doc.get("document_no"),
        "institution": {"ykiho": institution.get("ykiho") if isinstance(institution, dict) else None},
        "version": doc.get("version"),
        "status": "cancelled",
        "issued_on": doc.get("issued_on"),
    }
    if doc.get("received_at") is not None:
        out["received_at"] = doc["received_at"]
    return out
