"""Input-hardening limits of the readers (security.md §9), in one place so tests and fuzzers agree."""

from __future__ import annotations

# JSON nesting depth (arrays and objects; a top-level array counts 1) and XML element depth
# (the <documents> root counts 1).
MAX_DEPTH = 32
# XML elements per file: beyond it the file is R-004 before the tree grows further.
MAX_XML_ELEMENTS = 1_000_000
# One JSON string (key or value), measured in UTF-8 bytes of its decoded value.
MAX_STRING_BYTES = 1024 * 1024
# Problems kept per file: arbitrary input must not grow the problem list without bound.
MAX_PROBLEMS = 1000
