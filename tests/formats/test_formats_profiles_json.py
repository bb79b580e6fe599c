"""JSON vendor profiles (exports.md §3, ``format = "json"``): the shipped ``vendor_c_json`` profile,
its golden conversion, the real ``check --profile`` CLI, and the reader rules (R-002, R-004,
R-005, R-021, R-025) with their record indexes. Synthetic data only."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.documents.problems import Problem
from agent.documents.validate import validate_document
from agent.formats import ProfileError, load_profile, read_export, shipped_profiles_dir
from agent.formats.profiles import Profile, parse_profile
from agent.formats.result import ReadResult, Record

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "profiles" / "samples" / "vendor_c_receipt.json"
GOLDEN = Path(__file__).parent / "golden" / "vendor_c_receipt.json"
KST = dt.timezone(dt.timedelta(hours=9))
READER_RULES = {"R-002", "R-003", "R-004", "R-005", "R-021", "R-025"}


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("vendor_c_json", [shipped_profiles_dir()])


def sample() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return value


def dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def read(value: Any, profile: Profile, name: str = "c.json") -> ReadResult:
    data = value if isinstance(value, bytes) else dump(value)
    return read_export(data, file_name=name, profile=profile)


def rules(result: ReadResult) -> list[tuple[str, int | None]]:
    return [(p.rule, p.record) for p in result.problems]


# ------------------------------------------------------------------------------ the shipped profile


def test_profile_loads(profile: Profile) -> None:
    assert (profile.name, profile.format, profile.encoding) == ("vendor_c_json", "json", "utf-8")
    assert profile.extensions == (".json", ".jsonl")
    assert (profile.json_records, profile.json_lines) == ("receipts", "items")
    assert profile.type_column == "docKind"
    assert profile.type_json_record == {"receipts": "receipt"}
    assert profile.ignore_columns == ("printCnt",)
    by_path = load_profile(str(shipped_profiles_dir() / "vendor_c_json.toml"), [])
    assert by_path == profile


def test_sample_converts_to_golden_documents_that_validate_clean(profile: Profile) -> None:
    result = read_export(SAMPLE.read_bytes(), file_name=SAMPLE.name, profile=profile)
    assert (result.format, result.encoding) == ("json", "utf-8")
    assert result.problems == []
    documents = [r.document for r in result.records]
    assert [r.index for r in result.records] == [0, 1]
    assert documents == json.loads(GOLDEN.read_text(encoding="utf-8"))
    received = dt.datetime(2025, 3, 14, 18, 5, 12, tzinfo=KST)
    for document in documents:
        validation = validate_document(copy.deepcopy(document), received_at=received, default_valid_days=3)
        assert validation.ok and validation.problems == []


def test_the_same_receipts_as_json_lines(profile: Profile) -> None:
    lines = b"\n".join(dump(r) for r in sample()["receipts"]) + b"\n\n"
    result = read(lines, profile, "c.jsonl")
    assert (result.format, result.encoding) == ("jsonl", "utf-8")
    assert [r.document for r in result.records] == json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert result.problems == []
    assert rules(read(b"\n \n", profile, "c.jsonl")) == [("R-004", None)]
    mixed = read(b'{"docKind": "OUT_RCPT", "rcptNo": "1"}\n[1]\n', profile, "c.jsonl")
    assert rules(mixed) == [("R-004", 1)]
    assert [r.index for r in mixed.records] == [0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SILSON_AGENT_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_cli_accepts_the_sample() -> None:
    done = _cli("check", "--profile", "vendor_c_json.toml", str(SAMPLE))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(_cli("check", "--json", "--profile", "vendor_c_json", str(SAMPLE)).stdout)
    assert report["ok"] is True
    assert report["files"][0]["records"] == 2 and report["files"][0]["format"] == "json"


def test_check_cli_rejects_a_malformed_vendor_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(SAMPLE.read_bytes()[:-40])
    done = _cli("check", "--profile", "vendor_c_json", str(bad))
    assert done.returncode == 3
    assert "R-004" in done.stdout


# ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        b"[]",
        b'{"receipts": []}',
        b'{"other": [{"rcptNo": "1"}]}',  # json.records matches nothing
        b'{"receipts": [{"rcptNo": "1"}',  # truncated
        b'{"receipts": [{"rcptNo": "1", "rcptNo": "2"}]}',  # duplicate key
        b'{"receipts": [{"rev": NaN}]}',
        b'{"receipts": [{"rev": 1e999}]}',
        b'{"receipts": ' + b"[" * 40 + b"]" * 40 + b"}",  # deeper than 32
        b"<receipts/>",
        b'"receipts"',
    ],
)
def test_malformed_json_vendor_file_is_r004(data: bytes, profile: Profile) -> None:
    result = read(data, profile)
    assert [p.rule for p in result.problems] == ["R-004"]
    assert list(result.records) == []


def test_a_string_over_one_mib_is_r004(profile: Profile) -> None:
    data = b'{"receipts": [{"rcptNo": "' + b"a" * (1024 * 1024 + 1) + b'"}]}'
    assert [p.rule for p in read(data, profile).problems] == ["R-004"]


def test_non_object_records_and_lines_are_r004_with_their_index(profile: Profile) -> None:
    value = sample()
    value["receipts"].insert(1, "not a receipt")
    value["receipts"][2]["items"].append(7)
    result = read(value, profile)
    assert rules(result) == [("R-004", 1), ("R-004", 2)]
    assert [r.index for r in result.records] == [0, 2]


def test_encoding_of_the_profile_is_enforced(profile: Profile) -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    assert rules(read(text.encode("cp949"), profile)) == [("R-002", None)]
    assert rules(read(text.encode("utf-16"), profile)) == [("R-002", None)]
    assert read(b"\xef\xbb\xbf" + SAMPLE.read_bytes(), profile).problems == []  # BOM
    assert rules(read(SAMPLE.read_bytes(), profile, "c.xml")) == [("R-004", None)]  # extension


# ------------------------------------------------------------------------------ R-005 document type


def test_undeterminable_type_is_r005_for_that_record_only(profile: Profile) -> None:
    value = sample()
    value["receipts"][1]["docKind"] = "CLAIM"  # a type column with an unknown value: never a guess
    result = read(value, profile)
    assert [(p.rule, p.path, p.record) for p in result.problems] == [("R-005", "document_type", 1)]
    assert [r.index for r in result.records] == [0]


def test_type_by_json_record_when_the_column_is_absent(profile: Profile) -> None:
    value = sample()
    del value["receipts"][0]["docKind"]
    result = read(value, profile)
    assert result.problems == []
    assert [r.document["document_type"] for r in result.records] == ["receipt", "receipt"]
    raw = _raw_profile()
    del raw["document_type"]["json_record"]
    without = parse_profile(raw)
    assert rules(read(value, without)) == [("R-005", 0)]
    assert rules(read({"receipts": [{"docKind": {"x": 1}}]}, without)) == [("R-005", 0)]


def _raw_profile() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((shipped_profiles_dir() / "vendor_c_json.toml").read_text(encoding="utf-8"))


def test_wildcard_records_and_type_by_member_name() -> None:
    profile = parse_profile(
        {
            "name": "multi",
            "format": "json",
            "json": {"records": "data/*", "lines": "lines"},
            "unknown_columns": "ignore",
            "document_type": {"json_record": {"rx": "prescription", "rcpt": "receipt"}},
            "field": [
                {"source": "no", "target": "document_no"},
                {"source": "code", "target": "lines.code", "types": ["prescription"]},
                {"source": "item", "target": "lines.item", "types": ["receipt"]},
            ],
        }
    )
    value = {
        "data": {
            "rcpt": [{"no": "R1", "lines": [{"item": "consultation"}]}],
            "rx": {"no": "P1", "lines": {"code": "699999991"}},  # one object, one line
            "memo": [{"no": "M1"}],
        }
    }
    result = read(value, profile)
    assert [(r.index, r.document) for r in result.records] == [
        (0, {"document_no": "R1", "lines": [{"item": "consultation"}], "document_type": "receipt"}),
        (1, {"document_no": "P1", "lines": [{"code": "699999991"}], "document_type": "prescription"}),
    ]
    assert rules(result) == [("R-005", 2)]


# ------------------------------------------------------------------------------ R-025 unknown members


def test_unknown_members_are_r025_with_value_free_paths(profile: Profile) -> None:
    value = sample()
    value["receipts"][1]["pt"]["memo"] = "가상메모"
    value["receipts"][1]["환자메모"] = "x"
    value["receipts"][0]["items"][2]["extra"] = 1
    value["receipts"][0]["hosp"]["addr"] = "서울특별시"  # a scalar where sources expect an object
    value["exportInfo"]["anything"] = True  # outside the records: never checked
    result = read(value, profile)
    assert [(p.rule, p.path, p.record) for p in result.problems] == [
        ("R-025", "lines[2].extra", 0),
        ("R-025", "pt.memo", 1),
        ("R-025", f"[member {len(value['receipts'][1])}]", 1),  # a non-ASCII name: position only
    ]
    assert "address" not in next(iter(result.records)).document["institution"]
    lenient = parse_profile({**_raw_profile(), "unknown_columns": "ignore"})
    assert read(value, lenient).problems == []


def test_target_that_is_not_a_field_of_the_type_is_r025(profile: Profile) -> None:
    raw = _raw_profile()
    raw["field"].append({"source": "rxNo", "target": "prescription_issue_no"})
    value = sample()
    value["receipts"][0]["rxNo"] = "20250314-00017"
    result = read(value, parse_profile(raw))
    assert [(p.rule, p.path, p.record) for p in result.problems] == [("R-025", "prescription_issue_no", 0)]


# ------------------------------------------------------------------------------ values


def _values_profile(**values: Any) -> Profile:
    return parse_profile(
        {
            "name": "v",
            "format": "json",
            "encoding": "auto",
            "values": {"true_values": ["Y", "1"], "false_values": ["N", "0"], **values},
            "document_type": {"default": "prescription"},
            "code_tables": {"kind": {"1": "medication", "2": "injection"}},
            "json": {"lines": "drugs"},
            "field": [
                {"source": "no", "target": "document_no", "transforms": ["upper"]},
                {"source": "ver", "target": "version"},
                {"source": "dx", "target": "diagnosis_codes", "transforms": ["upper", "remove-spaces"]},
                {"source": "hidden", "target": "diagnosis_withheld"},
                {"source": "ykiho", "target": "institution.ykiho"},
                {"source": "valid", "target": "valid_days"},
                {"source": "dose", "target": "lines.dose"},
                {"source": "days", "target": "lines.days"},
                {"source": "kind", "target": "lines.kind", "code_table": "kind"},
            ],
        }
    )


def test_json_numbers_booleans_arrays_and_null() -> None:
    profile = _values_profile(thousands_separator=".", decimal_separator=",")
    value = {
        "no": "p1",
        "ver": 2,
        "dx": ["j06.9", " k 21.0 ", "", None],
        "hidden": False,
        "ykiho": 99000001,
        "valid": None,
        "drugs": [
            {"dose": 2.5, "days": 3, "kind": 1},
            {"dose": "0,5", "days": "1.000", "kind": "2"},
            {"dose": 1e-05, "days": 1.0},
        ],
    }
    result = read(value, profile)
    assert result.problems == []
    assert next(iter(result.records)).document == {
        "document_no": "P1",
        "version": 2,
        "diagnosis_codes": ["J06.9", "K21.0"],
        "diagnosis_withheld": False,
        "institution": {"ykiho": "99000001"},
        "document_type": "prescription",
        "lines": [
            # a JSON number is never read with the vendor's text conventions ("." = thousands here)
            {"dose": "2.5", "days": 3, "kind": "medication"},
            {"dose": "0.5", "days": 1000, "kind": "injection"},
            {"dose": "0.00001", "days": "1.0"},  # 1.0 is no integer: the validator reports R-021
        ],
    }


def test_flags_given_as_text_and_code_strings() -> None:
    result = read({"no": "p", "dx": "J06.9;K21.0", "hidden": "Y"}, _values_profile())
    assert next(iter(result.records)).document["diagnosis_codes"] == ["J06.9", "K21.0"]
    assert next(iter(result.records)).document["diagnosis_withheld"] is True


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"no": ["p1"]}, "document_no"),
        ({"no": {"v": "p1"}}, "document_no"),
        ({"dx": [["J06.9"]]}, "diagnosis_codes"),
        ({"drugs": [{"dose": [1]}]}, "lines.dose"),
    ],
)
def test_structure_where_a_value_is_expected_is_r021(value: dict[str, Any], path: str) -> None:
    result = read(value, _values_profile())
    assert [(p.rule, p.path, p.record) for p in result.problems] == [("R-021", path, 0)]


# ------------------------------------------------------------------------------ rows and grouping


def _rows_profile() -> Profile:
    return parse_profile(
        {
            "name": "rows",
            "format": "json",
            "document_type": {"column": "type", "values": {"RX": "prescription"}},
            "grouping": {"keys": ["document_no", "version"]},
            "field": [
                {"source": "no", "target": "document_no"},
                {"source": "rev", "target": "version"},
                {"source": "pt/nm", "target": "patient.name"},
                {"source": "code", "target": "lines.code"},
            ],
        }
    )


def test_flat_rows_are_grouped_like_csv() -> None:
    rows = [
        {"type": "RX", "no": "A", "rev": 1, "pt": {"nm": "가상환자"}, "code": "1"},
        {"type": "RX", "no": "A", "rev": 1, "pt": {"nm": "가상환자"}, "code": "2"},
        {"type": "RX", "no": "B", "rev": 1, "pt": {"nm": "가상보호자"}},
    ]
    result = read(rows, _rows_profile())
    assert result.problems == []
    assert [(r.index, r.document) for r in result.records] == [
        (
            0,
            {
                "document_no": "A",
                "version": 1,
                "patient": {"name": "가상환자"},
                "document_type": "prescription",
                "lines": [{"code": "1"}, {"code": "2"}],
            },
        ),
        (
            1,
            {
                "document_no": "B",
                "version": 1,
                "patient": {"name": "가상보호자"},
                "document_type": "prescription",
            },
        ),
    ]
    # rows of one document must be contiguous and agree; an unknown type stops
    assert rules(read([rows[0], rows[2], rows[1]], _rows_profile())) == [("R-004", 2)]
    disagree = [rows[0], {**rows[1], "pt": {"nm": "가상다른이"}}]
    assert rules(read(disagree, _rows_profile())) == [("R-004", 0)]
    assert rules(read([rows[0], {**rows[2], "type": "??"}], _rows_profile())) == [("R-005", 1)]
    unknown = [{**rows[0], "x": 1}, {**rows[1], "x": 2}]
    assert [(p.rule, p.path, p.record) for p in read(unknown, _rows_profile()).problems] == [
        ("R-025", "x", 0)
    ]


# ------------------------------------------------------------------------------ profile keys


@pytest.mark.parametrize(
    "extra",
    [
        {"json": {"records": "a//b"}},
        {"json": {"lines": "*"}},
        {"json": {"rows": True}},
        {"json": {"records": 3}},
        {"document_type": {"json_record": {"x": "invoice"}}},
    ],
)
def test_invalid_json_profile_keys_are_rejected(extra: dict[str, Any]) -> None:
    data: dict[str, Any] = {
        "name": "t",
        "format": "json",
        "document_type": {"default": "receipt"},
        "field": [{"source": "no", "target": "document_no"}],
    }
    data.update(extra)
    with pytest.raises(ProfileError):
        parse_profile(data)


def test_json_record_alone_determines_the_type() -> None:
    profile = parse_profile(
        {
            "name": "t",
            "format": "json",
            "document_type": {"json_record": {"r": "receipt"}},
            "field": [{"source": "no", "target": "document_no"}],
        }
    )
    assert profile.extensions == (".json",)


# ------------------------------------------------------------------------------ never raises


def check_never_raises(data: bytes, name: str, profile: Profile) -> None:
    result = read_export(data, file_name=name, profile=profile)
    records = list(result.records)
    problems = result.problems
    assert all(isinstance(p, Problem) and p.rule in READER_RULES for p in problems)
    assert all(isinstance(r, Record) and isinstance(r.document, dict) for r in records)
    assert records or problems


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), name=st.sampled_from(["f.json", "f.jsonl"]))
def test_arbitrary_bytes_never_raise(data: bytes, name: str) -> None:
    check_never_raises(data, name, load_profile("vendor_c_json", [shipped_profiles_dir()]))


_SAMPLE_TEXT = SAMPLE.read_text(encoding="utf-8")


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(_SAMPLE_TEXT)),
    junk=st.text(max_size=6),
    name=st.sampled_from(["f.json", "f.jsonl"]),
)
def test_truncated_or_spliced_samples_never_raise(cut: int, junk: str, name: str) -> None:
    text = _SAMPLE_TEXT[:cut] + junk + _SAMPLE_TEXT[cut:][: cut // 2]
    check_never_raises(
        text.encode("utf-8", "surrogatepass"), name, load_profile("vendor_c_json", [shipped_profiles_dir()])
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    receipt=st.dictionaries(
        st.sampled_from(["docKind", "rcptNo", "rev", "hosp", "pt", "items", "sum", "deptCd", "x"]),
        json_values,
    ),
    rows=st.booleans(),
)
def test_arbitrary_json_structures_never_raise(receipt: dict[str, Any], rows: bool) -> None:
    raw = _raw_profile()
    if rows:
        raw["json"] = {"records": "receipts"}
    profile = parse_profile(raw)
    check_never_raises(dump({"receipts": [receipt, receipt]}), "f.json", profile)
