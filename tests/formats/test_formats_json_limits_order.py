"""The JSON reader parses first and scans for limits only when needed; the outcome must be the one
the scan-first order gives (security.md §9): the same value, or the same error and message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.formats.json_reader import parse_clean_json_text, parse_json_text
from agent.formats.limits import MAX_DEPTH
from agent.formats.text import normalise_json_value


def _outcome(parse: Any, text: str) -> tuple[str, str]:
    try:
        return "value", repr(parse(text))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc).__name__, str(exc) if not isinstance(exc, json.JSONDecodeError) else exc.msg


def _scan_first(text: str) -> Any:
    return normalise_json_value(parse_json_text(text))


def _nested(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


TEXTS = [
    _nested(MAX_DEPTH),
    _nested(MAX_DEPTH + 1),
    "[" * MAX_DEPTH + "]" * MAX_DEPTH,
    "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    "[" * 5000 + "]" * 5000,  # deep enough for the C parser to stop with RecursionError
    "[" * 100_000,
    '{"a":1,"a":2,"b":' + "[" * 40 + "]" * 40 + "}",  # duplicate key before a depth violation
    '{"b":' + "[" * 40 + "]" * 40 + ',"a":NaN}',
    '{"a":[' + '{"b":[' * 15 + "]}" * 15 + "]}",
    '{"a":[' + '{"b":[' * 17 + "]}" * 17 + "]}",
    '{"s":" x ","l":[" y ",[" z ",{"w":"\\u3000v"}]],"n":"\\u1100\\u1161"}' + "",
    '{"a":' + "[" * 10 + '" padded "' + "]" * 10 + ',"b":' + "[" * 30 + "]" * 30 + "}",
    "\ufeff" + "[" * 40 + "]" * 40,
    "\ufeff{}",
    '"  text  "',
    '[" a ", {"b": " c "}]',
    '{"a":"' + "x" * 300_000 + '","b":' + "[" * 40 + "]" * 40 + "}",
    '{"a":"' + "x" * (1024 * 1024 + 1) + '"}',
    '{"a":1} trailing',
    "[" * 40 + "x",
    # Long texts: scanned first only when a string may exceed 1 MiB.
    "[" + ",".join(['{"k":" v ","l":[1,[2,[3]]]}'] * 20_000) + "]",
    "[" + ",".join(['{"k":"v"}'] * 30_000) + "," + "[" * 40 + "]" * 40 + "]",
    "[" + ",".join(['"a\\"b"'] * 40_000) + "," + "[" * 40 + "]" * 40 + "]",
    '{"a":"' + '\\"' * 600_000 + '"}',
    '{"a":"' + '\\"' * 1_100_000 + '"}',
    '{"a":"' + "x" * 300_000 + '"}',
    '{"' + "k" * (1024 * 1024 + 5) + '":1}',
    '{"a":"' + "한" * 350_000 + '"}',
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_parse_first_gives_the_scan_first_outcome(text: str) -> None:
    assert _outcome(parse_clean_json_text, text) == _outcome(_scan_first, text)
