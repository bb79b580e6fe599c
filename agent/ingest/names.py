"""File-name rules of the hand-over contract (exports.md §1, security.md §9) — pure functions.

Which names are temporary (never read), which are sentinels and for which file, which names are
unsafe (control characters, undecodable bytes → quarantined), and the log-safe ``file_id`` that
replaces an original file name everywhere outside the encrypted store (security.md §8).
"""

from __future__ import annotations

import os
import unicodedata

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
SENTINEL_SUFFIXES = (".done", ".ok")


def is_temp_name(name: str) -> bool:
    """Temporary names are never read: leading ``.``/``~`` or a temp suffix (case-insensitive)."""
    lower = name.lower()
    return name.startswith((".", "~")) or lower.endswith(TEMP_SUFFIXES)


def sentinel_target(name: str) -> str | None:
    """``name.json`` for ``name.json.done`` / ``name.json.ok``; None for a non-sentinel name."""
    lower = name.lower()
    for suffix in SENTINEL_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def sentinel_names(name: str) -> tuple[str, ...]:
    return tuple(name + suffix for suffix in SENTINEL_SUFFIXES)


def is_unsafe_name(name: str) -> bool:
    """Control characters or bytes that are not valid in the file system encoding.

    ``os.fsdecode`` maps undecodable bytes to lone surrogates (``surrogateescape``); those and
    any Unicode control/format character (C0, C1, DEL, bidi overrides) make a name unsafe to show
    or to map to anything, so the file is quarantined (security.md §9).
    """
    for ch in name:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return True
        if unicodedata.category(ch) in ("Cc", "Cf"):
            return True
    return False


def extension_of(name: str) -> str:
    """Lower-case extension with the dot (``.json``), ``""`` when there is none."""
    return os.path.splitext(name)[1].lower()


def safe_extension(name: str) -> str:
    """The extension as it may appear in a log: only short ASCII alphanumerics, else ``.?``."""
    ext = extension_of(name)
    if 1 < len(ext) <= 10 and ext[1:].isascii() and ext[1:].isalnum():
        return ext
    return ".?" if ext else ""


def file_id(sha256_hex: str, watch_index: int, name: str) -> str:
    """``<first 16 hex of sha256>-w<index><ext>`` — how logs and status refer to a file."""
    return f"{sha256_hex[:16]}-w{watch_index}{safe_extension(name)}"


def unread_id(name_hmac: str, watch_index: int, name: str) -> str:
    """Log id for a file that is never read (too large, unknown extension): keyed name hash."""
    return f"n{name_hmac[:15]}-w{watch_index}{safe_extension(name)}"
