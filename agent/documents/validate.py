"""Validation of one decoded document against every per-document rule of documents.md.

`validate_document` runs in two passes:

1. a table-driven walk over `fields.FIELDS` (R-020 … R-035 per field: presence, JSON type, text
   hygiene, dates, enumerations, decimals, ranges, patterns and identifier checks) that also
   builds the canonical form (§9.3);
2. per-type rules (R-1xx … R-4xx, W-0xx … W-4xx) over the values that passed pass 1.

Pass 1 is compiled from the field tables at import (see "pass 1" below): a generated fast path
checks an object whose values are all valid without recording anything, and only an object with
a problem (or anything unusual) takes the full walk that records problems in order. Both give the
same canonical and clean objects; tests/documents/test_documents_validate_fast_path.py holds them
to it.

It never raises for bad data: any JSON value yields a `Validation`. Problems carry a rule id and
a JSON path, never a value (§10). Version (§9) and cross-document (§7) rules live in
`versions.py` and `crossdoc.py` because they need other documents.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import hashlib
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.documents import codes, ids
from agent.documents.canonical import canonical_decimal, serialize
from agent.documents.fields import (
    AGENT_FIELDS,
    CANCEL_REQUIRED,
    CORE_COLUMNS,
    DEC_PATTERN,
    FIELDS,
    LEGACY_COLUMNS,
    Field,
)
from agent.documents.problems import Problem, problem

KST = dt.timezone(dt.timedelta(hours=9))
MIN_ISSUED_ON = dt.date(2000, 1, 1)

# Generic rules that yield to a specific rule reported for the same path (§2.6).
GENERIC_RULES = frozenset({"R-020", "R-021", "R-026", "R-028", "R-029"})

_DEC_RE = re.compile(DEC_PATTERN)
_DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
_DATETIME_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)
_SCHEMA_VERSION_RE = re.compile(r"^([0-9]+)\.([0-9]+)\Z")
# C0 and C1 controls (and DEL) except LF; lone surrogates cannot be encoded and are refused too.
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NO_LF_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EXEMPTION_RE = re.compile(r"^[A-Z][0-9A-Z]{3}\Z")
_ALL_DIGITS_RE = re.compile(r"^[0-9]+\Z")

# Exact arithmetic with room for 9+2 × 9+4 × 9+4 × 3 digits (RD-2); never floats.
_DEC_CTX = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_UP)


def round_half_up(x: Decimal) -> int:
    """원 미만 4사5입: nearest integer, halves away from zero."""
    return int(x.quantize(Decimal(1), rounding=decimal.ROUND_HALF_UP, context=_DEC_CTX))


def trunc10(x: int | Decimal) -> int:
    """10원 미만 절사: remove the units digit toward zero."""
    v = int(x)
    return -((-v) // 10 * 10) if v < 0 else v // 10 * 10


def parse_date(value: Any) -> dt.date | None:
    """A `date` field value, or None when it is not a real `YYYY-MM-DD` date."""
    if not isinstance(value, str):
        return None
    m = _DATE_RE.match(value)
    if m is None:
        return None
    year, month, day = m.groups()
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


def parse_datetime(value: Any) -> dt.datetime | None:
    """An RFC 3339 date-time with explicit offset and seconds, or None."""
    if not isinstance(value, str):
        return None
    m = _DATETIME_RE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, sec, frac, zulu, sign, off_hours, off_minutes = m.groups()
    try:
        if zulu:
            tz = dt.UTC
        else:
            hours, minutes = int(off_hours), int(off_minutes)
            if hours > 23 or minutes > 59:
                return None
            offset = dt.timedelta(hours=hours, minutes=minutes)
            tz = dt.timezone(-offset if sign == "-" else offset)
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        second = int(sec)
        if second == 60:  # leap second: RFC 3339 allows it; datetime cannot hold it
            second = 59
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), second, micro, tzinfo=tz)
    except ValueError:
        return None


def kst_date(moment: dt.datetime) -> dt.date:
    """The calendar date in Korea of an instant (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(KST).date()


def names_equal(a: str, b: str) -> bool:
    """Name comparison of §2.1: NFC, all white space removed, nothing else folded."""

    def norm(s: str) -> str:
        return "".join(ch for ch in unicodedata.normalize("NFC", s) if not ch.isspace())

    return norm(a) == norm(b)


@dataclass
class Validation:
    """Outcome of `validate_document`. ``document`` is the canonical form (§9.3) as a dict."""

    problems: list[Problem]
    document: dict[str, Any] | None
    content_hash: str | None
    document_type: str | None = None
    # serialize(document): what content_hash is over; the store seals it without encoding again.
    canonical: bytes | None = field(default=None, repr=False, compare=False)
    errors: list[Problem] = field(init=False)
    warnings: list[Problem] = field(init=False)

    def __post_init__(self) -> None:
        self.errors = [p for p in self.problems if p.is_error]
        self.warnings = [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def rules(self) -> set[str]:
        return {p.rule for p in self.problems}


class _Ctx:
    """Collects (rule, path) problems in the order they are found."""

    __slots__ = ("problems", "doc_type", "cancelled")

    def __init__(self, doc_type: str | None, cancelled: bool) -> None:
        self.problems: list[tuple[str, str]] = []
        self.doc_type = doc_type
        self.cancelled = cancelled

    def add(self, rule: str, path: str) -> None:
        self.problems.append((rule, path))


_BAD = object()  # a value that failed its field check (never reaches the rules)


# ============================================================ pass 1: field walk
#
# The field tables are compiled once per document type into a tree of closures: one check per
# field (its kind, rules, limits and identifier check bound at import time) and one walk per
# object table. Checking a value is then one call with no per-value dispatch on the kind, and a
# field's JSON path is only formatted when a problem is recorded (most values have none).

# (ctx, value, path of the enclosing object) → (canonical value, clean value or _BAD)
_Check = Callable[[_Ctx, Any, str], tuple[Any, Any]]
# (ctx, object, path of the object) → (canonical object, clean object)
_Walk = Callable[[_Ctx, dict[str, Any], str], tuple[dict[str, Any], dict[str, Any]]]

_AGENT_FIELD: Any = object()  # agent-managed: reported as W-001 by the caller, never canonical


def _text_rule(value: str, f: Field) -> str | None:
    """R-022/R-023 (§2.1) for a string value, or None when its text is clean."""
    if not value or value.isspace():
        return "R-022"
    if (
        # isprintable() is false for every C0/C1 control, LF and lone surrogate: only then can
        # the control regex match.
        (not value.isprintable() and (_CONTROL_RE if f.multiline else _CONTROL_NO_LF_RE).search(value))
        or value[0].isspace()
        or value[-1].isspace()
        or (f.max_len is not None and len(value) > f.max_len)
        # ASCII text is always NFC.
        or (not value.isascii() and not unicodedata.is_normalized("NFC", value))
    ):
        return "R-023"
    return None


def _check_schema_version(value: str) -> str | None:
    m = _SCHEMA_VERSION_RE.match(value)
    return None if m is not None and int(m.group(1)) == 1 else "R-006"


# Identifier checks that a pattern cannot express, per (document_type or None, path).
_EXTRA_STR: dict[tuple[str | None, tuple[str, ...]], Callable[[str], str | None]] = {
    (None, ("schema_version",)): _check_schema_version,
    # Institutions repeat across documents (and a business number is not personal data): cached.
    (None, ("institution", "business_reg_no")): functools.lru_cache(maxsize=4096)(
        lambda v: None if ids.brn_valid(v) else "R-031"
    ),
    (None, ("patient", "rrn")): lambda v: None if ids.rrn_birth_date(v) is not None else "R-032",
    ("prescription", ("document_no",)): lambda v: None if ids.issue_no_date(v) is not None else "R-301",
    ("pharmacy_receipt", ("prescription_issue_no",)): (
        lambda v: None if ids.issue_no_date(v) is not None else "R-404"
    ),
}


def _compile_str(f: Field, name: str, extra: Callable[[str], str | None] | None) -> _Check:
    type_rule, enum_rule, pattern_rule = f.type_rule, f.enum_rule, f.pattern_rule
    enum = frozenset(f.enum) if f.enum is not None else None
    match = f.compiled.fullmatch if f.compiled is not None else None
    # Enumeration values whose text is clean: a value equal to one of them passes every check
    # when no pattern or identifier check follows.
    known = (
        frozenset(v for v in enum if _text_rule(v, f) is None)
        if enum is not None and match is None and extra is None
        else frozenset()
    )
    control = _CONTROL_RE if f.multiline else _CONTROL_NO_LF_RE
    max_len = f.max_len if f.max_len is not None else sys.maxsize
    is_normalized = unicodedata.is_normalized

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if not isinstance(value, str):
            rule: str | None = type_rule
        elif value in known:
            return value, value
        elif not value or value.isspace():
            rule = "R-022"
        elif (
            (not value.isprintable() and control.search(value))
            or value[0].isspace()
            or value[-1].isspace()
            or len(value) > max_len
            or (not value.isascii() and not is_normalized("NFC", value))
        ):
            rule = "R-023"
        elif enum is not None and value not in enum:
            rule = enum_rule
        elif match is not None and not match(value):
            rule = pattern_rule
        elif extra is None or (rule := extra(value)) is None:
            return value, value
        ctx.problems.append((rule, f"{parent}.{name}" if parent else name))  # type: ignore[arg-type]
        return value, _BAD

    return check


def _compile_int(f: Field, name: str) -> _Check:
    type_rule, range_rule = f.type_rule, f.range_rule
    min_rule = f.min_rule or f.range_rule
    lo, hi, exclusive, nonzero = f.minimum, f.maximum, f.min_exclusive, f.nonzero

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if type(value) is not int:  # bool is an int subclass and floats are never accepted
            rule = type_rule
        elif lo is not None and (value <= lo if exclusive else value < lo):
            rule = min_rule
        elif (hi is not None and value > hi) or (nonzero and value == 0):
            rule = range_rule
        else:
            return value, value
        ctx.problems.append((rule, f"{parent}.{name}" if parent else name))
        return value, _BAD

    return check


def _compile_dec(f: Field, name: str) -> _Check:
    type_rule, range_rule = f.type_rule, f.range_rule
    min_rule = f.min_rule or f.range_rule
    lo, hi, exclusive, nonzero = f.minimum, f.maximum, f.min_exclusive, f.nonzero
    frac_digits = f.frac_digits
    dec_match = _DEC_RE.fullmatch

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if not isinstance(value, str):
            rule = type_rule
        elif not dec_match(value):
            rule = "R-027"
        else:
            dot = value.find(".")
            if dot >= 0 and frac_digits is not None and len(value) - dot - 1 > frac_digits:
                rule = "R-027"
            else:
                number = Decimal(value)
                if lo is not None and (number <= lo if exclusive else number < lo):
                    rule = min_rule
                elif (hi is not None and number > hi) or (nonzero and number == 0):
                    rule = range_rule
                else:
                    return canonical_decimal(value), number
        ctx.problems.append((rule, f"{parent}.{name}" if parent else name))
        return value, _BAD

    return check


def _compile_bool(f: Field, name: str) -> _Check:
    type_rule = f.type_rule

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if type(value) is not bool:
            ctx.problems.append((type_rule, f"{parent}.{name}" if parent else name))
            return value, _BAD
        return value, value

    return check


def _compile_date(f: Field, name: str) -> _Check:
    type_rule = f.type_rule
    date_match = _DATE_RE.match
    date = dt.date

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if not isinstance(value, str):
            rule = type_rule
        else:
            m = date_match(value)
            if m is not None:
                year, month, day = m.groups()
                try:
                    return value, date(int(year), int(month), int(day))
                except ValueError:
                    pass
            rule = "R-024"
        ctx.problems.append((rule, f"{parent}.{name}" if parent else name))
        return value, _BAD

    return check


def _compile_datetime(f: Field, name: str) -> _Check:
    type_rule = f.type_rule

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        if not isinstance(value, str):
            rule = type_rule
        else:
            moment = parse_datetime(value)
            if moment is not None:
                return value, moment
            rule = "R-024"
        ctx.problems.append((rule, f"{parent}.{name}" if parent else name))
        return value, _BAD

    return check


def _compile_object(f: Field, name: str, walk: _Walk) -> _Check:
    type_rule = f.type_rule

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        path = f"{parent}.{name}" if parent else name
        if not isinstance(value, dict):
            ctx.problems.append((type_rule, path))
            return value, _BAD
        return walk(ctx, value, path)

    return check


def _compile_array_object(f: Field, name: str, walk: _Walk) -> _Check:
    type_rule, items_rule = f.type_rule, f.items_rule
    empty_rule = f.empty_rule or "R-028"
    min_items = f.min_items
    max_items = f.max_items if f.max_items is not None else sys.maxsize

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        path = f"{parent}.{name}" if parent else name
        if not isinstance(value, list):
            ctx.problems.append((type_rule, path))
            return value, _BAD
        if len(value) < min_items:
            ctx.problems.append((empty_rule, path))
            return value, _BAD
        if len(value) > max_items:
            ctx.problems.append((items_rule, path))
            return value, _BAD
        canon_list: list[Any] = []
        clean_list: list[Any] = []
        for i, element in enumerate(value):
            epath = f"{path}[{i}]"
            if not isinstance(element, dict):
                ctx.problems.append(("R-021", epath))
                canon_list.append(element)
                clean_list.append(_BAD)
                continue
            c, k = walk(ctx, element, epath)
            canon_list.append(c)
            clean_list.append(k)
        return canon_list, clean_list

    return check


def _compile_array_str(f: Field, name: str) -> _Check:
    """Only diagnosis_codes (KCD, ID-4)."""
    type_rule, items_rule, pattern_rule = f.type_rule, f.items_rule, f.pattern_rule
    max_items = f.max_items if f.max_items is not None else sys.maxsize
    match = f.compiled.fullmatch if f.compiled is not None else None

    def check(ctx: _Ctx, value: Any, parent: str) -> tuple[Any, Any]:
        path = f"{parent}.{name}" if parent else name
        if not isinstance(value, list):
            ctx.problems.append(("R-021", path))
            return value, _BAD
        if len(value) > max_items:
            ctx.problems.append((items_rule, path))
            return value, _BAD
        canon_codes: list[Any] = []
        clean_codes: list[Any] = []
        for i, element in enumerate(value):
            if not isinstance(element, str):
                ctx.problems.append((type_rule, f"{path}[{i}]"))
                canon_codes.append(element)
                clean_codes.append(_BAD)
                continue
            if not element or element.isspace():
                ctx.problems.append(("R-022", f"{path}[{i}]"))
                canon_codes.append(element)
                clean_codes.append(_BAD)
                continue
            code = ids.normalise_kcd(element)
            canon_codes.append(code)
            if match is not None and not match(code):
                ctx.problems.append((pattern_rule, f"{path}[{i}]"))
                clean_codes.append(_BAD)
            else:
                clean_codes.append(code)
        return canon_codes, clean_codes

    return check


def _compile_field(f: Field, doc_type: str, ptuple: tuple[str, ...]) -> _Check:
    """The check of one field at ``ptuple`` (index-free path) of a ``doc_type`` document."""
    name = f.name
    kind = f.kind
    if kind == "str":
        extra = _EXTRA_STR.get((doc_type, ptuple)) or _EXTRA_STR.get((None, ptuple))
        return _compile_str(f, name, extra)
    if kind == "int":
        return _compile_int(f, name)
    if kind == "dec":
        return _compile_dec(f, name)
    if kind == "bool":
        return _compile_bool(f, name)
    if kind == "date":
        return _compile_date(f, name)
    if kind == "datetime":
        return _compile_datetime(f, name)
    if kind == "object":
        return _compile_object(f, name, _compile_walk(f.children or {}, doc_type, ptuple))
    if kind == "array_object":
        return _compile_array_object(f, name, _compile_walk(f.children or {}, doc_type, ptuple))
    return _compile_array_str(f, name)


def _compile_walk(fields: Mapping[str, Field], doc_type: str, ptuple: tuple[str, ...]) -> _Walk:
    """The walk over one object whose field table is ``fields`` (at ``ptuple``): the fast path
    for an object without any problem, else the full walk that records every problem."""
    fast = _compile_fast_walk(fields, doc_type, ptuple)
    full = _compile_full_walk(fields, doc_type, ptuple)

    def walk(ctx: _Ctx, raw: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        result = fast(raw)
        if result is None:
            return full(ctx, raw, path)
        return result

    return walk


def _compile_full_walk(fields: Mapping[str, Field], doc_type: str, ptuple: tuple[str, ...]) -> _Walk:
    checks: dict[str, _Check] = {
        name: _AGENT_FIELD if f.agent else _compile_field(f, doc_type, (*ptuple, name))
        for name, f in fields.items()
    }
    optional = frozenset(name for name, f in fields.items() if not f.required)
    # Cancellation records (§9.4) need only a few envelope fields; deeper objects that are
    # present are validated normally.
    cancel_scope = not ptuple or ptuple in (("institution",), ("patient",))
    required = tuple(
        (f.name, f.missing_rule, cancel_scope and (*ptuple, f.name) not in CANCEL_REQUIRED)
        for f in fields.values()
        if f.required
    )
    get_check = checks.get

    def walk(ctx: _Ctx, raw: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        problems = ctx.problems
        canon: dict[str, Any] = {}
        clean: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:  # null means absent (§2.1)
                continue
            check = get_check(key)
            if check is None:
                problems.append(("R-025", f"{path}.{key}" if path else key))
                canon[key] = value
                continue
            if check is _AGENT_FIELD:
                continue  # reported as W-001 by the caller, never part of the canonical form
            if isinstance(value, list) and not value and key in optional:
                continue  # an empty optional array is "no value" (§9.3)
            c, k = check(ctx, value, path)
            canon[key] = c
            if k is not _BAD:
                clean[key] = k
        for name, rule, cancel_exempt in required:
            if raw.get(name) is None:
                if cancel_exempt and ctx.cancelled:
                    continue
                problems.append((rule, f"{path}.{name}" if path else name))
        return canon, clean

    return walk


# The fast path: the common object in which every value is valid. It records no problem; it
# answers None as soon as anything is unusual (a problem, null, an unknown or agent field, an
# empty array, a missing field, a non-plain type), and the full walk then decides. It accepts only
# what the full walk accepts without a problem, and builds the same canonical and clean objects
# (copies of the raw object, in its key order, with converted values replaced).
#
# Each field table becomes one generated function of straight-line checks, one block per field
# with its limits as constants: no per-value call or dispatch on the kind. The source is kept as
# ``fast.source`` for reading and debugging.
_FastWalk = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]] | None]


def _in_range(value: int | Decimal, lo: Any, hi: Any, exclusive: bool, nonzero: bool) -> bool:
    """`_compile_int`/`_compile_dec` range test without a problem: True inside the range."""
    if lo is not None and (value <= lo if exclusive else value < lo):
        return False
    if hi is not None and value > hi:
        return False
    return not (nonzero and value == 0)


def _fast_dec(f: Field) -> Callable[[Any], tuple[str, Decimal] | None]:
    frac_digits, lo, hi, exclusive, nonzero = f.frac_digits, f.minimum, f.maximum, f.min_exclusive, f.nonzero
    dec_match = _DEC_RE.fullmatch

    def dec(value: str) -> tuple[str, Decimal] | None:
        if not dec_match(value):
            return None
        dot = value.find(".")
        if dot >= 0 and frac_digits is not None and len(value) - dot - 1 > frac_digits:
            return None
        number = Decimal(value)
        if not _in_range(number, lo, hi, exclusive, nonzero):
            return None
        return canonical_decimal(value), number

    # Amounts, doses and counts repeat across lines and documents; Decimals are immutable.
    cached = functools.lru_cache(maxsize=4096)(dec)

    def dec_value(value: Any) -> tuple[str, Decimal] | None:
        return cached(value) if type(value) is str else None  # the cache needs hashable keys

    return dec_value


# Dates repeat within and across documents (every line of a statement has one).
_cached_date = functools.lru_cache(maxsize=4096)(parse_date)


def _fast_date(value: Any) -> dt.date | None:
    return _cached_date(value) if type(value) is str else None


def _fast_datetime(value: Any) -> dt.datetime | None:
    return parse_datetime(value) if type(value) is str else None


def _fast_array(f: Field, child: _FastWalk) -> Callable[[Any], tuple[list[Any], list[Any]] | None]:
    # An empty array is either skipped (optional) or a problem: the full walk decides.
    min_items = max(f.min_items, 1)
    max_items = f.max_items if f.max_items is not None else sys.maxsize

    def array(value: Any) -> tuple[list[Any], list[Any]] | None:
        if type(value) is not list or not min_items <= len(value) <= max_items:
            return None
        canon_list: list[Any] = []
        clean_list: list[Any] = []
        for element in value:
            result = child(element)
            if result is None:
                return None
            canon_list.append(result[0])
            clean_list.append(result[1])
        return canon_list, clean_list

    return array


def _fast_codes(f: Field) -> Callable[[Any], tuple[list[str], list[str]] | None]:
    max_items = f.max_items if f.max_items is not None else sys.maxsize
    match = f.compiled.fullmatch if f.compiled is not None else None

    def codes_(value: Any) -> tuple[list[str], list[str]] | None:
        if type(value) is not list or not 0 < len(value) <= max_items:
            return None
        canon_codes: list[str] = []
        for element in value:
            if type(element) is not str or not element or element.isspace():
                return None
            code = ids.normalise_kcd(element)
            if match is not None and not match(code):
                return None
            canon_codes.append(code)
        return canon_codes, list(canon_codes)

    return codes_


def _compile_fast_walk(fields: Mapping[str, Field], doc_type: str, ptuple: tuple[str, ...]) -> _FastWalk:
    names: dict[str, Any] = {"is_normalized": unicodedata.is_normalized}

    def constant(value: Any) -> str:
        name = f"k{len(names)}"
        names[name] = value
        return name

    required = [f for f in fields.values() if f.required and not f.agent]
    lines = [
        "def fast(raw):",
        "    if type(raw) is not dict:",
        "        return None",
        "    get = raw.get",
        "    canon = raw.copy()",
        "    clean = raw.copy()",
        f"    present = {len(required)}",
    ]
    for name, f in fields.items():
        if f.agent:
            continue  # present → the count below differs → the full walk reports W-001 and skips it
        key = repr(name)
        body: list[str] = []
        kind = f.kind
        if kind == "str":
            extra = _EXTRA_STR.get((doc_type, (*ptuple, name))) or _EXTRA_STR.get((None, (*ptuple, name)))
            if f.enum is not None and f.compiled is None and extra is None:
                known = frozenset(v for v in f.enum if _text_rule(v, f) is None)  # see `_compile_str`
                body.append(f"if type(v) is not str or v not in {constant(known)}: return None")
            else:
                # `_compile_str` for a value without a problem (isprintable: no control character,
                # LF or lone surrogate; ASCII text is NFC).
                tests = [
                    "type(v) is not str",
                    "not v",
                    "not v.isprintable()",
                    "v[0].isspace()",
                    "v[-1].isspace()",
                ]
                if f.max_len is not None:
                    tests.append(f"len(v) > {f.max_len}")
                tests.append('(not v.isascii() and not is_normalized("NFC", v))')
                if f.enum is not None:
                    tests.append(f"v not in {constant(frozenset(f.enum))}")
                if f.compiled is not None:
                    tests.append(f"not {constant(f.compiled.fullmatch)}(v)")
                if extra is not None:
                    tests.append(f"{constant(extra)}(v) is not None")
                body.append(f"if {' or '.join(tests)}: return None")
        elif kind == "int":
            if f.minimum is not None and f.maximum is not None and not (f.min_exclusive or f.nonzero):
                body.append(f"if type(v) is not int or v < {f.minimum!r} or v > {f.maximum!r}: return None")
            else:
                limits = constant((f.minimum, f.maximum, f.min_exclusive, f.nonzero))
                body.append(f"if type(v) is not int or not in_range(v, *{limits}): return None")
                names["in_range"] = _in_range
        elif kind == "bool":
            body.append("if type(v) is not bool: return None")
        elif kind in ("date", "datetime"):
            parse = constant(_fast_date if kind == "date" else _fast_datetime)
            body += [f"r = {parse}(v)", "if r is None: return None", f"clean[{key}] = r"]
        else:
            convert: Callable[[Any], Any]
            if kind == "dec":
                convert = _fast_dec(f)
            elif kind == "object":
                convert = _compile_fast_walk(f.children or {}, doc_type, (*ptuple, name))
            elif kind == "array_object":
                convert = _fast_array(f, _compile_fast_walk(f.children or {}, doc_type, (*ptuple, name)))
            else:
                convert = _fast_codes(f)
            body += [
                f"r = {constant(convert)}(v)",
                "if r is None: return None",
                f"canon[{key}], clean[{key}] = r",
            ]
        lines.append(f"    v = get({key})")
        if f.required:  # missing or null fails the type test of every kind
            lines += [f"    {line}" for line in body]
        else:
            lines += ["    if v is not None:", "        present += 1"] + [f"        {line}" for line in body]
    lines += [
        "    if len(raw) != present:",  # an unknown, null or agent field: the full walk reports it
        "        return None",
        "    return canon, clean",
    ]
    source = "\n".join(lines) + "\n"
    label = ".".join(ptuple) or "(document)"
    exec(compile(source, f"<fast walk of {doc_type} {label}>", "exec"), names)  # noqa: S102 - source built above from the field table
    fast: _FastWalk = names["fast"]
    fast.source = source  # type: ignore[attr-defined]
    return fast


# One compiled walk per document type over its whole field table.
_WALKS: dict[str, _Walk] = {t: _compile_walk(fields, t, ()) for t, fields in FIELDS.items()}


# ============================================================ pass 2: rules per type


def _i(d: Mapping[str, Any] | None, key: str) -> int | None:
    """A clean integer value (money, int), or None."""
    if d is None:
        return None
    v = d.get(key)
    return v if type(v) is int else None


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    return v if isinstance(v, list) else []


def _dict(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def _sum(lines: list[Any], column: str) -> int | None:
    total = 0
    for line in lines:
        if not isinstance(line, dict):
            return None
        v = line.get(column)
        if type(v) is not int:
            return None
        total += v
    return total


def _common_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any], received_on: dt.date) -> None:
    status = c.get("status")
    if status == "active" and "cancel_reason" in c:
        ctx.add("R-013", "cancel_reason")
    issued_on = c.get("issued_on")
    if isinstance(issued_on, dt.date):
        if issued_on > received_on:
            ctx.add("R-034", "issued_on")
        if issued_on < MIN_ISSUED_ON:
            ctx.add("R-035", "issued_on")
        try:
            ten_years_before = received_on.replace(year=received_on.year - 10)
        except ValueError:  # 29 February
            ten_years_before = received_on.replace(year=received_on.year - 10, day=28)
        if issued_on < ten_years_before:
            ctx.add("W-023", "issued_on")
        issued_at = c.get("issued_at")
        if isinstance(issued_at, dt.datetime) and kst_date(issued_at) != issued_on:
            ctx.add("W-002", "issued_at")
    patient = c.get("patient") or {}
    raw_patient = _dict(raw, "patient")
    rrn_present = raw_patient.get("rrn") is not None
    masked_present = raw_patient.get("rrn_masked") is not None
    rrn = patient.get("rrn")
    if isinstance(rrn, str) and isinstance(issued_on, dt.date):
        birth = ids.rrn_birth_date(rrn)
        if birth is not None and birth > issued_on:
            ctx.add("R-035", "patient.rrn")
    if rrn_present and masked_present:
        ctx.add("R-033", "patient.rrn_masked")
    if ctx.doc_type == "prescription":
        if (
            not rrn_present
            and not masked_present
            and not ctx.cancelled
            and isinstance(raw.get("patient"), dict)
        ):
            ctx.add("R-312", "patient.rrn")
    elif not rrn_present and not ctx.cancelled:
        ctx.add("W-020", "patient.rrn")
    if masked_present and not rrn_present:
        ctx.add("W-021", "patient.rrn_masked")
    institution = raw.get("institution")
    if isinstance(institution, dict):
        type_code = institution.get("type_code")
        if type_code is None:
            if not ctx.cancelled:
                ctx.add("W-022", "institution.type_code")
        elif isinstance(type_code, str) and type_code not in codes.INSTITUTION_TYPES:
            ctx.add("W-022", "institution.type_code")


