"""Readers for ``.json`` (one object or an array of objects) and ``.jsonl``/``.ndjson``.

Limits (security.md §9) are checked on the text before the parser sees it: a bracket-depth scan
that skips string literals rejects nesting beyond 32 without ever recursing, and string tokens
longer than 1 MiB are rejected before they are decoded. Duplicate keys, NaN/Infinity and
non-finite numbers are R-004. String values are NFC-normalised and trimmed; an empty string stays
empty so the validator reports R-022 (exports.md §2).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from agent.formats.limits import MAX_DEPTH, MAX_STRING_BYTES
from agent.formats.result import ProblemSink, Record
from agent.formats.text import normalise_json_value

# A string literal (unrolled loop: linear, no catastrophic backtracking) or a bracket.
_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A string token up to this many characters cannot exceed MAX_STRING_BYTES once decoded
# (at most 4 UTF-8 bytes per character; escapes only shorten).
_SAFE_TOKEN_CHARS = MAX_STRING_BYTES // 4


class JsonLimitError(Exception):
    """Input breaks a limit or a rule of the JSON reader; the message is value-free."""


def _reject_constant(name: str) -> Any:
    raise JsonLimitError("NaN and Infinity are not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError("number out of range")
    return value


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonLimitError("duplicate key in a JSON object")
        result[key] = value
    return result


def check_limits(text: str) -> None:
    """Raise `JsonLimitError` when nesting is deeper than 32 or a string exceeds 1 MiB."""
    need_depth = text.count("[") + text.count("{") > MAX_DEPTH
    need_strings = len(text) > _SAFE_TOKEN_CHARS
    if not (need_depth or need_strings):
        return
    depth = 0
    for match in _TOKEN_RE.finditer(text):
        start, end = match.span()
        char = text[start]
        if char == '"':
            if end - start - 2 > _SAFE_TOKEN_CHARS:
                try:
                    decoded = json.loads(match.group())
                except ValueError:
                    continue  # malformed: the parser reports it
                if len(decoded.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
                    raise JsonLimitError("a string is longer than 1 MiB")
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise JsonLimitError("nesting deeper than 32 levels")
        elif depth > 0:
            depth -= 1


def parse_json_text(text: str) -> Any:
    """Parse one JSON text under the limits; raise `JsonLimitError` or `ValueError` when invalid."""
    check_limits(text)
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
        )
    except RecursionError as exc:  # defensive: the depth scan makes this unreachable
        raise JsonLimitError("nesting too deep") from exc


def read_json(text: str, sink: ProblemSink) -> list[Record]:
    """Read a ``.json`` file: one document object or a non-empty array of them."""
    if not text.strip():
        sink.add("R-004", "", "file holds no records (empty file)")
        return []
    try:
        value = parse_json_text(text)
    except JsonLimitError as exc:
        sink.add("R-004", "", str(exc))
        return []
    except ValueError:
        sink.add("R-004", "", "content is not well-formed JSON")
        return []
    if isinstance(value, dict):
        return [Record(0, normalise_json_value(value))]
    if not isinstance(value, list):
        sink.add("R-004", "", "a JSON export is a document object or an array of document objects")
        return []
    if not value:
        sink.add("R-004", "", "file holds no records (empty array)")
        return []
    records: list[Record] = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            records.append(Record(index, normalise_json_value(item)))
        else:
            sink.add("R-004", "", "array element is not a document object", index)
    return records


def _lines(text: str) -> Iterator[str]:
    """Lines split on LF only (a JSON string may hold U+2028 etc.); no list of all lines is made."""
    start = 0
    length = len(text)
    while start < length:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def read_jsonl(text: str, sink: ProblemSink) -> Iterator[Record]:
    """Stream a ``.jsonl``/``.ndjson`` file: one document object per non-blank line.

    The record index counts non-blank lines (the position of the document among the records).
    """
    index = 0
    for line in _lines(text):
        if not line.strip():
            continue
        try:
            value = parse_json_text(line)
        except JsonLimitError as exc:
            sink.add("R-004", "", str(exc), index)
        except ValueError:
            sink.add("R-004", "", "line is not well-formed JSON", index)
        else:
            if isinstance(value, dict):
                yield Record(index, normalise_json_value(value))
            else:
                sink.add("R-004", "", "line is not a document object", index)
        index += 1
    if index == 0:
        sink.add("R-004", "", "file holds no records (only blank lines)")
