"""Reader for ``.csv`` exports of the standard layout (exports.md §2, "CSV details").

Header row of dotted json_name paths; one file per document type; rows grouped into documents
by ``document_no`` + ``version`` (see `agent.formats.assemble`); ``lines.*`` cells make one line
per row; ``diagnosis_codes`` is one cell joined by ``;``. RFC 4180 quoting, CRLF or LF. The text
is streamed row by row: only the current document is held in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.documents.fields import DOCUMENT_TYPES, field_kind
from agent.formats.assemble import GroupAssembler, Path, StopReading
from agent.formats.paths import safe_name
from agent.formats.result import ProblemSink, Record
from agent.formats.text import clean_text, convert_text

LEAF_KINDS = frozenset({"str", "int", "dec", "bool", "date", "datetime", "array_str"})
ARRAY_SEPARATOR = ";"


def iter_lines(text: str) -> Iterator[str]:
    """Lines with their LF kept (the csv module needs it inside quoted cells), without a list."""
    start = 0
    length = len(text)
    while start < length:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def iter_rows(text: str, sink: ProblemSink, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """RFC 4180 rows with their 1-based row number; csv errors become R-004 and end the rows."""
    reader = csv.reader(iter_lines(text), delimiter=delimiter, quotechar='"', strict=True)
    row_no = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            sink.add("R-004", "", f"row {row_no + 1} is not well-formed CSV (quoting or cell size)")
            return
        row_no += 1
        yield row_no, row


def is_blank_row(row: list[str]) -> bool:
    return all(not cell.strip() for cell in row)


def value_of(kind: str, text: str) -> Any:
    """Typed value of a cleaned, non-empty cell (``array_str``: split on ``;``)."""
    if kind == "array_str":
        items = [clean_text(part) for part in text.split(ARRAY_SEPARATOR)]
        items = [item for item in items if item]
        return items or None
    return convert_text(kind, text)


@dataclass(frozen=True)
class Column:
    position: int
    path: Path  # for line columns: the path inside one line
    kind: str
    is_line: bool


def classify_columns(header: list[str], document_type: str, sink: ProblemSink) -> tuple[list[Column], str]:
    """Map header cells to field paths of the type; unknown paths are R-025 (column skipped).

    Returns the columns and the name of the row-expanded array (``lines``).
    """
    columns: list[Column] = []
    array_name = "lines"
    for position, name in enumerate(header):
        shown = safe_name(name, f"[column {position + 1}]")
        parts = tuple(name.split("."))
        if not name or any(not part for part in parts):
            sink.add("R-025", shown, "column is not a field path")
            continue
        top_kind = field_kind(document_type, parts[:1])
        kind = field_kind(document_type, parts)
        if top_kind == "array_object" and len(parts) > 1:
            # The one row-expanded array; nothing deeper than one level exists inside a line.
            if kind not in LEAF_KINDS or kind == "array_str":
                sink.add("R-025", shown, "column is not a field path of a line")
                continue
            array_name = parts[0]
            columns.append(Column(position, parts[1:], kind, True))
            continue
        if kind not in LEAF_KINDS or _inside_array(document_type, parts):
            sink.add("R-025", shown, "column is not a field path")
            continue
        columns.append(Column(position, parts, kind, False))
    return columns, array_name


def _inside_array(document_type: str, parts: Path) -> bool:
    return any(field_kind(document_type, parts[:i]) == "array_object" for i in range(1, len(parts)))


def read_csv(text: str, sink: ProblemSink) -> Iterator[Record]:
    """Stream a standard-layout CSV export as records (exports.md §2)."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[", "<"):
        sink.add("R-004", "", "content is not CSV")
        return
    rows = iter_rows(text, sink)
    header: list[str] | None = None
    for _row_no, row in rows:
        if not is_blank_row(row):
            header = [clean_text(cell) for cell in row]
            break
    if header is None:
        if not sink.items:
            sink.add("R-004", "", "file holds no records (empty file)")
        return
    if len(set(header)) != len(header):
        sink.add("R-004", "", "duplicate column name in the header")
        return
    if "document_type" not in header:
        sink.add("R-005", "document_type", "a document_type column is required")
        return
    try:
        yield from _read_body(header, rows, sink)
    except StopReading:
        return


def _read_body(
    header: list[str], rows: Iterator[tuple[int, list[str]]], sink: ProblemSink
) -> Iterator[Record]:
    type_position = header.index("document_type")
    key_positions = [header.index(n) if n in header else None for n in ("document_no", "version")]
    document_type: str | None = None
    columns: list[Column] = []
    assembler = GroupAssembler(sink)
    for row_no, row in rows:
        if not row or is_blank_row(row):
            continue
        if len(row) != len(header):
            sink.add("R-004", "", f"row {row_no} has a different number of cells than the header")
            return
        row_type = clean_text(row[type_position])
        if document_type is None:
            if row_type not in DOCUMENT_TYPES:
                sink.add("R-005", "document_type", "document_type missing or not a known type", 0)
                return
            document_type = row_type
            columns, array_name = classify_columns(header, document_type, sink)
            assembler.array_name = array_name
        elif row_type != document_type:
            sink.add("R-004", "document_type", "mixed document types in one CSV file", assembler.index)
            return
        head: dict[Path, Any] = {}
        line: dict[Path, Any] = {}
        for column in columns:
            text = clean_text(row[column.position])
            if not text:
                continue  # empty cell = absent
            value = value_of(column.kind, text)
            if value is None:
                continue
            (line if column.is_line else head)[column.path] = value
        key = tuple("" if p is None else clean_text(row[p]) for p in key_positions)
        finished = assembler.add_row(key, head, line, row_no)
        if finished is not None:
            yield finished
    last = assembler.finish()
    if last is not None:
        yield last
    elif assembler.count == 0 and not any(p.rule == "R-004" for p in sink.items):
        sink.add("R-004", "", "file holds no records (header only)")
