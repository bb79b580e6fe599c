"""Known violations for ``synth --invalid-rate``: each mutation breaks exactly one rule of documents.md.

A document mutation changes one fresh (version-1) record so that validating it yields exactly its
rule id and no other error; a byte mutation breaks the whole file (record index ``None``). R-010 is
not a change of a record but an extra record: a conflicting copy of an already stored version, which
`corpus` inserts itself. Mutations are applied to deep copies, never to the documents the generator
keeps for later corrections.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

Doc = dict[str, Any]


@dataclass(frozen=True)
class DocMutation:
    rule: str
    description: str
    applies: Callable[[Doc], bool]
    apply: Callable[[Doc, random.Random], None]
    formats: tuple[str, ...] = ("json", "jsonl", "xml", "csv")


def _is(doc_type: str) -> Callable[[Doc], bool]:
    return lambda d: d.get("document_type") == doc_type and d.get("status") == "active"


def _active(d: Doc) -> bool:
    return d.get("status") == "active"


def _total_charge(d: Doc, rng: random.Random) -> None:
    d["total_charge"] += 1000  # RC-2 off by 1000; nothing else reads total_charge


def _bill_type(d: Doc, rng: random.Random) -> None:
    if d["visit_type"] == "outpatient":
        d["inpatient_bill_type"] = "interim"
    else:
        del d["inpatient_bill_type"]


def _care_period(d: Doc, rng: random.Random) -> None:
    start = dt.date.fromisoformat(d["care_period"]["start"])
    d["care_period"]["end"] = (
        start - dt.timedelta(days=1)
    ).isoformat()  # end < start; start unchanged


def _brn(d: Doc, rng: random.Random) -> None:
    brn = d["institution"]["business_reg_no"]
    d["institution"]["business_reg_no"] = brn[:9] + str((int(brn[9]) + 1) % 10)


def _rrn_month(d: Doc, rng: random.Random) -> None:
    rrn = d["patient"]["rrn"]
    d["patient"]["rrn"] = rrn[:2] + "13" + rrn[4:]


def _item_lines(d: Doc) -> list[Doc]:
    return [ln for ln in d["lines"] if ln["line_type"] == "item"]


def _detail_line_sum(d: Doc, rng: random.Random) -> None:
    # copay +1000 on a line breaks RD-1 there; the same change in totals keeps RD-3 intact.
    line = rng.choice(_item_lines(d))
    line["copay"] += 1000
    d["totals"]["copay"] += 1000


def _detail_amount(d: Doc, rng: random.Random) -> None:
    # unit price +1000 moves the expected total by ≥ 500 won (count ≥ 0.5) while total stays: RD-2 > 10
    line = rng.choice(_item_lines(d))
    line["amount"] = _dec(Decimal(line["amount"]) + 1000)


def _pharmacy_totals(d: Doc, rng: random.Random) -> None:
    d["totals"]["insurer"] += 1000  # RP-1 only (RP-2 does not use the insurer share)


def _issue_no_serial(d: Doc, rng: random.Random) -> None:
    d["prescription_issue_no"] = d["prescription_issue_no"][:9] + "00000"


def _rx_date(d: Doc, rng: random.Random) -> None:
    issued = dt.date.fromisoformat(d["issued_on"])
    # serial 9xxxx is never used by the generator, so the new number collides with no other document
    d["document_no"] = f"{issued - dt.timedelta(days=1):%Y%m%d}-9{rng.randrange(10000):04d}"


def _injection(d: Doc, rng: random.Random) -> None:
    if "injection_dispensing" in d:
        del d["injection_dispensing"]
    else:
        d["injection_dispensing"] = "outpatient"


def _unknown_field(d: Doc, rng: random.Random) -> None:
    d["memo"] = "예시 메모"


def _dec(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


DOC_MUTATIONS: tuple[DocMutation, ...] = (
    DocMutation("R-109", "receipt total_charge off by 1000", _is("receipt"), _total_charge),
    DocMutation("R-101", "receipt inpatient_bill_type contradicts visit_type", _is("receipt"), _bill_type),
    DocMutation("R-102", "receipt care_period.end before start", _is("receipt"), _care_period),
    DocMutation("R-031", "business_reg_no check digit wrong",
                lambda d: _active(d) and "business_reg_no" in d.get("institution", {}), _brn),
    DocMutation("R-032", "rrn with month 13", lambda d: _active(d) and "rrn" in d.get("patient", {}), _rrn_month),
    DocMutation("R-205", "detail line columns do not add up to total", _is("receipt_detail"), _detail_line_sum),
    DocMutation("R-204", "detail line unit price inconsistent with total", _is("receipt_detail"), _detail_amount),
    DocMutation("R-401", "pharmacy totals do not add up to total_charge", _is("pharmacy_receipt"), _pharmacy_totals),
    DocMutation("R-404", "prescription_issue_no with serial 00000", _is("pharmacy_receipt"), _issue_no_serial),
    DocMutation("R-302", "prescription number date differs from issued_on", _is("prescription"), _rx_date),
    DocMutation("R-309", "injection_dispensing inconsistent with injection lines", _is("prescription"), _injection),
    # CSV/XML readers report an unknown column/element without a stable record index: JSON only.
    DocMutation("R-025", "unknown field", _active, _unknown_field, formats=("json", "jsonl")),
)  # fmt: skip

BYTE_RULES: dict[str, tuple[str, ...]] = {
    "R-002": ("json", "jsonl", "xml", "csv"),  # bytes valid neither as UTF-8 nor as CP949
    "R-004": ("json", "xml"),  # truncated; a cut CSV/JSONL may still parse as fewer records
}
CONFLICT_RULE = "R-010"


def mutate_document(mutation: DocMutation, doc: Doc, rng: random.Random) -> Doc:
    out = copy.deepcopy(doc)
    mutation.apply(out, rng)
    return out


def mutate_bytes(rule: str, data: bytes) -> bytes:
    """R-002: insert 0xFF 0xFF (invalid in UTF-8 and CP949); R-004: cut the file in the middle.

    Both cut/insert at a line feed, which is always a character boundary in UTF-8 and CP949."""
    middle = data.find(b"\n", len(data) // 2)
    if middle < 0:
        middle = len(data) // 2
    if rule == "R-002":
        return data[:middle] + b"\xff\xff" + data[middle:]
    if rule == "R-004":
        return data[:middle]
    raise ValueError(f"not a byte mutation: {rule}")


def conflicting_copy(doc: Doc) -> Doc:
    """Same key and version as a stored record, different content (§9.2 case 3 → R-010)."""
    out = copy.deepcopy(doc)
    if out["document_type"] == "prescription":
        out["dispensing_notes"] = (out.get("dispensing_notes", "") + " 재전송 시 변경(예시)").strip()
    else:
        out["remarks"] = (out.get("remarks", "") + " 재전송 시 변경(예시)").strip()
    return out
