"""Cross-document rules of documents.md §7: linking pairs and the W-501 … W-512 warnings.

Every result is a warning (each document is a legal record on its own). `cross_warnings` takes
the two current versions in either order and returns the same problems; the caller stores them in
``validation.cross_warnings`` of both documents. Paths refer to the detail / pharmacy-receipt side,
or to the field compared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from agent.documents import codes
from agent.documents.fields import CORE_COLUMNS, LEGACY_COLUMNS
from agent.documents.problems import Problem, problem
from agent.documents.validate import names_equal, parse_date


def _d(doc: dict[str, Any], block: str) -> dict[str, Any]:
    v = doc.get(block)
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int:
    return v if type(v) is int else 0


def _lines(doc: dict[str, Any]) -> list[dict[str, Any]]:
    v = doc.get("lines")
    return [ln for ln in v if isinstance(ln, dict)] if isinstance(v, list) else []


# ------------------------------------------------------------------ linking (§7.1)


def _detail_fallback_match(detail: dict[str, Any], receipt: dict[str, Any]) -> bool:
    reg_d = _d(detail, "patient").get("patient_reg_no")
    return (
        reg_d is not None
        and reg_d == _d(receipt, "patient").get("patient_reg_no")
        and detail.get("care_period") is not None
        and detail.get("care_period") == receipt.get("care_period")
    )


def link_detail_to_receipt(detail: dict[str, Any], receipt: dict[str, Any]) -> bool:
    """Primary link: same ykiho and ``receipt_no = receipt.document_no``; without ``receipt_no``
    the fallback match (same ykiho, patient_reg_no and care_period). Uniqueness of a fallback
    match is decided over all candidates by `find_receipt_for_detail`."""
    if detail.get("document_type") != "receipt_detail" or receipt.get("document_type") != "receipt":
        return False
    if _d(detail, "institution").get("ykiho") != _d(receipt, "institution").get("ykiho"):
        return False
    receipt_no = detail.get("receipt_no")
    if receipt_no is not None:
        return bool(receipt_no == receipt.get("document_no"))
    return _detail_fallback_match(detail, receipt)


def find_receipt_for_detail(
    detail: dict[str, Any], receipts: Iterable[dict[str, Any]]
) -> dict[str, Any] | None:
    """The receipt a detail links to (§7.1, first match wins; fallback needs exactly one)."""
    matches = [r for r in receipts if link_detail_to_receipt(detail, r)]
    if detail.get("receipt_no") is not None:
        return matches[0] if matches else None
    return matches[0] if len(matches) == 1 else None


def link_pharmacy_to_prescription(pharmacy: dict[str, Any], prescription: dict[str, Any]) -> bool:
    """``prescription_issue_no = prescription.document_no`` and the prescribing ykiho, when given,
    equals the prescription's institution ykiho."""
    if (
        pharmacy.get("document_type") != "pharmacy_receipt"
        or prescription.get("document_type") != "prescription"
    ):
        return False
    if pharmacy.get("prescription_issue_no") != prescription.get("document_no"):
        return False
    ykiho = _d(pharmacy, "prescribing_institution").get("ykiho")
    return ykiho is None or ykiho == _d(prescription, "institution").get("ykiho")


def find_prescription_for_pharmacy(
    pharmacy: dict[str, Any], prescriptions: Iterable[dict[str, Any]]
) -> dict[str, Any] | None:
    matches = [p for p in prescriptions if link_pharmacy_to_prescription(pharmacy, p)]
    return matches[0] if len(matches) == 1 else None


def link_prescription_to_receipt(prescription: dict[str, Any], receipt: dict[str, Any]) -> bool:
    """Informational link for FHIR rendering (no rules)."""
    if _d(prescription, "institution").get("ykiho") != _d(receipt, "institution").get("ykiho"):
        return False
    reg_p = _d(prescription, "patient").get("patient_reg_no")
    reg_r = _d(receipt, "patient").get("patient_reg_no")
    if reg_p is not None and reg_r is not None and reg_p != reg_r:
        return False
    issued = parse_date(prescription.get("issued_on"))
    cp = _d(receipt, "care_period")
    start, end = parse_date(cp.get("start")), parse_date(cp.get("end"))
    return issued is not None and start is not None and end is not None and start <= issued <= end


# ------------------------------------------------------------------ rules (§7.2)


def _patient_mismatch(a: dict[str, Any], b: dict[str, Any]) -> list[Problem]:
    pa, pb = _d(a, "patient"), _d(b, "patient")
    out: list[Problem] = []
    for name in ("patient_reg_no", "rrn"):
        if pa.get(name) is not None and pb.get(name) is not None and pa[name] != pb[name]:
            out.append(problem("W-505", f"patient.{name}"))
    na, nb = pa.get("name"), pb.get("name")
    if isinstance(na, str) and isinstance(nb, str) and not names_equal(na, nb):
        out.append(problem("W-505", "patient.name"))
    return out