def _layout_columns(ctx: _Ctx, raw: dict[str, Any], rule: str) -> tuple[str, ...] | None:
    """R-105/R-201: money columns must match amount_layout in every line and in totals."""
    layout = raw.get("amount_layout")
    if layout not in ("current", "legacy_selective"):
        return None
    legacy = layout == "legacy_selective"
    totals = raw.get("totals")
    if isinstance(totals, dict):
        for col in LEGACY_COLUMNS:
            if (totals.get(col) is not None) != legacy:
                ctx.add(rule, f"totals.{col}")
    lines = raw.get("lines")
    if isinstance(lines, list):
        for i, line in enumerate(lines):
            if not isinstance(line, dict):
                continue
            for col in LEGACY_COLUMNS:
                if (line.get(col) is not None) != legacy:
                    ctx.add(rule, f"lines[{i}].{col}")
    return CORE_COLUMNS + LEGACY_COLUMNS if legacy else CORE_COLUMNS


def _care_period(ctx: _Ctx, c: dict[str, Any], end_rule: str) -> tuple[dt.date, dt.date] | None:
    """(start, end) when both are dates — also when ``end < start`` (reported here): the rules on
    each end against ``issued_on`` hold independently of that one (documents.md §2.6)."""
    cp = c.get("care_period")
    if not isinstance(cp, dict):
        return None
    start, end = cp.get("start"), cp.get("end")
    if not isinstance(start, dt.date) or not isinstance(end, dt.date):
        return None
    if end < start:
        ctx.add(end_rule, "care_period.end")
    return start, end


