"""Synthetic test documents for the format tests: the spec examples minus agent-managed fields."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SPEC_EXAMPLES = Path("/work/shared/spec/examples")
_LOCAL_EXAMPLES = Path(__file__).parent / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")


def example(document_type: str) -> dict[str, Any]:
    """The worked example of documents.md §12 for a type, without agent-managed fields."""
    base = _LOCAL_EXAMPLES if (_LOCAL_EXAMPLES / f"{document_type}.json").exists() else SPEC_EXAMPLES
    doc = json.loads((base / f"{document_type}.json").read_text(encoding="utf-8"))
    for name in AGENT_FIELDS:
        doc.pop(name, None)
    return doc


def examples() -> list[dict[str, Any]]:
    return [example(t) for t in TYPES]


def variant(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy with top-level fields replaced (None removes the field)."""
    new = copy.deepcopy(doc)
    for key, value in changes.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new
