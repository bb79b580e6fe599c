"""Request body parsing and validation for search and fetch (relay-api.md §3, §4, §6).

Hand-written rather than pydantic so every error becomes exactly ``{pointer, code}`` with a
pointer naming a contract member and one of the fixed codes of §7 — nothing from the input is ever
carried along (no ``input`` echo, C-29). ``parse_json`` implements the strict JSON rules of §3
(400 cases); ``validate_search`` / ``validate_fetch`` the 422 rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import unicodedata
from typing import Any

from agent.api.problems import FieldError, ProblemError

DOCUMENT_TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
FORMATS = ("standard", "fhir")

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
_RELAY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CLAIM_TOKEN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_RRN = re.compile(r"^([0-9]{6})-?([0-9]{7})$")
_DOC_ID = re.compile(r"^doc_[0-9A-HJKMNP-TV-Z]{26}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_TIMESTAMP = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,6})?Z$")

MAX_PERIOD_DAYS = 1096
MAX_NAME_CHARS = 100


class _BadJSON(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON("duplicate member")
        out[key] = value
    return out


def _constant(_name: str) -> Any:
    raise _BadJSON("NaN or Infinity")


def _no_float(_text: str) -> Any:
    # v1 has no floating-point numbers anywhere (§3); a float is kept as a marker so the schema
    # check reports a type error at its pointer instead of a 400.
    return _Float()


class _Float:
    """Stands for a JSON number with a fraction or exponent (never valid in v1)."""


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_no_float)


def parse_json(body: bytes) -> dict[str, Any]:
    """Strict JSON object from ``body``; ``ProblemError('bad-request')`` on any §3 violation."""
    try:
        if body.startswith(b"\xef\xbb\xbf"):
            raise _BadJSON("BOM")
        text = body.decode("utf-8", errors="strict")
        # raw_decode + an explicit end check: trailing data (other than whitespace) is a 400.
        value, end = _DECODER.raw_decode(text.lstrip(" \t\r\n"))
        if text.lstrip(" \t\r\n")[end:].strip(" \t\r\n"):
            raise _BadJSON("trailing data")
        # A \u escape of a lone surrogate decodes to text that is not Unicode: as invalid as
        # invalid UTF-8 (only looked for when the body has an escape at all).
        if b"\\u" in body and _has_lone_surrogate(value):
            raise _BadJSON("lone surrogate")
    except (UnicodeDecodeError, ValueError, _BadJSON, RecursionError):
        raise ProblemError("bad-request") from None
    if not isinstance(value, dict):
        raise ProblemError("bad-request")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def normalise_request_id(value: Any) -> str | None:
    """Canonical request id (UUIDv4 lowercase, ULID uppercase) or ``None`` if malformed."""
    if not isinstance(value, str):
        return None
    if _UUID4.fullmatch(value.lower()):
        return value.lower()
    if _ULID.fullmatch(value.upper()):
        return value.upper()
    return None


def parse_timestamp(value: str) -> dt.datetime | None:
    match = _TIMESTAMP.fullmatch(value)
    if not match:
        return None
    try:
        frac = match.group(5) or ""
        micros = int((frac[1:] + "000000")[:6]) if frac else 0
        date = dt.date.fromisoformat(match.group(1))
        return dt.datetime(
            date.year,
            date.month,
            date.day,
            int(match.group(2)),
            int(match.group(3)),
            int(match.group(4)),
            micros,
            tzinfo=dt.UTC,
        )
    except ValueError:
        return None


def _parse_date(value: str) -> dt.date | None:
    if not _DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def rrn_valid_date(rrn13: str) -> bool:
    """The first six digits form a real date in the century implied by the 7th digit (§6.2)."""
    century = {
        "9": 1800,
        "0": 1800,
        "1": 1900,
        "2": 1900,
        "5": 1900,
        "6": 1900,
        "3": 2000,
        "4": 2000,
        "7": 2000,
        "8": 2000,
    }[rrn13[6]]
    try:
        dt.date(century + int(rrn13[0:2]), int(rrn13[2:4]), int(rrn13[4:6]))
    except ValueError:
        return False
    return True


def normalise_name(name: str) -> str:
    """§6.2 name rule: NFC, drop every ``str.isspace()`` character, casefold."""
    return "".join(ch for ch in unicodedata.normalize("NFC", name) if not ch.isspace()).casefold()


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


@dataclasses.dataclass(frozen=True)
class Envelope:
    request_id: str
    sent_at: dt.datetime
    relay_id: str
    claim_no: str
    consent_id: str
    sent_at_whole: bool = False  # ``sent_at`` written without a fraction (whole seconds)


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    envelope: Envelope
    patient_name: str  # normalised per §6.2
    rrn13: str
    period_from: dt.date
    period_to: dt.date
    document_types: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FetchRequest:
    envelope: Envelope
    document_ids: tuple[str, ...]
    format: str


class _Checker:
    """Collects errors; the first error per pointer wins, in member order."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, pointer: str, code: str) -> None:
        self.errors.append(FieldError(pointer, code))

    def members(self, obj: dict[str, Any], pointer: str, allowed: tuple[str, ...]) -> None:
        # For an unknown member the pointer names the enclosing object: the key is never echoed.
        if any(key not in allowed for key in obj):
            self.add(pointer, "unknown-field")

    def string(self, obj: dict[str, Any], key: str, pointer: str, *, required: bool = True) -> str | None:
        if key not in obj:
            if required:
                self.add(pointer, "missing")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.add(pointer, "type")
            return None
        return _nfc(value)

    def obj(self, parent: dict[str, Any], key: str, pointer: str) -> dict[str, Any] | None:
        if key not in parent:
            self.add(pointer, "missing")
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.add(pointer, "type")
            return None
        return value