_MONEY_COLUMNS = CORE_COLUMNS + LEGACY_COLUMNS


def _receipt_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any]) -> None:
    visit = c.get("visit_type")
    issued_on = c.get("issued_on") if isinstance(c.get("issued_on"), dt.date) else None
    bill_present = raw.get("inpatient_bill_type") is not None
    if visit == "outpatient" and bill_present:
        ctx.add("R-101", "inpatient_bill_type")
    elif visit == "inpatient" and not bill_present and not ctx.cancelled:
        ctx.add("R-101", "inpatient_bill_type")
    period = _care_period(ctx, c, "R-102")
    if period is not None:
        start, end = period
        if issued_on is not None:
            if start > issued_on:
                ctx.add("R-103", "care_period.start")
            if end > issued_on:
                ctx.add("W-102", "care_period.end")
        length = (end - start).days + 1
        if (visit == "outpatient" and length > 31) or (visit == "inpatient" and length > 366):
            ctx.add("W-103", "care_period")
        if raw.get("amount_layout") == "legacy_selective" and start >= dt.date(2018, 1, 1):
            ctx.add("W-109", "amount_layout")
    dept = c.get("department_code")
    if isinstance(dept, str) and dept not in codes.DEPARTMENTS:
        ctx.add("W-104", "department_code")
    if (
        c.get("patient_category") == "other"
        and raw.get("patient_category_text") is None
        and not ctx.cancelled
    ):
        ctx.add("R-020", "patient_category_text")
    if (
        raw.get("amount_layout") == "current"
        and raw.get("insurer_charge_total") is None
        and not ctx.cancelled
    ):
        ctx.add("R-020", "insurer_charge_total")

    columns = _layout_columns(ctx, raw, "R-105")
    raw_lines = _list(raw, "lines")
    lines: list[Any] = _list(c, "lines")
    legacy = raw.get("amount_layout") == "legacy_selective"

    # item uniqueness and other_optional labels.
    seen_items: set[str] = set()
    seen_labels: set[str] = set()
    for i, line in enumerate(raw_lines):
        if not isinstance(line, dict):
            continue
        item = line.get("item")
        if not isinstance(item, str):
            continue
        if item == "other_optional":
            label = line.get("label")
            if label is None:
                ctx.add("R-106", f"lines[{i}].label")
            elif isinstance(label, str):
                if label in seen_labels:
                    ctx.add("R-106", f"lines[{i}].label")
                seen_labels.add(label)
        else:
            if item in seen_items:
                ctx.add("R-106", f"lines[{i}].item")
            seen_items.add(item)

    totals = c.get("totals") if isinstance(c.get("totals"), dict) else None
    # RC-9: legacy non_covered = selective + non_selective, per line and in totals.
    if legacy:
        for path, obj in [("totals", totals), *((f"lines[{i}]", ln) for i, ln in enumerate(lines))]:
            if isinstance(obj, dict):
                nc, s, ns = _i(obj, "non_covered"), _i(obj, "selective"), _i(obj, "non_selective")
                if nc is not None and s is not None and ns is not None and nc != s + ns:
                    ctx.add("R-107", f"{path}.non_covered")
    # RC-1
    if columns is not None and totals is not None and lines and len(lines) == len(raw_lines):
        for col in columns:
            total = _i(totals, col)
            s = _sum(lines, col)
            if total is not None and s is not None and total != s:
                ctx.add("R-108", f"totals.{col}")
    t_copay, t_insurer = _i(totals, "copay"), _i(totals, "insurer")
    t_full, t_nc = _i(totals, "full_copay"), _i(totals, "non_covered")
    cap = _i(c, "cap_excess")
    # RC-2
    total_charge = _i(c, "total_charge")
    if None not in (total_charge, t_copay, t_insurer, t_full, t_nc):
        if total_charge != t_copay + t_insurer + t_full + t_nc:  # type: ignore[operator]
            ctx.add("R-109", "total_charge")
    # RC-3; a negative cap_excess was already reported as R-110 by the field walk
    if cap is not None and t_copay is not None and cap > t_copay:
        ctx.add("R-110", "cap_excess")
    # RC-4
    ict = _i(c, "insurer_charge_total")
    if ict is not None and t_insurer is not None and cap is not None and ict != t_insurer + cap:
        ctx.add("R-111", "insurer_charge_total")
    # RC-5
    pct = _i(c, "patient_charge_total")
    if None not in (pct, t_copay, cap, t_full, t_nc):
        if pct != t_copay - cap + t_full + t_nc:  # type: ignore[operator]
            ctx.add("R-112", "patient_charge_total")
    # RC-6; amount_due_rounding defaults to 0
    amount_due, prepaid = _i(c, "amount_due"), _i(c, "prepaid")
    rounding_raw = raw.get("amount_due_rounding")
    rounding = _i(c, "amount_due_rounding") if rounding_raw is not None else 0
    if None not in (amount_due, pct, prepaid, rounding):
        if amount_due != pct - prepaid - rounding:  # type: ignore[operator]
            ctx.add("R-113", "amount_due")
    # RC-7
    paid = c.get("paid") if isinstance(c.get("paid"), dict) else None
    paid_total = _paid_identity(ctx, paid, "R-114")
    # RC-8
    unpaid = _i(c, "unpaid")
    if None not in (unpaid, amount_due, paid_total):
        if unpaid != amount_due - paid_total:  # type: ignore[operator]
            ctx.add("R-115", "unpaid")

    # Warnings
    if visit == "outpatient" and cap is not None and cap > 0:
        ctx.add("W-101", "cap_excess")
    drg_lines = [ln for ln in lines if isinstance(ln, dict) and ln.get("item") == "drg_bundle"]
    # Clean lines: their money fields hold ints, so ``get`` is `_i` (as in `_detail_rules`).
    drg_nonzero = any(any(map(ln.get, _MONEY_COLUMNS)) for ln in drg_lines)
    has_drg_no = raw.get("drg_no") is not None
    if drg_nonzero != has_drg_no:
        ctx.add("W-105", "drg_no")
    if rounding_raw is not None and rounding is not None and rounding != 0:
        ctx.add("W-106", "amount_due_rounding")
    if unpaid is not None and unpaid != 0:
        ctx.add("W-107", "unpaid")
    if amount_due is not None and amount_due < 0:
        ctx.add("W-108", "amount_due")
    institution = _dict(raw, "institution")
    for i, ln in enumerate(lines):
        if not isinstance(ln, dict):
            continue
        item = ln.get("item")
        nonzero = any(map(ln.get, _MONEY_COLUMNS))
        if not nonzero:
            continue
        if (visit == "outpatient" and isinstance(item, str) and item.startswith("room_")) or (
            item == "flat_ltc_hospital" and institution.get("type_code") != codes.LTC_HOSPITAL_TYPE_CODE
        ):
            ctx.add("W-110", f"lines[{i}].item")
    if c.get("patient_category") == "general" and t_insurer is not None and t_insurer > 0:
        ctx.add("W-111", "patient_category")
    if not ctx.cancelled:
        for name in ("representative", "address"):
            if institution.get(name) is None:
                ctx.add("W-112", f"institution.{name}")
    _cash_receipt_warning(ctx, raw, paid)


