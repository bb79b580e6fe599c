"""Reading a vendor layout through a `Profile` (exports.md §3): vendor rows/elements → standard
documents, with the profile's transforms, code tables, date/decimal/sign/boolean conventions.

The output is the same shape the standard readers produce (typed, NFC, trimmed, absent when
empty), so the validator treats every source alike. A value the profile cannot convert (a date
in none of the formats, ``1.5`` for an integer) is passed on as text and the validator reports it
(R-021/R-024/R-026 …) with its path.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from typing import Any
from xml.etree.ElementTree import Element

from agent.documents.fields import DOCUMENT_TYPES, field_kind
from agent.documents.problems import Problem
from agent.formats.assemble import GroupAssembler, Path, StopReading, set_path
from agent.formats.csv_reader import is_blank_row, iter_rows
from agent.formats.encoding import decode_as
from agent.formats.paths import safe_name
from agent.formats.profiles import FieldMap, Profile
from agent.formats.result import ProblemSink, ReadResult, Record
from agent.formats.text import clean_text
from agent.formats.xml_reader import parse_or_report

KST = timezone(timedelta(hours=9))
_INT_RE = re.compile(r"-?[0-9]+")
_DATE_PART = {"%Y": "[0-9]{4}", "%m": "[0-9]{2}", "%d": "[0-9]{2}"}


def read_with_profile(data: bytes, *, file_name: str, profile: Profile) -> ReadResult:
    """Read one file of a vendor layout (see `agent.formats.reader.read_export`)."""
    if PurePath(file_name).suffix.lower() not in profile.extensions:
        return ReadResult(
            format=profile.format,
            encoding=None,
            problems=[Problem("R-004", "", "file extension is not one this profile reads")],
        )
    decoded = decode_as(data, profile.encoding)
    if isinstance(decoded, Problem):
        return ReadResult(format=profile.format, encoding=None, problems=[decoded])
    text, encoding = decoded
    if profile.format == "xml":
        sink = ProblemSink()
        records = _read_xml(text, file_name, profile, sink)
        return ReadResult(format="xml", encoding=encoding, problems=sink.items, records=records)

    def source(sink: ProblemSink) -> Iterator[Record]:
        if profile.format == "fixed":
            rows = _fixed_rows(text, encoding, profile, sink)
        else:
            rows = _csv_rows(text, profile, sink)
        return _read_rows(rows, file_name, profile, sink)

    return ReadResult(format=profile.format, encoding=encoding, source=source)


# ------------------------------------------------------------------------------ value conversion


def _date_regex(fmt: str) -> re.Pattern[str]:
    pattern = re.escape(fmt)
    for directive, part in _DATE_PART.items():
        pattern = pattern.replace(re.escape(directive), part)
    return re.compile(pattern)


class ValueConverter:
    """The profile's value conventions, applied after its transforms."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        # strptime alone accepts "2025314" for %Y%m%d: require the exact digit counts first.
        self.date_formats = [(_date_regex(f), f) for f in profile.date_formats]

    def transform(self, field_map: FieldMap, text: str) -> str:
        for name in field_map.transforms:
            if name == "strip":
                text = text.strip()
            elif name == "digits-only":
                text = "".join(ch for ch in text if "0" <= ch <= "9")
            elif name == "upper":
                text = text.upper()
            elif name == "lower":
                text = text.lower()
            elif name == "remove-spaces":
                text = "".join(ch for ch in text if not ch.isspace())
        if field_map.code_table is not None:
            text = self.profile.code_tables[field_map.code_table].get(text, text)
        return clean_text(text)

    def _signed_number(self, text: str) -> str:
        profile = self.profile
        negative = False
        styles = profile.negative_styles
        if "trailing-minus" in styles and text.endswith("-") and len(text) > 1:
            negative, text = True, text[:-1]
        elif "parentheses" in styles and text.startswith("(") and text.endswith(")"):
            negative, text = True, text[1:-1]
        elif "triangle" in styles and text[:1] in ("△", "▲"):
            negative, text = True, text[1:]
        text = text.strip()
        if profile.thousands_separator:
            text = text.replace(profile.thousands_separator, "")
        if profile.decimal_separator != ".":
            text = text.replace(profile.decimal_separator, ".")
        if negative and not text.startswith("-"):
            text = "-" + text
        return text

    def convert(self, kind: str, text: str) -> Any:
        if kind == "int":
            number = self._signed_number(text)
            if _INT_RE.fullmatch(number) and len(number) <= 40:
                return int(number)
            return text
        if kind == "dec":
            return self._signed_number(text)
        if kind == "bool":
            if text in self.profile.true_values or text == "true":
                return True
            if text in self.profile.false_values or text == "false":
                return False
            return text
        if kind == "date":
            for regex, fmt in self.date_formats:
                if regex.fullmatch(text):
                    try:
                        return datetime.strptime(text, fmt).date().isoformat()
                    except ValueError:
                        return text
            return text
        if kind == "datetime":
            for fmt in self.profile.datetime_formats:
                try:
                    moment = datetime.strptime(text, fmt)
                except ValueError:
                    continue
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=KST)  # export times are Korean local time
                return moment.isoformat(timespec="seconds")
            return text
        if kind == "array_str":
            items = [clean_text(p) for p in text.split(self.profile.array_separator)]
            items = [item for item in items if item]
            return items or None
        return text


