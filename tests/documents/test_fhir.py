"""FHIR R4 rendering (documents.md §11, §9.6 tombstone, relay-api.md §6.4 / C-26).

Every rendered bundle must parse and validate with `fhir.resources.R4B` (there is no R4 package for
pydantic v2, PITFALLS.md), list the Composition first, use only `urn:uuid:` full URLs that every
literal reference resolves to, never contain an RRN, carry no Python float, and be deterministic.
The four worked examples are pinned by golden files in `golden/fhir/`; regenerate them with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/documents/test_fhir.py` and review the diff.
All data is synthetic (documents.md §12).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from agent.documents.fhir import (
    DEFAULT_FHIR_BASE,
    URN_NAMESPACE,
    bundle_bytes,
    render_bundle,
    urn_uuid,
)

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "shared" / "spec" / "examples"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "fhir"
EXAMPLE_NAMES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
DOC_ID = "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"
OTHER_DOC_ID = "doc_01JBX4Q8A0C2E4G6J8M0P2R4T6"
FIXTURE_RRN = "9001011000001"


# --- fixtures: the examples and the variants the brief lists --------------------------------


def example(name: str) -> dict:
    """A worked example as stored (with received_at, source, validation)."""
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))


def legacy_receipt() -> dict:
    """Pre-2018 receipt (legacy_selective): non_covered = selective + non_selective (RC-9)."""
    doc = example("receipt")
    doc.update(
        document_no="201706-000007",
        issued_on="2017-06-01",
        issued_at="2017-06-01T10:42:00+09:00",
        amount_layout="legacy_selective",
        care_period={"start": "2017-06-01", "end": "2017-06-01"},
    )
    doc.pop("insurer_charge_total")  # optional on the legacy form
    for line in doc["lines"]:
        line["selective"], line["non_selective"] = (5000, 25000) if line["item"] == "rehab_physio" else (0, 0)
    doc["totals"].update(selective=5000, non_selective=25000)
    return doc


def inpatient_drg_receipt() -> dict:
    """Inpatient discharge receipt under a DRG bundle, with cap excess, prepaid amount and rounding."""
    doc = example("receipt")
    doc.update(
        document_no="202503-000900",
        issued_on="2025-03-05",
        issued_at="2025-03-05T15:00:00+09:00",
        visit_type="inpatient",
        inpatient_bill_type="discharge",
        care_period={"start": "2025-03-01", "end": "2025-03-05"},
        department_code="04",
        department_name="외과",
        drg_no="D12345",
        room="5병동-501호",
        patient_category="medical_aid",
        patient_category_text="의료급여 1종",
        night_care=True,
        lines=[
            {"item": "drg_bundle", "copay": 100000, "insurer": 900000, "full_copay": 0, "non_covered": 0},
            {"item": "meals", "copay": 20000, "insurer": 20000, "full_copay": 0, "non_covered": 0},
            {"item": "room_single", "copay": 0, "insurer": 0, "full_copay": 0, "non_covered": 200000},
        ],
        totals={"copay": 120000, "insurer": 920000, "full_copay": 0, "non_covered": 200000},
        cap_excess=20000,
        total_charge=1240000,
        insurer_charge_total=940000,
        patient_charge_total=300000,
        prepaid=100000,
        amount_due_rounding=0,
        amount_due=200000,
        paid={"card": 200000, "cash_receipt": 0, "cash": 0, "total": 200000},
        unpaid=0,
    )
    for key in ("holiday_care", "cash_receipt_id", "cash_receipt_approval_no"):
        doc.pop(key)
    return doc


def cancelled_receipt() -> dict:
    """Stored cancelled current version: the cancel record merged over the previous content (§9.4)."""
    doc = example("receipt")
    doc.update(version=2, status="cancelled", revision_reason="cancellation", cancel_reason="전액환불")
    return doc


def cancellation_record_only() -> dict:
    """A cancellation for an unknown key: only the §9.4 minimum fields (W-012)."""
    return {
        "schema_version": "1.0",
        "document_type": "prescription",
        "document_no": "20250314-00018",
        "version": 3,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "institution": {"ykiho": "99000001", "name": "예시가정의원"},
        "patient": {"name": "홍길동"},
    }


def withheld_prescription() -> dict:
    """Diagnosis withheld at the patient's request; code types 5 and none; a dentist; no valid_days."""
    doc = example("prescription")
    doc.update(
        diagnosis_withheld=True,
        prescriber={"name": "성춘향", "license_type": "dentist", "license_no": "12345"},
    )
    for key in ("diagnosis_codes", "valid_days", "injection_dispensing"):
        doc.pop(key)
    doc["lines"] = doc["lines"][:3]
    doc["lines"][1].update(code_type="5", code="643301ATB")
    for key in ("code", "code_type"):
        doc["lines"][2].pop(key)
    return doc


