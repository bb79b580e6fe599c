"""Reading a vendor layout through a `Profile` (exports.md §3): vendor rows/elements → standard
documents, with the profile's transforms, code tables, date/decimal/sign/boolean conventions.

The output is the same shape the standard readers produce (typed, NFC, trimmed, absent when
empty), so the validator treats every source alike. A value the profile cannot convert (a date
in none of the formats, ``1.5`` for an integer) is passed on as text and the validator reports it
(R-021/R-024/R-026 …) with its path.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import Any
from xml.etree.ElementTree import Element

from agent.documents.fields import DOCUMENT_TYPES, field_kind
from agent.documents.problems import Problem
from agent.formats.assemble import GroupAssembler, Path, StopReading, nest
from agent.formats.csv_reader import is_blank_row, iter_rows
from agent.formats.encoding import decode_as
from agent.formats.json_reader import parse_json_file, read_jsonl
from agent.formats.limits import MAX_PROBLEMS
from agent.formats.paths import safe_name
from agent.formats.profiles import JSON_LINES_EXTENSIONS, FieldMap, Profile
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
    if profile.format == "json":
        if PurePath(file_name).suffix.lower() in JSON_LINES_EXTENSIONS:

            def lines_source(sink: ProblemSink) -> Iterator[Record]:
                items = ((r.index, None, r.document) for r in read_jsonl(text, sink))
                return _read_json_items(items, file_name, profile, sink)

            return ReadResult(format="jsonl", encoding=encoding, source=lines_source)
        sink = ProblemSink()
        records = list(_read_json_items(_json_file_items(text, profile, sink), file_name, profile, sink))
        return ReadResult(format="json", encoding=encoding, problems=sink.items, records=records)

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

    def convert(self, kind: str, text: str, *, native: bool = False) -> Any:
        """Typed value of cleaned text; ``native``: the text of a JSON number, already canonical
        (no vendor thousands/decimal/sign conventions apply to it)."""
        if kind == "int":
            number = text if native else self._signed_number(text)
            if _INT_RE.fullmatch(number) and len(number) <= 40:
                return int(number)
            return text
        if kind == "dec":
            return text if native else self._signed_number(text)
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
    json_record: str | None = None,
) -> str | None:
    """Document type by the profile's rules, in order: column value, XML root, XML record
    element, JSON member holding the record, file-name pattern, default."""
    if column_value:
        mapped = profile.type_values.get(column_value)
        if mapped is None and column_value in DOCUMENT_TYPES:
            mapped = column_value
        return mapped  # a type column that holds an unknown value is R-005, never a guess
    if xml_root is not None and xml_root in profile.type_xml_root:
        return profile.type_xml_root[xml_root]
    if xml_record is not None and xml_record in profile.type_xml_record:
        return profile.type_xml_record[xml_record]
    if json_record is not None and json_record in profile.type_json_record:
        return profile.type_json_record[json_record]
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
                # CSV/fixed/XML sources are text or None; JSON sources may be any JSON value.
                parts = [get(s) for s in fm.sources]
                if any(isinstance(p, (list, dict)) for p in parts):
                    value = self._structured(fm, kind, parts, record)
                    if value is None:
                        continue
                else:
                    texts = [clean_text(_scalar_text(p)) for p in parts if p is not None]
                    text = self.values.transform(fm, fm.separator.join(t for t in texts if t))
                    if not text:
                        continue  # empty = absent
                    if kind is None or kind in ("object", "array_object"):
                        self._unknown_target(fm, record)
                        continue
                    native = len(parts) == 1 and _is_number(parts[0])
                    value = self.values.convert(kind, text, native=native)
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

    def _unknown_target(self, fm: FieldMap, record: int) -> None:
        self.sink.add("R-025", ".".join(fm.target), "profile maps a value to an unknown field", record)

    def _structured(self, fm: FieldMap, kind: str | None, parts: list[Any], record: int) -> Any:
        """A JSON array or object as a source value: an array of scalars for an array field (each
        item transformed and cleaned; empty items dropped), else R-021 (or R-025 for an unknown
        target). None: nothing to set."""
        value = parts[0]
        if kind is None or kind in ("object", "array_object"):
            if value:
                self._unknown_target(fm, record)
            return None
        if (
            kind == "array_str"
            and len(parts) == 1
            and isinstance(value, list)
            and not any(isinstance(item, (list, dict)) for item in value)
        ):
            items = [self.values.transform(fm, clean_text(_scalar_text(v))) for v in value if v is not None]
            return [item for item in items if item] or None
        self.sink.add(
            "R-021",
            ".".join(fm.target),
            "vendor value is an array or object where a value is expected",
            record,
        )
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_text(value: Any) -> str:
    """Text of a source value: text as it is, a JSON boolean as ``true``/``false``, a JSON number
    as its canonical literal (``2.5``, ``-300``; never an exponent)."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text or "E" in text:
            try:
                text = format(Decimal(text), "f")
            except (InvalidOperation, ValueError):
                pass
        return text
    return str(value)


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
                lines.append(nest(line))
        document = nest(head)
        if lines:
            document["lines"] = lines
        records.append(Record(index, document))
    if not elements:
        sink.add("R-004", "", "file holds no records")
    return records


