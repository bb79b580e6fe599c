"""The value every rule produces: a `Problem` naming a rule id and a JSON path, never a value.

Errors are rule ids starting with ``R-`` (the file is quarantined), warnings start with ``W-``
(documents.md §2.6). Messages are fixed texts per rule so they cannot leak personal data (§10).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One rule violation: rule id (``R-204``), JSON path (``lines[3].total``), value-free message."""

    rule: str
    path: str
    message: str
    record: int | None = None

    @property
    def is_error(self) -> bool:
        return self.rule.startswith("R-")

    @property
    def is_warning(self) -> bool:
        return self.rule.startswith("W-")

    def with_record(self, record: int | None) -> Problem:
        """The same problem attributed to a record index of a file (readers, ingest)."""
        return Problem(self.rule, self.path, self.message, record)


def join_path(parent: str, name: str | int) -> str:
    """JSON path as used in problems: ``lines[3].total``, ``patient.rrn``; root is ``""``."""
    if isinstance(name, int):
        return f"{parent}[{name}]"
    return f"{parent}.{name}" if parent else name


# Fixed, value-free message per rule id (documents.md §2.7, §3.6, §4.4, §5.3, §6.4, §7.2, §9.5).
RULE_MESSAGES: dict[str, str] = {
    "R-001": "file larger than the maximum file size",
    "R-002": "file encoding not accepted",
    "R-003": "unsafe XML",
    "R-004": "content not well-formed or holds no records",
    "R-005": "document_type missing or not allowed",
    "R-006": "schema_version missing or not supported",
    "R-010": "version conflict with a stored version",
    "R-011": "version is not an integer in the allowed range",
    "R-012": "status not allowed",
    "R-013": "cancel_reason present on an active document",
    "R-014": "new version changes the document key or the patient identity",
    "R-020": "required field missing",
    "R-021": "wrong JSON type",
    "R-022": "empty or white-space-only string",
    "R-023": "forbidden character, not normalised, or too long",
    "R-024": "date or date-time malformed",
    "R-025": "unknown field",
    "R-026": "enumeration value not allowed",
    "R-027": "decimal malformed or too many fraction digits",
    "R-028": "value or array length out of range",
    "R-029": "string outside its allowed pattern",
    "R-030": "요양기관기호 (ykiho) invalid",
    "R-031": "business registration number invalid",
    "R-032": "resident registration number invalid",
    "R-033": "rrn_masked malformed or given together with rrn",
    "R-034": "issued_on later than the date of receipt",
    "R-035": "date before 2000-01-01 or birth date after issued_on",
    "W-001": "agent-managed field on input was replaced",
    "W-002": "date of issued_at differs from issued_on",
    "W-011": "new version changes the patient name or registration number",
    "W-012": "cancellation for a document with no earlier version",
    "W-013": "active version after a cancelled one (re-activation)",
    "W-020": "patient.rrn absent",
    "W-021": "only rrn_masked given",
    "W-022": "institution.type_code absent or unknown",
    "W-023": "issued_on more than 10 years before receipt",
    "R-101": "inpatient_bill_type does not match visit_type",
    "R-102": "care_period ends before it starts",
    "R-103": "care_period starts after issued_on",
    "R-104": "department_code is not two digits",
    "R-105": "money columns do not match amount_layout",
    "R-106": "duplicate item or other_optional label problem",
    "R-107": "legacy non_covered differs from selective + non_selective",
    "R-108": "totals column differs from the sum of the lines",
    "R-109": "total_charge differs from the sum of the totals",
    "R-110": "cap_excess outside 0 … totals.copay",
    "R-111": "insurer_charge_total differs from totals.insurer + cap_excess",
    "R-112": "patient_charge_total does not match the totals",
    "R-113": "amount_due does not match patient_charge_total, prepaid and rounding",
    "R-114": "paid.total differs from the sum of the payments",
    "R-115": "unpaid differs from amount_due − paid.total",
    "R-116": "lines empty",
    "R-117": "amount_due_rounding outside −99 … 99",
    "W-101": "cap_excess on an outpatient receipt",
    "W-102": "care_period ends after issued_on",
    "W-103": "care_period unusually long",
    "W-104": "department_code not in the code table",
    "W-105": "drg_no and drg_bundle line disagree",
    "W-106": "amount_due_rounding is not zero",
    "W-107": "unpaid is not zero",
    "W-108": "amount_due is negative",
    "W-109": "legacy_selective layout for care from 2018 on",
    "W-110": "room or long-term-care line unexpected for this visit or institution",
    "W-111": "general patient category with an insurer share",
    "W-112": "institution representative or address absent",
    "W-113": "cash receipt approval number and cash receipt amount disagree",
    "R-201": "money columns do not match amount_layout",
    "R-202": "care_period ends before it starts",
    "R-203": "line_no duplicated or not ascending",
    "R-204": "line total differs from amount × dose × count × days by more than 10",
    "R-205": "line total differs from the sum of its columns",
    "R-206": "totals differ from the sum of the lines",
    "R-207": "legacy non_covered differs from selective + non_selective",
    "R-208": "field required or forbidden for this line type",
    "R-209": "line money signs disagree with the sign of count",
    "R-210": "adjustment line amount outside −9999 … 9999",
    "R-211": "code and code_type must be given together",
    "R-212": "lines empty",
    "W-201": "line total differs from amount × dose × count × days by 2 … 10",
    "W-202": "line date outside care_period",
    "W-203": "line with negative count or total",
    "W-204": "large or non-zero-total adjustment line",
    "W-205": "code does not match the syntax of its code_type",
    "W-206": "insured line without code",
    "W-207": "receipt_no absent",
    "R-301": "document_no is not a valid 교부번호",
    "R-302": "date part of document_no differs from issued_on",
    "R-303": "lines empty",
    "R-304": "dose, daily_count or days out of range",
    "R-305": "drug code malformed or code/code_type not given together",
    "R-307": "diagnosis codes given although withheld",
    "R-308": "diagnosis code syntax invalid",
    "R-309": "injection_dispensing does not match the injection lines",
    "R-310": "license_type not allowed",
    "R-311": "valid_days outside 1 … 365",
    "R-312": "patient rrn and rrn_masked both absent",
    "R-313": "dispensing date before issued_on",
    "R-314": "line_no duplicated",
    "W-301": "diagnosis codes absent",
    "W-302": "valid_days absent",
    "W-303": "valid_days longer than 30",
    "W-304": "line without code",
    "W-305": "line with more than 180 days",
    "W-306": "copay_exemption_code syntax unexpected",
    "W-307": "license_no not all digits",
    "W-308": "same code twice with the same kind",
    "W-309": "prescription issued by a pharmacy type institution",
    "R-401": "total_charge differs from the sum of the totals",
    "R-402": "patient_charge_total differs from copay + full_self_pay",
    "R-403": "paid.total differs from the sum of the payments",
    "R-404": "prescription_issue_no is not a valid 교부번호",
    "R-405": "days_supplied outside 1 … 999",
    "R-406": "fee_breakdown does not add up to total_charge",
    "R-407": "negative amount",
    "R-408": "line_no duplicated",
    "R-409": "date part of prescription_issue_no after dispensed_on",
    "W-401": "paid.total differs from patient_charge_total",
    "W-402": "issued_on before dispensed_on",
    "W-403": "pharmacist_name absent",
    "W-404": "institution type_code is not a pharmacy",
    "W-405": "dispensed more than 30 days after the prescription date",
    "W-406": "full_self_pay without a non-covered line",
    "W-407": "line code fails the drug-code syntax",
    "W-408": "line amounts do not add up to total_charge",
    "W-501": "detail totals differ from the receipt totals",
    "W-502": "detail sum per item differs from the receipt line",
    "W-503": "detail column per item differs from the receipt line beyond rounding",
    "W-504": "care_period or amount_layout differs from the receipt",
    "W-505": "patient differs between linked documents",
    "W-506": "dispensed before the prescription was issued",
    "W-507": "dispensed after the prescription expired",
    "W-508": "days_supplied longer than the prescription",
    "W-509": "prescribing institution name differs",
    "W-510": "dispensed drug code not on the prescription",
    "W-511": "full-pay copay rate code without full_self_pay",
    "W-512": "one of the linked documents is cancelled",
}


def problem(rule: str, path: str, record: int | None = None) -> Problem:
    """A `Problem` with the fixed message of its rule (never a value)."""
    return Problem(rule, path, RULE_MESSAGES.get(rule, "rule violated"), record)