def _paid_identity(ctx: _Ctx, paid: dict[str, Any] | None, rule: str) -> int | None:
    if paid is None:
        return None
    card, cash_receipt, cash, total = (_i(paid, k) for k in ("card", "cash_receipt", "cash", "total"))
    if None not in (card, cash_receipt, cash, total) and total != card + cash_receipt + cash:  # type: ignore[operator]
        ctx.add(rule, "paid.total")
    return total


def _cash_receipt_warning(ctx: _Ctx, raw: dict[str, Any], paid: dict[str, Any] | None) -> None:
    cash_receipt = _i(paid, "cash_receipt")
    if cash_receipt is None:
        return
    has_approval = raw.get("cash_receipt_approval_no") is not None
    if (has_approval and cash_receipt == 0) or (cash_receipt > 0 and not has_approval):
        ctx.add("W-113", "cash_receipt_approval_no")


_ITEM_LINE_REQUIRED = ("item", "date", "amount", "count", "days")
_ADJUSTMENT_FORBIDDEN = ("date", "code", "amount", "dose", "count", "days")
_DETAIL_MONEY = ("total", *CORE_COLUMNS, *LEGACY_COLUMNS)
_ONE = Decimal(1)


def _detail_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any]) -> None:
    period = _care_period(ctx, c, "R-202")
    if period is not None and period[1] < period[0]:
        period = None  # no line date is "inside" a period that ends before it starts
    columns = _layout_columns(ctx, raw, "R-201")
    legacy = raw.get("amount_layout") == "legacy_selective"
    raw_lines = _list(raw, "lines")
    lines: list[Any] = _list(c, "lines")
    if len(lines) != len(raw_lines):
        lines = []
    previous_no: int | None = None
    seen_no: set[int] = set()
    add = ctx.add
    # RD-3 column sums over the clean lines, as `_sum` gives them (None once a line lacks a value).
    sums: dict[str, int | None] = dict.fromkeys(_DETAIL_MONEY, 0)
    for i, (rl, ln) in enumerate(zip(raw_lines, lines, strict=False)):
        if not isinstance(rl, dict) or not isinstance(ln, dict):
            sums = dict.fromkeys(_DETAIL_MONEY)
            continue
        # ``ln`` is a clean line: an int field in it holds an int (the field walk checked it), so
        # ``get`` is `_i` here. Paths are formatted only for a problem.
        get = ln.get
        raw_get = rl.get
        no = get("line_no")
        if no is not None:
            if no in seen_no or (previous_no is not None and no <= previous_no):
                add("R-203", f"lines[{i}].line_no")
            seen_no.add(no)
            previous_no = no if previous_no is None else max(previous_no, no)
        line_type = get("line_type")
        has_code = raw_get("code") is not None
        has_code_type = raw_get("code_type") is not None
        total, copay, insurer = get("total"), get("copay"), get("insurer")
        full_copay, non_covered = get("full_copay"), get("non_covered")
        for col, s in sums.items():
            if s is not None:
                v = get(col)
                sums[col] = None if v is None else s + v
        # RD-1: every line
        if (
            total is not None
            and copay is not None
            and insurer is not None
            and full_copay is not None
            and non_covered is not None
            and total != copay + insurer + full_copay + non_covered
        ):
            add("R-205", f"lines[{i}].total")
        # RD-4
        if legacy and non_covered is not None:
            selective, non_selective = get("selective"), get("non_selective")
            if selective is not None and non_selective is not None:
                if non_covered != selective + non_selective:
                    add("R-207", f"lines[{i}].non_covered")
        count = get("count")
        if not isinstance(count, Decimal):
            count = None
        if count is not None and count < 0:
            add("W-203", f"lines[{i}].count")
        elif total is not None and total < 0:
            add("W-203", f"lines[{i}].total")
        if line_type == "item":
            for name in _ITEM_LINE_REQUIRED:
                if raw_get(name) is None:
                    add("R-208", f"lines[{i}].{name}")
            if has_code != has_code_type:
                add("R-211", f"lines[{i}].code_type" if has_code else f"lines[{i}].code")
            # RD-2 (R-204 / W-201)
            amount, days = get("amount"), get("days")
            if isinstance(amount, Decimal) and count is not None and days is not None and total is not None:
                dose_value = get("dose")
                dose = dose_value if isinstance(dose_value, Decimal) else _ONE
                if raw_get("dose") is None or isinstance(dose_value, Decimal):
                    product = _DEC_CTX.multiply(
                        _DEC_CTX.multiply(_DEC_CTX.multiply(amount, dose), count), days
                    )
                    diff = abs(total - round_half_up(product))
                    if diff > 10:
                        add("R-204", f"lines[{i}].total")
                    elif diff > 1:
                        add("W-201", f"lines[{i}].total")
            # RD-5
            if count is not None and count != 0:
                positive = count > 0
                for v in (total, copay, insurer, full_copay, non_covered):
                    if v is not None and (v < 0 if positive else v > 0):
                        add("R-209", f"lines[{i}]")
                        break
            line_date = get("date")
            if period is not None and isinstance(line_date, dt.date):
                if not period[0] <= line_date <= period[1]:
                    add("W-202", f"lines[{i}].date")
            code = get("code")
            code_type = get("code_type")
            if isinstance(code, str) and isinstance(code_type, str):
                syntax = ids.CODE_SYNTAX.get(code_type)
                if syntax is not None and not syntax.match(code):
                    add("W-205", f"lines[{i}].code")
            if not has_code and (copay or insurer or full_copay):
                add("W-206", f"lines[{i}].code")
        elif line_type == "rounding_adjustment":
            p = f"lines[{i}]"
            money = {k: _i(ln, k) for k in _DETAIL_MONEY}
            for name in _ADJUSTMENT_FORBIDDEN:
                if rl.get(name) is not None:
                    add("R-208", f"{p}.{name}")
            if has_code_type and not has_code:
                add("R-211", f"{p}.code")
            for k in _DETAIL_MONEY:
                v = money[k]
                if v is not None and not -9_999 <= v <= 9_999:
                    add("R-210", f"{p}.{k}")
            if any(v is not None and abs(v) >= 100 for v in money.values()) or (
                total is not None and total != 0
            ):
                add("W-204", p)
    # RD-3
    totals = c.get("totals") if isinstance(c.get("totals"), dict) else None
    if columns is not None and totals is not None and lines:
        for col in ("total", *columns):
            t = _i(totals, col)
            s = sums[col]
            if t is not None and s is not None and t != s:
                ctx.add("R-206", f"totals.{col}")
    if legacy and totals is not None:
        nc, s_, ns = _i(totals, "non_covered"), _i(totals, "selective"), _i(totals, "non_selective")
        if nc is not None and s_ is not None and ns is not None and nc != s_ + ns:
            ctx.add("R-207", "totals.non_covered")
    if raw.get("receipt_no") is None and not ctx.cancelled:
        ctx.add("W-207", "receipt_no")