# ------------------------------------------------------------------------------ json

# One candidate record: its 0-based position among the selected values, the name of the member
# that held it (None for the top-level value or a JSON Lines line) and the value itself.
_JsonItem = tuple[int, str | None, Any]


@functools.lru_cache(maxsize=1024)
def _steps(path: str) -> tuple[str, ...]:
    return tuple(step for step in path.split("/") if step)


def _json_getter(obj: dict[str, Any]) -> Any:
    """``get(source)``: the JSON value at a "/"-path of member names (None when absent or when a
    step meets something other than an object)."""

    def get(source: str) -> Any:
        node: Any = obj
        for step in _steps(source):
            if not isinstance(node, dict):
                return None
            node = node.get(step)
        return node

    return get


def _select_json(value: Any, path: str) -> Iterator[tuple[str | None, Any]]:
    """(member name, value) at a "/"-path below ``value``; ``*`` is every member; an array met
    on the way is looked into element by element."""
    nodes: list[tuple[str | None, Any]] = [(None, value)]
    for step in _steps(path):
        selected: list[tuple[str | None, Any]] = []
        for _, node in nodes:
            for item in node if isinstance(node, list) else (node,):
                if not isinstance(item, dict):
                    continue
                if step == "*":
                    selected.extend(item.items())
                elif step in item:
                    selected.append((step, item[step]))
        nodes = selected
    yield from nodes


def _json_file_items(text: str, profile: Profile, sink: ProblemSink) -> Iterator[_JsonItem]:
    """The candidate records of a whole ``.json`` file, parsed by the standard JSON reader (same
    limits, duplicate keys, NaN → R-004). Each value at ``json.records`` is a record, or an array
    of records; a file without any is R-004."""
    ok, value = parse_json_file(text, sink)
    if not ok:
        return
    index = 0
    for name, node in _select_json(value, profile.json_records):
        for item in node if isinstance(node, list) else (node,):
            yield index, name, item
            index += 1
    if index == 0:
        sink.add("R-004", "", "file holds no records")


def _type_of(profile: Profile, file_name: str, get: Any, record_name: str | None) -> str | None:
    type_value: str | None = None
    if profile.type_column:
        raw = get(profile.type_column)
        if isinstance(raw, (list, dict)):
            return None  # a structure is never a type value: R-005
        type_value = clean_text(_scalar_text(raw)) if raw is not None else ""
    return detect_type(profile, file_name, type_value, json_record=record_name)


class _MemberCheck:
    """``unknown_columns = "error"`` for JSON: a member of a record (or line) object that no
    field, the type rule, ``ignore_columns`` or the line array uses is R-025. Members of a nested
    object are checked only when some source path leads into it."""

    def __init__(self, known: set[str], profile: Profile) -> None:
        paths = {_steps(p) for p in known | set(profile.ignore_columns)}
        self.known = frozenset(p for p in paths if p)
        self.prefixes = frozenset(p[:i] for p in self.known for i in range(1, len(p)))
        self._reported: set[tuple[str, int]] = set()  # rows of one document repeat their members

    def check(self, obj: dict[str, Any], sink: ProblemSink, record: int, where: str = "") -> None:
        self._walk(obj, (), where, sink, record)

    def _walk(
        self, obj: dict[str, Any], base: tuple[str, ...], shown: str, sink: ProblemSink, record: int
    ) -> None:
        for position, (key, value) in enumerate(obj.items()):
            path = (*base, key)
            if path in self.known:
                continue
            name = safe_name(key, f"[member {position + 1}]")
            child = f"{shown}.{name}" if shown else name
            if path in self.prefixes:
                if isinstance(value, dict):
                    self._walk(value, path, child, sink, record)
                continue  # not the shape the sources expect: their values are simply absent
            if (child, record) not in self._reported and len(sink.items) < MAX_PROBLEMS:
                self._reported.add((child, record))
                sink.add("R-025", child, "member not mapped by the profile", record)


