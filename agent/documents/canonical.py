"""Canonical form and content hash of a document (documents.md §9.3).

The canonical bytes are RFC 8785 (JCS) output, which for this format (no JSON floats, ASCII keys)
equals sorted keys + compact separators + UTF-8 without escaping non-ASCII. The hash is over those
bytes, so two exports of the same content hash equal regardless of key order or spelling of
decimals ("2.50" = "2.5").
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from agent.documents.fields import AGENT_FIELDS, DEC_PATTERN, FIELDS, Field
from agent.documents.ids import normalise_kcd

_DEC = re.compile(DEC_PATTERN)

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
# What `_ENCODER.encode` runs for a dict, called directly: it is built per call there and the
# Python layers around it cost about a sixth of encoding a receipt. None without the C module.
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)


def serialize(canonical_doc: dict[str, Any]) -> bytes:
    """JCS bytes of a dict that is already in canonical form (no further normalisation)."""
    if _C_MAKE_ENCODER is not None and type(canonical_doc) is dict:
        # The arguments `JSONEncoder.iterencode` passes; a fresh markers dict per call keeps the
        # circular-reference check (and thread safety).
        encode = _C_MAKE_ENCODER(
            {},
            _ENCODER.default,
            json.encoder.encode_basestring,
            None,
            _ENCODER.key_separator,
            _ENCODER.item_separator,
            True,
            False,
            False,
        )
        text = "".join(encode(canonical_doc, 0))
    else:
        text = _ENCODER.encode(canonical_doc)
    # surrogatepass: a lone surrogate is an R-023 error anyway; hashing it must not raise.
    return text.encode("utf-8", "surrogatepass")


def canonical_decimal(text: str) -> str:
    """``"2.50"`` → ``"2.5"``, ``"3.0"`` → ``"3"``, ``"-0"`` → ``"0"``; text must match the dec syntax."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        return "0"
    return text


def _canon(value: Any, f: Field | None) -> Any:
    if f is None:
        if isinstance(value, dict):
            return {k: _canon(v, None) for k, v in value.items() if v is not None}
        return value
    if f.kind == "dec" and isinstance(value, str):
        return canonical_decimal(value) if _DEC.fullmatch(value) else value
    if f.kind == "array_str" and isinstance(value, list):
        return [normalise_kcd(v) if isinstance(v, str) else v for v in value]
    if f.kind == "object" and isinstance(value, dict) and f.children is not None:
        return _canon_obj(value, f.children)
    if f.kind == "array_object" and isinstance(value, list) and f.children is not None:
        return [_canon_obj(v, f.children) if isinstance(v, dict) else v for v in value]
    return value


def _canon_obj(obj: dict[str, Any], fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if v is None or (isinstance(v, list) and not v):
            continue
        out[k] = _canon(v, fields.get(k))
    return out


def canonical_form(doc: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of §9.3 without validating: agent fields, nulls and empty arrays removed,
    decimals and KCD codes normalised. `validate_document` produces the same dict as `.document`."""
    doc_type = doc.get("document_type")
    fields = FIELDS.get(doc_type, {}) if isinstance(doc_type, str) else {}
    body = {k: v for k, v in doc.items() if k not in AGENT_FIELDS}
    return _canon_obj(body, fields)


def canonical_bytes(doc: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of the canonical form of ``doc``."""
    return serialize(canonical_form(doc))


def content_hash(doc: dict[str, Any]) -> str:
    """Lower-case hex SHA-256 of `canonical_bytes` (the ``content_hash`` of §9.3)."""
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
