"""Vendor profiles (exports.md §3): a declarative TOML file that maps one vendor layout to the
standard layout without code. ``standard`` is built in. The file format is described in
``docs/profiles.md``; `load_profile` checks every key so a typo is a `ProfileError` (exit 4),
never silently ignored.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.documents.fields import DOCUMENT_TYPES
from agent.errors import ConfigError

PROFILE_FORMATS = ("csv", "xml", "json", "fixed")
# exports.md §3 spells the last one "fixed-width"; both spellings are accepted, "fixed" is canonical.
_FORMAT_ALIASES = {"fixed-width": "fixed"}
# A JSON profile reads these extensions as JSON Lines (one object per line), others as one JSON text.
JSON_LINES_EXTENSIONS = (".jsonl", ".ndjson")
PROFILE_ENCODINGS = ("auto", "utf-8", "cp949")
TRANSFORMS = ("strip", "digits-only", "upper", "lower", "remove-spaces")
SIGN_STYLES = ("minus", "trailing-minus", "parentheses", "triangle")
DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TARGET_RE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


class ProfileError(ConfigError):
    """A profile file is missing, unreadable or invalid (exit 4); names the file and the key."""


@dataclass(frozen=True)
class FieldMap:
    """One mapping: vendor column(s) or constant → standard path (``lines.x`` for line fields)."""

    target: tuple[str, ...]
    sources: tuple[str, ...] = ()
    separator: str = ""
    transforms: tuple[str, ...] = ()
    code_table: str | None = None
    constant: Any = None
    types: tuple[str, ...] = ()  # empty: every document type

    @property
    def is_line(self) -> bool:
        return self.target[0] == "lines"

    def applies_to(self, document_type: str) -> bool:
        return not self.types or document_type in self.types


@dataclass(frozen=True)
class FixedColumn:
    """A fixed-width column: 1-based start and width in bytes of the file encoding."""

    name: str
    start: int
    width: int


@dataclass(frozen=True)
class Profile:
    name: str
    format: str = "csv"
    encoding: str = "auto"
    description: str = ""
    extensions: tuple[str, ...] = (".csv",)
    # csv
    delimiter: str = ","
    header_row: int = 1
    # fixed
    fixed_columns: tuple[FixedColumn, ...] = ()
    # xml: record elements ("/"-path under the root, "*" = every child), line elements under a record
    xml_records: str = "*"
    xml_lines: str = ""
    # json: record objects ("/"-path of members from the top-level value, "" = the value itself,
    # "*" = every member), line array under a record ("" = no line array: objects are rows)
    json_records: str = ""
    json_lines: str = ""
    # values
    date_formats: tuple[str, ...] = ("%Y-%m-%d",)
    datetime_formats: tuple[str, ...] = ()
    decimal_separator: str = "."
    thousands_separator: str = ""
    negative_styles: tuple[str, ...] = ("minus",)
    true_values: tuple[str, ...] = ("true",)
    false_values: tuple[str, ...] = ("false",)
    array_separator: str = ";"
    # document type detection
    type_column: str | None = None
    type_values: dict[str, str] = field(default_factory=dict)
    type_file_names: dict[str, str] = field(default_factory=dict)
    type_xml_root: dict[str, str] = field(default_factory=dict)
    type_xml_record: dict[str, str] = field(default_factory=dict)
    type_json_record: dict[str, str] = field(default_factory=dict)
    type_default: str | None = None
    # mapping
    fields: tuple[FieldMap, ...] = ()
    code_tables: dict[str, dict[str, str]] = field(default_factory=dict)
    group_keys: tuple[tuple[str, ...], ...] = (("document_no",), ("version",))
    unknown_columns: str = "error"
    ignore_columns: tuple[str, ...] = ()
    path: Path | None = None

    @property
    def is_standard(self) -> bool:
        return self.name == "standard"

    def __repr__(self) -> str:
        return f"Profile(name={self.name!r}, format={self.format!r})"


STANDARD = Profile(
    name="standard", format="standard", extensions=(".json", ".jsonl", ".ndjson", ".xml", ".csv")
)


def shipped_profiles_dir() -> Path:
    """``config/profiles`` of the installation (PyInstaller: under ``sys._MEIPASS``)."""
    base = getattr(sys, "_MEIPASS", None)
    if base is not None:
        return Path(base) / "config" / "profiles"
    return Path(__file__).resolve().parents[2] / "config" / "profiles"


def is_profile_path(name_or_path: str) -> bool:
    """A profile file path (``x.toml``, ``dir/x``) rather than a profile name."""
    return Path(name_or_path).suffix == ".toml" or "/" in name_or_path or "\\" in name_or_path


def load_profile(name_or_path: str, search_dirs: list[Path]) -> Profile:
    """The profile ``standard`` (built in), a profile file path, or ``NAME`` found as
    ``NAME.toml`` in the first of ``search_dirs`` that has it. Raises `ProfileError`."""
    if name_or_path == "standard":
        return STANDARD
    candidate = Path(name_or_path)
    if is_profile_path(name_or_path):
        if not candidate.is_file():
            raise ProfileError(f"profile file not found: {candidate}")
        return parse_profile_file(candidate)
    if not _NAME_RE.fullmatch(name_or_path):
        raise ProfileError("a profile name is letters, digits, '_', '-' or '.'")
    for directory in search_dirs:
        path = Path(directory) / f"{name_or_path}.toml"
        if path.is_file():
            return parse_profile_file(path)
    raise ProfileError(
        f"profile {name_or_path!r} not found in {', '.join(map(str, search_dirs)) or 'no directory'}"
    )


def parse_profile_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile ({exc.__class__.__name__})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    return parse_profile(data, source=str(path), path=path)


class _Reader:
    """Typed access to one TOML table; unknown keys are errors."""

    def __init__(self, table: Any, where: str, source: str) -> None:
        if not isinstance(table, dict):
            raise ProfileError(f"{source}: {where} must be a table")
        self.table = table
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def fail(self, key: str, why: str) -> ProfileError:
        prefix = f"{self.where}." if self.where else ""
        return ProfileError(f"{self.source}: {prefix}{key}: {why}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, "wrong type")
        return value

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.get(key, dict, {})
        if not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, "values must be strings")
        return dict(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _document_type(value: str, reader: _Reader, key: str) -> str:
    if value not in DOCUMENT_TYPES:
        raise reader.fail(key, f"unknown document type (one of {', '.join(DOCUMENT_TYPES)})")
    return value


def _target(value: Any, reader: _Reader, key: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not _TARGET_RE.fullmatch(value):
        raise reader.fail(key, "target must be a dotted json_name path")
    return tuple(value.split("."))


def parse_profile(data: dict[str, Any], *, source: str = "<profile>", path: Path | None = None) -> Profile:
    """Build a `Profile` from parsed TOML (see docs/profiles.md)."""
    top = _Reader(data, "", source)
    name = top.get("name", str)
    if name is None or not _NAME_RE.fullmatch(name) or name == "standard":
        raise top.fail("name", "required; letters, digits, '_', '-', '.'; not 'standard'")
    fmt = top.choice("format", (*PROFILE_FORMATS, *_FORMAT_ALIASES), "csv")
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    kw: dict[str, Any] = {
        "name": name,
        "format": fmt,
        "encoding": top.choice("encoding", PROFILE_ENCODINGS, "auto"),
        "description": top.get("description", str, ""),
        "path": path,
    }
    default_ext = {"csv": (".csv",), "xml": (".xml",), "json": (".json",), "fixed": (".txt", ".dat")}[fmt]
    extensions = top.str_list("extensions", default_ext)
    if not extensions or not all(e.startswith(".") for e in extensions):
        raise top.fail("extensions", "a list of extensions starting with '.'")
    kw["extensions"] = tuple(e.lower() for e in extensions)
    kw["unknown_columns"] = top.choice("unknown_columns", ("error", "ignore"), "error")
    kw["ignore_columns"] = top.str_list("ignore_columns")

    csv_table = _Reader(top.get("csv", dict, {}), "csv", source)
    delimiter = csv_table.get("delimiter", str, ",")
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise csv_table.fail("delimiter", "one character, not a quote or line break")
    kw["delimiter"] = delimiter
    header_row = csv_table.get("header_row", int, 1)
    if not 1 <= header_row <= 100:
        raise csv_table.fail("header_row", "1-based row number 1…100")
    kw["header_row"] = header_row
    csv_table.finish()

    fixed_table = _Reader(top.get("fixed", dict, {}), "fixed", source)
    columns = []
    for i, col in enumerate(fixed_table.get("columns", list, [])):
        col_reader = _Reader(col, f"fixed.columns[{i}]", source)
        col_name = col_reader.get("name", str)
        start = col_reader.get("start", int)
        width = col_reader.get("width", int)
        col_reader.finish()
        if not col_name or start is None or width is None or start < 1 or width < 1:
            raise fixed_table.fail("columns", "each column needs name, start ≥ 1 and width ≥ 1")
        columns.append(FixedColumn(col_name, start, width))
    fixed_table.finish()
    if fmt == "fixed" and not columns:
        raise top.fail("fixed", "a fixed-width profile needs [[fixed.columns]]")
    kw["fixed_columns"] = tuple(columns)

    xml_table = _Reader(top.get("xml", dict, {}), "xml", source)
    kw["xml_records"] = xml_table.get("records", str, "*")
    kw["xml_lines"] = xml_table.get("lines", str, "")
    xml_table.finish()

    json_table = _Reader(top.get("json", dict, {}), "json", source)
    kw["json_records"] = _member_path(json_table, "records", wildcard=True)
    kw["json_lines"] = _member_path(json_table, "lines", wildcard=False)
    json_table.finish()

    values = _Reader(top.get("values", dict, {}), "values", source)
    date_formats = values.str_list("date_formats", ("%Y-%m-%d",))
    for fmt_text in date_formats:
        if fmt_text not in DATE_FORMATS:
            raise values.fail("date_formats", f"supported: {', '.join(DATE_FORMATS)}")
    kw["date_formats"] = date_formats
    kw["datetime_formats"] = values.str_list("datetime_formats")
    kw["decimal_separator"] = values.choice("decimal_separator", (".", ","), ".")
    kw["thousands_separator"] = values.choice("thousands_separator", ("", ",", ".", " "), "")
    if kw["thousands_separator"] == kw["decimal_separator"]:
        raise values.fail("thousands_separator", "must differ from decimal_separator")
    negative = values.str_list("negative_amounts", ("minus",))
    for style in negative:
        if style not in SIGN_STYLES:
            raise values.fail("negative_amounts", f"supported: {', '.join(SIGN_STYLES)}")
    kw["negative_styles"] = negative
    kw["true_values"] = values.str_list("true_values", ("true",))
    kw["false_values"] = values.str_list("false_values", ("false",))
    separator = values.get("array_separator", str, ";")
    if len(separator) != 1:
        raise values.fail("array_separator", "one character")
    kw["array_separator"] = separator
    values.finish()

    dtype = _Reader(top.get("document_type", dict, {}), "document_type", source)
    kw["type_column"] = dtype.get("column", str)
    for key, attr in (
        ("values", "type_values"),
        ("file_names", "type_file_names"),
        ("xml_root", "type_xml_root"),
        ("xml_record", "type_xml_record"),
        ("json_record", "type_json_record"),
    ):
        mapping = dtype.str_map(key)
        for value in mapping.values():
            _document_type(value, dtype, key)
        kw[attr] = mapping
    default = dtype.get("default", str)
    kw["type_default"] = None if default is None else _document_type(default, dtype, "default")
    dtype.finish()
    if not (
        kw["type_column"]
        or kw["type_file_names"]
        or kw["type_xml_root"]
        or kw["type_xml_record"]
        or kw["type_json_record"]
        or kw["type_default"]
    ):
        raise top.fail("document_type", "a profile must say how the document type is determined")

    tables = top.get("code_tables", dict, {})
    code_tables: dict[str, dict[str, str]] = {}
    for table_name, table in tables.items():
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise top.fail(f"code_tables.{table_name}", "a table of vendor code = standard code strings")
        code_tables[table_name] = dict(table)
    kw["code_tables"] = code_tables

    group = _Reader(top.get("grouping", dict, {}), "grouping", source)
    keys = group.str_list("keys", ("document_no", "version"))
    kw["group_keys"] = tuple(_target(k, group, "keys") for k in keys)
    group.finish()

    fields = []
    for i, entry in enumerate(top.get("field", list, [])):
        fields.append(_field_map(_Reader(entry, f"field[{i}]", source), code_tables))
    if not fields:
        raise top.fail("field", "a profile needs at least one [[field]]")
    kw["fields"] = tuple(fields)
    top.finish()
    return Profile(**kw)


def _member_path(table: _Reader, key: str, *, wildcard: bool) -> str:
    """A "/"-path of JSON member names ("" = the value itself); ``*`` only where allowed."""
    value = table.get(key, str, "")
    steps = value.split("/") if value else []
    if any(not step for step in steps) or (not wildcard and "*" in steps):
        allowed = "member names (or *) joined by '/'" if wildcard else "member names joined by '/'"
        raise table.fail(key, f"{allowed}, no empty step")
    return value


def _field_map(entry: _Reader, code_tables: dict[str, dict[str, str]]) -> FieldMap:
    target = _target(entry.get("target", str), entry, "target")
    source = entry.get("source", str)
    sources = entry.str_list("sources")
    constant = entry.get("constant", (str, int, bool))
    if sum(x is not None and x != () for x in (source, sources, constant)) != 1:
        raise entry.fail("source", "exactly one of source, sources (concatenation) or constant")
    if sources and len(sources) != 2:
        raise entry.fail("sources", "concatenation takes exactly two columns")
    transforms = entry.str_list("transforms")
    for transform in transforms:
        if transform not in TRANSFORMS:
            raise entry.fail("transforms", f"supported: {', '.join(TRANSFORMS)}")
    code_table = entry.get("code_table", str)
    if code_table is not None and code_table not in code_tables:
        raise entry.fail("code_table", "no such [code_tables] entry")
    types = entry.str_list("types")
    for t in types:
        _document_type(t, entry, "types")
    separator = entry.get("separator", str, " ")
    entry.finish()
    return FieldMap(
        target=target,
        sources=(source,) if source is not None else tuple(sources),
        separator=separator,
        transforms=transforms,
        code_table=code_table,
        constant=constant,
        types=types,
    )
