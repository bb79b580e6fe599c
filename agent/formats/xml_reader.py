"""Reader for ``.xml`` exports of the standard layout (exports.md §2) — only through defusedxml.

``<documents>`` root, one ``<document type="...">`` per document; element names are json_names,
nested objects are child elements, arrays are repeated elements. The bytes were decoded by
`agent.formats.encoding` and the XML declaration is removed before parsing, so its ``encoding``
can never contradict the detected one. DTDs, entity declarations, external references and
processing instructions are R-003; depth > 32 or more than 1,000,000 elements are R-004, detected
while the tree is built so neither can exhaust memory.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from agent.documents.fields import DOCUMENT_TYPES, field_kind
from agent.documents.problems import join_path
from agent.formats.limits import MAX_DEPTH, MAX_XML_ELEMENTS
from agent.formats.paths import safe_name
from agent.formats.result import ProblemSink, Record
from agent.formats.text import clean_text, convert_text

_XML_DECL_RE = re.compile(r"\A<\?xml[ \t\r\n][^>]*\?>")


class XmlLimitError(Exception):
    """Depth or element count beyond security.md §9 (R-004)."""


class XmlUnsafeError(Exception):
    """A processing instruction (R-003); defusedxml covers DTDs, entities and external refs."""


class _LimitedTreeBuilder(TreeBuilder):
    """A TreeBuilder that stops the parse as soon as a limit is crossed."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._count = 0

    def start(self, tag: Any, attrs: Any) -> Element:
        self._depth += 1
        self._count += 1
        if self._depth > MAX_DEPTH:
            raise XmlLimitError("XML nesting deeper than 32 elements")
        if self._count > MAX_XML_ELEMENTS:
            raise XmlLimitError("more than 1,000,000 XML elements")
        return super().start(tag, attrs)

    def end(self, tag: Any) -> Element:
        self._depth -= 1
        return super().end(tag)


def _forbid_pi(target: str, data: str) -> None:
    raise XmlUnsafeError("XML processing instructions are not allowed")


def parse_safe_xml(text: str) -> Element:
    """Parse decoded XML text; raise XmlUnsafeError / DefusedXmlException (R-003),
    XmlLimitError (R-004) or ParseError (R-004)."""
    text = _XML_DECL_RE.sub("", text, count=1)
    parser = DefusedXMLParser(
        target=_LimitedTreeBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    # defusedxml leaves processing instructions alone; security.md §9 forbids them too.
    parser.parser.ProcessingInstructionHandler = _forbid_pi
    parser.feed(text)
    return parser.close()


def parse_or_report(text: str, sink: ProblemSink) -> Element | None:
    """`parse_safe_xml` with every failure turned into its problem."""
    if not text.strip():
        sink.add("R-004", "", "file holds no records (empty file)")
        return None
    try:
        return parse_safe_xml(text)
    except (XmlUnsafeError, DefusedXmlException):
        sink.add("R-003", "", "unsafe XML: DTD, entity, external reference or processing instruction")
    except XmlLimitError as exc:
        sink.add("R-004", "", str(exc))
    except (ParseError, ValueError):
        sink.add("R-004", "", "content is not well-formed XML")
    return None


def _has_text(text: str | None) -> bool:
    return bool(text) and not text.isspace()  # type: ignore[union-attr]


def _mixed_content(elem: Element) -> bool:
    return _has_text(elem.text) or any(_has_text(child.tail) for child in elem)


class _DocumentBuilder:
    """Turns one ``<document>`` element into a standard document, typing text by field kind."""

    def __init__(self, document_type: str, index: int, sink: ProblemSink) -> None:
        self.document_type = document_type
        self.index = index
        self.sink = sink
        self.fatal = False

    def problem(self, rule: str, path: str, message: str) -> None:
        if rule in ("R-004", "R-005"):
            self.fatal = True
        self.sink.add(rule, path, message, self.index)

    def build_object(self, elem: Element, path: tuple[str, ...], json_path: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for position, child in enumerate(elem):
            name = child.tag if isinstance(child.tag, str) else ""
            child_json = join_path(json_path, safe_name(name, f"[element {position + 1}]"))
            if not path and name == "document_type":
                self._check_document_type(child, child_json)
                continue
            kind = field_kind(self.document_type, (*path, name))
            if kind is None:
                self.problem("R-025", child_json, "unknown field")
                continue
            if child.attrib:
                self.problem("R-025", child_json, "attributes are not fields of the standard layout")
            if kind == "array_object":
                items = result.setdefault(name, [])
                item = self._object_value(child, (*path, name), join_path(child_json, len(items)))
                if item:
                    items.append(item)
                elif not items:
                    del result[name]
                continue
            if kind == "array_str":
                text = self._text_value(child, join_path(child_json, len(result.get(name, []))))
                if text is not None:
                    result.setdefault(name, []).append(text)
                continue
            if name in result:
                self.problem("R-004", child_json, "element repeated for a single-valued field")
                continue
            if kind == "object":
                value: Any = self._object_value(child, (*path, name), child_json)
                if value:
                    result[name] = value
                continue
            text = self._text_value(child, child_json)
            if text is not None:
                result[name] = convert_text(kind, text)
        return result

    def _object_value(self, elem: Element, path: tuple[str, ...], json_path: str) -> dict[str, Any]:
        if _mixed_content(elem):
            self.problem("R-021", json_path, "text where an object is expected")
            return {}
        return self.build_object(elem, path, json_path)

    def _text_value(self, elem: Element, json_path: str) -> str | None:
        if len(elem):
            self.problem("R-021", json_path, "child elements where a value is expected")
            return None
        text = clean_text(elem.text or "")
        return text or None  # empty after trimming = absent (exports.md §2)

    def _check_document_type(self, elem: Element, json_path: str) -> None:
        text = self._text_value(elem, json_path)
        if text is not None and text != self.document_type:
            self.problem("R-005", json_path, "document_type element differs from the type attribute")


def read_xml(text: str, sink: ProblemSink) -> list[Record]:
    """Read a standard-layout XML export (exports.md §2)."""
    root = parse_or_report(text, sink)
    if root is None:
        return []
    if root.tag != "documents":
        sink.add("R-004", "", "root element must be <documents>")
        return []
    if _mixed_content(root):
        sink.add("R-004", "", "text outside <document> elements")
        return []
    records: list[Record] = []
    index = 0
    for child in root:
        if child.tag != "document":
            sink.add("R-004", "", "only <document> elements may appear under <documents>")
            continue
        record = _read_document(child, index, sink)
        if record is not None:
            records.append(record)
        index += 1
    if index == 0:
        sink.add("R-004", "", "file holds no records (<documents> without <document>)")
    return records


def _read_document(elem: Element, index: int, sink: ProblemSink) -> Record | None:
    raw_type = elem.attrib.get("type")
    if raw_type is None:
        sink.add("R-005", "document_type", "<document> without the required type attribute", index)
        return None
    document_type = clean_text(raw_type)
    if document_type not in DOCUMENT_TYPES:
        sink.add("R-005", "document_type", "type attribute is not a known document type", index)
        return None
    builder = _DocumentBuilder(document_type, index, sink)
    if set(elem.attrib) - {"type"}:
        builder.problem("R-025", "", "<document> has attributes other than type")
    if _mixed_content(elem):
        builder.problem("R-004", "", "text directly inside <document>")
    document: dict[str, Any] = {"document_type": document_type}
    document.update(builder.build_object(elem, (), ""))
    if builder.fatal:
        return None
    return Record(index, document)
