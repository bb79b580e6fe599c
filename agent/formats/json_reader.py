"""Readers for ``.json`` (one object or an array of objects) and ``.jsonl``/``.ndjson``.

Limits (security.md §9): nesting deeper than 32 and strings longer than 1 MiB are R-004. A text
that may hold a string over 1 MiB (longer than 256 Ki characters, with an escaped quote or a run of
more than 256 Ki characters after a quote) is scanned before the parser sees it, so such a string
is rejected before it is decoded; the scan counts bracket depth while skipping string literals and
rejects nesting beyond 32 without ever recursing. Any other text with more than 32 brackets is
parsed first by the C parser (which stops absurd depth with a RecursionError instead of overflowing
the stack) while the depth of the objects it builds is tracked and bounded at 33; only a text that
fails to parse or is too deep is then scanned, so every error and its message are the ones the
scan-first order gives. Duplicate keys, NaN/Infinity and non-finite numbers are R-004. String
values are NFC-normalised and trimmed while the objects are built; an empty string stays empty so
the validator reports R-022 (exports.md §2).
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from agent.formats.limits import MAX_DEPTH, MAX_STRING_BYTES
from agent.formats.result import ProblemSink, Record
from agent.formats.text import clean_text, normalise_json_value

# A string literal (unrolled loop: linear, no catastrophic backtracking) or a bracket.
_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A string token up to this many characters cannot exceed MAX_STRING_BYTES once decoded
# (at most 4 UTF-8 bytes per character; escapes only shorten).
_SAFE_TOKEN_CHARS = MAX_STRING_BYTES // 4
_normalize = unicodedata.normalize
# A quote followed by more characters than a safe token holds, none of them a quote (linear: every
# attempt starts at a quote and stops at the next one).
_LONG_RUN_RE = re.compile(f'"[^"]{{{_SAFE_TOKEN_CHARS + 1}}}')


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


class _TooDeep(Exception):
    """The values built so far nest deeper than MAX_DEPTH (internal: the scan names the error)."""


def _clean_list(items: list[Any], heights: dict[int, int] | None, level: int) -> int:
    """Clean the strings of a parsed list in place (its objects are already clean) and return its
    nesting depth; with ``heights`` (depth of every object built so far, by id) raise `_TooDeep`
    beyond MAX_DEPTH. ``level`` counts enclosing lists, so the recursion is bounded."""
    if level > MAX_DEPTH and heights is not None:
        raise _TooDeep
    height = 0
    for i, value in enumerate(items):
        cls = type(value)
        if cls is str:
            cleaned = clean_text(value)
            if cleaned is not value:
                items[i] = cleaned
        elif cls is list:
            h = _clean_list(value, heights, level + 1)
            if h > height:
                height = h
        elif cls is dict and heights is not None:
            h = heights[id(value)]
            if h > height:
                height = h
    return height + 1


def _clean_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the parser: duplicate keys refused, string values cleaned (keys untouched).

    `clean_text` inlined: this runs for every object of every record."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JsonLimitError("duplicate key in a JSON object")
    for key, value in pairs:
        cls = type(value)
        if cls is str:
            cleaned = value.strip() if value.isascii() else _normalize("NFC", value).strip()
            if cleaned is not value:
                result[key] = cleaned
        elif cls is list:
            _clean_list(value, None, 1)
    return result


def _clean_pairs_measured(pairs: list[tuple[str, Any]], heights: dict[int, int]) -> dict[str, Any]:
    """`_clean_pairs` that also records the object's nesting depth and stops beyond MAX_DEPTH."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JsonLimitError("duplicate key in a JSON object")
    height = 0
    for key, value in pairs:
        cls = type(value)
        if cls is str:
            cleaned = value.strip() if value.isascii() else _normalize("NFC", value).strip()
            if cleaned is not value:
                result[key] = cleaned
        elif cls is list:
            h = _clean_list(value, heights, 1)
            if h > height:
                height = h
        elif cls is dict:
            h = heights[id(value)]
            if h > height:
                height = h
    height += 1
    if height > MAX_DEPTH:
        raise _TooDeep
    # Every object stays referenced by its parent until the parse ends: ids are not reused.
    heights[id(result)] = height
    return result


