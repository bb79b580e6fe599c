"""exports.md conformance: hand-over (§1), serialisations and reading (§2), outcomes (§4),
corrections and cancellations (§5).

Reading rules are checked offline through ``check``/``convert`` (same readers, nothing stored) and,
where the spec talks about the folder, through a real daemon watching a real inbox.
"""

from __future__ import annotations

import copy
import json
import os
import time
import unicodedata
from pathlib import Path

import pytest

from tests.conformance._ingest_support import (
    CSV_EXAMPLE,
    EXAMPLES,
    Daemon,
    Install,
    cli,
    content_hash,
    counters,
    example,
    fresh_receipt,
    jdump,
    minimal_cancellation,
    problems,
    rules_of,
    to_xml,
    wait_for,
)

TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")


def _hash_of_example(name: str) -> str:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))["content_hash"]


def _check(tmp_path: Path, name: str, content: bytes | str, *args: str):
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return cli("check", *args, p, cwd=tmp_path)


def _convert(tmp_path: Path, name: str, content: bytes | str) -> list[dict]:
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    r = cli("convert", p, cwd=tmp_path)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    text = r.stdout.strip()
    try:
        out = json.loads(text)
        return out if isinstance(out, list) else [out]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _strip(doc: dict) -> dict:
    doc = dict(doc)
    for k in ("source", "received_at", "content_hash", "validation"):
        doc.pop(k, None)
    return doc


# =========================================================================== §2 serialisations (offline)


@pytest.mark.parametrize("name", TYPES)
def test_json_object_and_array(tmp_path, name):
    docs = _convert(tmp_path, "one.json", jdump(example(name)))
    assert content_hash(_strip(docs[0])) == _hash_of_example(name)
    docs = _convert(tmp_path, "arr.json", jdump([example(name)]))
    assert len(docs) == 1 and content_hash(_strip(docs[0])) == _hash_of_example(name)


@pytest.mark.parametrize("ext", [".jsonl", ".ndjson"])
def test_jsonl_one_document_per_line_blank_lines_skipped(tmp_path, ext):
    lines = [json.dumps(example(n), ensure_ascii=False) for n in TYPES]
    text = "\n\n".join(lines) + "\n\n"
    docs = _convert(tmp_path, "batch" + ext, text)
    assert [d["document_type"] for d in docs] == list(TYPES)
    for d, n in zip(docs, TYPES, strict=True):
        assert content_hash(_strip(d)) == _hash_of_example(n)


def test_jsonl_crlf_line_endings(tmp_path):
    text = "\r\n".join(json.dumps(example(n), ensure_ascii=False) for n in TYPES) + "\r\n"
    assert len(_convert(tmp_path, "crlf.jsonl", text)) == 4


@pytest.mark.parametrize("name", TYPES)
def test_xml_round_trip_of_each_example(tmp_path, name):
    docs = _convert(tmp_path, "doc.xml", to_xml([example(name)]))
    assert len(docs) == 1
    assert content_hash(_strip(docs[0])) == _hash_of_example(name)


def test_xml_several_documents_repeated_array_elements(tmp_path):
    xml = to_xml([example(n) for n in TYPES])
    assert xml.count("<lines>") > 4 and "<diagnosis_codes>J06.9</diagnosis_codes>" in xml
    docs = _convert(tmp_path, "all.xml", xml)
    assert [d["document_type"] for d in docs] == list(TYPES)
    rx = docs[2]
    assert rx["diagnosis_codes"] == ["J06.9"]
    assert len(rx["lines"]) == 4


def test_xml_missing_type_attribute_is_r005(tmp_path):
    xml = to_xml([example("receipt")], type_attr=False, keep_type_child=True)
    r = _check(tmp_path, "x.xml", xml)
    assert r.returncode == 3
    assert "R-005" in rules_of(r), r.stdout


def test_xml_type_attribute_is_authoritative_child_must_agree(tmp_path):
    doc = example("receipt")
    ok = to_xml([doc], keep_type_child=True)  # type="receipt" plus <document_type>receipt</document_type>
    assert "<document_type>receipt</document_type>" in ok
    r = _check(tmp_path, "ok.xml", ok)
    assert r.returncode == 0, r.stdout
    bad = ok.replace("<document_type>receipt</document_type>", "<document_type>prescription</document_type>")
    r = _check(tmp_path, "bad.xml", bad)
    assert r.returncode == 3
    assert "R-005" in rules_of(r)


@pytest.mark.parametrize(
    "prolog",
    [
        '<?xml version="1.0"?>\n<!DOCTYPE documents [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n',
        '<?xml version="1.0"?>\n<!DOCTYPE documents SYSTEM "http://127.0.0.1:9/x.dtd">\n',
        '<?xml version="1.0"?>\n<!DOCTYPE documents [<!ENTITY a "aaaa">]>\n',
        '<?xml version="1.0"?>\n<!DOCTYPE documents>\n',
        '<?xml version="1.0"?>\n<?xml-stylesheet href="x.xsl"?>\n',
    ],
    ids=["external-entity", "external-dtd", "internal-entity", "bare-doctype", "processing-instruction"],
)
def test_xml_dtd_entities_pi_are_r003(tmp_path, prolog):
    xml = to_xml([example("receipt")], declaration=prolog)
    r = _check(tmp_path, "x.xml", xml)
    assert r.returncode == 3
    assert "R-003" in rules_of(r), r.stdout + r.stderr


@pytest.mark.parametrize(
    "decl",
    ['<?xml version="1.0" encoding="UTF-8"?>\n', '<?xml version="1.0" encoding="EUC-KR"?>\n', ""],
    ids=["declares-utf8", "declares-euc-kr", "no-declaration"],
)
def test_xml_cp949_detected_encoding_wins(tmp_path, decl):
    xml = to_xml([example("receipt")], declaration=decl).encode("cp949")
    with pytest.raises(UnicodeDecodeError):
        xml.decode("utf-8")
    docs = _convert(tmp_path, "k.xml", xml)
    assert docs[0]["patient"]["name"] == "홍길동"
    assert content_hash(_strip(docs[0])) == _hash_of_example("receipt")


def test_xml_utf8_declared_euc_kr_is_still_utf8(tmp_path):
    xml = to_xml([example("receipt")], declaration='<?xml version="1.0" encoding="EUC-KR"?>\n')
    docs = _convert(tmp_path, "u.xml", xml.encode("utf-8"))
    assert docs[0]["patient"]["name"] == "홍길동"


def test_xml_depth_beyond_32_is_r004(tmp_path):
    deep = "<x>" * 40 + "1" + "</x>" * 40
    xml = (
        to_xml([example("receipt")])
        .replace("<remarks>", "")
        .replace("</document>", f"<remarks>{deep}</remarks></document>", 1)
    )
    r = _check(tmp_path, "deep.xml", xml)
    assert r.returncode == 3
    assert "R-004" in rules_of(r), r.stdout


def test_xml_text_not_a_literal_of_the_type_is_r021(tmp_path):
    xml = to_xml([example("receipt")]).replace(
        "<total_charge>64500</total_charge>", "<total_charge>64,500</total_charge>"
    )
    r = _check(tmp_path, "t.xml", xml)
    assert r.returncode == 3
    assert "R-021" in rules_of(r)


