"""JSON Schema (draft 2020-12) of the standard documents, derived from `fields.FIELDS`.

The schema states the structure (types, lengths, patterns, enumerations, integer ranges,
required-ness incl. the relaxed set of §9.4 cancellation records). Arithmetic identities and other
cross-field rules are only enforced by `validate.py`; the schema is for EMR vendors and tooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.documents.fields import CANCEL_REQUIRED, DOCUMENT_TYPES, FIELDS, Field

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATETIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _required(fields: Mapping[str, Field]) -> list[str]:
    return [f.name for f in fields.values() if f.required]


def _object(fields: Mapping[str, Field], *, with_required: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {f.name: _field(f) for f in fields.values()},
        "additionalProperties": False,
    }
    if with_required and _required(fields):
        out["required"] = _required(fields)
    return out


def _field(f: Field) -> dict[str, Any]:
    s: dict[str, Any]
    if f.kind == "str":
        s = {"type": "string", "minLength": f.min_len}
        if f.max_len is not None:
            s["maxLength"] = f.max_len
        if f.enum is not None:
            s = {"type": "string", "enum": list(f.enum)}
        elif f.pattern is not None:
            s["pattern"] = f.pattern
    elif f.kind == "int":
        s = {"type": "integer"}
        if f.minimum is not None:
            s["minimum" if not f.min_exclusive else "exclusiveMinimum"] = int(f.minimum)
        if f.maximum is not None:
            s["maximum"] = int(f.maximum)
    elif f.kind == "dec":
        frac = f.frac_digits or 4
        s = {"type": "string", "pattern": rf"^-?(0|[1-9][0-9]{{0,8}})(\.[0-9]{{1,{frac}}})?$"}
    elif f.kind == "bool":
        s = {"type": "boolean"}
    elif f.kind == "date":
        s = {"type": "string", "format": "date", "pattern": _DATE_PATTERN}
    elif f.kind == "datetime":
        s = {"type": "string", "format": "date-time", "pattern": _DATETIME_PATTERN}
    elif f.kind == "object":
        s = _object(f.children or {})
    elif f.kind == "array_object":
        s = {"type": "array", "items": _object(f.children or {}), "minItems": f.min_items}
        if f.max_items is not None:
            s["maxItems"] = f.max_items
    else:  # array_str
        s = {"type": "array", "items": {"type": "string", "minLength": 1}}
        if f.max_items is not None:
            s["maxItems"] = f.max_items
    if f.ko:
        s["title"] = f.ko
    if f.note:
        s["description"] = f.note
    return s


def _document(document_type: str) -> dict[str, Any]:
    fields = FIELDS[document_type]
    body = _object(fields, with_required=False)
    # institution/patient: required members depend on status (§9.4), so they move to if/then/else.
    for block in ("institution", "patient"):
        body["properties"][block] = _object(fields[block].children or {}, with_required=False)
    body["properties"]["document_type"] = {"const": document_type}
    cancel_top = [n for n in _required(fields) if (n,) in CANCEL_REQUIRED]

    def block_required(block: str, cancelled: bool) -> dict[str, Any]:
        children = fields[block].children or {}
        names = [n for n in _required(children) if not cancelled or (block, n) in CANCEL_REQUIRED]
        return {"required": names}

    body["if"] = {"properties": {"status": {"const": "cancelled"}}, "required": ["status"]}
    body["then"] = {
        "required": cancel_top,
        "properties": {b: block_required(b, True) for b in ("institution", "patient")},
    }
    body["else"] = {
        "required": _required(fields),
        "properties": {b: block_required(b, False) for b in ("institution", "patient")},
    }
    body["title"] = f"silson-agent standard document: {document_type}"
    return body


def json_schema(document_type: str | None = None) -> dict[str, Any]:
    """Draft 2020-12 schema of one document type, or (None) of any of the four (``oneOf``)."""
    if document_type is not None:
        if document_type not in FIELDS:
            raise ValueError("unknown document_type")
        return {"$schema": DRAFT, **_document(document_type)}
    return {
        "$schema": DRAFT,
        "title": "silson-agent standard document (any type)",
        "$defs": {t: _document(t) for t in DOCUMENT_TYPES},
        "oneOf": [{"$ref": f"#/$defs/{t}"} for t in DOCUMENT_TYPES],
    }