def _decoder(heights: dict[int, int] | None) -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=(
            _clean_pairs if heights is None else functools.partial(_clean_pairs_measured, heights=heights)
        ),
        parse_constant=_reject_constant,
        parse_float=_parse_float,
    )


_CLEAN_DECODER = _decoder(None)


def _decode_clean(decoder: json.JSONDecoder, text: str, heights: dict[int, int] | None) -> Any:
    if text.startswith("\ufeff"):  # as json.loads
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    value = decoder.decode(text)
    if type(value) is str:
        return clean_text(value)
    if type(value) is list and _clean_list(value, heights, 1) > MAX_DEPTH:
        raise _TooDeep
    return value


def _short_strings_only(text: str) -> bool:
    """True when no string token can be longer than `_SAFE_TOKEN_CHARS` characters (so the scan
    could not find one over 1 MiB): without an escaped quote every ``"`` delimits a string, and a
    token is then at most the run of other characters after its opening quote."""
    return '\\"' not in text and _LONG_RUN_RE.search(text) is None


def parse_clean_json_text(text: str) -> Any:
    """`parse_json_text` with every string value NFC-normalised and trimmed (`clean_text`; keys
    untouched): the same value, or the same exception, as ``normalise_json_value(parse_json_text(
    text))``, in one pass."""
    if len(text) > _SAFE_TOKEN_CHARS and not _short_strings_only(text):
        # A string token may exceed 1 MiB: the scan rejects it before it is decoded.
        check_limits(text)
        try:
            return _decode_clean(_CLEAN_DECODER, text, None)
        except RecursionError as exc:  # defensive: the depth scan makes this unreachable
            raise JsonLimitError("nesting too deep") from exc
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return _decode_clean(_CLEAN_DECODER, text, None)  # cannot nest deeper than 32
    heights: dict[int, int] = {}
    try:
        return _decode_clean(_decoder(heights), text, heights)
    except (ValueError, JsonLimitError, RecursionError, _TooDeep) as exc:
        # The scan runs first in the documented order: a depth violation wins over any other error.
        check_limits(text)
        if isinstance(exc, RecursionError):
            raise JsonLimitError("nesting too deep") from exc
        if isinstance(exc, _TooDeep):
            # Unreachable (the scan measures the same depth); fall back to the scan-first path.
            return normalise_json_value(parse_json_text(text))
        raise


def parse_json_file(text: str, sink: ProblemSink) -> tuple[bool, Any]:
    """Parse the whole text of a ``.json`` file under the limits, strings cleaned.

    ``(True, value)``, or ``(False, None)`` after adding the R-004 problem (empty, too deep, a
    string over 1 MiB, a duplicate key, NaN, or not well-formed). Shared by the standard reader and
    JSON vendor profiles, so both get the same protections and messages."""
    if not text.strip():
        sink.add("R-004", "", "file holds no records (empty file)")
        return False, None
    try:
        return True, parse_clean_json_text(text)
    except JsonLimitError as exc:
        sink.add("R-004", "", str(exc))
    except ValueError:
        sink.add("R-004", "", "content is not well-formed JSON")
    return False, None


def read_json(text: str, sink: ProblemSink) -> list[Record]:
    """Read a ``.json`` file: one document object or a non-empty array of them."""
    ok, value = parse_json_file(text, sink)
    if not ok:
        return []
    if isinstance(value, dict):
        return [Record(0, value)]
    if not isinstance(value, list):
        sink.add("R-004", "", "a JSON export is a document object or an array of document objects")
        return []
    if not value:
        sink.add("R-004", "", "file holds no records (empty array)")
        return []
    records: list[Record] = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            records.append(Record(index, item))
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
        if not line or line.isspace():  # blank (as ``not line.strip()``, without the copy)
            continue
        try:
            value = parse_clean_json_text(line)
        except JsonLimitError as exc:
            sink.add("R-004", "", str(exc), index)
        except ValueError:
            sink.add("R-004", "", "line is not well-formed JSON", index)
        else:
            if isinstance(value, dict):
                yield Record(index, value)
            else:
                sink.add("R-004", "", "line is not a document object", index)
        index += 1
    if index == 0:
        sink.add("R-004", "", "file holds no records (only blank lines)")
