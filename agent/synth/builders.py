"""Builders of internally consistent standard documents (documents.md §3–§6), one encounter at a time.

An *encounter* is what happens at the institution: a clinic visit, a hospital stay, a dental visit,
a pre-2018 visit on the 선택진료 form. It yields the documents an EMR would export for it: the
receipt, usually its 세부산정내역, a prescription and the linked pharmacy receipt.

Every amount is derived from the itemised charges first and then aggregated, so the identities
hold by construction and the cross-document warnings stay quiet:

- detail lines: ``total = round_half_up(amount × dose × count × days)`` (RD-2, d = 0);
- per-line split of covered lines ``copay = trunc10(total × rate)`` (few lines per item) or
  ``round_half_up`` (many lines), ``insurer = total − copay`` (RD-1);
- the receipt row of item k carries the document-level 본인부담금 ``trunc10(Σ total × rate)``; the
  difference to Σ line copays goes into a ``rounding_adjustment`` line (|money| < 100, W-204), so
  per item the statement reconciles with the receipt (W-501…W-503);
- receipt summary RC-1…RC-9, pharmacy RP-1…RP-4 computed from the columns.

Only `random.Random` instances passed in are used (never the global generator, never the clock):
the same seed gives the same documents.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agent.documents import codes
from agent.synth import identities as ids
from agent.synth.identities import SERVICES, Drug, Institution, Patient, Service

ANCHOR_DATE = dt.date(2025, 6, 30)  # no generated date is later (R-034 against any later received_at)
CURRENT_START = dt.date(2024, 1, 1)
LEGACY_START, LEGACY_END = dt.date(2017, 1, 1), dt.date(2017, 12, 31)  # 선택진료 era, < 10 y before anchor
SCHEMA_VERSION = "1.0"

Doc = dict[str, Any]

_ZERO = Decimal(0)
_ONE = Decimal(1)


def round_half_up(x: Decimal) -> int:
    """원 미만 4사5입 (documents.md §2.1)."""
    return int(x.quantize(_ONE, rounding=ROUND_HALF_UP))


def trunc10(x: Decimal | int) -> int:
    """10원 미만 절사 toward zero (amounts here are never negative)."""
    return int(x) // 10 * 10


def dec(value: Decimal) -> str:
    """Canonical decimal spelling (§2.1): no exponent, no trailing zeros, no trailing dot."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _date(d: dt.date) -> str:
    return d.isoformat()


# ----------------------------------------------------------------------------- itemised charges


@dataclass
class Charge:
    """One item line of the 세부산정내역 before numbering and the payer split."""

    service: Service
    date: dt.date
    amount: Decimal
    count: Decimal
    days: int = 1
    dose: Decimal | None = None
    selective: bool = False  # legacy 선택진료료 (non-covered, column ④)
    coverage: str = ""
    name: str = ""
    code: str = ""
    code_type: str = ""
    total: int = 0

    def __post_init__(self) -> None:
        self.coverage = self.coverage or self.service.coverage
        self.name = self.name or self.service.name
        self.code = self.code or self.service.code
        self.code_type = self.code_type or self.service.code_type
        self.total = round_half_up(self.amount * (self.dose or _ONE) * self.count * self.days)


def _service_charge(rng: random.Random, item: str, day: dt.date, count: int = 1) -> Charge:
    svc = rng.choice(SERVICES[item])
    return Charge(svc, day, svc.price, Decimal(count))


def _drug_charge(drug: Drug, item: str, day: dt.date, count: Decimal, days: int = 1) -> Charge:
    svc = Service(item, drug.code, "edi_drug", drug.name, drug.unit_price)
    return Charge(svc, day, drug.unit_price, count, days=days, dose=drug.dose)


@dataclass
class Priced:
    """Detail lines, receipt rows and totals of one encounter, all columns consistent."""

    detail_lines: list[Doc]
    detail_totals: Doc
    receipt_lines: list[Doc]
    receipt_totals: Doc


_ITEM_ORDER = (
    "consultation", "room_single", "room_double_triple", "room_ward", "meals", "medication_service",
    "medication_drug", "injection_service", "injection_drug", "anesthesia", "procedure_surgery", "lab_test",
    "imaging", "radiotherapy", "materials", "rehab_physio", "psychotherapy", "blood", "ct", "mri", "pet",
    "ultrasound", "prosthetics_orthodontics", "certificates", "other_optional", "selective_benefit",
    "flat_65plus", "flat_ltc_hospital", "flat_palliative", "drg_bundle", "other",
)  # fmt: skip
_ITEM_RANK = {item: i for i, item in enumerate(_ITEM_ORDER)}
# W-204 warns from |100| on; shifting larger differences into a line's own split keeps it below.
_MAX_ADJUSTMENT = 90


