"""Standard-layout CSV reader (exports.md §2, "CSV details")."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.formats import read_export, write_export
from tests.formats.formats_testdata import example

SPEC_EXPORTS = Path("/work/shared/spec/exports.md")

# The example of exports.md §2 (pharmacy_receipt, optional columns left out).
EXAMPLE_CSV = """schema_version,document_type,document_no,version,status,issued_on,institution.ykiho,institution.name,institution.type_code,institution.business_reg_no,patient.name,patient.rrn,dispensed_on,days_supplied,prescription_issue_no,prescribing_institution.name,prescribing_institution.ykiho,pharmacist_name,totals.copay,totals.insurer,totals.full_self_pay,total_charge,patient_charge_total,paid.card,paid.cash_receipt,paid.cash,paid.total,lines.line_no,lines.code,lines.name,lines.dose,lines.daily_count,lines.days,lines.coverage
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,1,699999991,예시정500밀리그램,1,3,3,covered
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,2,699999992,예시시럽,2.5,3,3,full_copay_100
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,3,699999993,예시캡슐,0.5,2,3,covered
1.0,pharmacy_receipt,P202503-000043,1,active,2025-03-14,99000002,예시약국,81,1112233332,김철수,9203152000003,2025-03-14,3,20250314-00018,예시가정의원,99000001,성춘향,1500,3500,0,5000,1500,1500,0,0,1500,,,,,,,
"""

HEADER = "schema_version,document_type,document_no,version,patient.name,lines.line_no,lines.name"


def read(text: str, name: str = "p.csv"):  # type: ignore[no-untyped-def]
    return read_export(text.encode(), file_name=name)


def rules(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.rule for p in result.problems]


def test_spec_example_gives_two_documents_with_three_and_zero_lines() -> None:
    result = read(EXAMPLE_CSV.replace("\n", "\r\n"))
    docs = [r.document for r in result.records]
    assert result.problems == []
    assert [len(d.get("lines", [])) for d in docs] == [3, 0]
    assert "lines" not in docs[1]
    first = docs[0]
    assert first["version"] == 1 and first["days_supplied"] == 3 and first["totals"]["copay"] == 3600
    assert first["lines"][1] == {
        "line_no": 2,
        "code": "699999992",
        "name": "예시시럽",
        "dose": "2.5",
        "daily_count": 3,
        "days": 3,
        "coverage": "full_copay_100",
    }
    assert first["institution"] == {
        "ykiho": "99000002",
        "name": "예시약국",
        "type_code": "81",
        "business_reg_no": "1112233332",
    }
    assert docs[1]["patient"]["name"] == "김철수"


def test_spec_example_text_in_exports_md_matches_the_copy_here() -> None:
    if not SPEC_EXPORTS.exists():
        pytest.skip("shared spec not available")
    text = SPEC_EXPORTS.read_text(encoding="utf-8")
    assert EXAMPLE_CSV in text


def test_spec_example_equals_the_json_example_restricted_to_its_columns() -> None:
    doc = next(iter(read(EXAMPLE_CSV).records)).document
    full = example("pharmacy_receipt")
    for name in ("revision_reason", "issued_at", "night_care", "holiday_care", "prescriber_name"):
        full.pop(name)
    for name in ("representative", "address", "phone"):
        full["institution"].pop(name)
    assert doc == full


@pytest.mark.parametrize("text", ["", "\r\n", HEADER + "\r\n", HEADER])
def test_empty_or_header_only_csv_is_r004(text: str) -> None:
    assert rules(read(text)) == ["R-004"]


def test_missing_document_type_column_is_r005() -> None:
    assert rules(read("document_no,version\n1,1\n")) == ["R-005"]


def test_duplicate_column_is_r004() -> None:
    assert rules(read("document_type,document_no,document_no\nreceipt,1,1\n")) == ["R-004"]


def test_ragged_row_is_r004() -> None:
    assert rules(read("document_type,document_no,version\nreceipt,1,1\nreceipt,2\n")) == ["R-004"]


def test_unknown_column_is_r025_and_value_free() -> None:
    result = read("document_type,document_no,colour,홍길동\nreceipt,1,red,x\n")
    assert [(p.rule, p.path) for p in result.problems] == [("R-025", "colour"), ("R-025", "[column 4]")]


@pytest.mark.parametrize("column", ["lines", "patient", "lines.unknown", "validation.warnings.rule", "a..b"])
def test_columns_that_are_not_leaf_field_paths_are_r025(column: str) -> None:
    assert rules(read(f"document_type,document_no,{column}\nreceipt,1,x\n")) == ["R-025"]


def test_mixed_types_are_r004() -> None:
    text = "document_type,document_no,version\nreceipt,1,1\nprescription,2,1\n"
    assert rules(read(text)) == ["R-004"]


def test_unknown_type_value_is_r005() -> None:
    assert rules(read("document_type,document_no\ninvoice,1\n")) == ["R-005"]


def test_non_contiguous_rows_are_r004() -> None:
    text = HEADER + "\n1.0,prescription,A,1,a,1,x\n1.0,prescription,B,1,b,1,y\n1.0,prescription,A,1,a,2,z\n"
    result = read(text)
    assert rules(result) == ["R-004"]


def test_disagreeing_header_cells_are_r004() -> None:
    text = HEADER + "\n1.0,prescription,A,1,a,1,x\n1.0,prescription,A,1,b,2,y\n"
    assert rules(read(text)) == ["R-004"]


def test_blank_header_cell_in_continuation_row_is_r004() -> None:
    text = HEADER + "\n1.0,prescription,A,1,a,1,x\n1.0,prescription,A,1,,2,y\n"
    assert rules(read(text)) == ["R-004"]


def test_grouping_uses_document_no_and_version_only() -> None:
    text = HEADER + "\n1.0,prescription,A,1,a,1,x\n1.0,prescription,A,2,a,1,x\n"
    assert [r.index for r in read(text).records] == [0, 1]


def test_empty_cells_are_absent_and_empty_objects_absent() -> None:
    text = "document_type,document_no,patient.name,patient.rrn,totals.copay\nreceipt,1,,,\n"
    assert [r.document for r in read(text).records] == [{"document_type": "receipt", "document_no": "1"}]


def test_diagnosis_codes_are_split_on_semicolon() -> None:
    text = "document_type,document_no,diagnosis_codes\nprescription,1, J06.9 ; A00;\n"
    assert next(iter(read(text).records)).document["diagnosis_codes"] == ["J06.9", "A00"]


def test_cells_are_typed_and_bad_literals_kept_for_r021() -> None:
    text = 'document_type,document_no,version,total_charge,night_care,holiday_care,lines.dose\nreceipt,1,12.0,"1,000",true,Y,2.50\n'
    doc = next(iter(read(text).records)).document
    assert doc["version"] == "12.0" and doc["total_charge"] == "1,000"
    assert doc["night_care"] is True and doc["holiday_care"] == "Y"
    assert "lines" not in doc  # receipt lines have no dose: R-025 reported
    assert rules(read(text)) == ["R-025"]


def test_rfc4180_quoting_with_comma_quote_and_line_break() -> None:
    text = 'document_type,document_no,remarks\r\nreceipt,1,"a, ""b""\r\nc"\r\n'
    assert next(iter(read(text).records)).document["remarks"] == 'a, "b"\r\nc'


def test_bad_quoting_is_r004() -> None:
    assert rules(read('document_type,document_no\nreceipt,"1"x\n')) == ["R-004"]


def test_csv_extension_with_json_content_is_r004() -> None:
    assert rules(read('{"document_type": "receipt"}')) == ["R-004"]


def test_u3000_and_nfd_in_cells_are_trimmed_and_normalised() -> None:
    nfd = "\u1112\u1169\u11bc\u1100\u1175\u11af\u1103\u1169\u11bc"
    text = f"document_type,document_no,patient.name\nreceipt,\u3000 1\u3000,\u3000{nfd}\u3000\n"
    doc = next(iter(read(text).records)).document
    assert doc["patient"]["name"] == "홍길동" and doc["document_no"] == "1"


def test_cp949_csv_reads_like_utf8() -> None:
    utf8 = read_export(EXAMPLE_CSV.encode("utf-8"), file_name="a.csv")
    cp949 = read_export(EXAMPLE_CSV.encode("cp949"), file_name="a.csv")
    assert cp949.encoding == "cp949"
    assert [r.document for r in utf8.records] == [r.document for r in cp949.records]


def test_write_csv_requires_one_type() -> None:
    with pytest.raises(ValueError):
        write_export([example("receipt"), example("prescription")], format="csv")