def _detail_receipt(detail: dict[str, Any], receipt: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    legacy = receipt.get("amount_layout") == "legacy_selective"
    columns = CORE_COLUMNS + LEGACY_COLUMNS if legacy else CORE_COLUMNS
    dt_, rt = _d(detail, "totals"), _d(receipt, "totals")
    if any(_int(dt_.get(c)) != _int(rt.get(c)) for c in columns):  # W-501
        out.append(problem("W-501", "totals"))
    receipt_lines: dict[str, dict[str, Any]] = {}
    for ln in _lines(receipt):
        item = ln.get("item")
        if isinstance(item, str) and item != "other_optional":
            receipt_lines[item] = ln
        elif item == "other_optional":  # several allowed: sum them per item code
            acc = receipt_lines.setdefault(item, {})
            for c in columns:
                acc[c] = _int(acc.get(c)) + _int(ln.get(c))
    sums: dict[str, dict[str, int]] = {}
    item_line_count: dict[str, int] = {}
    for ln in _lines(detail):
        item = ln.get("item")
        if not isinstance(item, str):
            continue  # adjustment lines without item are not attributed
        acc = sums.setdefault(item, {})
        for c in ("total", *columns):
            acc[c] = acc.get(c, 0) + _int(ln.get(c))
        if ln.get("line_type") == "item":
            item_line_count[item] = item_line_count.get(item, 0) + 1
    w502 = w503 = False
    # "For some item k": of either side — an absent receipt line, or no detail line, counts as 0.
    for item in sorted(set(sums) | set(receipt_lines)):
        d_sums = sums.get(item, {})
        r_line = receipt_lines.get(item, {})
        receipt_row = sum(_int(r_line.get(c)) for c in CORE_COLUMNS)
        if d_sums.get("total", 0) != receipt_row:
            w502 = True
        tolerance = 10 * item_line_count.get(item, 0)
        if any(abs(d_sums.get(c, 0) - _int(r_line.get(c))) > tolerance for c in columns):
            w503 = True
    if w502:
        out.append(problem("W-502", "lines"))
    if w503:
        out.append(problem("W-503", "lines"))
    if detail.get("care_period") != receipt.get("care_period"):
        out.append(problem("W-504", "care_period"))
    if detail.get("amount_layout") != receipt.get("amount_layout"):
        out.append(problem("W-504", "amount_layout"))
    return out + _patient_mismatch(detail, receipt)


def _pharmacy_prescription(
    pharmacy: dict[str, Any], prescription: dict[str, Any], default_valid_days: int
) -> list[Problem]:
    out: list[Problem] = []
    dispensed_on = parse_date(pharmacy.get("dispensed_on"))
    issued_on = parse_date(prescription.get("issued_on"))
    if dispensed_on is not None and issued_on is not None:
        if dispensed_on < issued_on:
            out.append(problem("W-506", "dispensed_on"))
        valid_days = prescription.get("valid_days")
        if type(valid_days) is not int or valid_days < 1:
            valid_days = default_valid_days
        # The issue day counts as day 1; weekends and holidays do not extend it (§13 O-6).
        if dispensed_on > issued_on + dt.timedelta(days=valid_days - 1):
            out.append(problem("W-507", "dispensed_on"))
    rx_lines = _lines(prescription)
    days = [ln["days"] for ln in rx_lines if type(ln.get("days")) is int]
    supplied = pharmacy.get("days_supplied")
    if days and type(supplied) is int and supplied > max(days):
        out.append(problem("W-508", "days_supplied"))
    name_p = _d(pharmacy, "prescribing_institution").get("name")
    name_r = _d(prescription, "institution").get("name")
    if isinstance(name_p, str) and isinstance(name_r, str) and not names_equal(name_p, name_r):
        out.append(problem("W-509", "prescribing_institution.name"))
    rx_codes = {ln.get("code") for ln in rx_lines if ln.get("code") is not None}
    for i, ln in enumerate(pharmacy.get("lines") or []):
        if isinstance(ln, dict) and ln.get("code") is not None and ln.get("code") not in rx_codes:
            out.append(problem("W-510", f"lines[{i}].code"))
    if any(ln.get("copay_rate_code") in codes.FULL_SELF_PAY_RATE_CODES for ln in rx_lines):
        if _int(_d(pharmacy, "totals").get("full_self_pay")) == 0:
            out.append(problem("W-511", "totals.full_self_pay"))
    return out + _patient_mismatch(pharmacy, prescription)


def cross_warnings(a: dict[str, Any], b: dict[str, Any], *, default_valid_days: int = 3) -> list[Problem]:
    """W-501 … W-512 for two linked current versions, in either order (empty for other pairs).

    Linking is the caller's job (`find_receipt_for_detail`, `find_prescription_for_pharmacy`).
    Cancelled documents are not compared, except by W-512."""
    types = {a.get("document_type"): a, b.get("document_type"): b}
    if "receipt_detail" in types and "receipt" in types:
        detail, receipt = types["receipt_detail"], types["receipt"]
        cancelled = [detail.get("status") == "cancelled", receipt.get("status") == "cancelled"]
        if any(cancelled):
            return [problem("W-512", "status")] if not all(cancelled) else []
        return _detail_receipt(detail, receipt)
    if "pharmacy_receipt" in types and "prescription" in types:
        pharmacy, prescription = types["pharmacy_receipt"], types["prescription"]
        if "cancelled" in (pharmacy.get("status"), prescription.get("status")):
            return []
        return _pharmacy_prescription(pharmacy, prescription, default_valid_days)
    return []
