"""Vendor profiles (exports.md §3): loading, every transform, and golden conversions of the shipped
sample files (config/profiles/samples/* → tests/formats/golden/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.formats import ProfileError, load_profile, read_export, shipped_profiles_dir
from agent.formats.profiles import STANDARD, parse_profile

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "config" / "profiles" / "samples"
GOLDEN = Path(__file__).parent / "golden"

GOLDEN_CASES = [
    ("vendor_a_csv", "vendor_a_pharmacy.csv", "vendor_a_pharmacy.json", "csv", "cp949"),
    ("vendor_b_xml", "vendor_b_prescription.xml", "vendor_b_prescription.json", "xml", "cp949"),
]


@pytest.mark.parametrize(("profile_name", "sample", "golden", "fmt", "encoding"), GOLDEN_CASES)
def test_sample_converts_to_golden_standard_json(
    profile_name: str, sample: str, golden: str, fmt: str, encoding: str
) -> None:
    profile = load_profile(profile_name, [shipped_profiles_dir()])
    result = read_export((SAMPLES / sample).read_bytes(), file_name=sample, profile=profile)
    assert (result.format, result.encoding) == (fmt, encoding)
    assert [r.document for r in result.records] == json.loads((GOLDEN / golden).read_text(encoding="utf-8"))
    assert result.problems == []


def test_shipped_profiles_dir_is_the_repository_config() -> None:
    assert shipped_profiles_dir() == ROOT / "config" / "profiles"


def test_standard_is_built_in_and_loadable_by_path(tmp_path: Path) -> None:
    assert load_profile("standard", []) is STANDARD
    path = shipped_profiles_dir() / "vendor_a_csv.toml"
    assert load_profile(str(path), []).name == "vendor_a_csv"


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_profile("no_such_vendor", [shipped_profiles_dir()])
    with pytest.raises(ProfileError):
        load_profile("../etc/passwd", [])


def minimal(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "t",
        "document_type": {"default": "receipt"},
        "field": [{"source": "No", "target": "document_no"}],
    }
    data.update(extra)
    return data


@pytest.mark.parametrize(
    "data",
    [
        minimal(colour="red"),  # unknown key
        minimal(format="pdf"),
        minimal(values={"date_formats": ["%d/%m/%Y"]}),
        minimal(document_type={}),
        minimal(document_type={"default": "invoice"}),
        minimal(field=[{"source": "No", "target": "Document No"}]),
        minimal(field=[{"source": "No", "constant": "x", "target": "document_no"}]),
        minimal(field=[{"sources": ["a", "b", "c"], "target": "document_no"}]),
        minimal(field=[{"source": "No", "target": "document_no", "transforms": ["rot13"]}]),
        minimal(field=[{"source": "No", "target": "document_no", "code_table": "missing"}]),
        minimal(field=[]),
        minimal(name="standard"),
        minimal(csv={"delimiter": ",,"}),
    ],
)
def test_invalid_profiles_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ProfileError):
        parse_profile(data)


def csv_profile(**values: object) -> object:
    return parse_profile(
        {
            "name": "t",
            "format": "csv",
            "encoding": "utf-8",
            "values": {
                "date_formats": ["%Y%m%d", "%Y.%m.%d"],
                "thousands_separator": ",",
                "negative_amounts": ["minus", "trailing-minus", "parentheses", "triangle"],
                "true_values": ["Y", "1", "○"],
                "false_values": ["N", "0"],
                "datetime_formats": ["%Y%m%d%H%M%S"],
                **values,
            },
            "document_type": {
                "column": "종류",
                "values": {"영수증": "receipt"},
                "file_names": {"rx_*": "prescription"},
            },
            "code_tables": {"item": {"진찰": "consultation"}},
            "field": [
                {"source": "번호", "target": "document_no", "transforms": ["strip", "upper"]},
                {"target": "version", "constant": 1},
                {"target": "schema_version", "constant": "1.0"},
                {"source": "일자", "target": "issued_on"},
                {"source": "일시", "target": "issued_at"},
                {"source": "주민", "target": "patient.rrn", "transforms": ["digits-only"]},
                {"sources": ["성", "이름"], "separator": "", "target": "patient.name"},
                {"source": "야간", "target": "night_care"},
                {"source": "금액", "target": "amount_due"},
                {"source": "항목", "target": "lines.item", "code_table": "item"},
                {"source": "본인", "target": "lines.copay"},
            ],
        }
    )


HEAD = "종류,번호,일자,일시,주민,성,이름,야간,금액,항목,본인\n"


def read_vendor(text: str, profile: object, name: str = "v.csv"):  # type: ignore[no-untyped-def]
    return read_export(text.encode(), file_name=name, profile=profile)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("1,234", 1234), ("1234-", -1234), ("(1,234)", -1234), ("△500", -500), ("-7", -7), ("1.5", "1.5")],
)
def test_amount_conventions(amount: str, expected: object) -> None:
    row = f'영수증,a1,20250314,20250314104200,900101-1000001,홍,길동,Y,"{amount}",진찰,"1,000"\n'
    doc = next(iter(read_vendor(HEAD + row, csv_profile()).records)).document
    assert doc["amount_due"] == expected


def test_transforms_dates_booleans_code_tables_concat_and_constants() -> None:
    rows = (
        '영수증,a1,20250314,20250314104200,900101-1000001,홍,길동,○,0,진찰,"1,000"\n'
        "영수증,a1,20250314,20250314104200,900101-1000001,홍,길동,○,0,기타,200-\n"
    )
    result = read_vendor(HEAD + rows, csv_profile())
    assert result.problems == []
    assert [r.document for r in result.records] == [
        {
            "document_type": "receipt",
            "document_no": "A1",
            "version": 1,
            "schema_version": "1.0",
            "issued_on": "2025-03-14",
            "issued_at": "2025-03-14T10:42:00+09:00",
            "patient": {"rrn": "9001011000001", "name": "홍길동"},
            "night_care": True,
            "amount_due": 0,
            "lines": [{"item": "consultation", "copay": 1000}, {"item": "기타", "copay": -200}],
        }
    ]


def test_unparseable_values_are_passed_on_for_the_validator() -> None:
    row = "영수증,a1,2025-3-14,yesterday,x,홍,,maybe,12.5,,\n"
    doc = next(iter(read_vendor(HEAD + row, csv_profile()).records)).document
    assert doc["issued_on"] == "2025-3-14" and doc["issued_at"] == "yesterday"
    assert doc["night_care"] == "maybe" and doc["amount_due"] == "12.5"
    assert "rrn" not in doc["patient"]  # digits-only left nothing: absent


def test_type_column_with_unknown_value_is_r005() -> None:
    row = "청구서,a1,20250314,,,,,,,,\n"
    assert [p.rule for p in read_vendor(HEAD + row, csv_profile()).problems] == ["R-005"]


def test_unknown_vendor_column_is_r025() -> None:
    result = read_vendor("종류,번호,비고\n영수증,1,x\n", csv_profile())
    assert [(p.rule, p.path) for p in result.problems] == [("R-025", "[column 3]")]


def test_vendor_rows_must_be_contiguous() -> None:
    rows = "영수증,a1,,,,,,,,진찰,1\n영수증,a2,,,,,,,,진찰,1\n영수증,a1,,,,,,,,진찰,1\n"
    assert [p.rule for p in read_vendor(HEAD + rows, csv_profile()).problems] == ["R-004"]


def test_profile_extension_and_encoding_are_enforced() -> None:
    profile = load_profile("vendor_a_csv", [shipped_profiles_dir()])
    sample = (SAMPLES / "vendor_a_pharmacy.csv").read_bytes()
    assert [p.rule for p in read_export(sample, file_name="a.json", profile=profile).problems] == ["R-004"]
    utf16 = sample.decode("cp949").encode("utf-16")
    assert [p.rule for p in read_export(utf16, file_name="a.csv", profile=profile).problems] == ["R-002"]


def test_type_by_file_name_pattern() -> None:
    profile = parse_profile(
        {
            "name": "t",
            "document_type": {"file_names": {"RX_*.csv": "prescription"}},
            "field": [{"source": "no", "target": "document_no"}],
        }
    )
    result = read_export(b"no\n20250314-00001\n", file_name="rx_0001.CSV", profile=profile)
    assert [r.document for r in result.records] == [
        {"document_type": "prescription", "document_no": "20250314-00001"}
    ]
    other = read_export(b"no\n1\n", file_name="bill.csv", profile=profile)
    assert [p.rule for p in other.problems] == ["R-005"]


def test_fixed_width_profile_cuts_by_bytes_of_the_encoding() -> None:
    profile = parse_profile(
        {
            "name": "fw",
            "format": "fixed",
            "encoding": "cp949",
            "fixed": {
                "columns": [{"name": "no", "start": 1, "width": 6}, {"name": "nm", "start": 7, "width": 6}]
            },
            "document_type": {"default": "receipt"},
            "field": [{"source": "no", "target": "document_no"}, {"source": "nm", "target": "patient.name"}],
        }
    )
    data = "A00001홍길동\r\nA00002김철  \r\n".encode("cp949")
    result = read_export(data, file_name="x.txt", profile=profile)
    assert result.problems == []
    assert [r.document["patient"]["name"] for r in result.records] == ["홍길동", "김철"]
    split = read_export("A00001 홍길동\r\n".encode("cp949"), file_name="x.txt", profile=profile)
    assert [p.rule for p in split.problems] == ["R-004"]


def test_format_fixed_width_is_the_spelling_of_exports_md() -> None:
    """exports.md §3 lists the format as "fixed-width"; "fixed" is accepted too (canonical)."""
    columns = {"columns": [{"name": "no", "start": 1, "width": 6}]}
    spec = {"name": "fw2", "format": "fixed-width", "fixed": columns, "document_type": {"default": "receipt"}}
    spec["field"] = [{"source": "no", "target": "document_no"}]
    assert parse_profile(spec).format == "fixed"


def test_vendor_xml_rejects_unsafe_xml() -> None:
    profile = load_profile("vendor_b_xml", [shipped_profiles_dir()])
    data = b'<!DOCTYPE x [<!ENTITY a "b">]><EMRExport><Prescription/></EMRExport>'
    assert [p.rule for p in read_export(data, file_name="b.xml", profile=profile).problems] == ["R-003"]