def price(
    charges: list[Charge], rate: Decimal, *, legacy: bool, per_item_adjustment: bool, rng: random.Random
) -> Priced:
    """Split every charge into payer columns and aggregate the receipt rows (see module doc)."""
    columns = ("copay", "insurer", "full_copay", "non_covered") + (
        ("selective", "non_selective") if legacy else ()
    )
    by_item: dict[str, list[tuple[Charge, Doc]]] = {}
    lines: list[Doc] = []
    for ch in sorted(charges, key=lambda c: (c.date, _ITEM_RANK[c.service.item])):
        line: Doc = {
            "line_type": "item", "item": ch.service.item, "date": _date(ch.date), "code": ch.code,
            "code_type": ch.code_type, "name": ch.name, "amount": dec(ch.amount),
        }  # fmt: skip
        if ch.dose is not None:
            line["dose"] = dec(ch.dose)
        line["count"] = dec(ch.count)
        line["days"] = ch.days
        cols = dict.fromkeys(columns, 0)
        if ch.coverage == "full_copay":
            cols["full_copay"] = ch.total
        elif ch.coverage == "non_covered":
            cols["non_covered"] = ch.total
            if legacy:
                cols["selective" if ch.selective else "non_selective"] = ch.total
        line["total"] = ch.total
        line.update(cols)
        if ch.coverage != "covered" and rng.random() < 0.5:
            line["copay_rate_code"] = "U" if ch.coverage == "full_copay" else "W"
        lines.append(line)
        by_item.setdefault(ch.service.item, []).append((ch, line))

    receipt_lines: list[Doc] = []
    adjustments: list[Doc] = []
    for item in sorted(by_item, key=_ITEM_RANK.__getitem__):
        entries = by_item[item]
        item_rate = rate if rate in (_ZERO, _ONE) else ids.ITEM_COPAY_RATE_OVERRIDE.get(item, rate)
        covered = [(ch, ln) for ch, ln in entries if ch.coverage == "covered"]
        target = 0
        if covered:
            exact = [ch.total * item_rate for ch, _ in covered]
            if item_rate in (_ZERO, _ONE):
                per_line = [int(x) for x in exact]
                target = sum(per_line)
            else:
                # Few lines: per-line 10원 절사 (as the example); many: 원 단위, so the difference stays small.
                per_line = (
                    [trunc10(x) for x in exact] if len(covered) <= 10 else [round_half_up(x) for x in exact]
                )
                target = trunc10(sum(exact, _ZERO))
            for (ch, ln), cp in zip(covered, per_line, strict=True):
                ln["copay"], ln["insurer"] = cp, ch.total - cp
            _shift_excess(covered, target)
        adj = target - sum(ln["copay"] for _, ln in covered)
        row: Doc = {"item": item}
        for c in columns:
            row[c] = sum(ln[c] for _, ln in entries)
        row["copay"] += adj
        row["insurer"] -= adj
        receipt_lines.append(row)
        if adj:
            adjustments.append({"item": item, "adj": adj})

    if adjustments:
        total_adj = sum(a["adj"] for a in adjustments)
        if not per_item_adjustment and abs(total_adj) < 100:
            adjustments = [{"adj": total_adj}] if total_adj else []
        for a in adjustments:
            adj_line: Doc = {"line_type": "rounding_adjustment"}
            if "item" in a:
                adj_line["item"] = a["item"]
            adj_line["name"] = "끝처리 조정금액"
            adj_line["total"] = 0
            adj_line.update(dict.fromkeys(columns, 0))
            adj_line["copay"], adj_line["insurer"] = a["adj"], -a["adj"]
            lines.append(adj_line)
    for n, ln in enumerate(lines, 1):
        # line_no first for readability of the exported JSON (order is not significant)
        ln_items = list(ln.items())
        ln.clear()
        ln["line_no"] = n
        ln.update(ln_items)
    detail_totals = {"total": sum(ln["total"] for ln in lines)}
    for c in columns:
        detail_totals[c] = sum(ln[c] for ln in lines)
    receipt_totals = {c: sum(r[c] for r in receipt_lines) for c in columns}
    return Priced(lines, detail_totals, receipt_lines, receipt_totals)


