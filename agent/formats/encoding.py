"""Decoding of export bytes (exports.md §2 "Encoding", security.md §9).

Detection order: UTF-8 BOM → strict UTF-8 (no fallback after a BOM) → strict CP949. UTF-16/32
(by BOM or by NUL bytes) and anything valid in neither are R-002. Decoding is always strict, so a
decoded text never holds U+FFFD unless the file encoded it explicitly.
"""

from __future__ import annotations

import codecs

from agent.documents.problems import Problem

ENCODINGS: tuple[str, ...] = ("utf-8", "cp949")

_UTF8_BOM = codecs.BOM_UTF8
# UTF-32 BOMs first: the UTF-32-LE BOM starts with the UTF-16-LE BOM.
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _r002(message: str) -> Problem:
    return Problem("R-002", "", message)


def decode_export(data: bytes) -> tuple[str, str] | Problem:
    """Return ``(text, encoding)`` with encoding ``"utf-8"`` or ``"cp949"``, or a R-002 problem.

    A UTF-8 BOM is removed from the text. Any NUL byte is R-002: it is how UTF-16/32 without a BOM
    shows, and no valid export holds U+0000 (a control character, documents.md §2.1).
    """
    for bom in _WIDE_BOMS:
        if data.startswith(bom):
            return _r002("file is UTF-16 or UTF-32; exports must be UTF-8 or CP949")
    if b"\x00" in data:
        return _r002("file contains NUL bytes (UTF-16/32 or binary); exports must be UTF-8 or CP949")
    if data.startswith(_UTF8_BOM):
        try:
            return data[len(_UTF8_BOM) :].decode("utf-8", errors="strict"), "utf-8"
        except UnicodeDecodeError:
            # After a BOM the writer declared UTF-8: a CP949 guess could silently corrupt names.
            return _r002("file starts with a UTF-8 BOM but is not valid UTF-8")
    try:
        return data.decode("utf-8", errors="strict"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949", errors="strict"), "cp949"
    except UnicodeDecodeError:
        return _r002("file is neither valid UTF-8 nor valid CP949")


def decode_as(data: bytes, encoding: str) -> tuple[str, str] | Problem:
    """Decode with an encoding fixed by a profile (``"auto"`` = `decode_export`).

    A UTF-8 BOM is accepted (and removed) only for UTF-8; NUL bytes and wide BOMs stay R-002.
    """
    if encoding == "auto":
        return decode_export(data)
    if encoding not in ENCODINGS:
        raise ValueError("encoding must be auto, utf-8 or cp949")
    for bom in _WIDE_BOMS:
        if data.startswith(bom):
            return _r002("file is UTF-16 or UTF-32; exports must be UTF-8 or CP949")
    if b"\x00" in data:
        return _r002("file contains NUL bytes (UTF-16/32 or binary); exports must be UTF-8 or CP949")
    if data.startswith(_UTF8_BOM):
        if encoding != "utf-8":
            return _r002("file starts with a UTF-8 BOM but the profile expects CP949")
        data = data[len(_UTF8_BOM) :]
    try:
        return data.decode(encoding, errors="strict"), encoding
    except UnicodeDecodeError:
        return _r002(f"file is not valid {encoding.upper()} as the profile requires")
