"""Writers for the standard layout: the inverse of the readers (synthetic data, round-trip tests).

``write_export(documents, format=...)`` produces the bytes an EMR would export: a JSON array,
JSONL, ``<documents>`` XML or CSV (exports.md §2). Reading the output back gives the same documents
for any valid document (tests/formats: JSON → CSV → XML → JSON is lossless). CSV holds one type
per file; `write_exports_by_type` splits a mixed list.

These are export files for the agent to read, not reports for people: the formula-injection
prefix of security.md §9 ("CSV written by the agent") is deliberately not applied here, since a
leading ``'`` would change values such as ``-10`` that must round-trip.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from agent.documents.fields import DOCUMENT_TYPES, all_paths, field_kind
from agent.formats.csv_reader import ARRAY_SEPARATOR
from agent.formats.text import render_scalar

FORMATS: tuple[str, ...] = ("json", "jsonl", "xml", "csv")
_XML_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Characters XML 1.0 cannot carry at all (C0 controls except TAB, LF, CR; U+FFFE/U+FFFF).
_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def write_export(documents: list[dict[str, Any]], *, format: str, encoding: str = "utf-8") -> bytes:
    """Serialise documents in one of ``json``, ``jsonl``, ``xml``, ``csv``.

    ``encoding`` is ``utf-8``, ``utf-8-sig`` (with BOM) or ``cp949``; characters that the encoding
    cannot hold raise ``UnicodeEncodeError``. CSV requires every document to have the same
    ``document_type`` and a distinct ``document_no`` + ``version`` (else ``ValueError``).
    """
    if format == "json":
        text = json.dumps(documents, ensure_ascii=False, indent=2) + "\n"
    elif format == "jsonl":
        text = "".join(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n" for doc in documents)
    elif format == "xml":
        text = _xml_text(documents, encoding)
    elif format == "csv":
        text = _csv_text(documents)
    else:
        raise ValueError("format must be json, jsonl, xml or csv")
    return text.encode(encoding, errors="strict")


def write_exports_by_type(
    documents: list[dict[str, Any]], *, format: str, encoding: str = "utf-8"
) -> dict[str, bytes]:
    """One file's bytes per ``document_type`` (in first-seen order), as CSV needs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        groups.setdefault(str(doc.get("document_type", "")), []).append(doc)
    return {t: write_export(docs, format=format, encoding=encoding) for t, docs in groups.items()}


# ------------------------------------------------------------------------------------------ XML


def _xml_text(documents: list[dict[str, Any]], encoding: str) -> str:
    declared = "EUC-KR" if encoding == "cp949" else "UTF-8"
    out = [f'<?xml version="1.0" encoding="{declared}"?>\n<documents>\n']
    for doc in documents:
        doc_type = doc.get("document_type")
        if not isinstance(doc_type, str):
            raise ValueError("every document needs a document_type string for XML")
        out.append(f"  <document type={quoteattr(_xml_safe(doc_type))}>\n")
        for key, value in doc.items():
            if key != "document_type":
                _xml_element(out, key, value, 2)
        out.append("  </document>\n")
    out.append("</documents>\n")
    return "".join(out)


def _xml_safe(text: str) -> str:
    if _XML_INVALID_RE.search(text):
        raise ValueError("text holds a character XML 1.0 cannot represent")
    return text


def _xml_element(out: list[str], name: str, value: Any, level: int) -> None:
    if not _XML_NAME_RE.fullmatch(name):
        raise ValueError("field name is not a valid XML element name")
    pad = "  " * level
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            _xml_element(out, name, item, level)
        return
    if isinstance(value, dict):
        out.append(f"{pad}<{name}>\n")
        for key, child in value.items():
            _xml_element(out, key, child, level + 1)
        out.append(f"{pad}</{name}>\n")
        return
    # CR would be turned into LF by any XML parser: keep it as a character reference.
    text = escape(_xml_safe(render_scalar(value))).replace("\r", "&#13;")
    out.append(f"{pad}<{name}>{text}</{name}>\n")


# ------------------------------------------------------------------------------------------ CSV


def _flatten(value: dict[str, Any], prefix: tuple[str, ...], out: dict[tuple[str, ...], str]) -> None:
    for key, child in value.items():
        path = (*prefix, key)
        if child is None:
            continue
        if isinstance(child, dict):
            _flatten(child, path, out)
        elif isinstance(child, list):
            if not all(isinstance(item, str) for item in child):
                raise ValueError("only the lines array and string arrays can be written as CSV")
            if any(ARRAY_SEPARATOR in item for item in child):
                raise ValueError("a string array element holding ';' cannot be written as CSV")
            if child:
                out[path] = ARRAY_SEPARATOR.join(child)
        else:
            out[path] = render_scalar(child)


def _csv_text(documents: list[dict[str, Any]]) -> str:
    types = {doc.get("document_type") for doc in documents}
    if len(types) != 1:
        raise ValueError("a CSV file holds documents of exactly one document_type")
    doc_type = next(iter(types))
    if not isinstance(doc_type, str):
        raise ValueError("document_type must be a string")
    keys = [(doc.get("document_no"), doc.get("version")) for doc in documents]
    if len(set(map(repr, keys))) != len(keys):
        raise ValueError("two documents with the same document_no and version cannot share a CSV")
    array_name = "lines"
    flat_docs: list[tuple[dict[tuple[str, ...], str], list[dict[tuple[str, ...], str]]]] = []
    used_head: dict[tuple[str, ...], None] = {}
    used_line: dict[tuple[str, ...], None] = {}
    for doc in documents:
        head_source = {k: v for k, v in doc.items() if k != array_name}
        head: dict[tuple[str, ...], str] = {}
        _flatten(head_source, (), head)
        lines: list[dict[tuple[str, ...], str]] = []
        for line in doc.get(array_name) or []:
            if not isinstance(line, dict):
                raise ValueError("lines must be objects")
            flat: dict[tuple[str, ...], str] = {}
            _flatten(line, (), flat)
            lines.append(flat)
            used_line.update(dict.fromkeys(flat))
        used_head.update(dict.fromkeys(head))
        flat_docs.append((head, lines))
    head_cols = _ordered(doc_type, (), list(used_head))
    line_cols = _ordered(doc_type, (array_name,), list(used_line))
    header = [".".join(p) for p in head_cols] + [".".join((array_name, *p)) for p in line_cols]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    for head, lines in flat_docs:
        head_cells = [head.get(p, "") for p in head_cols]
        for line in lines or [{}]:
            writer.writerow(head_cells + [line.get(p, "") for p in line_cols])
    return buffer.getvalue()


def _ordered(doc_type: str, prefix: tuple[str, ...], used: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Used paths in field-table order (a readable header), unknown paths after, first-seen order."""
    table = all_paths(doc_type) if doc_type in DOCUMENT_TYPES else []
    known = [p[len(prefix) :] for p in table if p[: len(prefix)] == prefix and len(p) > len(prefix)]
    used_set = set(used)
    ordered = [p for p in known if p in used_set and field_kind(doc_type, (*prefix, *p)) is not None]
    ordered_set = set(ordered)
    return ordered + [p for p in used if p not in ordered_set]