def _read_json_items(
    items: Iterator[_JsonItem], file_name: str, profile: Profile, sink: ProblemSink
) -> Iterator[Record]:
    """Candidate records → standard documents: with ``json.lines`` each record object is one
    document and its line array the lines (as XML profiles); without it each object is a row and
    rows are grouped into documents by ``[grouping]`` (as CSV profiles)."""
    if profile.json_lines:
        yield from _json_documents(items, file_name, profile, sink)
    else:
        yield from _json_rows(items, file_name, profile, sink)


def _json_documents(
    items: Iterator[_JsonItem], file_name: str, profile: Profile, sink: ProblemSink
) -> Iterator[Record]:
    mapper = _Mapper(profile, sink)
    check_head = check_line = None
    if profile.unknown_columns == "error":
        head_sources = {s for fm in profile.fields if not fm.is_line for s in fm.sources}
        head_sources.add(profile.json_lines)
        if profile.type_column:
            head_sources.add(profile.type_column)
        check_head = _MemberCheck(head_sources, profile)
        check_line = _MemberCheck({s for fm in profile.fields if fm.is_line for s in fm.sources}, profile)
    for index, name, obj in items:
        if not isinstance(obj, dict):
            sink.add("R-004", "", "a record is not a JSON object", index)
            continue
        get = _json_getter(obj)
        document_type = _type_of(profile, file_name, get, name)
        if document_type is None:
            sink.add("R-005", "document_type", "the profile cannot determine the document type", index)
            continue
        if check_head is not None:
            check_head.check(obj, sink, index)
        head, _ = mapper.map(document_type, get, index, lines_only=False)
        lines: list[dict[str, Any]] = []
        line_values = get(profile.json_lines)
        if line_values is not None and not isinstance(line_values, list):
            line_values = [line_values]  # a single line written as an object
        for position, line_obj in enumerate(line_values or ()):
            if not isinstance(line_obj, dict):
                sink.add("R-004", "", "an element of the line array is not an object", index)
                continue
            if check_line is not None:
                check_line.check(line_obj, sink, index, f"lines[{position}]")
            _, line = mapper.map(document_type, _json_getter(line_obj), index, lines_only=True)
            if line:
                lines.append(nest(line))
        document = nest(head)
        if lines:
            document["lines"] = lines
        yield Record(index, document)


def _json_rows(
    items: Iterator[_JsonItem], file_name: str, profile: Profile, sink: ProblemSink
) -> Iterator[Record]:
    mapper = _Mapper(profile, sink)
    check = None
    if profile.unknown_columns == "error":
        sources = {s for fm in profile.fields for s in fm.sources}
        if profile.type_column:
            sources.add(profile.type_column)
        check = _MemberCheck(sources, profile)
    assembler = GroupAssembler(sink)
    try:
        for index, name, obj in items:
            if not isinstance(obj, dict):
                sink.add("R-004", "", "a row is not a JSON object", assembler.index + 1)
                return
            get = _json_getter(obj)
            document_type = _type_of(profile, file_name, get, name)
            if document_type is None:
                sink.add(
                    "R-005",
                    "document_type",
                    "the profile cannot determine the document type",
                    assembler.index + 1,
                )
                return
            head, line = mapper.map(document_type, get, assembler.index + 1)
            key = (document_type, *(repr(head.get(k)) for k in profile.group_keys))
            finished = assembler.add_row(key, head, line, index + 1)
            if check is not None:
                check.check(obj, sink, assembler.index)
            if finished is not None:
                yield finished
        last = assembler.finish()
        if last is not None:
            yield last
    except StopReading:
        return