def pharmacy_receipt_without_lines() -> dict:
    """No drug list printed, no pharmacist named, prescriber's ykiho unknown; with a fee breakdown."""
    doc = example("pharmacy_receipt")
    for key in ("lines", "pharmacist_name"):
        doc.pop(key)
    doc["prescribing_institution"] = {"name": "예시가정의원"}
    doc["fee_breakdown"] = {"dispensing_fee": 5000, "drug_cost": 7300}
    return doc


def detail_with_rounding_adjustment() -> dict:
    """Itemised statement whose adjustment line is attributed to an item, plus a fractional count."""
    doc = example("receipt_detail")
    doc["lines"][5].update(amount="3000", count="0.5")  # 3000 × 0.5 × 1 = 1500 = total
    doc["lines"][4].update(amount="666.67", dose="1.5", count="2")  # 666.67 × 1.5 × 2 = 2000.01
    doc["lines"][7]["item"] = "lab_test"
    return doc


VARIANTS = {
    "legacy_receipt": legacy_receipt,
    "inpatient_drg_receipt": inpatient_drg_receipt,
    "cancelled_receipt": cancelled_receipt,
    "cancellation_record_only": cancellation_record_only,
    "withheld_prescription": withheld_prescription,
    "pharmacy_receipt_without_lines": pharmacy_receipt_without_lines,
    "detail_with_rounding_adjustment": detail_with_rounding_adjustment,
}
ALL_DOCS = {**{name: (lambda n=name: example(n)) for name in EXAMPLE_NAMES}, **VARIANTS}


# --- helpers --------------------------------------------------------------------------------


def render(doc: dict, **kwargs: Any) -> dict:
    return render_bundle(doc, doc_id=kwargs.pop("doc_id", DOC_ID), **kwargs)


def resources(bundle: dict, resource_type: str | None = None) -> list[dict]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    ]


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def by_reference(bundle: dict, reference: dict) -> dict:
    (match,) = [e["resource"] for e in bundle["entry"] if e["fullUrl"] == reference["reference"]]
    return match