def test_xml_empty_element_is_absent(tmp_path):
    xml = to_xml([example("receipt")]).replace("<phone>02-000-0000</phone>", "<phone>  </phone>")
    docs = _convert(tmp_path, "e.xml", xml)
    assert "phone" not in docs[0]["institution"]


# --------------------------------------------------------------------------- CSV


def test_csv_example_verbatim(tmp_path):
    r = _check(tmp_path, "pharm.csv", CSV_EXAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
    docs = _convert(tmp_path, "pharm.csv", CSV_EXAMPLE)
    assert [d["document_no"] for d in docs] == ["P202503-000042", "P202503-000043"]
    a, b = docs
    assert [ln["line_no"] for ln in a["lines"]] == [1, 2, 3]
    assert [ln["dose"] for ln in a["lines"]] == ["1", "2.5", "0.5"]
    assert a["lines"][1]["coverage"] == "full_copay_100"
    assert a["version"] == 1 and isinstance(a["totals"]["copay"], int)
    assert a["institution"]["type_code"] == "81" and a["institution"]["ykiho"] == "99000002"
    assert a["prescribing_institution"] == {"name": "예시가정의원", "ykiho": "99000001"}
    assert a["totals"] == {"copay": 3600, "insurer": 8400, "full_self_pay": 300}
    assert "lines" not in b, "a document with no line has lines absent"
    assert b["patient"] == {"name": "김철수", "rrn": "9203152000003"}
    # the same data as documents.md §12.4 (the example file minus the optional fields left out here)
    ex = example("pharmacy_receipt")
    for k in (
        "dispensed_on",
        "days_supplied",
        "prescription_issue_no",
        "total_charge",
        "patient_charge_total",
        "paid",
        "pharmacist_name",
    ):
        assert a[k] == ex[k], k


def test_csv_example_crlf_and_cp949(tmp_path):
    crlf = CSV_EXAMPLE.replace("\n", "\r\n")
    assert _check(tmp_path, "crlf.csv", crlf).returncode == 0
    cp = CSV_EXAMPLE.encode("cp949")
    r = _check(tmp_path, "cp.csv", cp)
    assert r.returncode == 0, r.stdout
    docs = _convert(tmp_path, "cp.csv", cp)
    assert docs[0]["patient"]["name"] == "홍길동"


def test_csv_column_order_is_free(tmp_path):
    rows = [line.split(",") for line in CSV_EXAMPLE.strip().split("\n")]
    order = list(reversed(range(len(rows[0]))))
    text = "\n".join(",".join(r[i] for i in order) for r in rows) + "\n"
    docs = _convert(tmp_path, "rev.csv", text)
    base = _convert(tmp_path, "base.csv", CSV_EXAMPLE)
    assert [content_hash(_strip(d)) for d in docs] == [content_hash(_strip(d)) for d in base]


def _csv_mut(fn) -> str:
    rows = [line.split(",") for line in CSV_EXAMPLE.strip().split("\n")]
    fn(rows)
    return "\n".join(",".join(r) for r in rows) + "\n"


def _col(rows, name):
    return rows[0].index(name)


CSV_CASES = {
    "duplicate-column": (
        lambda rows: [r.append(r[_col(rows, "status")]) for r in rows] and rows[0].__setitem__(-1, "status"),
        "R-004",
    ),
    "row-cell-count": (lambda rows: rows[2].append("extra"), "R-004"),
    "non-field-column": (
        lambda rows: [r.append("x") for r in rows] and rows[0].__setitem__(-1, "vendor_note"),
        "R-025",
    ),
    "no-document_type-column": (lambda rows: [r.pop(1) for r in rows], "R-005"),
    "mixed-types": (lambda rows: rows[4].__setitem__(1, "receipt"), "R-004"),
    "blank-in-continuation-row": (
        lambda rows: rows[2].__setitem__(_col(rows, "pharmacist_name"), ""),
        "R-004",
    ),
    "disagreeing-continuation-row": (
        lambda rows: rows[3].__setitem__(_col(rows, "total_charge"), "12301"),
        "R-004",
    ),
    "not-contiguous": (lambda rows: rows.insert(2, rows.pop(4)), "R-004"),
    "thousands-separator": (
        lambda rows: [r.__setitem__(_col(rows, "total_charge"), '"12,300"') for r in rows[1:4]],
        "R-021",
    ),
    "int-with-fraction": (
        lambda rows: [r.__setitem__(_col(rows, "total_charge"), "12300.0") for r in rows[1:4]],
        "R-021",
    ),
    "boolean-not-literal": (
        lambda rows: [r.append("Y" if i else "night_care") for i, r in enumerate(rows)],
        "R-021",
    ),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_rules(tmp_path, case):
    fn, rule = CSV_CASES[case]
    r = _check(tmp_path, "c.csv", _csv_mut(fn))
    assert r.returncode == 3, r.stdout
    assert rule in rules_of(r), (rule, r.stdout)


def test_csv_quoted_cells_rfc4180(tmp_path):
    text = _csv_mut(
        lambda rows: [r.__setitem__(_col(rows, "lines.name"), '"예시정, ""500"" mg"') for r in rows[1:2]]
    )
    docs = _convert(tmp_path, "q.csv", text)
    assert docs[0]["lines"][0]["name"] == '예시정, "500" mg'


def test_csv_header_only_is_r004(tmp_path):
    r = _check(tmp_path, "h.csv", CSV_EXAMPLE.split("\n")[0] + "\n")
    assert r.returncode == 3 and "R-004" in rules_of(r)


def test_csv_blank_optional_cell_is_absent_and_whitespace_trimmed(tmp_path):
    def fn(rows):
        rows[0].append("institution.phone")
        rows[0].append("remarks")
        for r in rows[1:4]:
            r.append("   ")
            r.append("  비고  ")
        rows[4].append("")
        rows[4].append("")

    docs = _convert(tmp_path, "b.csv", _csv_mut(fn))
    assert "phone" not in docs[0]["institution"]
    assert docs[0]["remarks"] == "비고"
    assert "remarks" not in docs[1]


def test_csv_diagnosis_codes_joined_by_semicolon(tmp_path):
    rx = example("prescription")
    header = [
        "schema_version",
        "document_type",
        "document_no",
        "version",
        "status",
        "issued_on",
        "institution.ykiho",
        "institution.name",
        "patient.name",
        "patient.rrn",
        "insurance_type",
        "diagnosis_withheld",
        "diagnosis_codes",
        "prescriber.name",
        "prescriber.license_type",
        "prescriber.license_no",
        "valid_days",
        "lines.line_no",
        "lines.kind",
        "lines.code_type",
        "lines.code",
        "lines.name",
        "lines.dose",
        "lines.daily_count",
        "lines.days",
    ]
    common = [
        "1.0",
        "prescription",
        rx["document_no"],
        "1",
        "active",
        rx["issued_on"],
        "99000001",
        "예시가정의원",
        "홍길동",
        "9001011000001",
        "health_insurance",
        "false",
        "J06.9;J20.9",
        "이몽룡",
        "physician",
        "99999",
        "3",
    ]
    rows = [
        common + ["1", "medication", "3", "699999991", "예시정", "1", "3", "3"],
        common + ["2", "medication", "3", "699999992", "예시시럽", "2.50", "3", "3"],
    ]
    text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
    docs = _convert(tmp_path, "rx.csv", text)
    assert docs[0]["diagnosis_codes"] == ["J06.9", "J20.9"]
    assert docs[0]["diagnosis_withheld"] is False
    assert docs[0]["lines"][1]["dose"] == "2.5"
    assert docs[0]["valid_days"] == 3


# --------------------------------------------------------------------------- reading rules common to all


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.json", b""),
        ("arr.json", b"[]"),
        ("blank.jsonl", b"\n\n  \n"),
        ("header.csv", CSV_EXAMPLE.split("\n")[0].encode() + b"\n"),
        ("empty.xml", b"<documents/>"),
        ("empty2.xml", b'<?xml version="1.0"?>\n<documents>\n</documents>\n'),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_zero_records_is_r004(tmp_path, name, content):
    r = _check(tmp_path, name, content)
    assert r.returncode == 3
    assert "R-004" in rules_of(r), r.stdout + r.stderr


def test_json_duplicate_key_is_r004(tmp_path):
    text = jdump(example("receipt")).decode()
    text = text.replace('"total_charge": 64500', '"total_charge": 64500, "total_charge": 64500', 1)
    r = _check(tmp_path, "dup.json", text)
    assert r.returncode == 3 and "R-004" in rules_of(r), r.stdout


def test_json_nested_duplicate_key_is_r004(tmp_path):
    text = (
        jdump(example("receipt"))
        .decode()
        .replace('"ykiho": "99000001"', '"ykiho": "99000001", "ykiho": "99000001"', 1)
    )
    r = _check(tmp_path, "dup.json", text)
    assert r.returncode == 3 and "R-004" in rules_of(r), r.stdout


def _with_nesting(depth_total: int, top_array: bool = False) -> bytes:
    """A receipt whose unknown field ``x`` nests so that the whole file has the given depth."""
    doc = example("receipt")
    inner = depth_total - 1 - (1 if top_array else 0)  # the document object itself is one level
    doc["x"] = "__X__"
    text = json.dumps([doc] if top_array else doc, ensure_ascii=False)
    return text.replace('"__X__"', "[" * inner + "]" * inner).encode()


def test_json_depth_33_is_r004_and_32_is_not(tmp_path):
    r = _check(tmp_path, "d33.json", _with_nesting(33))
    assert r.returncode == 3 and "R-004" in rules_of(r), r.stdout
    r = _check(tmp_path, "d33a.json", _with_nesting(33, top_array=True))
    assert "R-004" in rules_of(r), r.stdout
    r = _check(tmp_path, "d32.json", _with_nesting(32))
    assert r.returncode == 3
    assert "R-004" not in rules_of(r) and "R-025" in rules_of(r), r.stdout
    r = _check(tmp_path, "d32a.json", _with_nesting(32, top_array=True))
    assert "R-004" not in rules_of(r) and "R-025" in rules_of(r), r.stdout


def test_json_10000_levels_is_r004_without_crash(tmp_path):
    r = _check(tmp_path, "deep.json", b"[" * 10000 + b"]" * 10000)
    assert r.returncode == 3
    assert "R-004" in rules_of(r)
    assert "RecursionError" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_json_string_over_1mib_is_r004(tmp_path):
    doc = example("receipt")
    doc["remarks"] = "가" * ((1 << 20) // 3 + 10)  # > 1 MiB of UTF-8
    r = _check(tmp_path, "big.json", jdump(doc))
    assert r.returncode == 3 and "R-004" in rules_of(r), r.stdout
    doc["remarks"] = "가" * 1001  # too long for the field but a small string: R-023, not R-004
    r = _check(tmp_path, "long.json", jdump(doc))
    assert "R-023" in rules_of(r) and "R-004" not in rules_of(r), r.stdout


def test_json_that_is_not_json_is_quarantined(tmp_path):
    r = _check(tmp_path, "n.json", "<documents/>")
    assert r.returncode == 3
    assert any(x.startswith("R-") for x in rules_of(r))


# --------------------------------------------------------------------------- encodings


def test_utf8_bom_json_accepted(tmp_path):
    docs = _convert(tmp_path, "bom.json", b"\xef\xbb\xbf" + jdump(example("receipt")))
    assert content_hash(_strip(docs[0])) == _hash_of_example("receipt")


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".csv"])
def test_cp949_accepted(tmp_path, ext):
    if ext == ".csv":
        data = CSV_EXAMPLE.encode("cp949")
    elif ext == ".jsonl":
        data = json.dumps(example("receipt"), ensure_ascii=False).encode("cp949") + b"\n"
    else:
        data = json.dumps(example("receipt"), ensure_ascii=False).encode("cp949")
    docs = _convert(tmp_path, "k" + ext, data)
    assert docs[0]["patient"]["name"] == "홍길동"
    assert "\ufffd" not in json.dumps(docs, ensure_ascii=False)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_32_is_r002(tmp_path, codec):
    data = json.dumps(example("receipt"), ensure_ascii=False).encode(codec)
    r = _check(tmp_path, "w.json", data)
    assert r.returncode == 3
    assert "R-002" in rules_of(r), (codec, r.stdout)


def test_bom_then_invalid_utf8_is_r002_not_cp949(tmp_path):
    data = b"\xef\xbb\xbf" + json.dumps(example("receipt"), ensure_ascii=False).encode("cp949")
    data[3:].decode("cp949")  # it would decode as CP949 without the BOM
    r = _check(tmp_path, "b.json", data)
    assert r.returncode == 3
    assert "R-002" in rules_of(r), r.stdout


def test_invalid_in_both_encodings_is_r002(tmp_path):
    data = jdump(example("receipt")).replace("예시로 1".encode(), b"\xff\xfe\x80 1")
    r = _check(tmp_path, "x.json", data)
    assert r.returncode == 3 and "R-002" in rules_of(r), r.stdout


def test_nfc_and_trim_applied_by_every_reader(tmp_path):
    doc = example("receipt")
    nfd = unicodedata.normalize("NFD", "홍길동")
    assert nfd != "홍길동"
    doc["patient"]["name"] = "\u3000 " + nfd + "\t "
    doc["institution"]["name"] = " 예시가정의원\u0085"
    docs = _convert(tmp_path, "n.json", jdump(doc))
    assert docs[0]["patient"]["name"] == "홍길동"
    assert docs[0]["institution"]["name"] == "예시가정의원"
    assert content_hash(_strip(docs[0])) == _hash_of_example("receipt")
    xml = to_xml([doc])
    docs = _convert(tmp_path, "n.xml", xml)
    assert docs[0]["patient"]["name"] == "홍길동"


def test_json_empty_or_blank_string_is_r022(tmp_path):
    for value in ("", "   "):
        doc = example("receipt")
        doc["institution"]["phone"] = value
        r = _check(tmp_path, "e.json", jdump(doc))
        assert r.returncode == 3 and "R-022" in rules_of(r), (value, r.stdout)


# =========================================================================== §1 hand-over (daemon)


def _settle_wait(seconds: float = 3.5) -> None:
    time.sleep(seconds)


def test_temporary_names_and_unknown_extensions_are_left_alone(tmp_path):
    inst = Install.create(tmp_path)
    content = jdump(example("receipt"))
    ignored = [
        ".hidden.json",
        "~lock.json",
        "r.json.tmp",
        "r2.tmp",
        "r.json.part",
        "r.json.partial",
        "r.json.crdownload",
        "notes.txt",
        "batch.zip",
        "scan.pdf",
    ]
    with Daemon(inst) as d:
        for n in ignored:
            (inst.inbox / n).write_bytes(content)
        (inst.inbox / "sub").mkdir()
        (inst.inbox / "sub" / "nested.json").write_bytes(content)
        _settle_wait(3.5)  # settle (1 s) + two scans (1 s) several times over
        st = inst.status()
        c = counters(st)
        assert c["accepted"] == c["quarantined"] == c["duplicate"] == 0, c
        assert inst.quarantine() == []
        for n in ignored:
            assert (inst.inbox / n).exists(), f"{n} must be left in place"
        assert (inst.inbox / "sub" / "nested.json").exists()
        # write-then-rename: the final name is read at once
        t0 = time.monotonic()
        os.replace(inst.inbox / "r.json.tmp", inst.inbox / "r.json")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="renamed file ingested")
        assert time.monotonic() - t0 < 10
        # acknowledged (removed) only after the commit: allow the moment between the two
        wait_for(lambda: not (inst.inbox / "r.json").exists(), 5, what="renamed file acknowledged")
        assert d.stop() == 0


