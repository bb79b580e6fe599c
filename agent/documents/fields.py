"""The field table of the four standard documents (documents.md §2–§6): the single source of truth.

Every field of every document type is described once here — JSON kind, required-ness, lengths,
patterns, enumerations, ranges and which rule id reports a violation. The validator
(`validate.py`), the JSON Schema (`schema.py`), the readers (through `field_kind`) and the field
tables in ``docs/standard-format.md`` (``python -m agent.documents.fields --markdown``) are all
derived from it, so they cannot disagree.

Conditional requirements ("iff inpatient", "item lines only", "legacy only") cannot be expressed
as a flag; they are marked ``required=False`` here, described in ``note`` and checked by the
specific rule in `validate.py`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from agent.documents import codes

DOCUMENT_TYPES: tuple[str, ...] = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
KINDS: tuple[str, ...] = (
    "str",
    "int",
    "dec",
    "bool",
    "date",
    "datetime",
    "object",
    "array_object",
    "array_str",
)

MONEY_MAX = 99_999_999_999
MAX_VERSION = 2**53 - 1
# Decimal syntax of §2.1: at most 9 integer and 4 fraction digits, no "+", no trailing ".".
DEC_PATTERN = r"^-?(0|[1-9][0-9]{0,8})(\.[0-9]{1,4})?$"

AGENT_FIELDS: tuple[str, ...] = ("source", "received_at", "content_hash", "validation")


@dataclass(frozen=True)
class Field:
    """One field. Rule attributes name the rule reported when that check fails (specific before
    generic, §2.6): e.g. ``ykiho`` reports R-030 instead of R-029/R-021."""

    name: str
    kind: str
    required: bool = False
    ko: str = ""
    note: str = ""
    money: bool = False  # int-KRW (for documentation; kind stays "int")
    min_len: int = 1
    max_len: int | None = None
    multiline: bool = False
    pattern: str | None = None
    pattern_rule: str = "R-029"
    enum: tuple[str, ...] | None = None
    enum_rule: str = "R-026"
    minimum: int | Decimal | None = None
    min_exclusive: bool = False
    maximum: int | Decimal | None = None
    range_rule: str = "R-028"
    min_rule: str | None = None  # rule when below minimum, if it differs from range_rule
    nonzero: bool = False
    frac_digits: int | None = None
    min_items: int = 0
    max_items: int | None = None
    items_rule: str = "R-028"  # too many elements
    empty_rule: str | None = None  # array below min_items
    type_rule: str = "R-021"
    missing_rule: str = "R-020"
    agent: bool = False
    children: Mapping[str, Field] | None = None
    compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind}")
        if self.pattern is not None:
            object.__setattr__(self, "compiled", re.compile(self.pattern))


def _obj(*fields: Field) -> Mapping[str, Field]:
    return MappingProxyType({f.name: f for f in fields})


def S(name: str, max_len: int | None, req: bool = False, ko: str = "", **kw: object) -> Field:
    """A text field of 1…max_len code points."""
    return Field(name, "str", req, ko, max_len=max_len, **kw)  # type: ignore[arg-type]


def M(name: str, req: bool = True, ko: str = "", *, signed: bool = False, **kw: object) -> Field:
    """A money field (int-KRW); non-negative unless ``signed``."""
    kw.setdefault("minimum", -MONEY_MAX if signed else 0)
    kw.setdefault("maximum", MONEY_MAX)
    return Field(name, "int", req, ko, money=True, **kw)  # type: ignore[arg-type]


def I(name: str, lo: int, hi: int, req: bool = False, ko: str = "", **kw: object) -> Field:  # noqa: E743
    return Field(name, "int", req, ko, minimum=lo, maximum=hi, **kw)  # type: ignore[arg-type]


def E(name: str, values: tuple[str, ...], req: bool = False, ko: str = "", **kw: object) -> Field:
    return Field(name, "str", req, ko, enum=values, **kw)  # type: ignore[arg-type]


def D(name: str, frac: int, req: bool = False, ko: str = "", **kw: object) -> Field:
    return Field(name, "dec", req, ko, frac_digits=frac, **kw)  # type: ignore[arg-type]


def B(name: str, req: bool = False, ko: str = "", **kw: object) -> Field:
    return Field(name, "bool", req, ko, **kw)  # type: ignore[arg-type]


def DT(name: str, req: bool = False, ko: str = "", **kw: object) -> Field:
    return Field(name, "date", req, ko, **kw)  # type: ignore[arg-type]


def O(name: str, children: Mapping[str, Field], req: bool = False, ko: str = "", **kw: object) -> Field:  # noqa: E743
    return Field(name, "object", req, ko, children=children, **kw)  # type: ignore[arg-type]


def A(name: str, children: Mapping[str, Field], req: bool = False, ko: str = "", **kw: object) -> Field:
    return Field(name, "array_object", req, ko, children=children, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- enumerations (§2–§6, ID-9…ID-11)

STATUS = ("active", "cancelled")
REVISION_REASONS = ("original", "reissue", "correction", "partial_refund", "cancellation")
VISIT_TYPES = ("outpatient", "inpatient")
INPATIENT_BILL_TYPES = ("discharge", "interim")
AMOUNT_LAYOUTS = ("current", "legacy_selective")
RECEIPT_ITEMS: tuple[str, ...] = (
    "consultation", "room_single", "room_double_triple", "room_ward", "meals",
    "medication_service", "medication_drug", "injection_service", "injection_drug", "anesthesia",
    "procedure_surgery", "lab_test", "imaging", "radiotherapy", "materials", "rehab_physio",
    "psychotherapy", "blood", "ct", "mri", "pet", "ultrasound", "prosthetics_orthodontics",
    "certificates", "other_optional", "selective_benefit", "flat_65plus", "flat_ltc_hospital",
    "flat_palliative", "drg_bundle", "other",
)  # fmt: skip
DETAIL_LINE_TYPES = ("item", "rounding_adjustment")
DETAIL_CODE_TYPES = ("edi_procedure", "edi_drug", "edi_material", "local")
INSURANCE_TYPES = ("health_insurance", "medical_aid", "industrial_accident", "auto_insurance", "other")
RX_KINDS = ("medication", "injection")
RX_CODE_TYPES = ("3", "4", "5")
INJECTION_DISPENSING = ("in_house", "outpatient")
COVERAGE = ("covered", "full_copay_100", "non_covered")
SOURCE_FORMATS = ("json", "jsonl", "xml", "csv", "fixed")
SOURCE_ENCODINGS = ("utf-8", "cp949")

# Money columns of receipt/detail lines and totals per layout (§3.2).
CORE_COLUMNS: tuple[str, ...] = ("copay", "insurer", "full_copay", "non_covered")
LEGACY_COLUMNS: tuple[str, ...] = ("selective", "non_selective")

# ---------------------------------------------------------------- shared blocks

SCHEMA_VERSION_PATTERN = r"^[0-9]+\.[0-9]+$"
DOCUMENT_NO_PATTERN = r"^[0-9A-Za-z._/-]{1,40}$"
ISSUE_NO_PATTERN = r"^([0-9]{8})-([0-9]{5})$"  # ID-5
PHONE_PATTERN = r"^[0-9+()\- ]+$"
YKIHO_PATTERN = r"^[0-9]{8}$"  # ID-1
RRN_MASKED_PATTERN = r"^[0-9]{7}\*{6}$"
PATIENT_REG_NO_PATTERN = r"^[0-9A-Za-z-]{1,20}$"
KCD_PATTERN = r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,3})?$"  # ID-4 (after normalisation)


def _institution(doc_type: str) -> Field:
    brn_required = doc_type in ("receipt", "pharmacy_receipt")
    return O(
        "institution",
        _obj(
            S(
                "ykiho",
                None,
                True,
                "요양기관기호",
                pattern=YKIHO_PATTERN,
                pattern_rule="R-030",
                type_rule="R-030",
                note="ID-1: 8 digits",
            ),
            S("name", 100, True, "요양기관 명칭 / 상호"),
            Field(
                "type_code",
                "str",
                False,
                "요양기관 종별",
                note="ID-8 two-digit code; not a string → R-021; unknown or absent → W-022",
            ),
            Field(
                "business_reg_no",
                "str",
                brn_required,
                "사업자등록번호",
                type_rule="R-031",
                note="ID-3: 10 digits + checksum (R-031)",
            ),
            S("representative", 50, False, "대표자 / 성명", note="personal data; absent → W-112 on receipts"),
            S("address", 200, False, "사업장 소재지"),
            S("phone", 20, False, "전화번호", pattern=PHONE_PATTERN),
            S("fax", 20, False, "팩스번호", pattern=PHONE_PATTERN),
            S("email", 100, False, "전자우편"),
        ),
        True,
        "요양기관",
    )


def _patient(doc_type: str) -> Field:
    reg_required = doc_type in ("receipt", "receipt_detail")
    return O(
        "patient",
        _obj(
            S("name", 100, True, "환자 성명"),
            B("name_is_pseudonym", False, "가명 기재"),
            Field(
                "rrn",
                "str",
                False,
                "주민등록번호 / 외국인등록번호",
                type_rule="R-032",
                note="ID-2: 13 digits (R-032); prescription: rrn or rrn_masked required (R-312); others W-020",
            ),
            S(
                "rrn_masked",
                None,
                False,
                "주민등록번호(일부)",
                pattern=RRN_MASKED_PATTERN,
                pattern_rule="R-033",
                type_rule="R-033",
                note="never with rrn (R-033); W-021",
            ),
            S("patient_reg_no", 20, reg_required, "환자등록번호", pattern=PATIENT_REG_NO_PATTERN),
        ),
        True,
        "환자",
    )


def _envelope(doc_type: str, document_no: Field | None = None) -> list[Field]:
    return [
        S(
            "schema_version",
            None,
            True,
            pattern=SCHEMA_VERSION_PATTERN,
            pattern_rule="R-006",
            type_rule="R-006",
            missing_rule="R-006",
            note='"1.N" (R-006)',
        ),
        E(
            "document_type",
            DOCUMENT_TYPES,
            True,
            "서류 종류",
            enum_rule="R-005",
            type_rule="R-005",
            missing_rule="R-005",
        ),
        document_no or S("document_no", 40, True, "영수증번호 / 교부번호", pattern=DOCUMENT_NO_PATTERN),
        I("version", 1, MAX_VERSION, True, "발행 차수", range_rule="R-011", type_rule="R-011"),
        E("status", STATUS, True, "상태", enum_rule="R-012", type_rule="R-012"),
        E("revision_reason", REVISION_REASONS, False, "정정 사유"),
        S("cancel_reason", 200, False, "취소 사유", note="only with status = cancelled (R-013)"),
        DT("issued_on", True, "발행일 / 교부일"),
        Field("issued_at", "datetime", False, note="KST date should equal issued_on (W-002)"),
        _institution(doc_type),
        _patient(doc_type),
        # Agent-managed (§2.5): accepted on input (W-001), then removed and replaced.
        O(
            "source",
            _obj(
                S("file_name", 255, True),
                S("sha256", None, True, pattern=r"^[0-9a-f]{64}$"),
                I("record_index", 0, MAX_VERSION, True),
                S("profile", 64, True),
                E("format", SOURCE_FORMATS, True),
                E("encoding", SOURCE_ENCODINGS, True),
            ),
            False,
            "원본 정보",
            agent=True,
        ),
        Field("received_at", "datetime", False, "수신 시각", agent=True),
        S("content_hash", None, False, pattern=r"^[0-9a-f]{64}$", agent=True),
        O(
            "validation",
            _obj(
                A("warnings", _obj(S("rule", None, True), S("path", None, True))),
                A("cross_warnings", _obj(S("rule", None, True), S("path", None, True))),
            ),
            False,
            "검증 결과",
            agent=True,
        ),
    ]


def _care_period(ko: str = "진료기간") -> Field:
    return O("care_period", _obj(DT("start", True), DT("end", True)), True, ko)


def _paid(neg_rule: str) -> Field:
    return O(
        "paid",
        _obj(
            M("card", min_rule=neg_rule),
            M("cash_receipt", min_rule=neg_rule),
            M("cash", min_rule=neg_rule),
            M("total", min_rule=neg_rule),
        ),
        True,
        "납부한 금액",
    )


# ---------------------------------------------------------------- receipt (§3)


def _receipt_columns(signed: bool, min_rule: str | None = None) -> list[Field]:
    cols = [M(c, True, signed=signed, min_rule=min_rule) for c in CORE_COLUMNS]
    cols += [
        M(c, False, signed=signed, min_rule=min_rule, note="legacy_selective only (R-105)")
        for c in LEGACY_COLUMNS
    ]
    return cols


RECEIPT: tuple[Field, ...] = (
    *_envelope("receipt"),
    E("visit_type", VISIT_TYPES, True, "외래 / 입원"),
    E("inpatient_bill_type", INPATIENT_BILL_TYPES, False, "퇴원 / 중간", note="iff inpatient (R-101)"),
    _care_period(),
    B("night_care", False, "야간 진료"),
    B("holiday_care", False, "공휴일 진료"),
    S(
        "department_code",
        None,
        True,
        "진료과목",
        pattern=r"^[0-9]{2}$",
        pattern_rule="R-104",
        type_rule="R-104",
        note="ID-7; unknown → W-104",
    ),
    S("department_name", 50, False, "진료과목명"),
    S("drg_no", None, False, "질병군(DRG)번호", pattern=r"^[0-9A-Z]{1,10}$"),
    S("room", 30, False, "병실"),
    E("patient_category", codes.PATIENT_CATEGORIES, True, "환자구분"),
    S("patient_category_text", 30, False, "환자구분(표기)", note="required for patient_category other"),
    E("amount_layout", AMOUNT_LAYOUTS, True, "서식 구분"),
    A(
        "lines",
        _obj(
            E("item", RECEIPT_ITEMS, True, "항목"),
            S("label", 50, False, "표기", note="required for other_optional (R-106)"),
            *_receipt_columns(signed=False),
        ),
        True,
        "항목별 금액",
        min_items=1,
        max_items=100,
        empty_rule="R-116",
    ),
    O("totals", _obj(*_receipt_columns(signed=False)), True, "합계"),
    M("cap_excess", True, "상한액 초과금", min_rule="R-110"),
    M("total_charge", True, "진료비 총액"),
    M("insurer_charge_total", False, "공단부담 총액", note="current layout: required"),
    M("patient_charge_total", True, "환자부담 총액"),
    M("prepaid", True, "이미 납부한 금액"),
    M("amount_due_rounding", False, "끝처리 금액", minimum=-99, maximum=99, range_rule="R-117"),
    M("amount_due", True, "납부할 금액", signed=True),
    _paid("R-028"),
    M("unpaid", True, "납부하지 않은 금액", signed=True),
    S("cash_receipt_id", 30, False, "현금영수증 신분확인번호"),
    S("cash_receipt_approval_no", 30, False, "현금승인번호"),
    S("remarks", 1000, False, "요양기관 임의활용공간", multiline=True),
)

# ---------------------------------------------------------------- itemised statement (§4)

RECEIPT_DETAIL: tuple[Field, ...] = (
    *_envelope("receipt_detail"),
    S("receipt_no", 40, False, "영수증번호", pattern=DOCUMENT_NO_PATTERN, note="absent → W-207"),
    E("visit_type", VISIT_TYPES, False, "외래 / 입원"),
    _care_period(),
    S("room", 30, False, "병실"),
    E("patient_category", codes.PATIENT_CATEGORIES, False, "환자구분"),
    E("amount_layout", AMOUNT_LAYOUTS, True, "서식 구분"),
    A(
        "lines",
        _obj(
            I("line_no", 1, 20_000, True, "순번"),
            E("line_type", DETAIL_LINE_TYPES, True, "구분"),
            E("item", RECEIPT_ITEMS, False, "항목", note="item lines: required (R-208)"),
            DT("date", False, "일자", note="item lines: required (R-208)"),
            S("code", 20, False, "코드", pattern=r"^[0-9A-Za-z-]{1,20}$"),
            E("code_type", DETAIL_CODE_TYPES, False, "코드 구분", note="with code (R-211)"),
            S("name", 200, True, "명칭"),
            D("amount", 2, False, "금액 (단가)", minimum=Decimal(0), note="item lines: required (R-208)"),
            D("dose", 4, False, "1회 투여량", minimum=Decimal(0), min_exclusive=True),
            D("count", 4, False, "횟수", nonzero=True, note="item lines: required (R-208); ≠ 0"),
            I("days", 1, 999, False, "일수", note="item lines: required (R-208)"),
            M("total", True, "총액", signed=True),
            *_receipt_columns(signed=True),
            E("copay_rate_code", codes.COPAY_RATE_CODES, False, "본인부담률 구분"),
        ),
        True,
        "세부 내역",
        min_items=1,
        max_items=20_000,
        empty_rule="R-212",
    ),
    O("totals", _obj(M("total", True, signed=True), *_receipt_columns(signed=True)), True, "합계"),
    S("remarks", 1000, False, "비고", multiline=True),
)

# ---------------------------------------------------------------- prescription (§5)

PRESCRIPTION: tuple[Field, ...] = (
    *_envelope(
        "prescription",
        S(
            "document_no",
            None,
            True,
            "교부번호",
            pattern=ISSUE_NO_PATTERN,
            pattern_rule="R-301",
            type_rule="R-301",
            note="ID-5 (R-301, R-302)",
        ),
    ),
    E("insurance_type", INSURANCE_TYPES, True, "보험 구분"),
    S("insurance_type_text", 50, False, "기타 내용"),
    B("diagnosis_withheld", True, "질병분류기호 미기재"),
    Field(
        "diagnosis_codes",
        "array_str",
        False,
        "질병분류기호",
        max_items=10,
        pattern=KCD_PATTERN,
        pattern_rule="R-308",
        type_rule="R-308",
        note="KCD (ID-4), normalised; empty when withheld (R-307)",
    ),
    O(
        "prescriber",
        _obj(
            S("name", 50, True, "성명"),
            E("license_type", codes.LICENSE_TYPES, True, "면허종별", enum_rule="R-310", type_rule="R-310"),
            S("license_no", 10, True, "면허번호", note="digits expected (W-307)"),
        ),
        True,
        "처방 의료인",
    ),
    A(
        "lines",
        _obj(
            I("line_no", 1, 9_999, True, "줄번호"),
            E("kind", RX_KINDS, True, "구분"),
            E("code_type", RX_CODE_TYPES, False, "코드 구분", note="with code (R-305)"),
            S(
                "code",
                None,
                False,
                "의약품 코드",
                pattern=r"^[0-9A-Z]{9}$",
                pattern_rule="R-305",
                type_rule="R-305",
                note="absent → W-304",
            ),
            S("name", 200, True, "처방 의약품 명칭"),
            D(
                "dose",
                4,
                True,
                "1회 투약량",
                minimum=Decimal(0),
                min_exclusive=True,
                maximum=Decimal("99999.9999"),
                range_rule="R-304",
            ),
            S("dose_unit", 10, False, "단위"),
            I("daily_count", 1, 99, True, "1일 투여횟수", range_rule="R-304"),
            I("days", 1, 999, True, "총 투약일수", range_rule="R-304", note="> 180 → W-305"),
            E("copay_rate_code", codes.COPAY_RATE_CODES, False, "본인부담률 구분코드"),
            S("usage", 200, False, "용법"),
        ),
        True,
        "처방 의약품",
        min_items=1,
        max_items=200,
        empty_rule="R-303",
    ),
    E(
        "injection_dispensing",
        INJECTION_DISPENSING,
        False,
        "주사제 처방내역 구분",
        note="iff any injection line (R-309)",
    ),
    Field("copay_exemption_code", "str", False, "본인부담 구분기호", note="syntax → W-306"),
    S("dispensing_notes", 500, False, "조제 시 참고사항", multiline=True),
    I("valid_days", 1, 365, False, "사용기간", range_rule="R-311", note="absent → W-302"),
    O(
        "dispensing",
        _obj(
            S("pharmacy_name", 100, False, "약국 명칭"),
            S("pharmacist_name", 50, False, "조제약사"),
            S("quantity_text", 100, False, "조제량·조제일수"),
            DT("dispensed_on", False, "조제 연월일", note="≥ issued_on (R-313)"),
            S("change_notes", 500, False, "처방 변경·수정·확인·대체 내용", multiline=True),
        ),
        False,
        "의약품 조제내역",
    ),
)

# ---------------------------------------------------------------- pharmacy receipt (§6)

PHARMACY_RECEIPT: tuple[Field, ...] = (
    *_envelope("pharmacy_receipt"),
    DT("dispensed_on", True, "조제일자"),
    I("days_supplied", 1, 999, True, "투약일수", range_rule="R-405"),
    B("night_care", False, "야간"),
    B("holiday_care", False, "공휴"),
    S(
        "prescription_issue_no",
        None,
        True,
        "처방전 교부번호",
        pattern=ISSUE_NO_PATTERN,
        pattern_rule="R-404",
        type_rule="R-404",
        note="ID-5 (R-404, R-409)",
    ),
    O(
        "prescribing_institution",
        _obj(
            S("name", 100, True, "명칭"),
            S(
                "ykiho",
                None,
                False,
                "요양기관기호",
                pattern=YKIHO_PATTERN,
                pattern_rule="R-030",
                type_rule="R-030",
            ),
        ),
        True,
        "처방전 발행기관",
    ),
    S("prescriber_name", 50, False, "처방 의사"),
    S("pharmacist_name", 50, False, "조제약사", note="absent → W-403"),
    O(
        "totals",
        _obj(
            M("copay", True, "본인부담금", min_rule="R-407"),
            M("insurer", True, "보험자부담금", min_rule="R-407"),
            M("full_self_pay", True, "비급여(전액본인부담)", min_rule="R-407"),
        ),
        True,
        "요양급여 · 비급여",
    ),
    M("total_charge", True, "약제비 총액"),
    M("patient_charge_total", True, "수납금액"),
    _paid("R-407"),
    S("cash_receipt_id", 30, False, "신분확인번호"),
    S("cash_receipt_approval_no", 30, False, "현금승인번호"),
    O(
        "fee_breakdown",
        _obj(
            M("dispensing_fee", True, "조제료", min_rule="R-407"),
            M("drug_cost", True, "약품비", min_rule="R-407"),
        ),
        False,
        "조제료·약품비 내역",
    ),
    A(
        "lines",
        _obj(
            I("line_no", 1, 9_999, True, "순번"),
            Field("code", "str", False, "약품코드", note="ID-6 drug syntax → W-407"),
            S("name", 200, True, "약품명"),
            D("dose", 4, False, "투약량", minimum=Decimal(0), min_exclusive=True),
            I("daily_count", 1, 99, False, "횟수"),
            I("days", 1, 999, False, "일수"),
            E("coverage", COVERAGE, False, "급여 구분"),
            M("amount", False, "금액", min_rule="R-407"),
        ),
        False,
        "약품 내역",
        max_items=200,
    ),
    S("remarks", 1000, False, "비고", multiline=True),
)

FIELDS: Mapping[str, Mapping[str, Field]] = MappingProxyType(
    {
        "receipt": _obj(*RECEIPT),
        "receipt_detail": _obj(*RECEIPT_DETAIL),
        "prescription": _obj(*PRESCRIPTION),
        "pharmacy_receipt": _obj(*PHARMACY_RECEIPT),
    }
)

# With status = cancelled only these are required (§9.4).
CANCEL_REQUIRED: frozenset[tuple[str, ...]] = frozenset(
    {
        ("schema_version",),
        ("document_type",),
        ("document_no",),
        ("version",),
        ("status",),
        ("issued_on",),
        ("institution",),
        ("institution", "ykiho"),
        ("institution", "name"),
        ("patient",),
        ("patient", "name"),
    }
)


def _flatten(fields: Mapping[str, Field], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Field]:
    out: dict[tuple[str, ...], Field] = {}
    for f in fields.values():
        path = (*prefix, f.name)
        out[path] = f
        if f.children is not None:
            out.update(_flatten(f.children, path))
    return out


# Precomputed once: readers call field_kind per cell, so it must be a dict lookup.
_BY_PATH: Mapping[str, Mapping[tuple[str, ...], Field]] = MappingProxyType(
    {t: MappingProxyType(_flatten(fs)) for t, fs in FIELDS.items()}
)


def field_spec(document_type: str, path: tuple[str, ...]) -> Field | None:
    """The `Field` at an index-free path, or None when it is not a field of that type."""
    table = _BY_PATH.get(document_type)
    return None if table is None else table.get(tuple(path))


def field_kind(document_type: str, path: tuple[str, ...]) -> str | None:
    """JSON kind of a field (``str``, ``int``, ``dec``, ``bool``, ``date``, ``datetime``,
    ``object``, ``array_object``, ``array_str``) or None when the path is not a field (R-025)."""
    f = field_spec(document_type, path)
    return None if f is None else f.kind


def all_paths(document_type: str) -> list[tuple[str, ...]]:
    """Every field path of a type, in table order (readers build CSV headers from it)."""
    return list(_BY_PATH[document_type])


# ---------------------------------------------------------------- documentation


def _type_text(f: Field) -> str:
    if f.money:
        text = "int-KRW"
        if f.minimum is not None and f.minimum < 0 and f.minimum != -MONEY_MAX:
            text += f" {f.minimum}…{f.maximum}"
        elif f.minimum is not None and f.minimum < 0:
            text += " (may be negative)"
        return text
    if f.kind == "int":
        return f"int {f.minimum}…{f.maximum}"
    if f.kind == "dec":
        return f"dec({f.frac_digits})"
    if f.enum is not None:
        return "enum: " + " \\| ".join(f"`{v}`" for v in f.enum)
    if f.kind == "str":
        text = "string"
        if f.max_len is not None:
            text += f" {f.min_len}–{f.max_len}"
        if f.pattern is not None:
            text += f" `{f.pattern}`"
        return text
    if f.kind == "array_object":
        return f"array of object ({f.min_items}…{f.max_items})"
    if f.kind == "array_str":
        return f"array of string (0…{f.max_items})"
    return f.kind


def _rows(fields: Mapping[str, Field], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for f in fields.values():
        path = prefix + f.name
        req = "yes" if f.required else "no"
        note = f.note
        if f.agent:
            req, note = "agent", (note + " agent-managed (W-001 on input)").strip()
        if f.multiline:
            note = (note + " multi-line").strip()
        rows.append(f"| `{path}` | {f.ko} | {_type_text(f)} | {req} | {note} |")
        if f.children is not None:
            sub = "[]." if f.kind == "array_object" else "."
            rows.extend(_rows(f.children, path + sub))
    return rows


def markdown() -> str:
    """The field tables of all four types as Markdown (docs/standard-format.md is this text)."""
    parts = [
        "# Standard document format — field tables",
        "",
        "Generated from `agent/documents/fields.py` by `python -m agent.documents.fields --markdown`;",
        "do not edit by hand (a test checks it is up to date). The contract is",
        "`../shared/spec/documents.md`; conditional requirements are checked by the rules named.",
        "",
    ]
    for t in DOCUMENT_TYPES:
        parts += [f"## `{t}`", "", "| path | Korean | type | required | note |", "|---|---|---|---|---|"]
        parts += _rows(FIELDS[t])
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover - tiny CLI for the doc generator
    if "--markdown" in sys.argv[1:]:
        sys.stdout.write(markdown())
    else:
        sys.stderr.write("usage: python -m agent.documents.fields --markdown\n")
        sys.exit(2)
