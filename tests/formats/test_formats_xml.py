"""XML reader (exports.md §2, security.md §9): defusedxml, R-003 for unsafe XML, R-004/R-005."""

from __future__ import annotations

import time

import pytest

from agent.formats import read_export, write_export
from tests.formats.formats_testdata import example


def read(text: str | bytes, name: str = "d.xml"):  # type: ignore[no-untyped-def]
    data = text.encode() if isinstance(text, str) else text
    return read_export(data, file_name=name)


def rules(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.rule for p in result.problems]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<documents><document type="receipt"><remarks>&lol9;</remarks></document></documents>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<documents><document type="receipt"><remarks>&xxe;</remarks></document></documents>"""


@pytest.mark.parametrize(
    "text",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        '<!DOCTYPE documents SYSTEM "http://example.invalid/x.dtd"><documents/>',
        "<!DOCTYPE documents><documents/>",
        '<documents><?evil data?><document type="receipt"/></documents>',
        '<?xml-stylesheet href="x.xsl"?><documents/>',
    ],
)
def test_unsafe_xml_is_r003_and_fast(text: str) -> None:
    started = time.monotonic()
    result = read(text)
    assert rules(result) == ["R-003"]
    assert list(result.records) == []
    assert time.monotonic() - started < 1


def test_documents_without_document_is_r004() -> None:
    assert rules(read("<documents/>")) == ["R-004"]
    assert rules(read("<documents>\n  </documents>")) == ["R-004"]


@pytest.mark.parametrize("text", ["", "<other/>", "<documents>", "not xml", '{"a": 1}'])
def test_malformed_or_wrong_root_is_r004(text: str) -> None:
    assert rules(read(text)) == ["R-004"]


def test_depth_beyond_32_is_r004() -> None:
    deep = "<documents>" + "<a>" * 40 + "</a>" * 40 + "</documents>"
    assert rules(read(deep)) == ["R-004"]


def test_element_count_beyond_limit_is_r004(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.formats.xml_reader as xml_reader

    monkeypatch.setattr(xml_reader, "MAX_XML_ELEMENTS", 10)
    text = '<documents><document type="prescription">' + "<diagnosis_codes>A00</diagnosis_codes>" * 9
    assert rules(read(text + "</document></documents>")) == ["R-004"]


def test_missing_type_attribute_is_r005_with_record_index() -> None:
    result = read(
        '<documents><document type="receipt"/><document><document_no>1</document_no></document></documents>'
    )
    assert [(p.rule, p.record) for p in result.problems] == [("R-005", 1)]


def test_unknown_type_attribute_is_r005() -> None:
    assert rules(read('<documents><document type="invoice"/></documents>')) == ["R-005"]


def test_document_type_child_must_equal_the_attribute() -> None:
    same = read(
        '<documents><document type="receipt"><document_type>receipt</document_type></document></documents>'
    )
    assert rules(same) == [] and [r.document for r in same.records] == [{"document_type": "receipt"}]
    other = read(
        '<documents><document type="receipt"><document_type>prescription</document_type></document></documents>'
    )
    assert rules(other) == ["R-005"] and list(other.records) == []


def test_elements_are_typed_by_field_kind() -> None:
    text = """<?xml version="1.0" encoding="UTF-8"?>
<documents><document type="prescription">
  <version> 2 </version><diagnosis_withheld>false</diagnosis_withheld>
  <diagnosis_codes>J06.9</diagnosis_codes><diagnosis_codes> </diagnosis_codes><diagnosis_codes>A00</diagnosis_codes>
  <patient><name>\u3000홍길동 </name><rrn></rrn></patient>
  <prescriber><name/></prescriber>
  <lines><line_no>1</line_no><dose>2.50</dose></lines><lines/><lines><line_no>1,000</line_no></lines>
  <valid_days>12.0</valid_days>
</document></documents>"""
    result = read(text)
    assert result.problems == []
    assert [r.document for r in result.records] == [
        {
            "document_type": "prescription",
            "version": 2,
            "diagnosis_withheld": False,
            "diagnosis_codes": ["J06.9", "A00"],
            "patient": {"name": "홍길동"},
            "lines": [{"line_no": 1, "dose": "2.50"}, {"line_no": "1,000"}],
            "valid_days": "12.0",  # not an integer literal: kept as text, the validator says R-021
        }
    ]


def test_unknown_element_is_r025() -> None:
    result = read('<documents><document type="receipt"><colour>red</colour></document></documents>')
    assert [(p.rule, p.path, p.record) for p in result.problems] == [("R-025", "colour", 0)]


def test_repeated_single_valued_element_is_r004() -> None:
    text = '<documents><document type="receipt"><document_no>1</document_no><document_no>2</document_no></document></documents>'
    assert rules(read(text)) == ["R-004"]


def test_declared_encoding_is_ignored_detected_encoding_wins() -> None:
    body = '<documents><document type="receipt"><department_name>가정의학과</department_name></document></documents>'
    for declaration in (
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<?xml version="1.0" encoding="EUC-KR"?>',
        "",
    ):
        for codec in ("utf-8", "cp949"):
            result = read((declaration + body).encode(codec))
            assert result.problems == [], (declaration, codec)
            assert result.encoding == codec
            assert next(iter(result.records)).document["department_name"] == "가정의학과"


def test_nfd_text_is_nfc_after_reading() -> None:
    nfd = "\u1112\u1169\u11bc\u1100\u1175\u11af\u1103\u1169\u11bc"
    result = read(
        f'<documents><document type="receipt"><patient><name>{nfd}</name></patient></document></documents>'
    )
    assert next(iter(result.records)).document["patient"]["name"] == "홍길동"


def test_written_xml_reads_back_identically() -> None:
    docs = [example("receipt"), example("prescription")]
    result = read(write_export(docs, format="xml", encoding="cp949"))
    assert result.encoding == "cp949"
    assert [r.document for r in result.records] == docs