def _prescription_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any]) -> None:
    issued_on = c.get("issued_on") if isinstance(c.get("issued_on"), dt.date) else None
    document_no = c.get("document_no")
    if isinstance(document_no, str) and issued_on is not None:
        rx_date = ids.issue_no_date(document_no)
        if rx_date is not None and rx_date != issued_on:
            ctx.add("R-302", "document_no")
    withheld = c.get("diagnosis_withheld")
    raw_codes = raw.get("diagnosis_codes")
    has_codes = isinstance(raw_codes, list) and len(raw_codes) > 0
    if withheld is True and has_codes:
        ctx.add("R-307", "diagnosis_codes")
    if withheld is False and not has_codes and not ctx.cancelled:
        ctx.add("W-301", "diagnosis_codes")
    raw_lines = _list(raw, "lines")
    has_injection = any(isinstance(ln, dict) and ln.get("kind") == "injection" for ln in raw_lines)
    has_dispensing = raw.get("injection_dispensing") is not None
    if has_injection and not has_dispensing and not ctx.cancelled:
        ctx.add("R-309", "injection_dispensing")
    elif has_dispensing and not has_injection:
        ctx.add("R-309", "injection_dispensing")
    valid_days = _i(c, "valid_days")
    if raw.get("valid_days") is None:
        if not ctx.cancelled:
            ctx.add("W-302", "valid_days")
    elif valid_days is not None and valid_days > 30:
        ctx.add("W-303", "valid_days")
    dispensing = c.get("dispensing")
    if isinstance(dispensing, dict) and issued_on is not None:
        dispensed_on = dispensing.get("dispensed_on")
        if isinstance(dispensed_on, dt.date) and dispensed_on < issued_on:
            ctx.add("R-313", "dispensing.dispensed_on")
    exemption = c.get("copay_exemption_code")
    if isinstance(exemption, str) and not _EXEMPTION_RE.match(exemption):
        ctx.add("W-306", "copay_exemption_code")
    prescriber = c.get("prescriber")
    if isinstance(prescriber, dict):
        license_no = prescriber.get("license_no")
        if isinstance(license_no, str) and not _ALL_DIGITS_RE.match(license_no):
            ctx.add("W-307", "prescriber.license_no")
    institution = raw.get("institution")
    if isinstance(institution, dict) and institution.get("type_code") == codes.PHARMACY_TYPE_CODE:
        ctx.add("W-309", "institution.type_code")
    seen_no: set[int] = set()
    seen_codes: set[tuple[str, str]] = set()
    for i, rl in enumerate(raw_lines):
        if not isinstance(rl, dict):
            continue
        p = f"lines[{i}]"
        no = rl.get("line_no")
        if type(no) is int:
            if no in seen_no:
                ctx.add("R-314", f"{p}.line_no")
            seen_no.add(no)
        has_code, has_code_type = rl.get("code") is not None, rl.get("code_type") is not None
        if has_code and not has_code_type:
            ctx.add("R-305", f"{p}.code_type")
        elif has_code_type and not has_code:
            ctx.add("R-305", f"{p}.code")
        if not has_code:
            ctx.add("W-304", f"{p}.code")
        days = rl.get("days")
        if type(days) is int and 180 < days <= 999:
            ctx.add("W-305", f"{p}.days")
        code, kind = rl.get("code"), rl.get("kind")
        if isinstance(code, str) and isinstance(kind, str):
            if (code, kind) in seen_codes:
                ctx.add("W-308", f"{p}.code")
            seen_codes.add((code, kind))