def test_recursive_watch_reads_subfolders(tmp_path):
    inst = Install.create(tmp_path, watch={"recursive": True})
    with Daemon(inst) as d:
        (inst.inbox / "sub").mkdir()
        tmp = inst.inbox / "sub" / "n.json.tmp"
        tmp.write_bytes(jdump(example("receipt")))
        os.replace(tmp, inst.inbox / "sub" / "n.json")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="nested file ingested")
        d.stop()


def test_plain_write_is_read_after_settle(tmp_path):
    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        (inst.inbox / "plain.json").write_bytes(jdump(example("receipt")))  # no rename, no sentinel
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 20, what="plain write ingested")
        d.stop()


def test_sentinel_auto(tmp_path):
    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        # the folder sees a sentinel (here one whose file never came)
        (inst.inbox / "prime.json.done").write_bytes(b"")
        _settle_wait(2)
        # from now on files without a sentinel are waited for
        inst.drop("b.json", jdump(fresh_receipt("S-000002")))
        (inst.inbox / "c.json").write_bytes(jdump(fresh_receipt("S-000003")))
        _settle_wait(3)
        assert (inst.inbox / "b.json").exists(), "auto mode: a file without its sentinel is not read"
        assert (inst.inbox / "c.json").exists(), "auto mode: a file without its sentinel is not read"
        st = inst.status()
        assert st["documents"]["versions_total"] == 0
        assert st["ingest"]["files_pending"] >= 2 and st["watch"][0]["pending"] >= 2, st["ingest"]
        (inst.inbox / "b.json.ok").write_bytes(b"")
        (inst.inbox / "c.json.done").write_bytes(b"")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 2, 15, what="b/c ingested")
        wait_for(
            lambda: not (inst.inbox / "b.json.ok").exists() and not (inst.inbox / "c.json.done").exists(),
            10,
            what="sentinels removed with their files",
        )
        assert not (inst.inbox / "b.json").exists() and not (inst.inbox / "c.json").exists()
        # the EMR's order: write name.json, then the empty name.json.done
        (inst.inbox / "e.json").write_bytes(jdump(fresh_receipt("S-000005")))
        (inst.inbox / "e.json.done").write_bytes(b"")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 3, 15, what="e ingested")
        wait_for(lambda: not (inst.inbox / "e.json.done").exists(), 10, what="sentinel removed with its file")
        wait_for(lambda: inst.status()["ingest"]["files_pending"] == 0, 5, what="nothing pending any more")
        d.stop()


