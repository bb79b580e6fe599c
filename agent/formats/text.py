"""Text conventions shared by every reader (documents.md §2.1): NFC, trimming, typed literals.

CSV and XML carry only text; `convert_text` turns it into the JSON kind of the field. A text that
is not a valid literal of its kind (``1,000`` or ``12.0`` for an integer, ``Y`` for a boolean)
is kept as the (normalised) string, so the validator reports R-021 with the exact path — one
place reports type errors for every serialisation.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_INT_RE = re.compile(r"-?[0-9]+")
# Python refuses int() on more than 4300 digits; far beyond any range of the standard anyway.
_MAX_INT_DIGITS = 40


def clean_text(value: str) -> str:
    """NFC-normalise, then trim characters for which ``str.isspace()`` is true (incl. U+3000).

    ``str.strip()`` without arguments strips exactly the ``isspace()`` characters. ASCII text is
    already NFC, and both calls return the string itself when nothing changes.
    """
    if value.isascii():
        return value.strip()
    return unicodedata.normalize("NFC", value).strip()


def normalise_json_value(value: Any) -> Any:
    """Return the JSON value with every string value cleaned (keys are field names: untouched).

    Recursion is safe: the caller has bounded the nesting depth before parsing.
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {k: normalise_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_json_value(v) for v in value]
    return value


def convert_text(kind: str, text: str) -> Any:
    """Convert already cleaned, non-empty text of a CSV cell or XML element to the field's kind.

    ``int``: ``^-?[0-9]+$`` only; ``bool``: ``true``/``false`` only; ``dec``, ``date``,
    ``datetime`` and ``str`` stay strings (decimals are JSON strings, §2.1). Anything else is
    returned unchanged so that the validator reports R-021.
    """
    if kind == "int":
        if _INT_RE.fullmatch(text) and len(text) <= _MAX_INT_DIGITS:
            return int(text)
        return text
    if kind == "bool":
        if text == "true":
            return True
        if text == "false":
            return False
        return text
    return text


def render_scalar(value: Any) -> str:
    """The CSV/XML text of a JSON scalar (the inverse of `convert_text`)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        # Not valid in the standard but must still be writable for negative tests.
        return repr(value)
    raise ValueError("value of this JSON type cannot be written as text")