def _pharmacy_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any]) -> None:
    totals = c.get("totals") if isinstance(c.get("totals"), dict) else None
    copay, insurer, full = _i(totals, "copay"), _i(totals, "insurer"), _i(totals, "full_self_pay")
    total_charge, pct = _i(c, "total_charge"), _i(c, "patient_charge_total")
    if None not in (total_charge, copay, insurer, full) and total_charge != copay + insurer + full:  # type: ignore[operator]
        ctx.add("R-401", "total_charge")
    if None not in (pct, copay, full) and pct != copay + full:  # type: ignore[operator]
        ctx.add("R-402", "patient_charge_total")
    paid = c.get("paid") if isinstance(c.get("paid"), dict) else None
    paid_total = _paid_identity(ctx, paid, "R-403")
    fee = c.get("fee_breakdown") if isinstance(c.get("fee_breakdown"), dict) else None
    fee_d, fee_c = _i(fee, "dispensing_fee"), _i(fee, "drug_cost")
    if None not in (fee_d, fee_c, total_charge) and fee_d + fee_c != total_charge:  # type: ignore[operator]
        ctx.add("R-406", "fee_breakdown")
    issued_on = c.get("issued_on") if isinstance(c.get("issued_on"), dt.date) else None
    dispensed_on = c.get("dispensed_on") if isinstance(c.get("dispensed_on"), dt.date) else None
    issue_no = c.get("prescription_issue_no")
    rx_date = ids.issue_no_date(issue_no) if isinstance(issue_no, str) else None
    if rx_date is not None and dispensed_on is not None:
        if rx_date > dispensed_on:
            ctx.add("R-409", "prescription_issue_no")
        elif (dispensed_on - rx_date).days > 30:
            ctx.add("W-405", "dispensed_on")
    if paid_total is not None and pct is not None and paid_total != pct:
        ctx.add("W-401", "paid.total")
    if issued_on is not None and dispensed_on is not None and issued_on < dispensed_on:
        ctx.add("W-402", "issued_on")
    if raw.get("pharmacist_name") is None and not ctx.cancelled:
        ctx.add("W-403", "pharmacist_name")
    institution = raw.get("institution")
    if isinstance(institution, dict):
        type_code = institution.get("type_code")
        if type_code is not None and type_code != codes.PHARMACY_TYPE_CODE:
            ctx.add("W-404", "institution.type_code")
    raw_lines = _list(raw, "lines")
    seen_no: set[int] = set()
    amounts: list[int | None] = []
    for i, rl in enumerate(raw_lines):
        if not isinstance(rl, dict):
            amounts.append(None)
            continue
        p = f"lines[{i}]"
        no = rl.get("line_no")
        if type(no) is int:
            if no in seen_no:
                ctx.add("R-408", f"{p}.line_no")
            seen_no.add(no)
        code = rl.get("code")
        if isinstance(code, str) and code and not ids.DRUG_CODE_RE.match(code):
            ctx.add("W-407", f"{p}.code")
        amount = rl.get("amount")
        amounts.append(amount if type(amount) is int else None)
    if raw_lines and full is not None and full > 0:
        if not any(
            isinstance(rl, dict) and rl.get("coverage") in ("full_copay_100", "non_covered")
            for rl in raw_lines
        ):
            ctx.add("W-406", "lines")
    if raw_lines and total_charge is not None and all(a is not None for a in amounts):
        if sum(amounts) != total_charge:  # type: ignore[arg-type]
            ctx.add("W-408", "lines")


