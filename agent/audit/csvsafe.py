"""Formula-safe CSV for everything the agent writes as CSV (security.md §9, S-28).

A cell that a spreadsheet would read as a formula — starting with ``=``, ``+``, ``-``, ``@``, tab
or carriage return — is prefixed with ``'``; cells are quoted per RFC 4180 (CRLF line ends,
quotes doubled). Integers are written as numbers and are never prefixed, so ``-5`` stays a number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """The text of one cell, defused when it is a string a spreadsheet would evaluate."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """RFC 4180 CSV text with every cell passed through ``safe_cell``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return buffer.getvalue()
