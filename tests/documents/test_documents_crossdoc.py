"""§7 links and cross-document warnings, incl. the §12 worked example pairs."""

from __future__ import annotations

from agent.documents.crossdoc import (
    cross_warnings,
    find_prescription_for_pharmacy,
    find_receipt_for_detail,
    link_detail_to_receipt,
    link_pharmacy_to_prescription,
    link_prescription_to_receipt,
)

from ._examples import example


def rules(problems) -> set[str]:
    return {p.rule for p in problems}


def test_worked_example_pairs_link_and_raise_nothing() -> None:
    r, d = example("receipt"), example("receipt_detail")
    rx, ph = example("prescription"), example("pharmacy_receipt")
    assert link_detail_to_receipt(d, r) and find_receipt_for_detail(d, [r]) is r
    assert link_pharmacy_to_prescription(ph, rx) and find_prescription_for_pharmacy(ph, [rx]) is rx
    assert link_prescription_to_receipt(rx, r)
    assert cross_warnings(d, r) == [] and cross_warnings(r, d) == []
    assert cross_warnings(ph, rx) == [] and cross_warnings(rx, ph) == []


def test_detail_fallback_link_needs_exactly_one_candidate() -> None:
    r, d = example("receipt"), example("receipt_detail")
    del d["receipt_no"]
    assert find_receipt_for_detail(d, [r]) is r
    other = example("receipt") | {"document_no": "202503-000124"}
    assert find_receipt_for_detail(d, [r, other]) is None


def test_pharmacy_link_checks_prescribing_ykiho() -> None:
    rx, ph = example("prescription"), example("pharmacy_receipt")
    ph["prescribing_institution"]["ykiho"] = "99000009"
    assert not link_pharmacy_to_prescription(ph, rx)
    del ph["prescribing_institution"]["ykiho"]
    assert link_pharmacy_to_prescription(ph, rx)


def test_w501_to_w504() -> None:
    r, d = example("receipt"), example("receipt_detail")
    r["totals"]["copay"] += 10
    assert rules(cross_warnings(d, r)) == {"W-501"}
    r, d = example("receipt"), example("receipt_detail")
    r["lines"][3].update(copay=3100, insurer=6900)  # lab_test: sum same, copay off by 110 > 20
    r["lines"][0].update(copay=5300, insurer=12700)
    assert rules(cross_warnings(d, r)) == {"W-503"}
    r, d = example("receipt"), example("receipt_detail")
    d["lines"][1]["item"] = "imaging"
    assert rules(cross_warnings(d, r)) >= {"W-502"}
    r, d = example("receipt"), example("receipt_detail")
    d["care_period"]["end"] = "2025-03-15"
    assert rules(cross_warnings(d, r)) == {"W-504"}


def test_w502_w503_a_receipt_line_with_no_detail_lines_counts() -> None:
    """An item only the receipt has is one of "some item k": no detail line counts as 0."""
    r, d = example("receipt"), example("receipt_detail")
    d["lines"] = [ln for ln in d["lines"] if ln.get("item") != "materials"]
    got = rules(cross_warnings(d, r))
    assert {"W-502", "W-503"} <= got
    assert rules(cross_warnings(r, d)) == got


def test_w505_patient_mismatch_in_both_orders() -> None:
    rx, ph = example("prescription"), example("pharmacy_receipt")
    ph["patient"]["name"] = "홍길순"
    assert rules(cross_warnings(ph, rx)) == rules(cross_warnings(rx, ph)) == {"W-505"}
    ph["patient"]["name"] = " 홍 길동"
    assert cross_warnings(ph, rx) == []


def test_w506_to_w511() -> None:
    def run(mutate) -> set[str]:
        rx, ph = example("prescription"), example("pharmacy_receipt")
        mutate(rx, ph)
        return rules(cross_warnings(ph, rx))

    assert run(lambda rx, ph: ph.__setitem__("dispensed_on", "2025-03-13")) == {"W-506"}
    assert run(lambda rx, ph: ph.__setitem__("dispensed_on", "2025-03-17")) == {"W-507"}
    assert run(lambda rx, ph: ph.__setitem__("dispensed_on", "2025-03-16")) == set()
    assert run(lambda rx, ph: ph.__setitem__("days_supplied", 4)) == {"W-508"}
    assert run(lambda rx, ph: ph["prescribing_institution"].__setitem__("name", "다른의원")) == {"W-509"}
    assert run(lambda rx, ph: ph["lines"][0].__setitem__("code", "699999998")) == {"W-510"}
    assert run(lambda rx, ph: ph["totals"].__setitem__("full_self_pay", 0)) == {"W-511"}


def test_w507_uses_default_valid_days_when_absent() -> None:
    rx, ph = example("prescription"), example("pharmacy_receipt")
    del rx["valid_days"]
    ph["dispensed_on"] = "2025-03-17"
    assert rules(cross_warnings(ph, rx)) == {"W-507"}
    assert cross_warnings(ph, rx, default_valid_days=7) == []


def test_cancelled_pairs_only_w512() -> None:
    r, d = example("receipt"), example("receipt_detail")
    r["status"] = "cancelled"
    r["totals"]["copay"] += 10
    assert rules(cross_warnings(d, r)) == {"W-512"}
    d["status"] = "cancelled"
    assert cross_warnings(d, r) == []
    rx, ph = example("prescription"), example("pharmacy_receipt")
    rx["status"] = "cancelled"
    ph["days_supplied"] = 9
    assert cross_warnings(ph, rx) == []


def test_unrelated_pairs_give_nothing() -> None:
    assert cross_warnings(example("receipt"), example("prescription")) == []
