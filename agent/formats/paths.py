"""Value-free names for problem paths.

Column headers and element names come from the input. A well-formed name (a json_name or dotted
path) is shown as it is; anything else is shown by position only, because a headerless CSV would
otherwise put the first row — names, RRNs — into a problem message (documents.md §10).
"""

from __future__ import annotations

import re

_SAFE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")


def safe_name(name: str, fallback: str) -> str:
    """``name`` if it looks like a field path, else ``fallback`` (e.g. ``"[column 3]"``)."""
    return name if _SAFE_NAME_RE.fullmatch(name) else fallback
