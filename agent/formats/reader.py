"""`read_export`: bytes of one export file → `ReadResult` (the registry of readers by format).

The format is chosen by the file's extension and confirmed by sniffing the content (a ``.json``
that is not JSON is R-004). Decoding (R-002) happens once, here, for every format. R-001 (size) is
the caller's decision from ``stat``; this module never sees a file system.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import TYPE_CHECKING

from agent.documents.problems import Problem
from agent.formats.csv_reader import read_csv
from agent.formats.encoding import decode_export
from agent.formats.json_reader import read_json, read_jsonl
from agent.formats.result import ProblemSink, ReadResult, Record, RecordSource
from agent.formats.xml_reader import read_xml

if TYPE_CHECKING:
    from agent.formats.profiles import Profile

# Extension → format of the standard layout (exports.md §2).
EXTENSIONS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".xml": "xml",
    ".csv": "csv",
}

# Formats parsed whole (records are a list) and formats streamed (records are generated).
_WHOLE_READERS: dict[str, Callable[[str, ProblemSink], list[Record]]] = {
    "json": read_json,
    "xml": read_xml,
}
_STREAM_READERS: dict[str, Callable[[str, ProblemSink], Iterator[Record]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
}


def extension_of(file_name: str) -> str:
    return PurePath(file_name).suffix.lower()


def supported_extension(name: str, profile: Profile | None = None) -> bool:
    """True when a file of this name is read (by the standard layout or by ``profile``)."""
    if profile is not None and not profile.is_standard:
        return extension_of(name) in profile.extensions
    return extension_of(name) in EXTENSIONS


def format_for(file_name: str) -> str | None:
    """Format of the standard layout for a file name, or None for an unknown extension."""
    return EXTENSIONS.get(extension_of(file_name))


def read_export(data: bytes, *, file_name: str, profile: Profile | None = None) -> ReadResult:
    """Read one export file. Never raises for bad content: problems are returned.

    ``file_name`` selects the format (by extension) and feeds a profile's file-name rules; it is
    never put into a problem. ``profile`` None or ``standard`` reads the standard layout.
    """
    if profile is not None and not profile.is_standard:
        from agent.formats.vendor import read_with_profile  # local: vendor imports this module

        return read_with_profile(data, file_name=file_name, profile=profile)
    fmt = format_for(file_name)
    if fmt is None:
        return ReadResult(
            format="unknown",
            encoding=None,
            problems=[Problem("R-004", "", "unsupported file extension for the standard layout")],
        )
    decoded = decode_export(data)
    if isinstance(decoded, Problem):
        return ReadResult(format=fmt, encoding=None, problems=[decoded])
    text, encoding = decoded
    if fmt in _WHOLE_READERS:
        sink = ProblemSink()
        records = _WHOLE_READERS[fmt](text, sink)
        return ReadResult(format=fmt, encoding=encoding, problems=sink.items, records=records)
    return ReadResult(format=fmt, encoding=encoding, source=_bind(_STREAM_READERS[fmt], text))


def _bind(stream: Callable[[str, ProblemSink], Iterator[Record]], text: str) -> RecordSource:
    """A re-runnable record source over the decoded text (see `ReadResult`)."""

    def source(sink: ProblemSink) -> Iterator[Record]:
        return stream(text, sink)

    return source