_SEARCH_MEMBERS = ("request_id", "sent_at", "relay_id", "claim", "patient", "period", "document_types")
_FETCH_MEMBERS = ("request_id", "sent_at", "relay_id", "claim", "document_ids", "format")


def _envelope(
    c: _Checker, body: dict[str, Any]
) -> tuple[str | None, dt.datetime | None, str | None, str | None, str | None, bool]:
    raw_id = c.string(body, "request_id", "/request_id")
    request_id = None
    if raw_id is not None:
        request_id = normalise_request_id(raw_id)
        if request_id is None:
            c.add("/request_id", "format")
    sent_text = c.string(body, "sent_at", "/sent_at")
    sent_at = None
    if sent_text is not None:
        sent_at = parse_timestamp(sent_text)
        if sent_at is None:
            c.add("/sent_at", "format")
    relay_id = c.string(body, "relay_id", "/relay_id")
    if relay_id is not None and not _RELAY_ID.fullmatch(relay_id):
        c.add("/relay_id", "pattern")
        relay_id = None
    claim = c.obj(body, "claim", "/claim")
    claim_no = consent_id = None
    if claim is not None:
        c.members(claim, "/claim", ("claim_no", "consent_id"))
        claim_no = c.string(claim, "claim_no", "/claim/claim_no")
        if claim_no is not None and not _CLAIM_TOKEN.fullmatch(claim_no):
            c.add("/claim/claim_no", "pattern")
            claim_no = None
        consent_id = c.string(claim, "consent_id", "/claim/consent_id")
        if consent_id is not None and not _CLAIM_TOKEN.fullmatch(consent_id):
            c.add("/claim/consent_id", "pattern")
            consent_id = None
    return request_id, sent_at, relay_id, claim_no, consent_id, sent_text is not None and "." not in sent_text


def request_id_of(body: dict[str, Any]) -> str | None:
    """The normalised request id if the body carried a syntactically valid one (§7 ``request_id``)."""
    return normalise_request_id(body.get("request_id"))


def _fail(c: _Checker) -> None:
    if c.errors:
        raise ProblemError("validation-failed", errors=c.errors)