# --- validity (C-26) ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_rendering_validates_as_r4b_bundle_and_each_resource_by_its_class(name: str) -> None:
    bundle = render(ALL_DOCS[name]())
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "document"
    for entry in bundle["entry"]:
        resource_type = entry["resource"]["resourceType"]
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
        getattr(module, resource_type).model_validate(entry["resource"])


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_composition_first_and_bundle_carries_natural_key_version_and_timestamp(name: str) -> None:
    doc = ALL_DOCS[name]()
    bundle = render(doc)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
    composition = bundle["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert [r["resourceType"] for r in resources(bundle)].count("Composition") == 1
    system = f"{DEFAULT_FHIR_BASE}/sid/{doc['document_type']}/{doc['institution']['ykiho']}"
    assert bundle["identifier"] == {"system": system, "value": doc["document_no"]}
    assert composition["identifier"] == {"system": system, "value": doc["document_no"]}
    assert bundle["meta"]["versionId"] == composition["meta"]["versionId"] == str(doc["version"])
    assert bundle["timestamp"] == doc.get(
        "received_at", doc.get("issued_at", doc["issued_on"] + "T00:00:00+09:00")
    )


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_every_full_url_is_a_unique_urn_uuid_matching_the_resource_id(name: str) -> None:
    bundle = render(ALL_DOCS[name]())
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for entry in bundle["entry"]:
        assert re.fullmatch(
            r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", entry["fullUrl"]
        )
        assert entry["resource"]["id"] == entry["fullUrl"].removeprefix("urn:uuid:")


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_every_literal_reference_resolves_inside_the_bundle(name: str) -> None:
    bundle = render(ALL_DOCS[name]())
    urls = {e["fullUrl"] for e in bundle["entry"]}
    references = [
        node["reference"] for node in walk(bundle) if isinstance(node, dict) and "reference" in node
    ]
    assert references, "a document bundle references at least its author"
    assert set(references) <= urls
    # Every non-Composition resource is reachable from the Composition or a resource it points to.
    assert urls - {bundle["entry"][0]["fullUrl"]} <= set(references)


# --- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_worked_example_matches_its_golden_file(name: str) -> None:
    rendered = bundle_bytes(render(example(name)), indent=2) + b"\n"
    golden = GOLDEN_DIR / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(rendered)
    assert rendered == golden.read_bytes()


def test_golden_files_parse_back_to_the_rendered_structure() -> None:
    # The golden text is real JSON whose numbers read back exactly (Decimal, never float).
    bundle = render(example("prescription"))
    loaded = json.loads((GOLDEN_DIR / "prescription.json").read_text(encoding="utf-8"), parse_float=Decimal)
    assert loaded == bundle


# --- minimisation: no RRN -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_no_rrn_full_or_masked_appears_anywhere(name: str) -> None:
    doc = ALL_DOCS[name]()
    text = bundle_bytes(render(doc)).decode("utf-8")
    assert FIXTURE_RRN not in text
    assert "900101-1" not in text and "9001011*" not in text
    assert not re.search(r"(?<![0-9])[0-9]{6}-?[0-9][0-9*]{6}(?![0-9])", text)
    assert "rrn" not in text.lower() and "NNKOR" not in text


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_rendering_without_rrn_or_with_masked_rrn_is_identical(name: str) -> None:
    with_rrn = example(name)
    without = copy.deepcopy(with_rrn)
    del without["patient"]["rrn"]
    masked = copy.deepcopy(without)
    masked["patient"]["rrn_masked"] = FIXTURE_RRN[:7] + "******"
    expected = bundle_bytes(render(with_rrn))
    assert bundle_bytes(render(without)) == expected
    assert bundle_bytes(render(masked)) == expected


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_same_id_and_version_render_byte_identical(name: str) -> None:
    assert bundle_bytes(render(example(name))) == bundle_bytes(render(example(name)))
    shuffled = dict(reversed(list(example(name).items())))  # input key order is not significant
    assert bundle_bytes(render(shuffled)) == bundle_bytes(render(example(name)))


def test_urn_uuids_are_uuid5_of_id_version_and_slot() -> None:
    bundle = render(example("receipt"))
    expected = uuid.uuid5(URN_NAMESPACE, f"{DOC_ID}:1:composition")
    assert bundle["entry"][0]["fullUrl"] == f"urn:uuid:{expected}" == urn_uuid(DOC_ID, 1, "composition")
    assert URN_NAMESPACE == uuid.UUID("10be4187-8691-58c5-9207-49b4fe6c0fa5")  # frozen forever


def test_urn_uuids_change_with_document_id_and_version() -> None:
    doc = example("receipt")
    base_urls = {e["fullUrl"] for e in render(doc)["entry"]}
    other_id = {e["fullUrl"] for e in render(doc, doc_id=OTHER_DOC_ID)["entry"]}
    doc["version"] = 2
    other_version = {e["fullUrl"] for e in render(doc)["entry"]}
    assert not base_urls & other_id
    assert not base_urls & other_version


# --- numbers: integers for money, no float anywhere -----------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_no_python_float_and_all_money_is_integer_krw(name: str) -> None:
    bundle = render(ALL_DOCS[name]())
    nodes = list(walk(bundle))
    assert not any(isinstance(node, float) for node in nodes)
    money = [node for node in nodes if isinstance(node, dict) and "currency" in node]
    for amount in money:
        assert amount["currency"] == "KRW"
        assert type(amount["value"]) is int


def test_fractional_decimals_are_exact_json_numbers_and_integral_ones_are_ints() -> None:
    bundle = render(example("prescription"))
    doses = [
        r["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"]
        for r in resources(bundle, "MedicationRequest")
    ]
    assert doses == [1, Decimal("2.5"), Decimal("0.5"), 3]
    assert [type(d) for d in doses] == [int, Decimal, Decimal, int]
    text = bundle_bytes(bundle).decode("utf-8")
    assert '"doseQuantity":{"value":2.5,"unit":"mL"}' in text
    assert '"doseQuantity":{"value":0.5}' in text


def test_bundle_bytes_refuses_floats() -> None:
    with pytest.raises(TypeError):
        bundle_bytes({"value": 2.5})


def test_bundle_bytes_writes_decimals_in_fixed_point_without_trailing_zeros() -> None:
    assert (
        bundle_bytes([Decimal("2.50"), Decimal("1E-8"), Decimal("-0.0"), 7, True])
        == b"[2.5,0.00000001,0,7,true]"
    )


# --- tombstone (§9.6) -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cancelled_receipt", "cancellation_record_only"])
def test_cancelled_document_renders_as_tombstone_without_patient_data(name: str) -> None:
    doc = VARIANTS[name]()
    bundle = render(doc)
    composition = bundle["entry"][0]["resource"]
    assert [r["resourceType"] for r in resources(bundle)] == ["Composition", "Organization"]
    assert composition["status"] == "entered-in-error"
    assert "subject" not in composition and "section" not in composition
    organization = by_reference(bundle, composition["author"][0])
    assert organization["identifier"][0]["value"] == doc["institution"]["ykiho"]
    assert organization["name"] == doc["institution"]["name"]
    text = bundle_bytes(bundle).decode("utf-8")
    assert doc["patient"]["name"] not in text
    assert "00012345" not in text and "64500" not in text and "전액환불" not in text


def test_served_tombstone_form_without_institution_name_also_renders() -> None:
    minimal = {
        "document_type": "receipt",
        "document_no": "202503-000123",
        "institution": {"ykiho": "99000001"},
        "version": 2,
        "status": "cancelled",
        "issued_on": "2025-03-14",
        "received_at": "2025-03-15T09:00:00+09:00",
    }
    bundle = render(minimal)
    Bundle.model_validate(bundle)
    assert [r["resourceType"] for r in resources(bundle)] == ["Composition", "Organization"]
    assert bundle["timestamp"] == "2025-03-15T09:00:00+09:00"


# --- mapping rows (§11.2) -------------------------------------------------------------------


def test_timestamp_falls_back_to_issued_at_then_issued_on_midnight_kst() -> None:
    doc = example("receipt")
    del doc["received_at"]
    assert render(doc)["timestamp"] == "2025-03-14T10:42:00+09:00"
    del doc["issued_at"]
    assert render(doc)["timestamp"] == "2025-03-14T00:00:00+09:00"
    assert render(doc)["entry"][0]["resource"]["date"] == "2025-03-14"


def test_configured_base_replaces_every_project_local_system() -> None:
    base = "https://relay.example.invalid/fhir-base"
    text = bundle_bytes(render(example("receipt_detail"), fhir_base=base)).decode("utf-8")
    assert DEFAULT_FHIR_BASE not in text
    assert f'"{base}/sid/receipt_detail/99000001"' in text


def test_organization_and_patient_mapping() -> None:
    bundle = render(example("prescription"))
    (organization,) = resources(bundle, "Organization")
    assert organization["identifier"] == [
        {"system": "http://www.hl7korea.or.kr/Identifier/hira-krnpi", "value": "99000001"},
        {"system": f"{DEFAULT_FHIR_BASE}/sid/business-reg-no", "value": "1234567891"},
    ]
    assert organization["type"][0]["coding"][0]["code"] == "31"
    assert organization["telecom"] == [
        {"system": "phone", "value": "02-000-0000"},
        {"system": "fax", "value": "02-000-0001"},
    ]
    (patient,) = resources(bundle, "Patient")
    assert patient["name"] == [{"text": "홍길동"}]
    assert patient["identifier"] == [
        {"system": f"{DEFAULT_FHIR_BASE}/sid/patient-reg-no/99000001", "value": "00012345"}
    ]
    assert "김대표" not in bundle_bytes(bundle).decode("utf-8")  # representative is not mapped


def test_receipt_lines_carry_row_total_then_payer_columns_and_summary_totals() -> None:
    doc = example("receipt")
    (invoice,) = resources(render(doc), "Invoice")
    assert invoice["status"] == "issued" and invoice["date"] == "2025-03-14"
    assert invoice["totalGross"] == {"value": 64500, "currency": "KRW"}
    assert invoice["totalNet"] == {"value": 41400, "currency": "KRW"}
    consultation = invoice["lineItem"][0]
    assert consultation["sequence"] == 1
    assert consultation["chargeItemCodeableConcept"]["coding"][0]["code"] == "consultation"
    assert consultation["priceComponent"][0] == {
        "type": "base",
        "amount": {"value": 18000, "currency": "KRW"},
    }
    columns = {
        c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in consultation["priceComponent"][1:]
    }
    assert columns == {"copay": 5400, "insurer": 12600, "full_copay": 0, "non_covered": 0}
    summary = {c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in invoice["totalPriceComponent"]}
    assert summary["cap_excess"] == 0 and summary["insurer_charge_total"] == 23100
    assert summary["paid.card"] == 40000 and summary["paid.total"] == 41400 and summary["unpaid"] == 0
    assert all(c["type"] == "informational" for c in invoice["totalPriceComponent"])
    assert "010-0000-0000" not in bundle_bytes(render(doc)).decode("utf-8")  # cash_receipt_id is personal


def test_legacy_row_total_does_not_count_selective_columns_twice() -> None:
    (invoice,) = resources(render(legacy_receipt()), "Invoice")
    rehab = next(
        li
        for li in invoice["lineItem"]
        if li["chargeItemCodeableConcept"]["coding"][0]["code"] == "rehab_physio"
    )
    assert rehab["priceComponent"][0]["amount"]["value"] == 30000
    codes = [c["code"]["coding"][0]["code"] for c in rehab["priceComponent"][1:]]
    assert codes == ["copay", "insurer", "full_copay", "selective", "non_selective", "non_covered"]


def test_inpatient_drg_receipt_extensions() -> None:
    (invoice,) = resources(render(inpatient_drg_receipt()), "Invoice")
    ext = {e["url"].rsplit("/", 1)[1]: e for e in invoice["extension"]}
    assert ext["care-period"]["valuePeriod"] == {"start": "2025-03-01", "end": "2025-03-05"}
    assert ext["drg-no"]["valueString"] == "D12345"
    category = ext["patient-category"]["valueCodeableConcept"]
    assert category["coding"][0] == {
        "system": "http://www.hl7korea.or.kr/CodeSystem/hira-insurance-types",
        "code": "5",
    }
    assert category["text"] == "의료급여 1종"
    assert ext["department"]["valueCodeableConcept"]["coding"][0]["code"] == "04"
    assert ext["night-care"]["valueBoolean"] is True
    assert ext["holiday-care"]["valueBoolean"] is False  # absent boolean reads as false
    assert ext["inpatient-bill-type"]["valueCoding"]["code"] == "discharge"
    assert invoice["type"]["coding"][0]["code"] == "inpatient"


def test_general_patient_category_has_no_hira_insurance_coding() -> None:
    doc = example("receipt")
    doc["patient_category"] = "general"
    (invoice,) = resources(render(doc), "Invoice")
    (category,) = [e for e in invoice["extension"] if e["url"].endswith("/patient-category")]
    assert [c["code"] for c in category["valueCodeableConcept"]["coding"]] == ["general"]


def test_detail_item_lines_become_charge_items_and_adjustment_a_coded_line_item() -> None:
    bundle = render(detail_with_rounding_adjustment())
    charge_items = resources(bundle, "ChargeItem")
    assert len(charge_items) == 7
    (invoice,) = resources(bundle, "Invoice")
    assert invoice["totalGross"] == {"value": 64500, "currency": "KRW"}
    first = by_reference(bundle, invoice["lineItem"][0]["chargeItemReference"])
    assert first["status"] == "billed" and first["occurrenceDateTime"] == "2025-03-14"
    assert first["code"] == {
        "coding": [{"system": "http://www.hl7korea.or.kr/CodeSystem/hira-edi-procedure", "code": "AA999"}],
        "text": "재진진찰료(예시)",
    }
    assert first["priceOverride"] == {"value": 18000, "currency": "KRW"}
    local = by_reference(bundle, invoice["lineItem"][6]["chargeItemReference"])
    assert local["code"]["coding"][0]["system"] == f"{DEFAULT_FHIR_BASE}/CodeSystem/local-item/99000001"
    quantities = [c["quantity"]["value"] for c in charge_items]
    assert quantities == [1, 1, 1, 1, 3, Decimal("0.5"), 1]  # count × days × dose, exact
    adjustment = invoice["lineItem"][7]
    assert "chargeItemReference" not in adjustment
    assert adjustment["chargeItemCodeableConcept"]["coding"][0]["code"] == "rounding_adjustment"
    assert adjustment["extension"][0]["valueCoding"]["code"] == "lab_test"
    columns = {c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in adjustment["priceComponent"][1:]}
    assert columns["copay"] == 10 and columns["insurer"] == -10
    receipt_no = [e for e in invoice["extension"] if e["url"].endswith("/receipt-no")]
    assert receipt_no[0]["valueIdentifier"]["value"] == "202503-000123"


def test_prescription_lines_become_medication_requests() -> None:
    bundle = render(example("prescription"))
    requests = resources(bundle, "MedicationRequest")
    assert len(requests) == 4
    syrup = requests[1]
    assert syrup["identifier"][0]["value"] == "20250314-00017-2"
    assert syrup["groupIdentifier"] == {
        "system": f"{DEFAULT_FHIR_BASE}/sid/prescription/99000001",
        "value": "20250314-00017",
    }
    assert syrup["status"] == "active" and syrup["intent"] == "order" and syrup["authoredOn"] == "2025-03-14"
    assert by_reference(bundle, syrup["requester"])["resourceType"] == "Practitioner"
    assert syrup["reasonCode"] == [
        {"coding": [{"system": "http://www.hl7korea.or.kr/CodeSystem/kostat-kcd-8", "code": "J06.9"}]}
    ]
    repeat = syrup["dosageInstruction"][0]["timing"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (3, 1, "d")
    assert repeat["boundsDuration"]["value"] == 3
    assert syrup["dispenseRequest"]["validityPeriod"] == {"start": "2025-03-14", "end": "2025-03-16"}
    assert syrup["dispenseRequest"]["expectedSupplyDuration"]["value"] == 3
    assert [e["valueCoding"]["code"] for e in syrup["extension"]] == ["U"]
    injection = requests[3]
    assert [e["valueCoding"]["code"] for e in injection["extension"]] == ["in_house"]
    (practitioner,) = resources(bundle, "Practitioner")
    qualification = practitioner["qualification"][0]
    assert (
        qualification["identifier"][0]["system"] == "http://www.hl7korea.or.kr/Identifier/mohw-md-license-id"
    )
    assert qualification["code"]["coding"][0]["code"] == "physician"


def test_withheld_diagnosis_renders_no_reason_code() -> None:
    bundle = render(withheld_prescription())
    requests = resources(bundle, "MedicationRequest")
    assert all("reasonCode" not in r for r in requests)
    assert "J06" not in bundle_bytes(bundle).decode("utf-8")
    assert all("validityPeriod" not in r.get("dispenseRequest", {}) for r in requests)
    assert (
        requests[1]["medicationCodeableConcept"]["coding"][0]["system"]
        == f"{DEFAULT_FHIR_BASE}/CodeSystem/drug-ingredient"
    )
    assert "coding" not in requests[2]["medicationCodeableConcept"]
    (practitioner,) = resources(bundle, "Practitioner")
    assert (
        practitioner["qualification"][0]["identifier"][0]["system"]
        == f"{DEFAULT_FHIR_BASE}/sid/license/dentist"
    )


def test_pharmacy_receipt_with_lines_dispenses_each_drug_against_a_logical_prescription_reference() -> None:
    bundle = render(example("pharmacy_receipt"))
    dispenses = resources(bundle, "MedicationDispense")
    assert len(dispenses) == 3
    for dispense in dispenses:
        assert dispense["authorizingPrescription"] == [
            {
                "identifier": {
                    "system": f"{DEFAULT_FHIR_BASE}/sid/prescription/99000001",
                    "value": "20250314-00017",
                    "assigner": {
                        "identifier": {
                            "system": "http://www.hl7korea.or.kr/Identifier/hira-krnpi",
                            "value": "99000001",
                        },
                        "display": "예시가정의원",
                    },
                }
            }
        ]
        assert dispense["whenHandedOver"] == "2025-03-14"
        assert dispense["daysSupply"]["value"] == 3
        assert by_reference(bundle, dispense["performer"][0]["actor"])["name"] == [{"text": "성춘향"}]
    (invoice,) = resources(bundle, "Invoice")
    assert by_reference(bundle, invoice["issuer"])["name"] == "예시약국"
    assert [li["priceComponent"][0]["code"]["coding"][0]["code"] for li in invoice["lineItem"]] == [
        "covered",
        "full_copay_100",
        "covered",
    ]
    totals = {c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in invoice["totalPriceComponent"]}
    assert (totals["copay"], totals["insurer"], totals["full_self_pay"]) == (3600, 8400, 300)
    assert invoice["totalGross"]["value"] == 12300 and invoice["totalNet"]["value"] == 3900


def test_pharmacy_receipt_without_lines_has_one_line_item_and_one_dispense() -> None:
    bundle = render(pharmacy_receipt_without_lines())
    (dispense,) = resources(bundle, "MedicationDispense")
    assert "performer" not in dispense and not resources(bundle, "Practitioner")
    identifier = dispense["authorizingPrescription"][0]["identifier"]
    assert "system" not in identifier and identifier["value"] == "20250314-00017"
    assert identifier["assigner"] == {"display": "예시가정의원"}
    (invoice,) = resources(bundle, "Invoice")
    (line_item,) = invoice["lineItem"]
    assert line_item["priceComponent"][0] == {"type": "base", "amount": {"value": 12300, "currency": "KRW"}}
    totals = {c["code"]["coding"][0]["code"]: c["amount"]["value"] for c in invoice["totalPriceComponent"]}
    assert totals["dispensing_fee"] == 5000 and totals["drug_cost"] == 7300


def test_pseudonym_patient_name_is_marked_anonymous() -> None:
    doc = example("receipt")
    doc["patient"]["name_is_pseudonym"] = True
    (patient,) = resources(render(doc), "Patient")
    assert patient["name"] == [{"use": "anonymous", "text": "홍길동"}]
