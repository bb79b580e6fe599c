"""Identifier checks of documents.md §8: ID-1 ykiho, ID-2 RRN, ID-3 BRN, ID-4 KCD, ID-5 교부번호, ID-6.

Each check returns a plain bool/value and never echoes the identifier (they are personal data).
"""

from __future__ import annotations

import datetime as dt
import re

_DIGITS13 = re.compile(r"^[0-9]{13}\Z")
_DIGITS10 = re.compile(r"^[0-9]{10}\Z")
_ISSUE_NO = re.compile(r"^([0-9]{8})-([0-9]{5})\Z")
_KCD_STRIP = re.compile(r"[\s†*+]")
KCD_RE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,3})?\Z")

# ID-6 item-code syntax per code type (W-205, W-407, R-305).
CODE_SYNTAX: dict[str, re.Pattern[str]] = {
    "edi_drug": re.compile(r"^[0-9A-Z]{9}\Z"),
    "edi_procedure": re.compile(r"^[A-Z0-9]{5,9}\Z"),
    "edi_material": re.compile(r"^[A-Z0-9]{8,9}\Z"),
    "local": re.compile(r"^[0-9A-Za-z-]{1,20}\Z"),
}
DRUG_CODE_RE = CODE_SYNTAX["edi_drug"]

_BRN_WEIGHTS = (1, 3, 7, 1, 3, 7, 1, 3, 5)
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}


def rrn_birth_date(rrn: str) -> dt.date | None:
    """Birth date of a syntactically valid RRN (ID-2), or None when the number is invalid.

    No checksum: numbers issued since 2020-10-05 have a random tail."""
    if not _DIGITS13.match(rrn):
        return None
    century = _CENTURY.get(rrn[6])
    if century is None:
        return None
    try:
        return dt.date(century + int(rrn[0:2]), int(rrn[2:4]), int(rrn[4:6]))
    except ValueError:
        return None


def brn_valid(brn: str) -> bool:
    """ID-3 사업자등록번호: 10 digits and the weighted check digit."""
    if not _DIGITS10.match(brn):
        return False
    d = [int(c) for c in brn]
    s = sum(a * w for a, w in zip(d[:9], _BRN_WEIGHTS, strict=True)) + (d[8] * 5) // 10
    return d[9] == (10 - s % 10) % 10


def normalise_kcd(code: str) -> str:
    """ID-4: upper-case, drop white space and †/*/+ markers, insert the dot after 3 characters."""
    c = _KCD_STRIP.sub("", code.upper())
    if "." not in c and len(c) > 3:
        c = c[:3] + "." + c[3:]
    return c


def issue_no_date(value: str) -> dt.date | None:
    """Date part of a valid ID-5 교부번호 (`YYYYMMDD-NNNNN`, serial ≠ 00000), else None."""
    m = _ISSUE_NO.match(value)
    if m is None or m.group(2) == "00000":
        return None
    d = m.group(1)
    try:
        return dt.date(int(d[0:4]), int(d[4:6]), int(d[6:8]))
    except ValueError:
        return None
