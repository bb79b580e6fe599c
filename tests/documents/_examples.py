"""Shared helpers for the documents tests: the spec's example documents (synthetic data only)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "spec"
if not SPEC_DIR.is_dir():  # fall back to the absolute location of the shared tree
    SPEC_DIR = Path("/work/shared/spec")
EXAMPLES_DIR = SPEC_DIR / "examples"
DOCUMENTS_MD = SPEC_DIR / "documents.md"

KST = dt.timezone(dt.timedelta(hours=9))
RECEIVED_AT = dt.datetime(2025, 3, 14, 18, 5, 12, tzinfo=KST)
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")

_CACHE: dict[str, dict[str, Any]] = {}


def example(document_type: str, *, keep_agent_fields: bool = False) -> dict[str, Any]:
    """A fresh deep copy of ``examples/<type>.json`` (agent-managed fields removed by default)."""
    if document_type not in _CACHE:
        _CACHE[document_type] = json.loads((EXAMPLES_DIR / f"{document_type}.json").read_text("utf-8"))
    doc = copy.deepcopy(_CACHE[document_type])
    if not keep_agent_fields:
        for name in AGENT_FIELDS:
            doc.pop(name, None)
    return doc


def legacy(doc: dict[str, Any], *, care_day: str = "2017-12-20") -> dict[str, Any]:
    """The receipt/detail example converted to the legacy_selective layout (§12.1 illustration):
    rehab_physio 30,000 non-covered = 5,000 selective + 25,000 other."""
    doc["amount_layout"] = "legacy_selective"
    doc["care_period"] = {"start": care_day, "end": care_day}
    for line in doc["lines"]:
        if "date" in line:
            line["date"] = care_day
        if line.get("item") == "rehab_physio":
            line["selective"], line["non_selective"] = 5000, 25000
        else:
            line["selective"], line["non_selective"] = 0, line["non_covered"]
    doc["totals"]["selective"], doc["totals"]["non_selective"] = 5000, 25000
    return doc
