"""Property tests of the arithmetic identities: any single changed amount of a valid receipt,
pharmacy receipt or itemised statement breaks at least one identity rule (RC, RP, RD)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.documents.validate import round_half_up, validate_document

from ._examples import RECEIVED_AT, example

IDENTITY_RULES = {
    "receipt": {f"R-{n}" for n in range(107, 116)},
    "pharmacy_receipt": {"R-401", "R-402", "R-403", "W-401"},
    "receipt_detail": {"R-204", "R-205", "R-206", "W-201"},
}


def money_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every integer amount (not line numbers, days or counts)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in (
                "version",
                "line_no",
                "days",
                "daily_count",
                "days_supplied",
                "amount_due_rounding",
                "cap_excess",
                "prepaid",
            ):
                continue
            out += money_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += money_paths(v, (*prefix, i))
    elif type(doc) is int:
        out.append(prefix)
    return out


def _set(doc: Any, path: tuple[Any, ...], delta: int) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = doc[path[-1]] + delta


def _check(document_type: str, data: st.DataObject) -> None:
    doc = example(document_type)
    paths = money_paths(doc)
    path = data.draw(st.sampled_from(paths))
    delta = data.draw(st.integers(min_value=1, max_value=10**6))
    _set(doc, path, delta)
    rules = {p.rule for p in validate_document(doc, received_at=RECEIVED_AT).problems}
    assert rules & IDENTITY_RULES[document_type], (path, rules)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_changing_any_receipt_amount_breaks_an_identity(data: st.DataObject) -> None:
    _check("receipt", data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_changing_any_pharmacy_amount_breaks_an_identity(data: st.DataObject) -> None:
    _check("pharmacy_receipt", data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_changing_any_detail_amount_breaks_an_identity(data: st.DataObject) -> None:
    _check("receipt_detail", data)


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=5000))
def test_receipt_totals_consequence_holds(copay_extra: int, cap: int) -> None:
    """total_charge = insurer_charge_total + patient_charge_total follows from RC-2, RC-4, RC-5."""
    doc = example("receipt")
    t = doc["totals"]
    cap = min(cap, t["copay"])
    ict = t["insurer"] + cap
    pct = t["copay"] - cap + t["full_copay"] + t["non_covered"]
    assert doc["total_charge"] == ict + pct


@given(st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=4, allow_nan=False))
def test_round_half_up_is_nearest_with_ties_away_from_zero(x: Decimal) -> None:
    r = round_half_up(x)
    assert abs(Decimal(r) - x) <= Decimal("0.5")
    if abs(Decimal(r) - x) == Decimal("0.5"):
        assert abs(r) > abs(x)


@settings(max_examples=100, deadline=None)
@given(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2, allow_nan=False),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=30),
)
def test_detail_line_with_exactly_rounded_total_is_silent(amount: Decimal, count: int, days: int) -> None:
    doc = example("receipt_detail")
    line = doc["lines"][6]  # non-covered local item
    total = round_half_up(amount * count * days)
    old = line["total"]
    line.update(amount=str(amount), count=str(count), days=days, total=total, non_covered=total)
    doc["totals"]["total"] += total - old
    doc["totals"]["non_covered"] += total - old
    assert validate_document(doc, received_at=RECEIVED_AT).problems == []