def detect_type(
    profile: Profile,
    file_name: str,
    column_value: str | None,
    xml_root: str | None = None,
    xml_record: str | None = None,
) -> str | None:
    """Document type by the profile's rules, in order: column value, XML root, XML record
    element, file-name pattern, default."""
    if column_value:
        mapped = profile.type_values.get(column_value)
        if mapped is None and column_value in DOCUMENT_TYPES:
            mapped = column_value
        return mapped  # a type column that holds an unknown value is R-005, never a guess
    if xml_root is not None and xml_root in profile.type_xml_root:
        return profile.type_xml_root[xml_root]
    if xml_record is not None and xml_record in profile.type_xml_record:
        return profile.type_xml_record[xml_record]
    base = PurePath(file_name).name.casefold()
    for pattern, doc_type in profile.type_file_names.items():
        if fnmatch.fnmatchcase(base, pattern.casefold()):
            return doc_type
    return profile.type_default


class _Mapper:
    """Applies the field map of a profile to one flat set of vendor values."""

    def __init__(self, profile: Profile, sink: ProblemSink) -> None:
        self.profile = profile
        self.sink = sink
        self.values = ValueConverter(profile)

    def map(
        self, document_type: str, get: Any, record: int, *, lines_only: bool | None = None
    ) -> tuple[dict[Path, Any], dict[Path, Any]]:
        """(header values, line values) by target path; ``get(source)`` returns text or None.

        ``lines_only`` True maps only line fields, False only header fields, None both.
        """
        head: dict[Path, Any] = {}
        line: dict[Path, Any] = {}
        line_constants: dict[Path, Any] = {}
        for fm in self.profile.fields:
            if not fm.applies_to(document_type):
                continue
            if lines_only is not None and fm.is_line != lines_only:
                continue
            kind = field_kind(document_type, fm.target)
            if fm.constant is not None:
                value: Any = fm.constant
            else:
                parts = [get(s) for s in fm.sources]
                texts = [clean_text(p) for p in parts if p]
                text = self.values.transform(fm, fm.separator.join(t for t in texts if t))
                if not text:
                    continue  # empty = absent
                if kind is None or kind in ("object", "array_object"):
                    self.sink.add(
                        "R-025", ".".join(fm.target), "profile maps a value to an unknown field", record
                    )
                    continue
                value = self.values.convert(kind, text)
                if value is None:
                    continue
            if fm.is_line:
                (line_constants if fm.constant is not None else line)[fm.target[1:]] = value
            else:
                head[fm.target] = value
        if line:
            line.update({k: v for k, v in line_constants.items() if k not in line})
        head.setdefault(("document_type",), document_type)
        return head, line


# ------------------------------------------------------------------------------ rows: csv, fixed


def _csv_rows(text: str, profile: Profile, sink: ProblemSink) -> Iterator[tuple[int, list[str]]]:
    yield from iter_rows(text, sink, profile.delimiter)


def _fixed_rows(
    text: str, encoding: str, profile: Profile, sink: ProblemSink
) -> Iterator[tuple[int, list[str]]]:
    """Fixed-width lines as rows; the first row is the column names so `_read_rows` is shared.

    Widths are bytes of the file encoding (how CP949 fixed-width exports count), so each line is
    re-encoded and cut; a cut through a double-byte character is R-004.
    """
    yield 0, [c.name for c in profile.fixed_columns]
    for row_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        raw = line.encode(encoding)
        cells = []
        for column in profile.fixed_columns:
            chunk = raw[column.start - 1 : column.start - 1 + column.width]
            try:
                cells.append(chunk.decode(encoding, errors="strict"))
            except UnicodeDecodeError:
                sink.add("R-004", "", f"line {row_no}: a column boundary splits a character")
                return
        yield row_no, cells


