"""Validation of one decoded document against every per-document rule of documents.md.

`validate_document` runs in two passes:

1. a table-driven walk over `fields.FIELDS` (R-020 … R-035 per field: presence, JSON type, text
   hygiene, dates, enumerations, decimals, ranges, patterns and identifier checks) that also
   builds the canonical form (§9.3);
2. per-type rules (R-1xx … R-4xx, W-0xx … W-4xx) over the values that passed pass 1.

It never raises for bad data: any JSON value yields a `Validation`. Problems carry a rule id and
a JSON path, never a value (§10). Version (§9) and cross-document (§7) rules live in
`versions.py` and `crossdoc.py` because they need other documents.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import unicodedata
from collections.abc import Mapping
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
_DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_DATETIME_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)
_SCHEMA_VERSION_RE = re.compile(r"^([0-9]+)\.([0-9]+)$")
# C0 and C1 controls (and DEL) except LF; lone surrogates cannot be encoded and are refused too.
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NO_LF_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EXEMPTION_RE = re.compile(r"^[A-Z][0-9A-Z]{3}$")
_ALL_DIGITS_RE = re.compile(r"^[0-9]+$")

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
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def parse_datetime(value: Any) -> dt.datetime | None:
    """An RFC 3339 date-time with explicit offset and seconds, or None."""
    if not isinstance(value, str):
        return None
    m = _DATETIME_RE.match(value)
    if m is None:
        return None
    try:
        if m.group(8):
            tz = dt.UTC
        else:
            hours, minutes = int(m.group(10)), int(m.group(11))
            if hours > 23 or minutes > 59:
                return None
            offset = dt.timedelta(hours=hours, minutes=minutes)
            tz = dt.timezone(-offset if m.group(9) == "-" else offset)
        frac = m.group(7)
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        second = int(m.group(6))
        if second == 60:  # leap second: RFC 3339 allows it; datetime cannot hold it
            second = 59
        return dt.datetime(
            int(m.group(1)),
            int(m.group(2)),
            int(m.group(3)),
            int(m.group(4)),
            int(m.group(5)),
            second,
            micro,
            tzinfo=tz,
        )
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
    """Collects problems and remembers which paths already failed a field check."""

    __slots__ = ("problems", "bad", "doc_type", "cancelled")

    def __init__(self, doc_type: str | None, cancelled: bool) -> None:
        self.problems: list[tuple[str, str]] = []
        self.bad: set[str] = set()
        self.doc_type = doc_type
        self.cancelled = cancelled

    def add(self, rule: str, path: str) -> None:
        self.problems.append((rule, path))
        if rule.startswith("R-"):
            self.bad.add(path)


_BAD = object()  # a value that failed its field check (never reaches the rules)


# ============================================================ pass 1: field walk


def _check_text(ctx: _Ctx, value: str, f: Field, path: str) -> bool:
    if not value or value.isspace():
        ctx.add("R-022", path)
        return False
    if (
        (_CONTROL_RE if f.multiline else _CONTROL_NO_LF_RE).search(value)
        or value[0].isspace()
        or value[-1].isspace()
        or (f.max_len is not None and len(value) > f.max_len)
        or not unicodedata.is_normalized("NFC", value)
    ):
        ctx.add("R-023", path)
        return False
    return True


def _check_range(ctx: _Ctx, value: int | Decimal, f: Field, path: str) -> bool:
    if f.minimum is not None and (value <= f.minimum if f.min_exclusive else value < f.minimum):
        ctx.add(f.min_rule or f.range_rule, path)
        return False
    if f.maximum is not None and value > f.maximum:
        ctx.add(f.range_rule, path)
        return False
    if f.nonzero and value == 0:
        ctx.add(f.range_rule, path)
        return False
    return True


def _walk_value(ctx: _Ctx, value: Any, f: Field, path: str, ptuple: tuple[str, ...]) -> tuple[Any, Any]:
    """Check one present, non-null value. Returns (canonical value, clean value or _BAD)."""
    kind = f.kind
    if kind == "str":
        if not isinstance(value, str):
            ctx.add(f.type_rule, path)
            return value, _BAD
        if not _check_text(ctx, value, f, path):
            return value, _BAD
        if f.enum is not None and value not in f.enum:
            ctx.add(f.enum_rule, path)
            return value, _BAD
        if f.compiled is not None and not f.compiled.match(value):
            ctx.add(f.pattern_rule, path)
            return value, _BAD
        extra = (
            (_EXTRA_STR.get((ctx.doc_type, ptuple)) or _EXTRA_STR.get((None, ptuple)))
            if f.name in _EXTRA_NAMES
            else None
        )
        if extra is not None:
            rule = extra(value)
            if rule is not None:
                ctx.add(rule, path)
                return value, _BAD
        return value, value
    if kind == "int":
        if type(value) is not int:  # bool is an int subclass and floats are never accepted
            ctx.add(f.type_rule, path)
            return value, _BAD
        if not _check_range(ctx, value, f, path):
            return value, _BAD
        return value, value
    if kind == "dec":
        if not isinstance(value, str):
            ctx.add(f.type_rule, path)
            return value, _BAD
        if not _DEC_RE.match(value):
            ctx.add("R-027", path)
            return value, _BAD
        dot = value.find(".")
        if dot >= 0 and f.frac_digits is not None and len(value) - dot - 1 > f.frac_digits:
            ctx.add("R-027", path)
            return value, _BAD
        number = Decimal(value)
        if not _check_range(ctx, number, f, path):
            return value, _BAD
        return canonical_decimal(value), number
    if kind == "bool":
        if type(value) is not bool:
            ctx.add(f.type_rule, path)
            return value, _BAD
        return value, value
    if kind == "date":
        if not isinstance(value, str):
            ctx.add(f.type_rule, path)
            return value, _BAD
        d = parse_date(value)
        if d is None:
            ctx.add("R-024", path)
            return value, _BAD
        return value, d
    if kind == "datetime":
        if not isinstance(value, str):
            ctx.add(f.type_rule, path)
            return value, _BAD
        moment = parse_datetime(value)
        if moment is None:
            ctx.add("R-024", path)
            return value, _BAD
        return value, moment
    if kind == "object":
        if not isinstance(value, dict):
            ctx.add(f.type_rule, path)
            return value, _BAD
        return _walk_object(ctx, value, f.children or {}, path, ptuple)
    if kind == "array_object":
        if not isinstance(value, list):
            ctx.add(f.type_rule, path)
            return value, _BAD
        if len(value) < f.min_items:
            ctx.add(f.empty_rule or "R-028", path)
            return value, _BAD
        if f.max_items is not None and len(value) > f.max_items:
            ctx.add(f.items_rule, path)
            return value, _BAD
        canon_list: list[Any] = []
        clean_list: list[Any] = []
        children = f.children or {}
        for i, element in enumerate(value):
            epath = f"{path}[{i}]"
            if not isinstance(element, dict):
                ctx.add("R-021", epath)
                canon_list.append(element)
                clean_list.append(_BAD)
                continue
            c, k = _walk_object(ctx, element, children, epath, ptuple)
            canon_list.append(c)
            clean_list.append(k)
        return canon_list, clean_list
    # array_str: only diagnosis_codes (KCD, ID-4)
    if not isinstance(value, list):
        ctx.add("R-021", path)
        return value, _BAD
    if f.max_items is not None and len(value) > f.max_items:
        ctx.add(f.items_rule, path)
        return value, _BAD
    canon_codes: list[Any] = []
    clean_codes: list[Any] = []
    for i, element in enumerate(value):
        epath = f"{path}[{i}]"
        if not isinstance(element, str):
            ctx.add(f.type_rule, epath)
            canon_codes.append(element)
            clean_codes.append(_BAD)
            continue
        if not element or element.isspace():
            ctx.add("R-022", epath)
            canon_codes.append(element)
            clean_codes.append(_BAD)
            continue
        code = ids.normalise_kcd(element)
        canon_codes.append(code)
        if f.compiled is not None and not f.compiled.match(code):
            ctx.add(f.pattern_rule, epath)
            clean_codes.append(_BAD)
        else:
            clean_codes.append(code)
    return canon_codes, clean_codes


def _walk_object(
    ctx: _Ctx, raw: dict[str, Any], fields: Mapping[str, Field], path: str, ptuple: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    canon: dict[str, Any] = {}
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:  # null means absent (§2.1)
            continue
        p = f"{path}.{key}" if path else key
        f = fields.get(key)
        if f is None:
            ctx.add("R-025", p)
            canon[key] = value
            continue
        if f.agent:
            continue  # reported as W-001 by the caller, never part of the canonical form
        if isinstance(value, list) and not value and not f.required:
            continue  # an empty optional array is "no value" (§9.3)
        c, k = _walk_value(ctx, value, f, p, (*ptuple, key))
        canon[key] = c
        if k is not _BAD:
            clean[key] = k
    # Cancellation records (§9.4) need only a few envelope fields; deeper objects that are
    # present are validated normally.
    cancel_scope = ctx.cancelled and (not ptuple or ptuple in (("institution",), ("patient",)))
    required = _REQUIRED.get(id(fields))
    if required is None:
        required = _REQUIRED[id(fields)] = tuple(f for f in fields.values() if f.required)
    for f in required:
        if raw.get(f.name) is None:
            if cancel_scope and (*ptuple, f.name) not in CANCEL_REQUIRED:
                continue
            ctx.add(f.missing_rule, f"{path}.{f.name}" if path else f.name)
    return canon, clean


# Required fields per field table (tables live for the whole process, so id() is stable).
_REQUIRED: dict[int, tuple[Field, ...]] = {}


# Identifier checks that a pattern cannot express, per (document_type or None, path).
def _check_schema_version(value: str) -> str | None:
    m = _SCHEMA_VERSION_RE.match(value)
    return None if m is not None and int(m.group(1)) == 1 else "R-006"


_EXTRA_STR: dict[tuple[str | None, tuple[str, ...]], Any] = {
    (None, ("schema_version",)): _check_schema_version,
    (None, ("institution", "business_reg_no")): lambda v: None if ids.brn_valid(v) else "R-031",
    (None, ("patient", "rrn")): lambda v: None if ids.rrn_birth_date(v) is not None else "R-032",
    ("prescription", ("document_no",)): lambda v: None if ids.issue_no_date(v) is not None else "R-301",
    ("pharmacy_receipt", ("prescription_issue_no",)): (
        lambda v: None if ids.issue_no_date(v) is not None else "R-404"
    ),
}
_EXTRA_NAMES = frozenset(path[-1] for _, path in _EXTRA_STR)


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
    containers: list[tuple[str, Any]] = [("totals", raw.get("totals"))]
    lines = raw.get("lines")
    if isinstance(lines, list):
        containers += [(f"lines[{i}]", line) for i, line in enumerate(lines)]
    for path, obj in containers:
        if not isinstance(obj, dict):
            continue
        for col in LEGACY_COLUMNS:
            present = obj.get(col) is not None
            if present != legacy:
                ctx.add(rule, f"{path}.{col}")
    return CORE_COLUMNS + LEGACY_COLUMNS if legacy else CORE_COLUMNS


def _care_period(ctx: _Ctx, c: dict[str, Any], end_rule: str) -> tuple[dt.date, dt.date] | None:
    cp = c.get("care_period")
    if not isinstance(cp, dict):
        return None
    start, end = cp.get("start"), cp.get("end")
    if not isinstance(start, dt.date) or not isinstance(end, dt.date):
        return None
    if end < start:
        ctx.add(end_rule, "care_period.end")
        return None
    return start, end


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
    drg_nonzero = any(any(_i(ln, col) for col in CORE_COLUMNS + LEGACY_COLUMNS) for ln in drg_lines)
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
        nonzero = any(_i(ln, col) for col in CORE_COLUMNS + LEGACY_COLUMNS)
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


def _detail_rules(ctx: _Ctx, raw: dict[str, Any], c: dict[str, Any]) -> None:
    period = _care_period(ctx, c, "R-202")
    columns = _layout_columns(ctx, raw, "R-201")
    legacy = raw.get("amount_layout") == "legacy_selective"
    raw_lines = _list(raw, "lines")
    lines: list[Any] = _list(c, "lines")
    if len(lines) != len(raw_lines):
        lines = []
    previous_no: int | None = None
    seen_no: set[int] = set()
    for i, (rl, ln) in enumerate(zip(raw_lines, lines, strict=False)):
        if not isinstance(rl, dict) or not isinstance(ln, dict):
            continue
        p = f"lines[{i}]"
        no = _i(ln, "line_no")
        if no is not None:
            if no in seen_no or (previous_no is not None and no <= previous_no):
                ctx.add("R-203", f"{p}.line_no")
            seen_no.add(no)
            previous_no = no if previous_no is None else max(previous_no, no)
        line_type = ln.get("line_type")
        has_code = rl.get("code") is not None
        has_code_type = rl.get("code_type") is not None
        money = {k: _i(ln, k) for k in _DETAIL_MONEY}
        # RD-1: every line
        parts = [money[k] for k in CORE_COLUMNS]
        if money["total"] is not None and None not in parts and money["total"] != sum(parts):  # type: ignore[arg-type]
            ctx.add("R-205", f"{p}.total")
        # RD-4
        if legacy and None not in (money["non_covered"], money["selective"], money["non_selective"]):
            if money["non_covered"] != money["selective"] + money["non_selective"]:  # type: ignore[operator]
                ctx.add("R-207", f"{p}.non_covered")
        count = ln.get("count") if isinstance(ln.get("count"), Decimal) else None
        total = money["total"]
        if count is not None and count < 0:
            ctx.add("W-203", f"{p}.count")
        elif total is not None and total < 0:
            ctx.add("W-203", f"{p}.total")
        if line_type == "item":
            for name in _ITEM_LINE_REQUIRED:
                if rl.get(name) is None:
                    ctx.add("R-208", f"{p}.{name}")
            if has_code != has_code_type:
                ctx.add("R-211", f"{p}.code_type" if has_code else f"{p}.code")
            # RD-2 (R-204 / W-201)
            amount, days = ln.get("amount"), _i(ln, "days")
            if isinstance(amount, Decimal) and count is not None and days is not None and total is not None:
                dose_value = ln.get("dose")
                dose = dose_value if isinstance(dose_value, Decimal) else Decimal(1)
                if rl.get("dose") is None or isinstance(ln.get("dose"), Decimal):
                    product = _DEC_CTX.multiply(
                        _DEC_CTX.multiply(_DEC_CTX.multiply(amount, dose), count), days
                    )
                    diff = abs(total - round_half_up(product))
                    if diff > 10:
                        ctx.add("R-204", f"{p}.total")
                    elif diff > 1:
                        ctx.add("W-201", f"{p}.total")
            # RD-5
            if count is not None:
                values = [money[k] for k in ("total", *CORE_COLUMNS)]
                if any(v is not None and ((count > 0 and v < 0) or (count < 0 and v > 0)) for v in values):
                    ctx.add("R-209", p)
            line_date = ln.get("date")
            if period is not None and isinstance(line_date, dt.date):
                if not period[0] <= line_date <= period[1]:
                    ctx.add("W-202", f"{p}.date")
            code = ln.get("code")
            code_type = ln.get("code_type")
            if isinstance(code, str) and isinstance(code_type, str):
                syntax = ids.CODE_SYNTAX.get(code_type)
                if syntax is not None and not syntax.match(code):
                    ctx.add("W-205", f"{p}.code")
            if rl.get("code") is None and any(money[k] for k in ("copay", "insurer", "full_copay")):
                ctx.add("W-206", f"{p}.code")
        elif line_type == "rounding_adjustment":
            for name in _ADJUSTMENT_FORBIDDEN:
                if rl.get(name) is not None:
                    ctx.add("R-208", f"{p}.{name}")
            if has_code_type and not has_code:
                ctx.add("R-211", f"{p}.code")
            for k in _DETAIL_MONEY:
                v = money[k]
                if v is not None and not -9_999 <= v <= 9_999:
                    ctx.add("R-210", f"{p}.{k}")
            if any(v is not None and abs(v) >= 100 for v in money.values()) or (
                total is not None and total != 0
            ):
                ctx.add("W-204", p)
    # RD-3
    totals = c.get("totals") if isinstance(c.get("totals"), dict) else None
    if columns is not None and totals is not None and lines:
        for col in ("total", *columns):
            t = _i(totals, col)
            s = _sum(lines, col)
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
    canon, clean = _walk_object(ctx, doc, fields, "", ())
    received_on = kst_date(received_at)
    _common_rules(ctx, doc, clean, received_on)
    _TYPE_RULES[str(doc_type)](ctx, doc, clean)
    problems = _finish(ctx)
    return Validation(problems, canon, hashlib.sha256(serialize(canon)).hexdigest(), doc_type)
