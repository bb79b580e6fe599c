# ruff: noqa: E702  (one-line mutations keep the rule table readable, one case per rule)
"""Table-driven test generated from the spec: every rule id of documents.md has a mutation of a
valid example that violates only that rule (plus, where the spec makes it unavoidable, the named
companion rule). The test fails when the spec lists a rule id that has no case here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest

from agent.documents.validate import validate_document

from ._examples import DOCUMENTS_MD, KST, RECEIVED_AT, example, legacy

# File-level (readers), version (versions.py) and cross-document (crossdoc.py) rules are tested
# elsewhere.
NOT_PER_DOCUMENT = {"R-001", "R-002", "R-003", "R-004", "R-010", "R-014", "W-011", "W-012", "W-013"}

_RANGE = re.compile(r"([RW])-(\d{3})\s*…\s*(?:[RW]-)?(\d{3})")
_ID = re.compile(r"\b([RW]-\d{3})\b")


def _expand(text: str) -> set[str]:
    out = set(_ID.findall(text))
    for letter, lo, hi in _RANGE.findall(text):
        out.update(f"{letter}-{n:03d}" for n in range(int(lo), int(hi) + 1))
    return out


def spec_rule_ids() -> set[str]:
    """Rule ids defined by a rule-table row (first cell) or the §6.4 'Errors:' sentence, checked
    against the ranges of Appendix A."""
    text = DOCUMENTS_MD.read_text("utf-8")
    defined: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^\|\s*([RW]-\d{3}[^|]*)\|", line)
        if m:
            defined |= _expand(m.group(1))
    for paragraph in re.findall(r"^Errors: R-.*?(?=\n\n)", text, flags=re.M | re.S):
        defined |= _expand(paragraph)
    appendix = text[text.index("## Appendix A") :]
    allowed: set[str] = set()
    for line in appendix.splitlines():
        for letter, lo, hi in re.findall(r"([RW])-(\d{3})–(?:[RW]-)?(\d{3})", line):
            allowed.update(f"{letter}-{n:03d}" for n in range(int(lo), int(hi) + 1))
    assert defined, "no rule ids parsed from the spec"
    assert defined <= allowed, sorted(defined - allowed)
    return {r for r in defined if not r.startswith("W-5")} - NOT_PER_DOCUMENT


Mutation = Callable[[], "dict[str, Any] | tuple[dict[str, Any], dt.datetime]"]
CASES: dict[str, tuple[Mutation, set[str]]] = {}


def case(rule: str, *also: str) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        assert rule not in CASES, rule
        CASES[rule] = (fn, {rule, *also})
        return fn

    return register


# ---------------------------------------------------------------- common (§2.7)


@case("R-005")
def _r005():
    d = example("receipt")
    d["document_type"] = "invoice"
    return d


@case("R-006")
def _r006():
    d = example("receipt")
    d["schema_version"] = "2.0"
    return d


@case("R-011")
def _r011():
    d = example("receipt")
    d["version"] = 0
    return d


@case("R-012")
def _r012():
    d = example("receipt")
    d["status"] = "void"
    return d


@case("R-013")
def _r013():
    d = example("receipt")
    d["cancel_reason"] = "환불"
    return d


@case("R-020")
def _r020():
    d = example("receipt")
    del d["patient"]["name"]
    return d


@case("R-021")
def _r021():
    d = example("receipt")
    d["night_care"] = "false"
    return d


@case("R-022")
def _r022():
    d = example("receipt")
    d["institution"]["address"] = "   "
    return d


@case("R-023")
def _r023():
    d = example("receipt")
    d["institution"]["name"] = " 예시가정의원"
    return d


@case("R-024")
def _r024():
    d = example("receipt")
    d["issued_at"] = "2025-03-14T25:00:00+09:00"
    return d


@case("R-025")
def _r025():
    d = example("receipt")
    d["colour"] = "blue"
    return d


@case("R-026")
def _r026():
    d = example("receipt")
    d["revision_reason"] = "mistake"
    return d


@case("R-027")
def _r027():
    d = example("receipt_detail")
    d["lines"][0]["amount"] = "18000.001"
    return d


@case("R-028")
def _r028():
    d = example("receipt")
    d["lines"][0]["copay"] = -1
    return d


@case("R-029")
def _r029():
    d = example("receipt")
    d["institution"]["phone"] = "02#000"
    return d


@case("R-030")
def _r030():
    d = example("receipt")
    d["institution"]["ykiho"] = "9900001"
    return d


@case("R-031")
def _r031():
    d = example("receipt")
    d["institution"]["business_reg_no"] = "1234567890"
    return d


@case("R-032")
def _r032():
    d = example("receipt")
    d["patient"]["rrn"] = "9013011000001"
    return d


@case("R-033")
def _r033():
    d = example("receipt")
    d["patient"]["rrn_masked"] = "9001011******"
    return d


@case("R-034")
def _r034():
    d = example("receipt")
    d["issued_on"] = "2025-03-15"
    del d["issued_at"]
    return d


@case("R-035")
def _r035():
    d = example("receipt")
    d["patient"]["rrn"] = "2601013000001"
    return d


@case("W-001")
def _w001():
    return example("receipt", keep_agent_fields=True) | {"validation": {"warnings": []}}


@case("W-002")
def _w002():
    d = example("receipt")
    d["issued_at"] = "2025-03-13T10:42:00+09:00"
    return d


@case("W-020")
def _w020():
    d = example("receipt")
    del d["patient"]["rrn"]
    return d


@case("W-021")
def _w021():
    d = example("prescription")
    del d["patient"]["rrn"]
    d["patient"]["rrn_masked"] = "9001011******"
    return d


@case("W-022")
def _w022():
    d = example("receipt")
    d["institution"]["type_code"] = "99"
    return d


@case("W-023")
def _w023():
    return example("receipt"), dt.datetime(2035, 3, 15, 9, 0, tzinfo=KST)


# ---------------------------------------------------------------- receipt (§3.6)


@case("R-101")
def _r101():
    d = example("receipt")
    d["inpatient_bill_type"] = "discharge"
    return d


@case("R-102")
def _r102():
    d = example("receipt")
    d["care_period"]["end"] = "2025-03-13"
    return d


@case("R-103", "W-102")  # start > issued_on implies end > issued_on
def _r103():
    d = example("receipt")
    d["care_period"] = {"start": "2025-03-15", "end": "2025-03-15"}
    return d


@case("R-104")
def _r104():
    d = example("receipt")
    d["department_code"] = "2A"
    return d


@case("R-105")
def _r105():
    d = example("receipt")
    d["lines"][0]["selective"] = 0
    return d


@case("R-106")
def _r106():
    d = example("receipt")
    d["lines"][1]["item"] = "consultation"
    return d


@case("R-107")
def _r107():
    d = legacy(example("receipt"))
    d["lines"][5]["non_selective"] = 24000
    d["totals"]["non_selective"] = 24000
    return d


@case("R-108")
def _r108():
    d = example("receipt")
    d["lines"][0]["copay"] = 5401
    return d


@case("R-109")
def _r109():
    d = example("receipt")
    d["total_charge"] = 64501
    return d


@case("R-110")
def _r110():
    d = example("receipt")
    d["cap_excess"] = -1
    return d


@case("R-111")
def _r111():
    d = example("receipt")
    d["insurer_charge_total"] = 23101
    return d


@case("R-112")
def _r112():
    d = example("receipt")
    d["patient_charge_total"] = 41401
    d["prepaid"] = 1
    return d


@case("R-113")
def _r113():
    d = example("receipt")
    d["prepaid"] = 1
    return d


@case("R-114")
def _r114():
    d = example("receipt")
    d["paid"]["card"] = 40001
    return d


@case("R-115")
def _r115():
    d = example("receipt")
    d["prepaid"] = 1
    d["amount_due"] = 41399
    return d


@case("R-116")
def _r116():
    d = example("receipt")
    d["lines"] = []
    return d


@case("R-117")
def _r117():
    d = example("receipt")
    d["amount_due_rounding"] = 100
    return d


@case("W-101")
def _w101():
    d = example("receipt")
    d.update(cap_excess=100, insurer_charge_total=23200, patient_charge_total=41300, amount_due=41300)
    d["paid"].update(card=39900, total=41300)
    return d


@case("W-102")
def _w102():
    d = example("receipt")
    d["care_period"]["end"] = "2025-03-15"
    return d


@case("W-103")
def _w103():
    d = example("receipt")
    d["care_period"]["start"] = "2025-02-01"
    return d


@case("W-104")
def _w104():
    d = example("receipt")
    d["department_code"] = "99"
    return d


@case("W-105")
def _w105():
    d = example("receipt")
    d["drg_no"] = "D12345"
    return d


@case("W-106")
def _w106():
    d = example("receipt")
    d.update(amount_due_rounding=10, amount_due=41390)
    d["paid"].update(card=39990, total=41390)
    return d


@case("W-107")
def _w107():
    d = example("receipt")
    d["paid"].update(card=39000, total=40400)
    d["unpaid"] = 1000
    return d


@case("W-108", "W-107")  # paid ≥ 0, so a negative amount due always leaves unpaid ≠ 0
def _w108():
    d = example("receipt")
    d.update(prepaid=50000, amount_due=-8600, unpaid=-8600)
    d["paid"] = {"card": 0, "cash_receipt": 0, "cash": 0, "total": 0}
    del d["cash_receipt_approval_no"]
    return d


@case("W-109")
def _w109():
    return legacy(example("receipt"), care_day="2025-03-14")


@case("W-110")
def _w110():
    d = example("receipt")
    d["lines"][0]["item"] = "room_single"
    return d


@case("W-111")
def _w111():
    d = example("receipt")
    d["patient_category"] = "general"
    return d


@case("W-112")
def _w112():
    d = example("receipt")
    del d["institution"]["representative"]
    return d


@case("W-113")
def _w113():
    d = example("receipt")
    del d["cash_receipt_approval_no"]
    return d


# ---------------------------------------------------------------- itemised statement (§4.4)


@case("R-201")
def _r201():
    d = example("receipt_detail")
    d["lines"][0]["selective"] = 0
    return d


@case("R-202")
def _r202():
    d = example("receipt_detail")
    d["care_period"]["end"] = "2025-03-13"
    return d


@case("R-203")
def _r203():
    d = example("receipt_detail")
    d["lines"][1]["line_no"] = 1
    return d


@case("R-204")
def _r204():
    d = example("receipt_detail")
    d["lines"][0]["amount"] = "18011"
    return d


@case("R-205")
def _r205():
    d = example("receipt_detail")
    d["lines"][0]["total"] = 18001
    d["totals"]["total"] = 64501
    return d


@case("R-206")
def _r206():
    d = example("receipt_detail")
    d["totals"]["copay"] = 9901
    return d


@case("R-207")
def _r207():
    d = legacy(example("receipt_detail"))
    d["lines"][6]["non_selective"] = 24000
    d["totals"]["non_selective"] = 24000
    return d


@case("R-208")
def _r208():
    d = example("receipt_detail")
    del d["lines"][0]["date"]
    return d


@case("R-209")
def _r209():
    d = example("receipt_detail")
    d["lines"][0].update(copay=-100, insurer=18100)
    d["totals"].update(copay=4400, insurer=28600)
    return d


@case("R-210", "W-204")  # |money| > 9,999 is also ≥ 100
def _r210():
    d = example("receipt_detail")
    d["lines"][7].update(copay=10000, insurer=-10000)
    d["totals"].update(copay=19890, insurer=13110)
    return d


@case("R-211")
def _r211():
    d = example("receipt_detail")
    del d["lines"][0]["code_type"]
    return d


@case("R-212")
def _r212():
    d = example("receipt_detail")
    d["lines"] = []
    return d


@case("W-201")
def _w201():
    d = example("receipt_detail")
    d["lines"][0]["amount"] = "18005"
    return d


@case("W-202")
def _w202():
    d = example("receipt_detail")
    d["lines"][0]["date"] = "2025-03-13"
    return d


@case("W-203")
def _w203():
    d = example("receipt_detail")
    d["lines"].append(
        {
            "line_no": 9,
            "line_type": "item",
            "item": "materials",
            "date": "2025-03-14",
            "code": "J9999999",
            "code_type": "edi_material",
            "name": "치료재료 반납(예시)",
            "amount": "1500",
            "count": "-1",
            "days": 1,
            "total": -1500,
            "copay": 0,
            "insurer": 0,
            "full_copay": -1500,
            "non_covered": 0,
        }
    )
    d["totals"].update(total=63000, full_copay=0)
    return d


@case("W-204")
def _w204():
    d = example("receipt_detail")
    d["lines"][7].update(copay=100, insurer=-100)
    d["totals"].update(copay=9990, insurer=23010)
    return d


@case("W-205")
def _w205():
    d = example("receipt_detail")
    d["lines"][0]["code"] = "aa999"
    return d


@case("W-206")
def _w206():
    d = example("receipt_detail")
    del d["lines"][1]["code"]
    del d["lines"][1]["code_type"]
    return d


@case("W-207")
def _w207():
    d = example("receipt_detail")
    del d["receipt_no"]
    return d


# ---------------------------------------------------------------- prescription (§5.3)


@case("R-301")
def _r301():
    d = example("prescription")
    d["document_no"] = "20250314-00000"
    return d


@case("R-302")
def _r302():
    d = example("prescription")
    d["document_no"] = "20250313-00017"
    return d


@case("R-303")
def _r303():
    d = example("prescription")
    d["lines"] = []
    del d["injection_dispensing"]
    return d


@case("R-304")
def _r304():
    d = example("prescription")
    d["lines"][0]["dose"] = "0"
    return d


@case("R-305")
def _r305():
    d = example("prescription")
    d["lines"][0]["code"] = "69999999"
    return d


@case("R-307")
def _r307():
    d = example("prescription")
    d["diagnosis_withheld"] = True
    return d


@case("R-308")
def _r308():
    d = example("prescription")
    d["diagnosis_codes"] = ["J0"]
    return d


@case("R-309")
def _r309():
    d = example("prescription")
    del d["injection_dispensing"]
    return d


@case("R-310")
def _r310():
    d = example("prescription")
    d["prescriber"]["license_type"] = "nurse"
    return d


@case("R-311")
def _r311():
    d = example("prescription")
    d["valid_days"] = 0
    return d


@case("R-312")
def _r312():
    d = example("prescription")
    del d["patient"]["rrn"]
    return d


@case("R-313")
def _r313():
    d = example("prescription")
    d["dispensing"] = {"dispensed_on": "2025-03-13"}
    return d


@case("R-314")
def _r314():
    d = example("prescription")
    d["lines"][1]["line_no"] = 1
    return d


@case("W-301")
def _w301():
    d = example("prescription")
    del d["diagnosis_codes"]
    return d


@case("W-302")
def _w302():
    d = example("prescription")
    del d["valid_days"]
    return d


@case("W-303")
def _w303():
    d = example("prescription")
    d["valid_days"] = 31
    return d


@case("W-304")
def _w304():
    d = example("prescription")
    del d["lines"][0]["code"]
    del d["lines"][0]["code_type"]
    return d


@case("W-305")
def _w305():
    d = example("prescription")
    d["lines"][0]["days"] = 181
    return d


@case("W-306")
def _w306():
    d = example("prescription")
    d["copay_exemption_code"] = "V25"
    return d


@case("W-307")
def _w307():
    d = example("prescription")
    d["prescriber"]["license_no"] = "A9999"
    return d


@case("W-308")
def _w308():
    d = example("prescription")
    d["lines"][1]["code"] = "699999991"
    return d


@case("W-309")
def _w309():
    d = example("prescription")
    d["institution"]["type_code"] = "81"
    return d


# ---------------------------------------------------------------- pharmacy receipt (§6.4)


@case("R-401")
def _r401():
    d = example("pharmacy_receipt")
    d["total_charge"] = 12301
    return d


@case("R-402")
def _r402():
    d = example("pharmacy_receipt")
    d["patient_charge_total"] = 3901
    d["paid"].update(card=3901, total=3901)
    return d


@case("R-403")
def _r403():
    d = example("pharmacy_receipt")
    d["paid"]["card"] = 3901
    return d


@case("R-404")
def _r404():
    d = example("pharmacy_receipt")
    d["prescription_issue_no"] = "2025-0314"
    return d


@case("R-405")
def _r405():
    d = example("pharmacy_receipt")
    d["days_supplied"] = 0
    return d


@case("R-406")
def _r406():
    d = example("pharmacy_receipt")
    d["fee_breakdown"] = {"dispensing_fee": 1000, "drug_cost": 1000}
    return d


@case("R-407")
def _r407():
    d = example("pharmacy_receipt")
    d["totals"]["copay"] = -1
    return d


@case("R-408")
def _r408():
    d = example("pharmacy_receipt")
    d["lines"][1]["line_no"] = 1
    return d


@case("R-409")
def _r409():
    d = example("pharmacy_receipt")
    d["prescription_issue_no"] = "20250315-00017"
    return d


@case("W-401")
def _w401():
    d = example("pharmacy_receipt")
    d["paid"].update(card=3800, total=3800)
    return d


@case("W-402")
def _w402():
    d = example("pharmacy_receipt")
    d["dispensed_on"] = "2025-03-13"
    d["prescription_issue_no"] = "20250313-00017"
    d["issued_on"] = "2025-03-12"
    d["issued_at"] = "2025-03-12T11:20:00+09:00"
    return d


@case("W-403")
def _w403():
    d = example("pharmacy_receipt")
    del d["pharmacist_name"]
    return d


@case("W-404")
def _w404():
    d = example("pharmacy_receipt")
    d["institution"]["type_code"] = "31"
    return d


@case("W-405")
def _w405():
    d = example("pharmacy_receipt")
    d["prescription_issue_no"] = "20250201-00017"
    return d


@case("W-406")
def _w406():
    d = example("pharmacy_receipt")
    d["lines"][1]["coverage"] = "covered"
    return d


@case("W-407")
def _w407():
    d = example("pharmacy_receipt")
    d["lines"][0]["code"] = "69999999"
    return d


@case("W-408")
def _w408():
    d = example("pharmacy_receipt")
    for line in d["lines"]:
        line["amount"] = 1000
    return d


def test_every_spec_rule_has_a_case() -> None:
    assert set(CASES) == spec_rule_ids()


@pytest.mark.parametrize("rule", sorted(CASES))
def test_mutation_violates_only_its_rule(rule: str) -> None:
    mutate, expected = CASES[rule]
    made = mutate()
    doc, received_at = made if isinstance(made, tuple) else (made, RECEIVED_AT)
    result = validate_document(doc, received_at=received_at)
    assert {p.rule for p in result.problems} == expected, [(p.rule, p.path) for p in result.problems]
    assert result.ok == (not any(r.startswith("R-") for r in expected))