def test_sentinel_written_after_its_file_is_removed_too(tmp_path):
    """exports.md §1.2: write name.json, then an empty name.json.done; the sentinel is removed with its
    file. In a folder that has not seen a sentinel yet the closed file is read at once (no needless
    waiting), so the sentinel may arrive after the file was taken: it must not be left behind."""
    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        (inst.inbox / "a.json").write_bytes(jdump(example("receipt")))
        (inst.inbox / "a.json.done").write_bytes(b"")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="a.json ingested")
        wait_for(lambda: not (inst.inbox / "a.json.done").exists(), 5, what="sentinel removed with its file")
        d.stop()


def test_sentinel_required(tmp_path):
    inst = Install.create(tmp_path, watch={"sentinel": "required"})
    with Daemon(inst) as d:
        inst.drop("c.json", jdump(example("receipt")))  # even a renamed-in file waits
        _settle_wait(3)
        assert (inst.inbox / "c.json").exists()
        st = inst.status()
        assert st["documents"]["versions_total"] == 0
        assert st["ingest"]["files_pending"] == 1, st["ingest"]
        (inst.inbox / "c.json.done").write_bytes(b"")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="c.json ingested")
        d.stop()


def test_sentinel_off_ignores_sentinels(tmp_path):
    inst = Install.create(tmp_path, watch={"sentinel": "off"})
    with Daemon(inst) as d:
        (inst.inbox / "x.json.done").write_bytes(b"")
        inst.drop("y.json", jdump(example("receipt")))
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="y.json ingested")
        d.stop()


def test_too_large_file_r001_left_in_place_not_rechecked(tmp_path):
    inst = Install.create(tmp_path, watch={"max_file_size": 2048})
    doc = example("receipt")
    content = jdump(doc) + b" " * 1024
    assert len(content) > 2048
    with Daemon(inst) as d:
        path = inst.drop("big.json", content)
        entries = wait_for(inst.quarantine, 15, what="R-001 entry")
        assert len(entries) == 1 and "R-001" in json.dumps(entries[0])
        assert path.exists(), "a too-large file stays in place"
        st = inst.status()
        assert st["ingest"]["files_quarantined"] == 1
        assert st["documents"]["versions_total"] == 0
        _settle_wait(2.5)  # several scans later: not looked at again
        assert len(inst.quarantine()) == 1
        assert inst.status()["ingest"]["files_quarantined"] == 1
        # the entry holds only the reason, never content
        r = inst.run_cli("quarantine", "show", entries[0]["id"])
        assert "홍길동" not in r.stdout + r.stderr
        d.stop()


def test_too_large_file_rechecked_when_changed(tmp_path):
    inst = Install.create(tmp_path, watch={"max_file_size": 2048})
    content = jdump(example("receipt")) + b" " * 1024
    with Daemon(inst) as d:
        path = inst.drop("big.json", content)
        wait_for(inst.quarantine, 15, what="R-001 entry")
        tmp = inst.inbox / "big.json.tmp"
        tmp.write_bytes(json.dumps(example("receipt"), ensure_ascii=False, separators=(",", ":")).encode())
        assert tmp.stat().st_size < 2048
        os.replace(tmp, path)
        wait_for(
            lambda: inst.status()["documents"]["versions_total"] == 1,
            15,
            what="changed file is looked at again",
        )
        d.stop()