def _shift_excess(covered: list[tuple[Charge, Doc]], target: int) -> None:
    """Move any difference beyond ±90 won into the lines' own split (the split is not re-derived)."""
    adj = target - sum(ln["copay"] for _, ln in covered)
    excess = adj - max(-_MAX_ADJUSTMENT, min(_MAX_ADJUSTMENT, adj))
    for ch, ln in sorted(covered, key=lambda e: -e[0].total):
        if not excess:
            break
        move = max(-ln["copay"], min(ch.total - ln["copay"], excess))
        ln["copay"] += move
        ln["insurer"] -= move
        excess -= move


# ------------------------------------------------------------------------------- the factory


@dataclass
class Encounter:
    """Documents of one encounter; ``cancel_groups`` lists doc indexes that are cancelled together
    (a receipt and its statement, so W-512 never fires)."""

    docs: list[Doc]
    cancel_groups: list[list[int]] = field(default_factory=list)


_CATEGORY_WEIGHTS = (("health_insurance", 86), ("medical_aid", 6), ("general", 3), ("auto_insurance", 3),
                     ("industrial_accident", 2))  # fmt: skip
_INSURANCE_TYPE = {"health_insurance": "health_insurance", "medical_aid": "medical_aid", "general": "other",
                   "auto_insurance": "auto_insurance", "industrial_accident": "industrial_accident"}  # fmt: skip


def _rate(category: str, inpatient: bool, hospital: bool) -> Decimal:
    if category == "general":
        return _ONE  # 비보험: everything is 본인부담 (W-111 stays quiet: insurer 0)
    if category in ("auto_insurance", "industrial_accident"):
        return _ZERO
    if category == "medical_aid":
        return Decimal("0.1") if inpatient else Decimal("0.15")
    return Decimal("0.2") if inpatient else (Decimal("0.4") if hospital else Decimal("0.3"))


_PRELUDE = ("_prelude_clinic", "_prelude_drg", "_prelude_legacy", "_prelude_inpatient", "_prelude_dental",
            "_prelude_legacy_inpatient")  # fmt: skip


