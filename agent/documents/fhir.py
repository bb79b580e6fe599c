"""FHIR R4 rendering of a stored standard document (documents.md §11, relay-api.md §6.4 format "fhir").

`render_bundle(doc, doc_id=..., fhir_base=...)` turns one stored current version into one FHIR R4
`Bundle` of type `document`, as a plain dict: the `Composition` first, then the resources it
references. `bundle_bytes(bundle)` serialises such a dict to the content bytes the relay receives.

Guarantees this module protects:

- **No RRN.** `patient.rrn` and `patient.rrn_masked` are never read, so a document with or without
  them renders identically (documents.md §10/§11.2, relay-api.md §6.4 minimisation).
- **Deterministic.** Every `urn:uuid` is `uuid5(namespace, f"{doc_id}:{version}:{slot}")` and nothing
  depends on the clock, dict order of the input or randomness, so the content bytes are identical
  between fetches of the same version.
- **No binary floating point.** Money is a JSON integer (`{"value": int, "currency": "KRW"}`);
  FHIR decimals (doses, quantities) are `int` when integral and `decimal.Decimal` otherwise — never
  a Python `float`. `json.dumps` cannot write a `Decimal`, so serialise with `bundle_bytes`, which
  writes it as a JSON number with its exact decimal text.
- **R4 only.** Only elements that exist in FHIR R4 4.0.1 are used (the tests validate with
  `fhir.resources.R4B`, see PITFALLS.md).

Pure: standard library only, no I/O. The few code tables it needs (Korean labels, ID-9 → 보험자구분)
are repeated here on purpose, so this renderer has no dependency on the validator's modules.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["DEFAULT_FHIR_BASE", "URN_NAMESPACE", "bundle_bytes", "render_bundle", "urn_uuid"]

DEFAULT_FHIR_BASE = "https://silson-agent.invalid/fhir"

# Fixed namespace for uuid5 (= uuid5(NAMESPACE_URL, base + "/urn-uuid-namespace"), frozen here): it must
# never change, or every rendered bundle changes its ids between agent versions.
URN_NAMESPACE = uuid.UUID("10be4187-8691-58c5-9207-49b4fe6c0fa5")

# §11.1 systems (HL7 Korea / KR Core).
SYS_KRNPI = "http://www.hl7korea.or.kr/Identifier/hira-krnpi"
SYS_ORG_TYPE = "http://www.hl7korea.or.kr/CodeSystem/hira-healthcare-organization-types"
SYS_DEPARTMENT = "http://www.hl7korea.or.kr/CodeSystem/hira-medical-department"
SYS_INSURANCE_TYPE = "http://www.hl7korea.or.kr/CodeSystem/hira-insurance-types"
SYS_KCD = "http://www.hl7korea.or.kr/CodeSystem/kostat-kcd-8"
SYS_EDI_MEDICATION = "http://www.hl7korea.or.kr/CodeSystem/hira-edi-medication"
SYS_EDI_PROCEDURE = "http://www.hl7korea.or.kr/CodeSystem/hira-edi-procedure"
SYS_EDI_MATERIAL = "http://www.hl7korea.or.kr/CodeSystem/hira-edi-material"
SYS_MD_LICENSE = "http://www.hl7korea.or.kr/Identifier/mohw-md-license-id"
SYS_UCUM = "http://unitsofmeasure.org"
SYS_V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

CURRENCY = "KRW"

DOCUMENT_TITLES: Mapping[str, str] = {
    "receipt": "진료비 계산서·영수증",
    "receipt_detail": "진료비 세부산정내역",
    "prescription": "처방전",
    "pharmacy_receipt": "약제비 계산서·영수증",
}

# documents.md §3.3 receipt rows (also the `item` of detail lines).
RECEIPT_ITEM_LABELS: Mapping[str, str] = {
    "consultation": "진찰료", "room_single": "입원료 · 1인실", "room_double_triple": "입원료 · 2·3인실",
    "room_ward": "입원료 · 4인실 이상", "meals": "식대", "medication_service": "투약 및 조제료 · 행위료",
    "medication_drug": "투약 및 조제료 · 약품비", "injection_service": "주사료 · 행위료",
    "injection_drug": "주사료 · 약품비", "anesthesia": "마취료", "procedure_surgery": "처치 및 수술료",
    "lab_test": "검사료", "imaging": "영상진단료", "radiotherapy": "방사선치료료", "materials": "치료재료대",
    "rehab_physio": "재활 및 물리치료료", "psychotherapy": "정신요법료", "blood": "전혈 및 혈액성분제제료",
    "ct": "CT 진단료", "mri": "MRI 진단료", "pet": "PET 진단료", "ultrasound": "초음파 진단료",
    "prosthetics_orthodontics": "보철·교정료", "certificates": "제증명수수료",
    "other_optional": "기타 선택항목", "selective_benefit": "선별급여", "flat_65plus": "65세 이상 등 정액",
    "flat_ltc_hospital": "정액수가 (요양병원)", "flat_palliative": "정액수가 (완화의료)",
    "drg_bundle": "질병군 포괄수가", "other": "기타", "rounding_adjustment": "끝처리 조정금액",
}  # fmt: skip

# ID-8 요양기관 종별 labels (display only; unknown codes are rendered without a display).
INSTITUTION_TYPE_LABELS: Mapping[str, str] = {
    "01": "상급종합병원", "11": "종합병원", "21": "병원", "28": "요양병원", "29": "정신병원",
    "31": "의원", "41": "치과병원", "51": "치과의원", "61": "조산원", "71": "보건소", "72": "보건지소",
    "73": "보건진료소", "74": "모자보건센터", "75": "보건의료원", "81": "약국", "91": "한방종합병원",
    "92": "한방병원", "93": "한의원", "94": "한약방",
}  # fmt: skip

# ID-9 환자구분 → HIRA 보험자구분 (only these four are mappable).
PATIENT_CATEGORY_INSURANCE: Mapping[str, str] = {
    "health_insurance": "4", "medical_aid": "5", "veterans": "7", "free_care": "9",
}  # fmt: skip

LICENSE_TYPE_LABELS: Mapping[str, str] = {
    "physician": "의사", "dentist": "치과의사", "korean_medicine_doctor": "한의사",
}  # fmt: skip

VISIT_TYPES: Mapping[str, tuple[str, str, str]] = {
    # visit_type → (Korean label, v3-ActCode code, v3-ActCode display)
    "outpatient": ("외래", "AMB", "ambulatory"),
    "inpatient": ("입원", "IMP", "inpatient encounter"),
}

COVERAGE_LABELS: Mapping[str, str] = {
    "covered": "급여", "full_copay_100": "100/100 전액본인부담", "non_covered": "비급여",
}  # fmt: skip

# Receipt money columns in print order; `non_covered` is last because in the legacy layout it is the
# sum of `selective` and `non_selective` (RC-9), so the row total never adds those two again.
RECEIPT_COLUMNS = ("copay", "insurer", "full_copay", "selective", "non_selective", "non_covered")
ROW_TOTAL_COLUMNS = ("copay", "insurer", "full_copay", "non_covered")
PHARMACY_COLUMNS = ("copay", "insurer", "full_self_pay")

KST_MIDNIGHT = "T00:00:00+09:00"


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def urn_uuid(doc_id: str, version: int, slot: str) -> str:
    """The deterministic `urn:uuid:` of one resource slot of one document version."""
    return "urn:uuid:" + str(uuid.uuid5(URN_NAMESPACE, f"{doc_id}:{version}:{slot}"))


def render_bundle(doc: dict, *, doc_id: str, fhir_base: str = DEFAULT_FHIR_BASE) -> dict:
    """Render a stored standard document (any of the four types) as a FHIR R4 document Bundle.

    `doc` is a stored document (it may carry `received_at`, `source`, `validation`; they are not
    rendered except `received_at` as `Bundle.timestamp`). A document whose `status` is `cancelled`
    renders as the §9.6 tombstone: a `Composition` with status `entered-in-error`, no subject and no
    section, plus the issuing `Organization`.
    """
    return _Renderer(doc, doc_id=doc_id, base=fhir_base.rstrip("/")).render()


def bundle_bytes(bundle: Any, *, indent: int | None = None) -> bytes:
    """Serialise a rendered bundle to UTF-8 JSON bytes, deterministically.

    Keys keep their insertion order (the renderer's order is fixed), strings are not ASCII-escaped,
    and a `Decimal` is written as a JSON number with its exact decimal text (never via float).
    Compact by default (the fetched content bytes); `indent` is for human-readable golden files.
    """
    parts: list[str] = []
    _write_json(bundle, parts, indent, 0)
    return "".join(parts).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Helpers (pure)
# ---------------------------------------------------------------------------------------------


def _write_json(value: Any, out: list[str], indent: int | None, level: int) -> None:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite decimal in FHIR bundle")
        out.append(_decimal_text(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif value is None:
        out.append("null")
    elif isinstance(value, Mapping):
        _write_container(list(value.items()), "{", "}", out, indent, level, keyed=True)
    elif isinstance(value, list | tuple):
        _write_container(list(enumerate(value)), "[", "]", out, indent, level, keyed=False)
    else:
        # A float (or anything else) here is a renderer bug: refuse instead of writing binary floats.
        raise TypeError(f"unsupported type in FHIR bundle: {type(value).__name__}")


def _write_container(
    items: list[tuple[Any, Any]],
    open_: str,
    close: str,
    out: list[str],
    indent: int | None,
    level: int,
    *,
    keyed: bool,
) -> None:
    if not items:
        out.append(open_ + close)
        return
    out.append(open_)
    for n, (key, item) in enumerate(items):
        if n:
            out.append(",")
        if indent is not None:
            out.append("\n" + " " * (indent * (level + 1)))
        if keyed:
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(": " if indent is not None else ":")
        _write_json(item, out, indent, level + 1)
    if indent is not None:
        out.append("\n" + " " * (indent * level))
    out.append(close)


def _decimal_text(value: Decimal) -> str:
    # Fixed-point text, trailing fraction zeros removed: Decimal("2.50") → "2.5", never "2.5E+0".
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _number(value: Decimal) -> int | Decimal:
    """A FHIR decimal: `int` when integral (so most JSON numbers carry no fraction), else exact Decimal."""
    if value == value.to_integral_value():
        return int(value)
    return Decimal(_decimal_text(value))


def _dec(value: Any) -> Decimal:
    # Stored decimals are canonical strings (documents.md §2.1); ints are accepted for robustness.
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("decimal fields must be strings or integers, never floats")
    return Decimal(str(value))


def _money(value: int) -> dict:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("money must be an integer number of won")
    return {"value": value, "currency": CURRENCY}


def _days(value: int) -> dict:
    # Duration requires a UCUM time code when a value is present (drt-1).
    return {"value": value, "unit": "d", "system": SYS_UCUM, "code": "d"}


def _add_days(date_text: str, days: int) -> str:
    return (dt.date.fromisoformat(date_text) + dt.timedelta(days=days)).isoformat()


def _coding(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _concept(codings: Iterable[dict], text: str | None = None) -> dict:
    concept: dict[str, Any] = {}
    codings = list(codings)
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


def _price_component(type_: str, amount: int, system: str | None = None, code: str | None = None) -> dict:
    component: dict[str, Any] = {"type": type_}
    if system and code:
        component["code"] = _concept([_coding(system, code)])
    component["amount"] = _money(amount)
    return component


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------


class _Renderer:
    """One rendering run: holds the document, the base URL and the entries built so far."""

    def __init__(self, doc: Mapping[str, Any], *, doc_id: str, base: str) -> None:
        self.doc = doc
        self.doc_id = doc_id
        self.base = base
        self.document_type: str = doc["document_type"]
        self.version: int = doc["version"]
        institution = doc.get("institution") or {}
        self.institution: Mapping[str, Any] = institution
        self.ykiho: str = institution["ykiho"]
        self.cancelled = doc.get("status") == "cancelled"
        self.entries: list[dict] = []

    # --- systems and urls -------------------------------------------------------------------

    def sys(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}"

    def ext_url(self, name: str) -> str:
        return self.sys("StructureDefinition", name)

    def doc_no_system(self, document_type: str | None = None, ykiho: str | None = None) -> str:
        return self.sys("sid", f"{document_type or self.document_type}/{ykiho or self.ykiho}")

    def urn(self, slot: str) -> str:
        return urn_uuid(self.doc_id, self.version, slot)

    def ref(self, slot: str) -> dict:
        return {"reference": self.urn(slot)}

    def add(self, slot: str, resource: dict) -> dict:
        full_url = self.urn(slot)
        # The resource id is the uuid itself, so fullUrl and id agree (bdl-7 style uniqueness).
        body = {"resourceType": resource.pop("resourceType"), "id": full_url.removeprefix("urn:uuid:")}
        body.update(resource)
        self.entries.append({"fullUrl": full_url, "resource": body})
        return body

    # --- top level --------------------------------------------------------------------------

    def render(self) -> dict:
        doc = self.doc
        composition_slot = "composition"
        # Reserve the first entry for the Composition (FHIR document rule); filled in at the end
        # because its section lists resources built below.
        self.entries.append({})
        self.add("organization", self.organization())
        if self.cancelled:
            composition = self.composition(subject=False, authors=["organization"], section=[])
        else:
            self.add("patient", self.patient())
            render_main = {
                "receipt": self.render_receipt,
                "receipt_detail": self.render_detail,
                "prescription": self.render_prescription,
                "pharmacy_receipt": self.render_pharmacy,
            }[self.document_type]
            authors, section = render_main()
            composition = self.composition(subject=True, authors=authors, section=section)
        self.entries[0] = {
            "fullUrl": self.urn(composition_slot),
            "resource": {
                "resourceType": "Composition",
                "id": self.urn(composition_slot).removeprefix("urn:uuid:"),
                **composition,
            },
        }
        return {
            "resourceType": "Bundle",
            "id": self.urn("bundle").removeprefix("urn:uuid:"),
            "meta": {"versionId": str(self.version)},
            "identifier": {"system": self.doc_no_system(), "value": doc["document_no"]},
            "type": "document",
            "timestamp": self.timestamp(),
            "entry": self.entries,
        }

    def timestamp(self) -> str:
        doc = self.doc
        if doc.get("received_at"):
            return doc["received_at"]
        if doc.get("issued_at"):
            return doc["issued_at"]
        return doc["issued_on"] + KST_MIDNIGHT

    def composition(self, *, subject: bool, authors: list[str], section: list[str]) -> dict:
        doc = self.doc
        composition: dict[str, Any] = {
            "meta": {"versionId": str(self.version)},
            "identifier": {"system": self.doc_no_system(), "value": doc["document_no"]},
            "status": "entered-in-error" if self.cancelled else "final",
            "type": _concept(
                [
                    _coding(
                        self.sys("CodeSystem", "document-type"),
                        self.document_type,
                        DOCUMENT_TITLES.get(self.document_type),
                    )
                ]
            ),
        }
        if subject:
            composition["subject"] = self.ref("patient")
        composition["date"] = doc.get("issued_at") or doc["issued_on"]
        composition["author"] = [self.ref(slot) for slot in authors]
        composition["title"] = DOCUMENT_TITLES.get(self.document_type, self.document_type)
        composition["custodian"] = self.ref("organization")
        if section:
            composition["section"] = [
                {
                    "title": DOCUMENT_TITLES.get(self.document_type, self.document_type),
                    "entry": [self.ref(slot) for slot in section],
                }
            ]
        return composition

    # --- shared resources -------------------------------------------------------------------

    def organization(self) -> dict:
        inst = self.institution
        identifiers = [{"system": SYS_KRNPI, "value": self.ykiho}]
        org: dict[str, Any] = {"resourceType": "Organization"}
        # The tombstone carries only class-O institution data (ykiho, type, name): §9.6 minimisation.
        if inst.get("business_reg_no") and not self.cancelled:
            identifiers.append(
                {"system": self.sys("sid", "business-reg-no"), "value": inst["business_reg_no"]}
            )
        org["identifier"] = identifiers
        if inst.get("type_code"):
            org["type"] = [
                _concept(
                    [_coding(SYS_ORG_TYPE, inst["type_code"], INSTITUTION_TYPE_LABELS.get(inst["type_code"]))]
                )
            ]
        if inst.get("name"):
            org["name"] = inst["name"]
        if not self.cancelled:
            telecom = [
                {"system": system, "value": inst[field]}
                for field, system in (("phone", "phone"), ("fax", "fax"), ("email", "email"))
                if inst.get(field)
            ]
            if telecom:
                org["telecom"] = telecom
            if inst.get("address"):
                org["address"] = [{"text": inst["address"]}]
        return org

    def patient(self) -> dict:
        # Reads name, name_is_pseudonym and patient_reg_no only: rrn / rrn_masked are never rendered.
        patient = self.doc.get("patient") or {}
        resource: dict[str, Any] = {"resourceType": "Patient"}
        if patient.get("patient_reg_no"):
            resource["identifier"] = [
                {
                    "system": self.sys("sid", f"patient-reg-no/{self.ykiho}"),
                    "value": patient["patient_reg_no"],
                }
            ]
        if patient.get("name"):
            name: dict[str, Any] = {"text": patient["name"]}
            if patient.get("name_is_pseudonym"):
                name = {"use": "anonymous", **name}
            resource["name"] = [name]
        return resource

    def practitioner(
        self, name: str | None, license_type: str | None = None, license_no: str | None = None
    ) -> dict:
        resource: dict[str, Any] = {"resourceType": "Practitioner"}
        if name:
            resource["name"] = [{"text": name}]
        if license_type:
            qualification: dict[str, Any] = {}
            if license_no:
                system = (
                    SYS_MD_LICENSE
                    if license_type == "physician"
                    else self.sys("sid", f"license/{license_type}")
                )
                qualification["identifier"] = [{"system": system, "value": license_no}]
            qualification["code"] = _concept(
                [
                    _coding(
                        self.sys("CodeSystem", "license-type"),
                        license_type,
                        LICENSE_TYPE_LABELS.get(license_type),
                    )
                ]
            )
            resource["qualification"] = [qualification]
        return resource

    # --- extensions -------------------------------------------------------------------------

    def visit_type_concept(self, visit_type: str) -> dict:
        label, act_code, act_display = VISIT_TYPES.get(visit_type, (None, None, None))
        codings = [_coding(self.sys("CodeSystem", "visit-type"), visit_type, label)]
        if act_code:
            codings.append(_coding(SYS_V3_ACT_CODE, act_code, act_display))
        return _concept(codings)

    def visit_extensions(self, *, booleans: bool) -> list[dict]:
        """Header extensions shared by receipt, detail and pharmacy invoices (only fields present)."""
        doc = self.doc
        ext: list[dict] = []
        if doc.get("care_period"):
            period = {k: doc["care_period"][k] for k in ("start", "end") if doc["care_period"].get(k)}
            ext.append({"url": self.ext_url("care-period"), "valuePeriod": period})
        if doc.get("inpatient_bill_type"):
            ext.append(
                {
                    "url": self.ext_url("inpatient-bill-type"),
                    "valueCoding": _coding(
                        self.sys("CodeSystem", "inpatient-bill-type"), doc["inpatient_bill_type"]
                    ),
                }
            )
        if doc.get("patient_category"):
            category = doc["patient_category"]
            codings = []
            if category in PATIENT_CATEGORY_INSURANCE:
                codings.append(_coding(SYS_INSURANCE_TYPE, PATIENT_CATEGORY_INSURANCE[category]))
            codings.append(_coding(self.sys("CodeSystem", "patient-category"), category))
            ext.append(
                {
                    "url": self.ext_url("patient-category"),
                    "valueCodeableConcept": _concept(codings, doc.get("patient_category_text")),
                }
            )
        if doc.get("department_code"):
            ext.append(
                {
                    "url": self.ext_url("department"),
                    "valueCodeableConcept": _concept(
                        [_coding(SYS_DEPARTMENT, doc["department_code"])], doc.get("department_name")
                    ),
                }
            )
        if doc.get("drg_no"):
            ext.append({"url": self.ext_url("drg-no"), "valueString": doc["drg_no"]})
        if doc.get("room"):
            ext.append({"url": self.ext_url("room"), "valueString": doc["room"]})
        if doc.get("receipt_no"):
            ext.append(
                {
                    "url": self.ext_url("receipt-no"),
                    "valueIdentifier": {"system": self.doc_no_system("receipt"), "value": doc["receipt_no"]},
                }
            )
        if booleans:
            # An absent optional boolean is read as false by every renderer (documents.md §2.1).
            ext.append(
                {"url": self.ext_url("night-care"), "valueBoolean": bool(doc.get("night_care", False))}
            )
            ext.append(
                {"url": self.ext_url("holiday-care"), "valueBoolean": bool(doc.get("holiday_care", False))}
            )
        return ext

    def invoice_base(self, *, issuer: str = "organization") -> dict:
        doc = self.doc
        invoice: dict[str, Any] = {"resourceType": "Invoice"}
        return invoice | {
            "identifier": [{"system": self.doc_no_system(), "value": doc["document_no"]}],
            "status": "cancelled" if self.cancelled else "issued",
            "subject": self.ref("patient"),
            "date": doc["issued_on"],
            "issuer": self.ref(issuer),
        }

    def column_components(self, row: Mapping[str, Any], columns: Iterable[str]) -> list[dict]:
        payer = self.sys("CodeSystem", "payer-column")
        return [_price_component("informational", row[c], payer, c) for c in columns if c in row]

    def paid_components(self) -> list[dict]:
        paid = self.doc.get("paid") or {}
        payer = self.sys("CodeSystem", "payer-column")
        return [
            _price_component("informational", paid[k], payer, f"paid.{k}")
            for k in ("card", "cash_receipt", "cash", "total")
            if k in paid
        ]

    def remarks(self, resource: dict) -> None:
        if self.doc.get("remarks"):
            resource["note"] = [{"text": self.doc["remarks"]}]

    # --- receipt ----------------------------------------------------------------------------

    def render_receipt(self) -> tuple[list[str], list[str]]:
        doc = self.doc
        payer = self.sys("CodeSystem", "payer-column")
        invoice = self.invoice_base()
        extensions = self.visit_extensions(booleans=True)
        invoice = {
            "resourceType": "Invoice",
            "extension": extensions,
            **{k: v for k, v in invoice.items() if k != "resourceType"},
        }
        if doc.get("visit_type"):
            invoice = _insert_after(invoice, "status", "type", self.visit_type_concept(doc["visit_type"]))
        invoice["lineItem"] = [
            self.receipt_line_item(n, line) for n, line in enumerate(doc["lines"], start=1)
        ]
        totals_components = self.column_components(doc.get("totals") or {}, RECEIPT_COLUMNS)
        summary = [
            _price_component("informational", doc[k], payer, k)
            for k in ("cap_excess", "insurer_charge_total", "prepaid", "amount_due_rounding", "amount_due")
            if k in doc
        ]
        unpaid = (
            [_price_component("informational", doc["unpaid"], payer, "unpaid")] if "unpaid" in doc else []
        )
        invoice["totalPriceComponent"] = totals_components + summary + self.paid_components() + unpaid
        invoice["totalNet"] = _money(doc["patient_charge_total"])
        invoice["totalGross"] = _money(doc["total_charge"])
        self.remarks(invoice)
        self.add("invoice", invoice)
        return ["organization"], ["invoice"]

    def receipt_line_item(self, sequence: int, line: Mapping[str, Any]) -> dict:
        item = line["item"]
        row_total = sum(line.get(c, 0) for c in ROW_TOTAL_COLUMNS)
        return {
            "sequence": sequence,
            "chargeItemCodeableConcept": _concept(
                [_coding(self.sys("CodeSystem", "receipt-item"), item, RECEIPT_ITEM_LABELS.get(item))],
                line.get("label") or RECEIPT_ITEM_LABELS.get(item),
            ),
            "priceComponent": [_price_component("base", row_total)]
            + self.column_components(line, RECEIPT_COLUMNS),
        }

    # --- itemised statement -----------------------------------------------------------------

    def render_detail(self) -> tuple[list[str], list[str]]:
        doc = self.doc
        charge_slots: list[str] = []
        line_items: list[dict] = []
        for sequence, line in enumerate(doc["lines"], start=1):
            components = [_price_component("base", line["total"])] + self.column_components(
                line, RECEIPT_COLUMNS
            )
            if line.get("line_type") == "rounding_adjustment":
                line_item: dict[str, Any] = {"sequence": sequence}
                if line.get("item"):
                    line_item["extension"] = [self.receipt_item_extension(line["item"])]
                line_item["chargeItemCodeableConcept"] = _concept(
                    [
                        _coding(
                            self.sys("CodeSystem", "receipt-item"),
                            "rounding_adjustment",
                            RECEIPT_ITEM_LABELS["rounding_adjustment"],
                        )
                    ],
                    line.get("name"),
                )
            else:
                slot = f"charge-item-{line['line_no']}"
                self.add(slot, self.charge_item(line))
                charge_slots.append(slot)
                line_item = {"sequence": sequence, "chargeItemReference": self.ref(slot)}
            line_item["priceComponent"] = components
            line_items.append(line_item)
        invoice = self.invoice_base()
        rest = {k: v for k, v in invoice.items() if k != "resourceType"}
        invoice = {"resourceType": "Invoice", "extension": self.visit_extensions(booleans=False), **rest}
        if not invoice["extension"]:
            del invoice["extension"]
        if doc.get("visit_type"):
            invoice = _insert_after(invoice, "status", "type", self.visit_type_concept(doc["visit_type"]))
        invoice["lineItem"] = line_items
        totals = doc.get("totals") or {}
        invoice["totalPriceComponent"] = self.column_components(totals, RECEIPT_COLUMNS)
        if "total" in totals:
            invoice["totalGross"] = _money(totals["total"])
        self.remarks(invoice)
        self.add("invoice", invoice)
        return ["organization"], ["invoice", *charge_slots]

    def receipt_item_extension(self, item: str) -> dict:
        return {
            "url": self.ext_url("receipt-item"),
            "valueCoding": _coding(
                self.sys("CodeSystem", "receipt-item"), item, RECEIPT_ITEM_LABELS.get(item)
            ),
        }

    def charge_item(self, line: Mapping[str, Any]) -> dict:
        extensions = []
        if line.get("item"):
            extensions.append(self.receipt_item_extension(line["item"]))
        if line.get("copay_rate_code"):
            extensions.append(self.copay_rate_extension(line["copay_rate_code"]))
        codings = []
        if line.get("code"):
            codings.append(_coding(self.item_code_system(line.get("code_type")), line["code"]))
        resource: dict[str, Any] = {"resourceType": "ChargeItem"}
        if extensions:
            resource["extension"] = extensions
        resource |= {
            "status": "billed",
            "code": _concept(codings, line.get("name")),
            "subject": self.ref("patient"),
        }
        if line.get("date"):
            resource["occurrenceDateTime"] = line["date"]
        resource["performingOrganization"] = self.ref("organization")
        quantity = self.detail_quantity(line)
        if quantity is not None:
            resource["quantity"] = {"value": quantity}
        resource["priceOverride"] = _money(line["total"])
        return resource

    @staticmethod
    def detail_quantity(line: Mapping[str, Any]) -> int | Decimal | None:
        # quantity = count × days (× dose), exact decimal arithmetic (RD-2 uses the same product).
        if "count" not in line or "days" not in line:
            return None
        value = _dec(line["count"]) * _dec(line["days"])
        if "dose" in line:
            value *= _dec(line["dose"])
        return _number(value)

    def item_code_system(self, code_type: str | None) -> str:
        return {
            "edi_procedure": SYS_EDI_PROCEDURE,
            "edi_drug": SYS_EDI_MEDICATION,
            "edi_material": SYS_EDI_MATERIAL,
        }.get(code_type or "", self.sys("CodeSystem", f"local-item/{self.ykiho}"))

    def copay_rate_extension(self, code: str) -> dict:
        return {
            "url": self.ext_url("copay-rate"),
            "valueCoding": _coding(self.sys("CodeSystem", "copay-rate"), code),
        }

    # --- prescription -----------------------------------------------------------------------

    def render_prescription(self) -> tuple[list[str], list[str]]:
        doc = self.doc
        prescriber = doc.get("prescriber") or {}
        self.add(
            "practitioner-prescriber",
            self.practitioner(
                prescriber.get("name"), prescriber.get("license_type"), prescriber.get("license_no")
            ),
        )
        slots = []
        for line in doc["lines"]:
            slot = f"medication-request-{line['line_no']}"
            self.add(slot, self.medication_request(line))
            slots.append(slot)
        return ["organization", "practitioner-prescriber"], slots

    def drug_system(self, code_type: str | None) -> str:
        # code_type 3 = 보험등재약 product code (HIRA EDI); 4 and 5 have no published system.
        if code_type == "4":
            return self.sys("CodeSystem", "drug-compounded")
        if code_type == "5":
            return self.sys("CodeSystem", "drug-ingredient")
        return SYS_EDI_MEDICATION

    def dosage(self, line: Mapping[str, Any], *, text: str | None) -> dict:
        dosage: dict[str, Any] = {}
        if text:
            dosage["text"] = text
        repeat: dict[str, Any] = {}
        if line.get("days"):
            repeat["boundsDuration"] = _days(line["days"])
        if line.get("daily_count"):
            repeat |= {"frequency": line["daily_count"], "period": 1, "periodUnit": "d"}
        if repeat:
            dosage["timing"] = {"repeat": repeat}
        if line.get("dose") is not None:
            quantity: dict[str, Any] = {"value": _number(_dec(line["dose"]))}
            if line.get("dose_unit"):
                quantity["unit"] = line["dose_unit"]
            dosage["doseAndRate"] = [{"doseQuantity": quantity}]
        return dosage

    def medication_request(self, line: Mapping[str, Any]) -> dict:
        doc = self.doc
        extensions = []
        if line.get("copay_rate_code"):
            extensions.append(self.copay_rate_extension(line["copay_rate_code"]))
        if line.get("kind") == "injection" and doc.get("injection_dispensing"):
            extensions.append(
                {
                    "url": self.ext_url("injection-dispensing"),
                    "valueCoding": _coding(
                        self.sys("CodeSystem", "injection-dispensing"), doc["injection_dispensing"]
                    ),
                }
            )
        resource: dict[str, Any] = {"resourceType": "MedicationRequest"}
        if extensions:
            resource["extension"] = extensions
        resource["identifier"] = [
            {
                "system": self.sys("sid", f"prescription-line/{self.ykiho}"),
                "value": f"{doc['document_no']}-{line['line_no']}",
            }
        ]
        resource["status"] = "cancelled" if self.cancelled else "active"
        resource["intent"] = "order"
        if line.get("kind"):
            resource["category"] = [
                _concept([_coding(self.sys("CodeSystem", "prescription-line-kind"), line["kind"])])
            ]
        codings = []
        if line.get("code"):
            codings.append(_coding(self.drug_system(line.get("code_type")), line["code"]))
        resource["medicationCodeableConcept"] = _concept(codings, line.get("name"))
        resource["subject"] = self.ref("patient")
        resource["authoredOn"] = doc["issued_on"]
        resource["requester"] = self.ref("practitioner-prescriber")
        # Withheld diagnosis (질병분류기호 미기재): no reasonCode at all, exactly like "no codes".
        if not doc.get("diagnosis_withheld") and doc.get("diagnosis_codes"):
            resource["reasonCode"] = [_concept([_coding(SYS_KCD, code)]) for code in doc["diagnosis_codes"]]
        resource["groupIdentifier"] = {
            "system": self.doc_no_system("prescription"),
            "value": doc["document_no"],
        }
        resource["dosageInstruction"] = [self.dosage(line, text=line.get("usage"))]
        dispense: dict[str, Any] = {}
        if doc.get("valid_days"):
            dispense["validityPeriod"] = {
                "start": doc["issued_on"],
                "end": _add_days(doc["issued_on"], doc["valid_days"] - 1),
            }
        if line.get("days"):
            dispense["expectedSupplyDuration"] = _days(line["days"])
        if dispense:
            resource["dispenseRequest"] = dispense
        return _reorder(resource, _MEDICATION_REQUEST_ORDER)

    # --- pharmacy receipt -------------------------------------------------------------------

    def render_pharmacy(self) -> tuple[list[str], list[str]]:
        doc = self.doc
        authors = ["organization"]
        if doc.get("pharmacist_name"):
            self.add("practitioner-pharmacist", self.practitioner(doc["pharmacist_name"]))
        lines = doc.get("lines") or []
        coverage_system = self.sys("CodeSystem", "coverage")
        line_items: list[dict] = []
        dispense_slots: list[str] = []
        if lines:
            for sequence, line in enumerate(lines, start=1):
                line_item: dict[str, Any] = {
                    "sequence": sequence,
                    "chargeItemCodeableConcept": _concept(
                        [_coding(SYS_EDI_MEDICATION, line["code"])] if line.get("code") else [],
                        line.get("name"),
                    ),
                }
                # The line's 급여 구분 classifies its price; the amount is there only where printed.
                if line.get("coverage") or "amount" in line:
                    component: dict[str, Any] = {"type": "base"}
                    if line.get("coverage"):
                        component["code"] = _concept(
                            [
                                _coding(
                                    coverage_system, line["coverage"], COVERAGE_LABELS.get(line["coverage"])
                                )
                            ]
                        )
                    if "amount" in line:
                        component["amount"] = _money(line["amount"])
                    line_item["priceComponent"] = [component]
                line_items.append(line_item)
                slot = f"medication-dispense-{line['line_no']}"
                self.add(slot, self.medication_dispense(line))
                dispense_slots.append(slot)
        else:
            # No drug list printed: one line item and one dispense stand for the whole receipt.
            line_items.append(
                {
                    "sequence": 1,
                    "chargeItemCodeableConcept": _concept([], "약제비 총액"),
                    "priceComponent": [_price_component("base", doc["total_charge"])]
                    + self.column_components(doc.get("totals") or {}, PHARMACY_COLUMNS),
                }
            )
            self.add("medication-dispense", self.medication_dispense(None))
            dispense_slots.append("medication-dispense")
        invoice = self.invoice_base()
        rest = {k: v for k, v in invoice.items() if k != "resourceType"}
        invoice = {"resourceType": "Invoice", "extension": self.visit_extensions(booleans=True), **rest}
        invoice["lineItem"] = line_items
        payer = self.sys("CodeSystem", "payer-column")
        fees = doc.get("fee_breakdown") or {}
        invoice["totalPriceComponent"] = (
            self.column_components(doc.get("totals") or {}, PHARMACY_COLUMNS)
            + [
                _price_component("informational", fees[k], payer, k)
                for k in ("dispensing_fee", "drug_cost")
                if k in fees
            ]
            + self.paid_components()
        )
        invoice["totalNet"] = _money(doc["patient_charge_total"])
        invoice["totalGross"] = _money(doc["total_charge"])
        self.remarks(invoice)
        self.add("invoice", invoice)
        return authors, ["invoice", *dispense_slots]

    def medication_dispense(self, line: Mapping[str, Any] | None) -> dict:
        doc = self.doc
        resource: dict[str, Any] = {"resourceType": "MedicationDispense", "status": "completed"}
        if line is None:
            resource["medicationCodeableConcept"] = _concept([], "조제 의약품")
        else:
            codings = [_coding(SYS_EDI_MEDICATION, line["code"])] if line.get("code") else []
            resource["medicationCodeableConcept"] = _concept(codings, line.get("name"))
        resource["subject"] = self.ref("patient")
        if doc.get("pharmacist_name"):
            resource["performer"] = [{"actor": self.ref("practitioner-pharmacist")}]
        resource["authorizingPrescription"] = [self.prescription_reference()]
        if "days_supplied" in doc:
            resource["daysSupply"] = _days(doc["days_supplied"])
        if doc.get("dispensed_on"):
            resource["whenHandedOver"] = doc["dispensed_on"]
        if line is not None and any(line.get(k) is not None for k in ("dose", "daily_count", "days")):
            resource["dosageInstruction"] = [self.dosage(line, text=None)]
        return resource

    def prescription_reference(self) -> dict:
        """Identifier-only logical reference: the prescription lives on another agent (relay-api §6.4)."""
        doc = self.doc
        prescribing = doc.get("prescribing_institution") or {}
        identifier: dict[str, Any] = {}
        if prescribing.get("ykiho"):
            identifier["system"] = self.doc_no_system("prescription", prescribing["ykiho"])
        identifier["value"] = doc["prescription_issue_no"]
        assigner: dict[str, Any] = {}
        if prescribing.get("ykiho"):
            assigner["identifier"] = {"system": SYS_KRNPI, "value": prescribing["ykiho"]}
        if prescribing.get("name"):
            assigner["display"] = prescribing["name"]
        if assigner:
            # Without the prescriber's ykiho the number is only unique per institution: name it.
            identifier["assigner"] = assigner
        return {"identifier": identifier}


_MEDICATION_REQUEST_ORDER = (
    "resourceType",
    "extension",
    "identifier",
    "status",
    "intent",
    "category",
    "medicationCodeableConcept",
    "subject",
    "authoredOn",
    "requester",
    "reasonCode",
    "groupIdentifier",
    "dosageInstruction",
    "dispenseRequest",
)


def _reorder(resource: dict, order: tuple[str, ...]) -> dict:
    return {k: resource[k] for k in order if k in resource} | {
        k: v for k, v in resource.items() if k not in order
    }


def _insert_after(mapping: dict, after: str, key: str, value: Any) -> dict:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out
