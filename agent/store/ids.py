"""Opaque random identifiers: ``doc_`` + ULID (relay-api.md §6.1) and the other entry ids.

A ULID is 48 bits of millisecond time and 80 random bits in Crockford base32 (26 characters). The
random part comes from the OS CSPRNG, so ids are never derived from personal data and cannot be
enumerated.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 table look-ups instead of 26 shifts (one id per new document,
# on the insert path).
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -10, -10))


def ulid(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_doc_id() -> str:
    return "doc_" + ulid()


def subject_id_for(doc_id: str) -> str:
    """Subject rows get their own record id (security.md §6.2), derived from the random doc id."""
    return "sub_" + doc_id.removeprefix("doc_")


def new_entry_id(prefix: str) -> str:
    return f"{prefix}_{ulid()}"