class DocumentFactory:
    """Makes encounters from one seeded RNG; every counter lives here, so output is reproducible."""

    def __init__(self, rng: random.Random, *, patients: int = 4000) -> None:
        self.rng = rng
        self.patients = [ids.make_patient(rng, i) for i in range(patients)]
        self.clinics = ids.make_institutions(rng, "clinic", 12)
        self.hospitals = ids.make_institutions(rng, "hospital", 4)
        self.dentals = ids.make_institutions(rng, "dental", 2)
        self.pharmacies = ids.make_institutions(rng, "pharmacy", 9)
        self._receipt_serial: dict[str, int] = {}
        self._pharmacy_serial: dict[str, int] = {}
        self._rx_serial: dict[dt.date, int] = {}
        self._encounters = 0

    # ------------------------------------------------------------------ small helpers

    def _day(self, start: dt.date, end: dt.date) -> dt.date:
        return start + dt.timedelta(days=self.rng.randrange((end - start).days + 1))

    def _receipt_no(self, issued: dt.date, prefix: str = "") -> str:
        month = f"{issued:%Y%m}"
        table = self._pharmacy_serial if prefix else self._receipt_serial
        table[month] = table.get(month, 0) + 1
        return f"{prefix}{month}-{table[month]:06d}"

    def _rx_no(self, issued: dt.date) -> str:
        # Serial 00001…89999 per day across all institutions: numbers stay unique in the corpus
        # (one CSV file can hold them all); 9xxxx is reserved for the R-302 mutation.
        self._rx_serial[issued] = self._rx_serial.get(issued, 0) + 1
        return f"{issued:%Y%m%d}-{self._rx_serial[issued]:05d}"

    def _envelope(self, doc_type: str, document_no: str, inst: Institution, issued: dt.date) -> Doc:
        hour, minute = self.rng.randrange(9, 18), self.rng.randrange(60)
        version = int(f"{issued:%Y%m%d}{hour:02d}{minute:02d}00") if inst.version_style == "timestamp" else 1
        doc: Doc = {
            "schema_version": SCHEMA_VERSION, "document_type": doc_type, "document_no": document_no,
            "version": version, "status": "active", "revision_reason": "original", "issued_on": _date(issued),
        }  # fmt: skip
        if self.rng.random() < 0.7:
            doc["issued_at"] = f"{issued.isoformat()}T{hour:02d}:{minute:02d}:00+09:00"
        doc["institution"] = inst.block()
        return doc

    @staticmethod
    def _patient(p: Patient, *, reg_no: bool = True) -> Doc:
        block: Doc = {"name": p.name, "rrn": p.rrn}
        if reg_no:
            block["patient_reg_no"] = p.reg_no
        return block

    def _category(self) -> str:
        return self.rng.choices([c for c, _ in _CATEGORY_WEIGHTS], [w for _, w in _CATEGORY_WEIGHTS])[0]

    # ------------------------------------------------------------------ encounters

    def encounter(self) -> Encounter:
        self._encounters += 1
        if self._encounters <= len(_PRELUDE):
            # One of each kind first, so even a small corpus has every layout (the mixture test).
            return getattr(self, _PRELUDE[self._encounters - 1])()
        r = self.rng.random()
        if r < 0.66:
            return self._outpatient(self.rng.choice(self.clinics), legacy=False)
        if r < 0.78:
            return self._outpatient(self.rng.choice(self.hospitals), legacy=False)
        if r < 0.83:
            return self._outpatient(self.rng.choice(self.dentals), legacy=False)
        if r < 0.92:
            return self._inpatient(legacy=False)
        if r < 0.98:
            return self._outpatient(self.rng.choice(self.clinics + self.hospitals), legacy=True)
        return self._inpatient(legacy=True)

    def _prelude_clinic(self) -> Encounter:
        return self._outpatient(self.clinics[0], legacy=False)

    def _prelude_drg(self) -> Encounter:
        return self._inpatient(legacy=False, drg=True)

    def _prelude_legacy(self) -> Encounter:
        return self._outpatient(self.clinics[1], legacy=True)

    def _prelude_inpatient(self) -> Encounter:
        return self._inpatient(legacy=False, drg=False)

    def _prelude_dental(self) -> Encounter:
        return self._outpatient(self.dentals[0], legacy=False)

    def _prelude_legacy_inpatient(self) -> Encounter:
        return self._inpatient(legacy=True)

    def _outpatient(self, inst: Institution, *, legacy: bool) -> Encounter:
        rng = self.rng
        patient = rng.choice(self.patients)
        day = self._day(LEGACY_START, LEGACY_END) if legacy else self._day(CURRENT_START, ANCHOR_DATE)
        day = max(day, patient.birth)
        category = self._category()
        charges = [_service_charge(rng, "consultation", day)]
        dental = inst.kind == "dental"
        in_house_injection: Drug | None = None
        if dental:
            charges.append(_service_charge(rng, "procedure_surgery", day))
            charges.append(_service_charge(rng, "imaging", day))
            if rng.random() < 0.3:
                charges.append(_service_charge(rng, "prosthetics_orthodontics", day))
        else:
            for _ in range(rng.choice((0, 0, 1, 2, 3))):
                charges.append(_service_charge(rng, "lab_test", day))
            if rng.random() < 0.25:
                charges.append(_service_charge(rng, "imaging", day))
            if rng.random() < 0.2:
                in_house_injection = rng.choice(ids.INJECTIONS)
                charges.append(_service_charge(rng, "injection_service", day))
                charges.append(_drug_charge(in_house_injection, "injection_drug", day, _ONE))
            if rng.random() < 0.15:
                charges.append(_service_charge(rng, "materials", day))
            if rng.random() < 0.15:
                charges.append(_service_charge(rng, "rehab_physio", day))
            if rng.random() < 0.05:
                charges.append(_service_charge(rng, "ultrasound", day))
            if rng.random() < 0.05:
                charges.append(_service_charge(rng, "certificates", day))
        if legacy:
            charges += self._selective_charges(charges)
        rate = _rate(category, False, inst.kind == "hospital")
        priced = price(charges, rate, legacy=legacy, per_item_adjustment=False, rng=rng)
        receipt = self._receipt(
            inst, patient, priced, category, day, day, day, legacy=legacy, inpatient=False
        )
        docs = [receipt]
        groups = [[0]]
        if rng.random() < 0.75:
            docs.append(self._detail(receipt, priced))
            groups = [[0, 1]]
        if not legacy and rng.random() < 0.7:
            rx = self._prescription(inst, patient, category, day, in_house_injection)
            docs.append(rx)
            groups.append([len(docs) - 1])
            if rng.random() < 0.85:
                docs.append(self._pharmacy_receipt(rx, patient, category))
                groups.append([len(docs) - 1])
        return Encounter(docs, groups)

    def _selective_charges(self, charges: list[Charge]) -> list[Charge]:
        """Pre-2018 선택진료료: an extra non-covered charge on some physician services."""
        extra = []
        for ch in charges:
            if (
                ch.service.item in ("consultation", "lab_test", "imaging", "procedure_surgery")
                and self.rng.random() < 0.6
            ):
                amount = (ch.amount * Decimal("0.5")).quantize(_ONE, rounding=ROUND_HALF_UP)
                svc = Service(
                    ch.service.item,
                    f"SEL-{ch.service.code}"[:20],
                    "local",
                    "선택진료료(예시)",
                    amount,
                    "non_covered",
                )
                extra.append(Charge(svc, ch.date, amount, _ONE, selective=True))
        return extra

    def _inpatient(self, *, legacy: bool, drg: bool | None = None) -> Encounter:
        rng = self.rng
        inst = rng.choice(self.hospitals)
        patient = rng.choice(self.patients)
        stay = rng.randrange(4, 26)
        lo, hi = (LEGACY_START, LEGACY_END) if legacy else (CURRENT_START, ANCHOR_DATE)
        start = self._day(lo, hi - dt.timedelta(days=stay))
        start = max(start, patient.birth)
        end = start + dt.timedelta(days=stay - 1)
        bill_type = "interim" if rng.random() < 0.15 else "discharge"
        if drg is None:
            drg = not legacy and bill_type == "discharge" and rng.random() < 0.3
        elif drg:
            bill_type = "discharge"
        category = self._category()
        charges: list[Charge] = []
        if drg:
            drg_no = f"D{rng.randrange(10000, 99999)}"
            bundle = Service(
                "drg_bundle",
                f"DRG-{drg_no}",
                "local",
                "질병군 포괄수가(예시)",
                Decimal(rng.randrange(150, 400) * 10000),
            )
            charges.append(Charge(bundle, start, bundle.price, _ONE))
            for d in range(stay):
                day = start + dt.timedelta(days=d)
                if rng.random() < 0.2:
                    charges.append(_service_charge(rng, "room_single", day))
            if rng.random() < 0.3:
                charges.append(_service_charge(rng, "certificates", end))
        else:
            drg_no = None
            charges.append(_service_charge(rng, "consultation", start))
            drugs = rng.sample(ids.DRUGS, 3)
            injections = rng.sample(ids.INJECTIONS, 2)
            single = rng.random() < 0.15
            for d in range(stay):
                day = start + dt.timedelta(days=d)
                charges.append(_service_charge(rng, "room_single" if single else "room_ward", day))
                charges.append(_service_charge(rng, "meals", day, count=3))
                charges.append(_service_charge(rng, "medication_service", day))
                for drug in drugs[: rng.randrange(1, 4)]:
                    charges.append(_drug_charge(drug, "medication_drug", day, Decimal(3)))
                for inj in injections[: rng.randrange(0, 3)]:
                    charges.append(_service_charge(rng, "injection_service", day))
                    charges.append(_drug_charge(inj, "injection_drug", day, Decimal(rng.choice((1, 2, 3)))))
                for _ in range(rng.randrange(0, 4)):
                    charges.append(_service_charge(rng, "lab_test", day))
                if rng.random() < 0.3:
                    charges.append(_service_charge(rng, "materials", day, count=rng.randrange(1, 4)))
                if rng.random() < 0.2:
                    charges.append(_service_charge(rng, "rehab_physio", day))
            charges.append(_service_charge(rng, "imaging", start))
            if rng.random() < 0.4:
                charges.append(_service_charge(rng, "ct", start))
            if rng.random() < 0.15:
                charges.append(_service_charge(rng, "mri", start + dt.timedelta(days=1)))
            if rng.random() < 0.4:
                op_day = start + dt.timedelta(days=1)
                charges.append(_service_charge(rng, "procedure_surgery", op_day))
                charges.append(_service_charge(rng, "anesthesia", op_day))
        if legacy:
            charges += self._selective_charges(charges)
        rate = _rate(category, True, True)
        priced = price(charges, rate, legacy=legacy, per_item_adjustment=True, rng=rng)
        issued = end if bill_type == "interim" else min(end + dt.timedelta(days=rng.choice((0, 0, 1))), hi)
        receipt = self._receipt(inst, patient, priced, category, start, end, issued, legacy=legacy, inpatient=True,
                                bill_type=bill_type, drg_no=drg_no)  # fmt: skip
        docs = [receipt]
        if rng.random() < 0.9:
            docs.append(self._detail(receipt, priced))
        return Encounter(docs, [list(range(len(docs)))])

    # ------------------------------------------------------------------ documents

    def _receipt(self, inst: Institution, patient: Patient, priced: Priced, category: str, start: dt.date,
                 end: dt.date, issued: dt.date, *, legacy: bool, inpatient: bool, bill_type: str | None = None,
                 drg_no: str | None = None) -> Doc:  # fmt: skip
        rng = self.rng
        doc = self._envelope("receipt", self._receipt_no(issued), inst, issued)
        doc["patient"] = self._patient(patient)
        doc["visit_type"] = "inpatient" if inpatient else "outpatient"
        if inpatient:
            doc["inpatient_bill_type"] = bill_type
        doc["care_period"] = {"start": _date(start), "end": _date(end)}
        if rng.random() < 0.5:
            doc["night_care"] = rng.random() < 0.1
            doc["holiday_care"] = rng.random() < 0.05
        dept = inst.department_code
        doc["department_code"] = dept
        doc["department_name"] = codes.DEPARTMENTS[dept]
        if drg_no:
            doc["drg_no"] = drg_no
        if inpatient:
            doc["room"] = f"{rng.randrange(3, 12)}병동-{rng.randrange(1, 30):02d}호"
        doc["patient_category"] = category
        if category == "medical_aid":
            doc["patient_category_text"] = "의료급여 2종"
        doc["amount_layout"] = "legacy_selective" if legacy else "current"
        doc["lines"] = priced.receipt_lines
        totals = priced.receipt_totals
        doc["totals"] = totals
        cap = 0
        if inpatient and category == "health_insurance" and totals["copay"] > 0 and rng.random() < 0.15:
            cap = trunc10(totals["copay"] * Decimal(rng.randrange(10, 50)) / 100)  # 본인부담상한액 초과금
        patient_total = totals["copay"] - cap + totals["full_copay"] + totals["non_covered"]
        doc["cap_excess"] = cap
        doc["total_charge"] = (
            totals["copay"] + totals["insurer"] + totals["full_copay"] + totals["non_covered"]
        )
        if not legacy or rng.random() < 0.8:
            doc["insurer_charge_total"] = totals["insurer"] + cap
        doc["patient_charge_total"] = patient_total
        prepaid = 0
        if inpatient and bill_type == "discharge" and patient_total > 200000 and rng.random() < 0.3:
            prepaid = rng.randrange(1, patient_total // 100000 + 1) * 100000 if patient_total >= 100000 else 0
            prepaid = min(prepaid, patient_total)
        doc["prepaid"] = prepaid
        if rng.random() < 0.3:
            doc["amount_due_rounding"] = 0
        due = patient_total - prepaid
        doc["amount_due"] = due
        doc.update(self._payment(due))
        doc["unpaid"] = due - doc["paid"]["total"]
        return _reorder_payment(doc)

    def _payment(self, due: int) -> Doc:
        """paid (RC-7) equal to what is due (no W-107), with the 현금영수증 fields W-113 expects."""
        rng = self.rng
        card = cash_receipt = cash = 0
        r = rng.random()
        if due <= 0:
            pass
        elif r < 0.65:
            card = due
        elif r < 0.8:
            cash_receipt = due
        elif r < 0.9:
            cash = due
        else:
            card = due // 2 // 1000 * 1000
            cash = due - card
        out: Doc = {"paid": {"card": card, "cash_receipt": cash_receipt, "cash": cash,
                             "total": card + cash_receipt + cash}}  # fmt: skip
        if cash_receipt:
            out["cash_receipt_id"] = f"010-0000-{rng.randrange(10000):04d}"
            out["cash_receipt_approval_no"] = f"{rng.randrange(10**8, 10**9)}"
        return out

    def _detail(self, receipt: Doc, priced: Priced) -> Doc:
        doc: Doc = {k: copy.deepcopy(receipt[k]) for k in
                    ("schema_version", "document_type", "document_no", "version", "status", "revision_reason",
                     "issued_on", "institution", "patient")}  # fmt: skip
        doc["document_type"] = "receipt_detail"
        doc["receipt_no"] = receipt["document_no"]  # institutions without a separate number reuse it (§4.1)
        doc["visit_type"] = receipt["visit_type"]
        doc["care_period"] = dict(receipt["care_period"])
        if "room" in receipt:
            doc["room"] = receipt["room"]
        doc["patient_category"] = receipt["patient_category"]
        doc["amount_layout"] = receipt["amount_layout"]
        doc["lines"] = priced.detail_lines
        doc["totals"] = priced.detail_totals
        return doc

    def _prescription(self, inst: Institution, patient: Patient, category: str, day: dt.date,
                      injection: Drug | None) -> Doc:  # fmt: skip
        rng = self.rng
        doc = self._envelope("prescription", self._rx_no(day), inst, day)
        doc["patient"] = self._patient(patient)
        doc["insurance_type"] = _INSURANCE_TYPE[category]
        if category == "general":
            doc["insurance_type_text"] = "일반"
        withheld = rng.random() < 0.05
        doc["diagnosis_withheld"] = withheld
        if not withheld:
            doc["diagnosis_codes"] = rng.sample(ids.KCD_CODES, rng.choice((1, 1, 2, 3)))
        doc["prescriber"] = {"name": inst.doctor, "license_type": "dentist" if inst.kind == "dental" else "physician",
                             "license_no": inst.license_no}  # fmt: skip
        days = rng.choice((3, 3, 3, 5, 7, 14, 30, 60, 90))
        lines: list[Doc] = []
        for drug in rng.sample(ids.DRUGS, rng.randrange(1, 6)):
            line: Doc = {"line_no": len(lines) + 1, "kind": "medication", "code_type": "3", "code": drug.code,
                         "name": drug.name, "dose": dec(drug.dose)}  # fmt: skip
            if drug.unit != "정" or rng.random() < 0.3:
                line["dose_unit"] = drug.unit
            line["daily_count"] = rng.choice((1, 2, 3, 3))
            line["days"] = days
            if rng.random() < 0.08:
                line["copay_rate_code"] = "U"  # 100/100: the pharmacy receipt shows it in ③ (W-511)
            line["usage"] = f"1일 {line['daily_count']}회 식후 30분"
            lines.append(line)
        outpatient_injection = None
        if injection is None and rng.random() < 0.05:
            outpatient_injection = rng.choice(ids.INJECTIONS)
        for inj in (injection, outpatient_injection):
            if inj is not None:
                lines.append({"line_no": len(lines) + 1, "kind": "injection", "code_type": "3", "code": inj.code,
                              "name": inj.name, "dose": dec(inj.dose), "dose_unit": "mL", "daily_count": 1,
                              "days": 1})  # fmt: skip
        doc["lines"] = lines
        if injection is not None or outpatient_injection is not None:
            doc["injection_dispensing"] = "in_house" if injection is not None else "outpatient"
        if rng.random() < 0.03:
            doc["copay_exemption_code"] = f"V{rng.randrange(100, 999)}"
        doc["valid_days"] = rng.choice((3, 3, 3, 7))
        return doc

    def _pharmacy_receipt(self, rx: Doc, patient: Patient, category: str) -> Doc:
        rng = self.rng
        pharmacy = rng.choice(self.pharmacies)
        issued_rx = dt.date.fromisoformat(rx["issued_on"])
        last = min(issued_rx + dt.timedelta(days=rx.get("valid_days", 3) - 1), ANCHOR_DATE)
        dispensed = issued_rx + dt.timedelta(days=rng.choice((0, 0, 0, 0, 1, 2)))
        dispensed = min(dispensed, last)
        doc = self._envelope("pharmacy_receipt", self._receipt_no(dispensed, "P"), pharmacy, dispensed)
        doc["patient"] = self._patient(patient, reg_no=False)
        doc["dispensed_on"] = _date(dispensed)
        dispensable = [ln for ln in rx["lines"]
                       if ln["kind"] == "medication" or rx.get("injection_dispensing") == "outpatient"]  # fmt: skip
        doc["days_supplied"] = max(ln["days"] for ln in dispensable)
        if rng.random() < 0.5:
            doc["night_care"] = False
            doc["holiday_care"] = False
        doc["prescription_issue_no"] = rx["document_no"]
        doc["prescribing_institution"] = {
            "name": rx["institution"]["name"],
            "ykiho": rx["institution"]["ykiho"],
        }
        doc["prescriber_name"] = rx["prescriber"]["name"]
        doc["pharmacist_name"] = pharmacy.doctor
        drug_prices = {d.code: d for d in ids.DRUGS + ids.INJECTIONS}
        covered_cost = full_cost = 0
        lines: list[Doc] = []
        for ln in dispensable:
            drug = drug_prices[ln["code"]]
            cost = round_half_up(drug.unit_price * Decimal(ln["dose"]) * ln["daily_count"] * ln["days"])
            full = ln.get("copay_rate_code") == "U"
            if full:
                full_cost += cost
            else:
                covered_cost += cost
            lines.append({"line_no": len(lines) + 1, "code": ln["code"], "name": ln["name"], "dose": ln["dose"],
                          "daily_count": ln["daily_count"], "days": ln["days"],
                          "coverage": "full_copay_100" if full else "covered"})  # fmt: skip
        fee = 4000 + 300 * min(doc["days_supplied"], 30)  # 조제료 (synthetic tariff)
        covered = fee + covered_cost
        rate = _rate(category, False, False)
        copay = covered if rate == _ONE else trunc10(covered * rate)
        if category == "medical_aid":
            copay = min(500, covered)  # 의료급여 약국 정액
        totals = {"copay": copay, "insurer": covered - copay, "full_self_pay": full_cost}
        doc["totals"] = totals
        doc["total_charge"] = copay + totals["insurer"] + full_cost
        doc["patient_charge_total"] = copay + full_cost
        doc.update(self._payment(doc["patient_charge_total"]))
        if rng.random() < 0.5:
            doc["fee_breakdown"] = {"dispensing_fee": fee, "drug_cost": covered_cost + full_cost}
        if rng.random() < 0.8:
            doc["lines"] = lines
        return doc


def _reorder_payment(doc: Doc) -> Doc:
    """Put ``unpaid`` after ``paid`` and the 현금영수증 fields last, as the form prints them."""
    tail: Doc = {k: doc.pop(k) for k in ("cash_receipt_id", "cash_receipt_approval_no") if k in doc}
    unpaid = doc.pop("unpaid")
    doc["unpaid"] = unpaid
    doc.update(tail)
    return doc


# ------------------------------------------------------------------------- versions of a doc


def next_version(doc: Doc, rng: random.Random) -> int:
    """A higher version in the institution's style: +1, or a later export timestamp."""
    v = int(doc["version"])
    if v >= 10**13:  # timestamp style YYYYMMDDhhmmss
        base = dt.datetime.strptime(str(v), "%Y%m%d%H%M%S")
        later = base + dt.timedelta(days=rng.randrange(0, 20), hours=rng.randrange(1, 48))
        return int(later.strftime("%Y%m%d%H%M%S"))
    return v + 1


def correction(doc: Doc, rng: random.Random, *, reissue: bool = False) -> Doc:
    """The corrected (수정) or re-issued (재발행) version: higher version, full content."""
    new = copy.deepcopy(doc)
    new["version"] = next_version(doc, rng)
    new["revision_reason"] = "reissue" if reissue else "correction"
    if reissue:
        return new
    kind = doc["document_type"]
    if kind in ("receipt", "pharmacy_receipt") and new["paid"]["total"] > 0:
        # 결제수단 정정: same amounts paid another way (all identities and cross rules unchanged)
        due = new["paid"]["total"]
        for key in ("cash_receipt_id", "cash_receipt_approval_no"):
            new.pop(key, None)
        if new["paid"]["card"] == due:
            new["paid"] = {"card": 0, "cash_receipt": due, "cash": 0, "total": due}
            new["cash_receipt_id"] = f"010-0000-{rng.randrange(10000):04d}"
            new["cash_receipt_approval_no"] = f"{rng.randrange(10**8, 10**9)}"
        else:
            new["paid"] = {"card": due, "cash_receipt": 0, "cash": 0, "total": due}
    elif kind == "receipt_detail":
        item_lines = [ln for ln in new["lines"] if ln["line_type"] == "item"]
        line = rng.choice(item_lines)
        line["name"] = line["name"][:190] + " (정정)"
    elif kind == "prescription":
        new["dispensing_notes"] = "용법 정정: 식후 30분 복용"
        for ln in new["lines"]:
            if "usage" in ln:
                ln["usage"] = ln["usage"] + " (정정)"
    else:
        new["remarks"] = "정정 발행(예시)"
    return new


def cancellation(doc: Doc, rng: random.Random, *, minimal: bool) -> Doc:
    """The cancellation (취소·전액환불) version: higher version, ``status = cancelled``.

    ``minimal`` gives the §9.4 record (only the fields an EMR must send); otherwise the full content
    with the status changed, which is just as valid."""
    version = next_version(doc, rng)
    if minimal:
        new: Doc = {
            "schema_version": doc["schema_version"], "document_type": doc["document_type"],
            "document_no": doc["document_no"], "version": version, "status": "cancelled",
            "revision_reason": "cancellation", "cancel_reason": "진료비 전액 환불(예시)", "issued_on": doc["issued_on"],
            "institution": {"ykiho": doc["institution"]["ykiho"], "name": doc["institution"]["name"]},
            "patient": {"name": doc["patient"]["name"]},
        }  # fmt: skip
        return new
    new = copy.deepcopy(doc)
    new.update(
        version=version, status="cancelled", revision_reason="cancellation", cancel_reason="발행 취소(예시)"
    )
    return new