_TYPE_RULES = {
    "receipt": _receipt_rules,
    "receipt_detail": _detail_rules,
    "prescription": _prescription_rules,
    "pharmacy_receipt": _pharmacy_rules,
}


# ============================================================ entry point


def _finish(ctx: _Ctx) -> list[Problem]:
    """Deduplicate and apply "specific before generic" (§2.6) per path."""
    specific_paths = {p for r, p in ctx.problems if r.startswith("R-") and r not in GENERIC_RULES}
    seen: set[tuple[str, str]] = set()
    out: list[Problem] = []
    for rule, path in ctx.problems:
        if (rule, path) in seen:
            continue
        if rule in GENERIC_RULES and path in specific_paths:
            continue
        seen.add((rule, path))
        out.append(problem(rule, path))
    return out


def validate_document(doc: Any, *, received_at: dt.datetime, default_valid_days: int = 3) -> Validation:
    """Validate one decoded document (any JSON value) against documents.md.

    ``received_at`` is when the agent commits (or checks) it: R-034/W-023 compare against its KST
    date; an input ``received_at`` field is never used. ``default_valid_days`` is accepted for a
    uniform signature; only cross-document rules use it (`crossdoc.py`)."""
    del default_valid_days  # no single-document rule depends on it (W-507 is cross-document)
    try:
        return _validate(doc, received_at)
    except Exception:  # noqa: BLE001 - the contract is "never raises for bad data"
        # A bug must not crash ingest on hostile input; the record is refused as malformed.
        return Validation([problem("R-021", "")], None, None)


def _validate(doc: Any, received_at: dt.datetime) -> Validation:
    if not isinstance(doc, dict):
        return Validation([problem("R-021", "")], None, None)
    doc_type = doc.get("document_type")
    fields = FIELDS.get(doc_type) if isinstance(doc_type, str) else None
    status = doc.get("status")
    ctx = _Ctx(doc_type if fields is not None else None, status == "cancelled")
    for name in AGENT_FIELDS:
        if name in doc:
            ctx.add("W-001", name)
    if fields is None:
        # Without a known type no field table applies; still report the envelope basics.
        ctx.add("R-005", "document_type")
        fields = FIELDS["receipt"]
        sv = doc.get("schema_version")
        if not isinstance(sv, str) or _check_schema_version(sv) is not None:
            ctx.add("R-006", "schema_version")
        return Validation(_finish(ctx), None, None)
    canon, clean = _WALKS[str(doc_type)](ctx, doc, "")
    received_on = kst_date(received_at)
    _common_rules(ctx, doc, clean, received_on)
    _TYPE_RULES[str(doc_type)](ctx, doc, clean)
    problems = _finish(ctx)
    canonical = serialize(canon)
    return Validation(problems, canon, hashlib.sha256(canonical).hexdigest(), doc_type, canonical)