def _read_rows(
    rows: Iterator[tuple[int, list[str]]], file_name: str, profile: Profile, sink: ProblemSink
) -> Iterator[Record]:
    header: list[str] | None = None
    for row_no, row in rows:
        if profile.format == "csv" and row_no < profile.header_row:
            continue
        header = [clean_text(cell) for cell in row]
        break
    if header is None or not any(header):
        if not sink.items:
            sink.add("R-004", "", "file holds no records (empty file)")
        return
    if len(set(header)) != len(header):
        sink.add("R-004", "", "duplicate column name in the header")
        return
    known = {s for fm in profile.fields for s in fm.sources}
    known.update(profile.ignore_columns)
    if profile.type_column:
        known.add(profile.type_column)
    if profile.unknown_columns == "error":
        for position, name in enumerate(header):
            if name not in known:
                sink.add(
                    "R-025", safe_name(name, f"[column {position + 1}]"), "column not mapped by the profile"
                )
    mapper = _Mapper(profile, sink)
    assembler = GroupAssembler(sink)
    try:
        for row_no, row in rows:
            if not row or is_blank_row(row):
                continue
            if len(row) != len(header):
                sink.add("R-004", "", f"row {row_no} has a different number of cells than the header")
                return
            values = dict(zip(header, row, strict=True))
            type_value = clean_text(values.get(profile.type_column, "")) if profile.type_column else None
            document_type = detect_type(profile, file_name, type_value)
            if document_type is None:
                sink.add(
                    "R-005",
                    "document_type",
                    "the profile cannot determine the document type",
                    assembler.index + 1,
                )
                return
            head, line = mapper.map(document_type, values.get, assembler.index + 1)
            key = (document_type, *(repr(head.get(k)) for k in profile.group_keys))
            finished = assembler.add_row(key, head, line, row_no)
            if finished is not None:
                yield finished
        last = assembler.finish()
        if last is not None:
            yield last
        elif assembler.count == 0 and not any(p.rule == "R-004" for p in sink.items):
            sink.add("R-004", "", "file holds no records (header only)")
    except StopReading:
        return


# ------------------------------------------------------------------------------ xml


def _select(elem: Element, path: str) -> list[Element]:
    """Elements at a "/"-path under ``elem`` ("*" matches any name; "" is ``elem`` itself)."""
    nodes = [elem]
    for step in [s for s in path.split("/") if s]:
        nodes = [child for node in nodes for child in node if step in ("*", child.tag)]
    return nodes


def _xml_getter(elem: Element) -> Any:
    def get(source: str) -> str | None:
        path, _, attribute = source.partition("@")
        nodes = _select(elem, path.rstrip("/"))
        if not nodes:
            return None
        node = nodes[0]  # a repeated element: the first one wins (documented in docs/profiles.md)
        if attribute:
            return node.attrib.get(attribute)
        return "".join(node.itertext()) if len(node) == 0 else None

    return get


def _read_xml(text: str, file_name: str, profile: Profile, sink: ProblemSink) -> list[Record]:
    root = parse_or_report(text, sink)
    if root is None:
        return []
    mapper = _Mapper(profile, sink)
    records: list[Record] = []
    elements = _select(root, profile.xml_records) if profile.xml_records != "." else [root]
    for index, elem in enumerate(elements):
        get = _xml_getter(elem)
        type_value = clean_text(get(profile.type_column) or "") if profile.type_column else None
        document_type = detect_type(profile, file_name, type_value, root.tag, str(elem.tag))
        if document_type is None:
            sink.add("R-005", "document_type", "the profile cannot determine the document type", index)
            continue
        head, _ = mapper.map(document_type, get, index, lines_only=False)
        lines = []
        for line_elem in _select(elem, profile.xml_lines) if profile.xml_lines else []:
            _, line = mapper.map(document_type, _xml_getter(line_elem), index, lines_only=True)
            if line:
                item: dict[str, Any] = {}
                for path, value in line.items():
                    set_path(item, path, value)
                lines.append(item)
        document: dict[str, Any] = {}
        for path, value in head.items():
            set_path(document, path, value)
        if lines:
            document["lines"] = lines
        records.append(Record(index, document))
    if not elements:
        sink.add("R-004", "", "file holds no records")
    return records