def test_symlink_outside_ignored_inside_followed(tmp_path):
    inst = Install.create(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = fresh_receipt("OUT-000001", name="외부환자")
    (outside / "doc.json").write_bytes(jdump(secret))
    with Daemon(inst) as d:
        (inst.inbox / "link.json").symlink_to(outside / "doc.json")
        _settle_wait(3)
        assert inst.status()["documents"]["versions_total"] == 0
        assert inst.quarantine() == []
        assert (outside / "doc.json").exists()
        # a symlink to a file inside the folder is handled like the file
        (inst.inbox / "sub").mkdir()
        inside = fresh_receipt("IN-000001")
        (inst.inbox / "sub" / "doc.json").write_bytes(jdump(inside))
        (inst.inbox / "inlink.json").symlink_to(inst.inbox / "sub" / "doc.json")
        wait_for(
            lambda: inst.status()["documents"]["versions_total"] == 1, 15, what="inside symlink ingested"
        )
        d.stop()
    from tests.conformance._ingest_support import scan_bytes

    assert not scan_bytes([inst.data_dir, inst.log_dir], {"name": "외부환자".encode()})


# =========================================================================== §4/§5 outcomes (daemon)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    inst = Install.create(tmp_path_factory.mktemp("outcomes"))
    d = Daemon(inst).start()
    yield d
    d.stop()


def _seq() -> str:
    return f"{time.time_ns() % 10**12:012d}"


def test_outcome_accepted_move_mode(daemon):
    doc = fresh_receipt("ACC-" + _seq())
    delta = daemon.ingest("acc.json", jdump(doc))
    assert delta == {
        **delta,
        "accepted": 1,
        "duplicate": 0,
        "quarantined": 0,
        "active": 1,
        "versions": 1,
        "records": 1,
    }
    assert not (daemon.inst.inbox / "acc.json").exists(), "move mode: the file leaves the folder"


def test_outcome_duplicate_byte_identical(daemon):
    data = jdump(fresh_receipt("DUP-" + _seq()))
    assert daemon.ingest("d1.json", data)["accepted"] == 1
    delta = daemon.ingest("d2.json", data)
    assert delta["duplicate"] == 1 and delta["accepted"] == 0 and delta["versions"] == 0
    assert not (daemon.inst.inbox / "d2.json").exists(), "a duplicate is handled as accepted (removed)"


def test_outcome_duplicate_every_record_noop(daemon):
    doc = fresh_receipt("NOOP-" + _seq())
    assert daemon.ingest("n1.json", jdump(doc))["accepted"] == 1
    other_bytes = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    delta = daemon.ingest("n2.json", other_bytes)
    assert delta["duplicate"] == 1 and delta["versions"] == 0


def test_outcome_superseded_counts_as_accepted(daemon):
    no = "SUP-" + _seq()
    assert daemon.ingest("s1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    v2 = fresh_receipt(no, version=2)
    v2["revision_reason"] = "reissue"
    delta = daemon.ingest("s2.json", jdump(v2))
    assert delta["accepted"] == 1, "a superseded file counts as accepted (cli.md §3.1)"
    assert delta["versions"] == 1 and delta["active"] == 0


def test_outcome_quarantined_is_all_or_nothing(daemon):
    good = fresh_receipt("QG-" + _seq())
    bad = fresh_receipt("QB-" + _seq())
    bad["total_charge"] = 1
    delta = daemon.ingest("q.json", jdump([good, bad]))
    assert delta["quarantined"] == 1 and delta["versions"] == 0 and delta["records"] == 0
    assert not (daemon.inst.inbox / "q.json").exists(), "the whole file is moved to quarantine"
    entry = [e for e in daemon.inst.quarantine() if "R-109" in json.dumps(e)]
    assert entry, daemon.inst.quarantine()
    dumped = json.dumps(entry[-1], ensure_ascii=False)
    assert "홍길동" not in dumped and "9001011000001" not in dumped and "q.json" not in dumped
    # the good record was not stored: it is new when sent alone
    assert daemon.ingest("q2.json", jdump(good))["accepted"] == 1


def test_precedence_noop_plus_new_is_accepted(daemon):
    a = fresh_receipt("PA-" + _seq())
    assert daemon.ingest("p1.json", jdump(a))["accepted"] == 1
    b = fresh_receipt("PB-" + _seq())
    delta = daemon.ingest("p2.json", jdump([a, b]))
    assert delta["accepted"] == 1 and delta["duplicate"] == 0
    assert delta["versions"] == 1


def test_precedence_noop_plus_higher_version_is_superseded(daemon):
    a = fresh_receipt("PS-" + _seq())
    b = fresh_receipt("PT-" + _seq())
    assert daemon.ingest("ps1.json", jdump([a, b]))["accepted"] == 1
    b2 = copy.deepcopy(b)
    b2["version"] = 2
    delta = daemon.ingest("ps2.json", jdump([a, b2]))
    assert delta["accepted"] == 1 and delta["versions"] == 1 and delta["active"] == 0


def test_version_conflict_same_version_different_content_r010(daemon):
    no = "CF-" + _seq()
    assert daemon.ingest("c1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    other = fresh_receipt(no)
    other["remarks"] = "정정"
    delta = daemon.ingest("c2.json", jdump(other))
    assert delta["quarantined"] == 1 and delta["versions"] == 0
    assert any("R-010" in json.dumps(e) for e in daemon.inst.quarantine())


def test_version_conflict_false_vs_absent_boolean_r010(daemon):
    no = "CB-" + _seq()
    assert daemon.ingest("b1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    other = fresh_receipt(no)
    del other["night_care"]  # documents.md §9.3: omitting instead of false at the same version
    delta = daemon.ingest("b2.json", jdump(other))
    assert delta["quarantined"] == 1


def test_version_lower_than_stored_is_r010_even_if_new_number(daemon):
    no = "LO-" + _seq()
    assert daemon.ingest("l1.json", jdump(fresh_receipt(no, version=5)))["accepted"] == 1
    delta = daemon.ingest("l2.json", jdump(fresh_receipt(no, version=3)))
    assert delta["quarantined"] == 1 and delta["versions"] == 0
    # equal to a stored version with the same content: duplicate
    delta = daemon.ingest("l3.json", jdump([fresh_receipt(no, version=5)]))
    assert delta["duplicate"] == 1


def test_version_conflict_plus_new_record_stores_nothing(daemon):
    no = "CN-" + _seq()
    assert daemon.ingest("cn1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    conflicting = fresh_receipt(no)
    conflicting["remarks"] = "다름"
    new = fresh_receipt("CNN-" + _seq())
    delta = daemon.ingest("cn2.json", jdump([new, conflicting]))
    assert delta["quarantined"] == 1 and delta["versions"] == 0


def test_version_gap_numbers_are_fine(daemon):
    no = "TS-" + _seq()
    assert daemon.ingest("t1.json", jdump(fresh_receipt(no, version=20250314104200)))["accepted"] == 1
    assert daemon.ingest("t2.json", jdump(fresh_receipt(no, version=20250315090000)))["accepted"] == 1


def test_version_changing_rrn_is_r014(daemon):
    no = "ID-" + _seq()
    assert daemon.ingest("i1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    delta = daemon.ingest("i2.json", jdump(fresh_receipt(no, version=2, rrn="9203152000003")))
    assert delta["quarantined"] == 1
    assert any("R-014" in json.dumps(e) for e in daemon.inst.quarantine())


def test_correction_then_cancellation_then_reactivation(daemon):
    no = "CX-" + _seq()
    base = fresh_receipt(no)
    assert daemon.ingest("x1.json", jdump(base))["active"] == 1
    corr = fresh_receipt(no, version=2)
    corr["revision_reason"] = "correction"
    corr["remarks"] = "수정"
    delta = daemon.ingest("x2.json", jdump(corr))
    assert delta["versions"] == 1 and delta["active"] == 0
    cancel = minimal_cancellation(base, 3)
    cancel["cancel_reason"] = "전액환불"
    delta = daemon.ingest("x3.json", jdump(cancel))
    assert delta["accepted"] == 1, "a minimal §9.4 cancellation record is accepted"
    assert delta["cancelled"] == 1 and delta["active"] == -1 and delta["versions"] == 1
    # a re-exported identical cancellation is a duplicate (hash over the record as received)
    delta = daemon.ingest("x3b.json", json.dumps(cancel, ensure_ascii=False).encode())
    assert delta["duplicate"] == 1 and delta["versions"] == 0
    react = fresh_receipt(no, version=4)
    delta = daemon.ingest("x4.json", jdump(react))
    assert delta["active"] == 1 and delta["cancelled"] == -1


def test_cancellation_for_unknown_key_then_older_original_conflicts(daemon):
    base = fresh_receipt("CU-" + _seq())
    delta = daemon.ingest("u1.json", jdump(minimal_cancellation(base, 2)))
    assert delta["accepted"] == 1 and delta["cancelled"] == 1
    delta = daemon.ingest("u2.json", jdump(base))  # version 1 < 2
    assert delta["quarantined"] == 1


def test_cancellation_lower_version_is_conflict(daemon):
    base = fresh_receipt("CL-" + _seq(), version=3)
    assert daemon.ingest("cl1.json", jdump(base))["accepted"] == 1
    delta = daemon.ingest("cl2.json", jdump(minimal_cancellation(base, 2)))
    assert delta["quarantined"] == 1


@pytest.mark.parametrize("name", ["receipt_detail", "prescription", "pharmacy_receipt"])
def test_minimal_cancellation_each_type(daemon, name):
    base = example(name)
    base["document_no"] = ("20250314-" + _seq()[-5:]) if name == "prescription" else "MC-" + _seq()
    if name == "prescription" and base["document_no"].endswith("00000"):
        base["document_no"] = base["document_no"][:-1] + "1"
    assert daemon.ingest(f"{name}-1.json", jdump(base))["accepted"] == 1
    delta = daemon.ingest(f"{name}-2.json", jdump(minimal_cancellation(base, 2)))
    assert delta["accepted"] == 1 and delta["cancelled"] == 1, delta


@pytest.mark.slow
def test_keep_mode_leaves_file_and_remembers_it(tmp_path):
    inst = Install.create(tmp_path, watch={"source_mode": "keep"})
    with Daemon(inst) as d:
        delta = d.ingest("k.json", jdump(example("receipt")), stays=True)
        assert delta["accepted"] == 1
        assert (inst.inbox / "k.json").exists(), "keep mode leaves the file"
        bad = fresh_receipt("KB-000001")
        bad["total_charge"] = 0
        assert d.ingest("kb.json", jdump(bad), stays=True)["quarantined"] == 1
        _settle_wait(3.5)
        c = counters(inst.status())
        assert (c["accepted"], c["duplicate"], c["quarantined"], c["versions"]) == (1, 0, 1, 1), c
        assert len(inst.quarantine()) == 1
        d.stop()
    # also across a restart
    with Daemon(inst) as d:
        _settle_wait(3.5)
        c = counters(inst.status())
        assert (c["accepted"], c["duplicate"], c["quarantined"]) == (1, 0, 1), c
        d.stop()


def test_deferred_when_share_unreachable_is_not_empty(tmp_path):
    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        inst.drop("a.json", jdump(example("receipt")))
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 15)
        moved = tmp_path / "unmounted"
        os.rename(inst.inbox, moved)
        st = wait_for(
            lambda: (lambda s: s if s["watch"][0]["reachable"] is False else None)(inst.status()),
            15,
            what="watch folder reported unreachable",
        )
        assert st["documents"]["versions_total"] == 1
        os.rename(moved, inst.inbox)
        wait_for(lambda: inst.status()["watch"][0]["reachable"] is True, 15, what="reachable again")
        d.stop()


# =========================================================================== more reading and outcome cases


def _to_csv(docs: list[dict]) -> str:
    """The standard CSV layout of exports.md §2 for documents of one type."""
    import csv
    import io

    def flat(prefix: str, obj: dict, out: dict) -> None:
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                flat(key + ".", v, out)
            elif isinstance(v, list) and k == "diagnosis_codes":
                out[key] = ";".join(v)
            elif isinstance(v, bool):
                out[key] = "true" if v else "false"
            else:
                out[key] = str(v)

    rows = []
    header: list[str] = []
    for d in docs:
        d = dict(d)
        lines = d.pop("lines", None) or [None]
        common: dict = {}
        flat("", d, common)
        for ln in lines:
            row = dict(common)
            if ln is not None:
                flat("lines.", ln, row)
            rows.append(row)
            for k in row:
                if k not in header:
                    header.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in header})
    return buf.getvalue()


@pytest.mark.parametrize("name", TYPES)
def test_csv_round_trip_of_each_example(tmp_path, name):
    text = _to_csv([example(name)])
    docs = _convert(tmp_path, f"{name}.csv", text)
    assert len(docs) == 1
    assert content_hash(_strip(docs[0])) == _hash_of_example(name)


def test_csv_two_versions_of_one_document_are_two_documents(tmp_path):
    a = example("receipt")
    b = dict(example("receipt"), version=2)
    docs = _convert(tmp_path, "v.csv", _to_csv([a, b]))
    assert [d["version"] for d in docs] == [1, 2]
    assert all(len(d["lines"]) == 6 for d in docs)


def test_csv_record_index_is_document_group(tmp_path):
    bad = dict(example("receipt"), document_no="202503-000999", total_charge=1)
    text = _to_csv([example("receipt"), bad])
    r = _check(tmp_path, "g.csv", text)
    assert r.returncode == 3
    assert {p["record"] for p in problems(r.stdout) if p["rule"] == "R-109"} == {"1"}


def test_jsonl_one_bad_line_quarantines_whole_file(tmp_path):
    text = json.dumps(example("receipt"), ensure_ascii=False) + "\n{not json\n"
    r = _check(tmp_path, "b.jsonl", text)
    assert r.returncode == 3 and "R-004" in rules_of(r)


def test_xml_with_json_content_and_json_with_xml_content(tmp_path):
    r = _check(tmp_path, "j.xml", jdump(example("receipt")))
    assert r.returncode == 3 and any(x.startswith("R-") for x in rules_of(r))


def test_nan_and_huge_numbers_are_not_json(tmp_path):
    text = jdump(example("receipt")).decode()
    for bad in ("NaN", "Infinity", "-Infinity", "1e400"):
        r = _check(tmp_path, "n.json", text.replace('"prepaid": 0', f'"prepaid": {bad}'))
        assert r.returncode == 3, bad
        assert rules_of(r) & {"R-004", "R-021"}, (bad, r.stdout)


def test_lone_surrogate_escape_is_rejected_not_a_crash(tmp_path):
    text = jdump(example("receipt")).decode().replace('"가정의학과"', '"\\ud800"')
    r = _check(tmp_path, "s.json", text)
    assert r.returncode == 3, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr


def test_cp949_extension_characters(tmp_path):
    doc = example("receipt")
    doc["patient"]["name"] = "똠방각하"  # CP949 extension syllables (not in plain EUC-KR)
    docs = _convert(tmp_path, "x.json", json.dumps(doc, ensure_ascii=False).encode("cp949"))
    assert docs[0]["patient"]["name"] == "똠방각하"


@pytest.mark.parametrize(
    "ext,make",
    [
        (".csv", lambda: CSV_EXAMPLE.encode()),
        (".xml", lambda: to_xml([example("receipt")]).encode()),
        (".jsonl", lambda: json.dumps(example("receipt"), ensure_ascii=False).encode() + b"\n"),
    ],
)
def test_utf8_bom_every_serialisation(tmp_path, ext, make):
    r = _check(tmp_path, "bom" + ext, b"\xef\xbb\xbf" + make())
    assert r.returncode == 0, r.stdout


def test_explicit_u_fffd_in_source_is_kept(tmp_path):
    doc = example("receipt")
    doc["remarks"] = "원본\ufffd문자"
    docs = _convert(tmp_path, "f.json", jdump(doc))
    assert docs[0]["remarks"] == "원본\ufffd문자"


def test_half_written_plain_file_is_never_read(tmp_path):
    """exports.md §1: a plain write is read only after it stayed unchanged for settle; a writer that pauses
    shorter than settle must not have its half file quarantined."""
    inst = Install.create(tmp_path, watch={"settle": "4s"})
    data = jdump(example("receipt"))
    with Daemon(inst) as d:
        with open(inst.inbox / "slow.json", "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(2.5)
            f.write(data[len(data) // 2 :])
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 20, what="slow file ingested")
        c = counters(inst.status())
        assert c["quarantined"] == 0 and c["accepted"] == 1
        d.stop()


def test_polling_observer(tmp_path):
    inst = Install.create(tmp_path, watch={"polling": True})
    with Daemon(inst) as d:
        inst.drop("p.json", jdump(example("receipt")))
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 20, what="polled file ingested")
        assert inst.status()["watch"][0]["observer"] != "native"
        d.stop()


def test_requarantine_of_identical_invalid_file_is_not_duplicate(daemon):
    bad = fresh_receipt("RQ-" + _seq())
    bad["total_charge"] = 2
    data = jdump(bad)
    assert daemon.ingest("rq1.json", data)["quarantined"] == 1
    delta = daemon.ingest("rq2.json", data)
    assert delta["quarantined"] == 1 and delta["duplicate"] == 0


def test_old_file_re_exported_after_correction_is_duplicate(daemon):
    no = "RE-" + _seq()
    v1 = jdump(fresh_receipt(no))
    assert daemon.ingest("re1.json", v1)["accepted"] == 1
    assert daemon.ingest("re2.json", jdump(fresh_receipt(no, version=2)))["accepted"] == 1
    delta = daemon.ingest("re3.json", v1)
    assert delta["duplicate"] == 1 and delta["versions"] == 0 and delta["quarantined"] == 0


def test_same_key_same_version_twice_in_one_file_differing_is_conflict(daemon):
    no = "TW-" + _seq()
    a = fresh_receipt(no)
    b = fresh_receipt(no)
    b["remarks"] = "다른 내용"
    delta = daemon.ingest("tw.json", jdump([a, b]))
    assert delta["quarantined"] == 1 and delta["versions"] == 0


def test_same_record_twice_in_one_file_stores_one_version(daemon):
    no = "TI-" + _seq()
    a = fresh_receipt(no)
    delta = daemon.ingest("ti.json", jdump([a, a]))
    assert delta["accepted"] == 1 and delta["versions"] == 1


def test_each_serialisation_ingested(daemon):
    base = _seq()
    ph = example("pharmacy_receipt")
    ph["document_no"] = "PX-" + base
    delta = daemon.ingest("s.xml", to_xml([dict(example("receipt"), document_no="XM-" + base), ph]))
    assert delta["accepted"] == 1 and delta["versions"] == 2
    delta = daemon.ingest(
        "s.jsonl",
        "\n".join(
            json.dumps(dict(example("receipt"), document_no=f"JL-{base}-{i}"), ensure_ascii=False)
            for i in range(3)
        )
        + "\n",
    )
    assert delta["accepted"] == 1 and delta["versions"] == 3
    csv_text = CSV_EXAMPLE.replace("P202503-000042", "C1-" + base).replace("P202503-000043", "C2-" + base)
    delta = daemon.ingest("s.csv", csv_text.encode("cp949"))
    assert delta["accepted"] == 1 and delta["versions"] == 2
    delta = daemon.ingest(
        "s.ndjson", json.dumps(dict(example("receipt"), document_no="ND-" + base), ensure_ascii=False)
    )
    assert delta["accepted"] == 1 and delta["versions"] == 1


def test_zero_record_file_quarantined_by_daemon(daemon):
    delta = daemon.ingest("empty.json", b"[]")
    assert delta["quarantined"] == 1
    assert any("R-004" in json.dumps(e) for e in daemon.inst.quarantine())


def test_renamed_in_file_is_ingested_well_under_a_second(tmp_path):
    """exports.md §1 'No needless waiting': a renamed-in file is read at once (median of 5 drops < 1 s)."""
    inst = Install.create(tmp_path, watch={"settle": "10s", "scan_interval": "30s"})
    times = []
    with Daemon(inst) as d:
        for i in range(5):
            t0 = time.monotonic()
            inst.drop(f"fast{i}.json", jdump(fresh_receipt(f"FAST-{i:04d}")))
            wait_for(
                lambda n=i + 1: inst.status()["documents"]["versions_total"] == n,
                10,
                interval=0.01,
                what="renamed-in file committed",
            )
            times.append(time.monotonic() - t0)
        d.stop()
    times.sort()
    assert times[2] < 1.0, times


def test_closed_plain_write_needs_no_settle(tmp_path):
    """A file closed by its writer (IN_CLOSE_WRITE) is read at once, without settle."""
    inst = Install.create(tmp_path, watch={"settle": "30s", "scan_interval": "30s"})
    with Daemon(inst) as d:
        (inst.inbox / "closed.json").write_bytes(jdump(example("receipt")))
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 8, what="closed file committed")
        d.stop()


def test_future_document_quarantined_r034_on_ingest(daemon):
    import datetime as dt

    from tests.conformance._ingest_support import today_kst

    day = (today_kst() + dt.timedelta(days=2)).isoformat()
    doc = fresh_receipt("FUT-" + _seq())
    doc.pop("issued_at")
    doc["issued_on"] = day
    doc["care_period"] = {"start": day, "end": day}
    n0 = len(daemon.inst.quarantine())
    delta = daemon.ingest("future.json", jdump(doc))
    assert delta["quarantined"] == 1
    assert "R-034" in json.dumps(daemon.inst.quarantine()[n0:])


def test_today_kst_document_accepted_on_ingest(daemon):
    from tests.conformance._ingest_support import today_kst

    day = today_kst().isoformat()
    doc = fresh_receipt("TOD-" + _seq())
    doc.pop("issued_at")
    doc["issued_on"] = day
    doc["care_period"] = {"start": day, "end": day}
    assert daemon.ingest("today.json", jdump(doc))["accepted"] == 1


def test_cancellation_with_different_rrn_is_r014(daemon):
    base = fresh_receipt("RC-" + _seq())
    assert daemon.ingest("rc1.json", jdump(base))["accepted"] == 1
    cancel = minimal_cancellation(base, 2)
    cancel["patient"]["rrn"] = "9203152000003"
    delta = daemon.ingest("rc2.json", jdump(cancel))
    assert delta["quarantined"] == 1


def test_adding_an_rrn_later_is_not_r014(daemon):
    no = "AR-" + _seq()
    v1 = fresh_receipt(no)
    del v1["patient"]["rrn"]
    assert daemon.ingest("ar1.json", jdump(v1))["accepted"] == 1
    assert daemon.ingest("ar2.json", jdump(fresh_receipt(no, version=2)))["accepted"] == 1


def test_name_change_in_new_version_is_only_a_warning(daemon):
    no = "NM-" + _seq()
    assert daemon.ingest("nm1.json", jdump(fresh_receipt(no)))["accepted"] == 1
    delta = daemon.ingest("nm2.json", jdump(fresh_receipt(no, version=2, name="홍 길동")))
    assert delta["accepted"] == 1 and delta["versions"] == 1


# =========================================================================== §3 vendor profiles


def _profiles() -> list[Path]:
    from tests.conformance._ingest_support import REPO

    return sorted((REPO / "config" / "profiles").glob("*.toml"))


def test_at_least_two_vendor_profiles_with_samples_pass_check(tmp_path):
    from tests.conformance._ingest_support import REPO

    profiles = _profiles()
    assert len(profiles) >= 2
    samples = [p for p in (REPO / "config" / "profiles").rglob("*") if p.is_file() and p.suffix != ".toml"]
    passing = set()
    for prof in profiles:
        for s in samples:
            r = cli("check", "--profile", prof.stem, s, cwd=tmp_path)
            if r.returncode == 0:
                passing.add(prof.stem)
    assert passing == {p.stem for p in profiles}, passing
    formats = {s.suffix for s in samples}
    assert {".csv", ".xml"} <= formats
    assert any(_is_cp949(s) for s in samples if s.suffix == ".csv"), "one CSV profile in CP949"


def _is_cp949(p: Path) -> bool:
    b = p.read_bytes()
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        b.decode("cp949")
        return True


def test_site_profile_next_to_the_config(tmp_path):
    from tests.conformance._ingest_support import REPO

    profiles = _profiles()
    src = next(p for p in profiles if "csv" in p.read_text(encoding="utf-8").lower())
    inst = Install.create(tmp_path)
    (inst.root / "site_vendor.toml").write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    sample = next(p for p in (REPO / "config" / "profiles").rglob("*.csv"))
    r = inst.run_cli("check", "--profile", "site_vendor", sample)
    assert r.returncode == 0, r.stdout + r.stderr
    inst.edit("watch", profile="site_vendor")
    with Daemon(inst) as d:
        d.ingest("vendor.csv", sample.read_bytes())
        assert inst.status()["documents"]["versions_total"] >= 1
        d.stop()


def test_backlog_present_before_start_is_ingested(tmp_path):
    inst = Install.create(tmp_path)
    for i in range(3):
        inst.drop(f"old{i}.json", jdump(fresh_receipt(f"OLD-{i:04d}")))
    with Daemon(inst) as d:
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 3, 20, what="backlog ingested")
        # Committed first, acknowledged (removed) right after the commit is durable: wait for that.
        wait_for(lambda: not [p for p in inst.inbox.iterdir()], 10, what="backlog acknowledged")
        d.stop()


def test_several_watch_folders(tmp_path):
    inst = Install.create(tmp_path)
    cfg = inst.config()
    second = dict(cfg["watch"][0], path="inbox2")
    cfg["watch"].append(second)
    inst.write_config(cfg)
    (inst.root / "inbox2").mkdir(mode=0o700)
    with Daemon(inst) as d:
        inst.drop("a.json", jdump(fresh_receipt("W1-000001")))
        tmp = inst.root / "inbox2" / "b.json.tmp"
        tmp.write_bytes(jdump(fresh_receipt("W2-000001")))
        os.replace(tmp, inst.root / "inbox2" / "b.json")
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 2, 20, what="both folders ingested")
        st = inst.status()
        assert len(st["watch"]) == 2 and all(w["reachable"] for w in st["watch"])
        d.stop()


@pytest.mark.slow
def test_unknown_extension_logged_once(tmp_path):
    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        (inst.inbox / "notes.txt").write_text("hello")
        _settle_wait(4)
        d.stop()
    logs = "".join(p.read_text(encoding="utf-8") for p in inst.log_dir.rglob("*") if p.is_file())
    assert sum(1 for line in logs.splitlines() if ".txt" in line) == 1, logs
    assert "notes" not in logs
    assert (inst.inbox / "notes.txt").exists()


def test_quarantine_entry_names_the_file_by_content_id(daemon):
    import hashlib

    bad = fresh_receipt("FID-" + _seq())
    bad["total_charge"] = 3
    data = jdump(bad)
    n0 = len(daemon.inst.quarantine())
    assert daemon.ingest("secret-name-홍길동.json", data)["quarantined"] == 1
    entry = daemon.inst.quarantine()[n0:]
    dumped = json.dumps(entry, ensure_ascii=False)
    assert hashlib.sha256(data).hexdigest()[:16] in dumped
    assert "secret-name" not in dumped and "홍길동" not in dumped
    assert '"R-109"' in dumped or "R-109" in dumped


def test_files_pending_while_stopped_counts_waiting_files(tmp_path):
    inst = Install.create(tmp_path)
    for i in range(3):
        inst.drop(f"w{i}.json", jdump(fresh_receipt(f"WAIT-{i:04d}")))
    st = inst.status()
    assert st["running"] is False
    assert st["watch"][0]["pending"] == 3
    assert st["ingest"]["files_pending"] == 3


@pytest.mark.slow
def test_store_locked_defers_without_consuming(tmp_path):
    import sqlite3

    inst = Install.create(tmp_path)
    with Daemon(inst) as d:
        con = sqlite3.connect(inst.data_dir / "store.db", timeout=5, isolation_level=None)
        try:
            con.execute("BEGIN EXCLUSIVE")
            inst.drop("locked.json", jdump(fresh_receipt("LOCK-000001")))
            _settle_wait(3)
            assert (inst.inbox / "locked.json").exists(), "nothing is consumed while the store is locked"
            st = inst.status()
            assert st["ingest"]["files_quarantined"] == 0
            assert st["ingest"]["files_pending"] + st["ingest"]["files_deferred"] >= 1
        finally:
            con.execute("ROLLBACK")
            con.close()
        wait_for(lambda: inst.status()["documents"]["versions_total"] == 1, 60, what="retried after the lock")
        d.stop()


def test_synth_straight_into_a_watch_folder_is_ingested_without_quarantine(tmp_path):
    """cli.md §3 synth writes export files; with no --invalid-rate every one of them is a valid export,
    so writing them straight into a running agent's inbox quarantines nothing (the manifest is
    written beside the folder, not into it) and leaves the folder empty."""
    inst = Install.create(tmp_path, watch={"settle": "1s", "scan_interval": "1s"})
    with Daemon(inst) as d:
        r = cli("synth", "--out", inst.inbox, "--count", "60", "--seed", "8", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not any(inst.inbox.iterdir()), 60, what="inbox emptied")
        st = inst.status()
        d.stop()
    assert st["ingest"]["files_quarantined"] == 0, st["ingest"]
    assert st["ingest"]["files_accepted"] > 0
    assert (inst.inbox.parent / f"{inst.inbox.name}.manifest.json").exists()