def validate_search(body: dict[str, Any]) -> SearchRequest:
    c = _Checker()
    c.members(body, "", _SEARCH_MEMBERS)
    request_id, sent_at, relay_id, claim_no, consent_id, whole = _envelope(c, body)
    name = rrn13 = None
    patient = c.obj(body, "patient", "/patient")
    if patient is not None:
        c.members(patient, "/patient", ("name", "rrn"))
        raw_name = c.string(patient, "name", "/patient/name")
        if raw_name is not None:
            name = normalise_name(raw_name)
            if not name:
                c.add("/patient/name", "range")
                name = None
            elif len(name) > MAX_NAME_CHARS:
                c.add("/patient/name", "too-long")
                name = None
        raw_rrn = c.string(patient, "rrn", "/patient/rrn")
        if raw_rrn is not None:
            match = _RRN.fullmatch(raw_rrn)
            if not match:
                c.add("/patient/rrn", "pattern")
            else:
                rrn13 = match.group(1) + match.group(2)
                if not rrn_valid_date(rrn13):
                    c.add("/patient/rrn", "format")
                    rrn13 = None
    period_from = period_to = None
    period = c.obj(body, "period", "/period")
    if period is not None:
        c.members(period, "/period", ("from", "to"))
        for key in ("from", "to"):
            text = c.string(period, key, f"/period/{key}")
            if text is not None:
                parsed = _parse_date(text)
                if parsed is None:
                    c.add(f"/period/{key}", "format")
                elif key == "from":
                    period_from = parsed
                else:
                    period_to = parsed
        if period_from and period_to:
            if period_from > period_to or (period_to - period_from).days > MAX_PERIOD_DAYS:
                c.add("/period", "range")
    types: tuple[str, ...] = DOCUMENT_TYPES
    if "document_types" in body:
        raw_types = body["document_types"]
        if not isinstance(raw_types, list):
            c.add("/document_types", "type")
        elif not raw_types:
            c.add("/document_types", "range")
        else:
            seen: list[str] = []
            for index, item in enumerate(raw_types):
                if not isinstance(item, str):
                    c.add(f"/document_types/{index}", "type")
                elif item not in DOCUMENT_TYPES:
                    c.add(f"/document_types/{index}", "enum")
                elif item in seen:
                    c.add(f"/document_types/{index}", "duplicate")
                else:
                    seen.append(item)
            types = tuple(seen)
    _fail(c)
    assert request_id and sent_at and relay_id and claim_no and consent_id and name and rrn13
    assert period_from and period_to
    return SearchRequest(
        Envelope(request_id, sent_at, relay_id, claim_no, consent_id, whole),
        name,
        rrn13,
        period_from,
        period_to,
        types,
    )


def validate_fetch(body: dict[str, Any], *, max_ids: int) -> FetchRequest:
    c = _Checker()
    c.members(body, "", _FETCH_MEMBERS)
    request_id, sent_at, relay_id, claim_no, consent_id, whole = _envelope(c, body)
    ids: list[str] = []
    too_many = False
    if "document_ids" not in body:
        c.add("/document_ids", "missing")
    elif not isinstance(body["document_ids"], list):
        c.add("/document_ids", "type")
    elif not body["document_ids"]:
        c.add("/document_ids", "range")
    else:
        raw_ids = body["document_ids"]
        too_many = len(raw_ids) > max_ids
        for index, item in enumerate(raw_ids):
            if not isinstance(item, str):
                c.add(f"/document_ids/{index}", "type")
            elif not _DOC_ID.fullmatch(item):
                c.add(f"/document_ids/{index}", "pattern")
            elif item in ids:
                c.add(f"/document_ids/{index}", "duplicate")
            else:
                ids.append(item)
    fmt = "standard"
    if "format" in body:
        raw_format = body["format"]
        if not isinstance(raw_format, str):
            c.add("/format", "type")
        elif raw_format not in FORMATS:
            c.add("/format", "enum")
        else:
            fmt = raw_format
    # §8 step 7 puts too-many-documents with the schema rules; more than max ids is its own
    # problem type even when other members are also wrong.
    if too_many:
        raise ProblemError("too-many-documents")
    _fail(c)
    assert request_id and sent_at and relay_id and claim_no and consent_id
    return FetchRequest(Envelope(request_id, sent_at, relay_id, claim_no, consent_id, whole), tuple(ids), fmt)
