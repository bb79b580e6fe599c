"""What a reader returns: `Record`, `ReadResult` and the lazy problem collection of streamed formats.

JSON and XML are parsed at once (their parsers need the whole text anyway), so their records are
a list. JSONL and CSV are streamed: ``records`` yields one document at a time from the decoded
text, so a 64 MiB file is never held as a list of dicts. Problems found while streaming are part
of ``problems``: reading ``problems`` before the records were consumed runs one extra pass that
keeps no documents, so the list is always complete whichever is read first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.documents.problems import Problem
from agent.formats.limits import MAX_PROBLEMS


@dataclass(frozen=True, slots=True)
class Record:
    """One document of a file: its 0-based position (``source.record_index``) and content."""

    index: int
    document: dict[str, Any]


class ProblemSink:
    """A bounded list of problems: arbitrary input must not grow it without limit."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, rule: str, path: str, message: str, record: int | None = None) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(rule, path, message, record))

    def extend(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            if len(self.items) >= MAX_PROBLEMS:
                break
            self.items.append(p)


# A streaming source: called with a sink, yields records and adds the problems it finds.
RecordSource = Callable[[ProblemSink], Iterator[Record]]


class _RecordStream:
    """Re-iterable view of a streaming source; the first complete pass fixes the problems."""

    def __init__(self, owner: ReadResult, source: RecordSource) -> None:
        self._owner = owner
        self._source = source

    def __iter__(self) -> Iterator[Record]:
        sink = ProblemSink()
        yield from self._source(sink)
        self._owner._finish(sink)


class ReadResult:
    """Outcome of `read_export`: ``format``, ``encoding``, ``problems``, ``records``.

    ``problems`` are the reader's problems (R-002, R-003, R-004, R-005, R-021, R-025) with the
    record index where one applies. ``records`` holds only the documents the reader could build;
    they are decoded, NFC-normalised, trimmed and typed but not validated.
    """

    def __init__(
        self,
        *,
        format: str,
        encoding: str | None,
        problems: Iterable[Problem] = (),
        records: list[Record] | None = None,
        source: RecordSource | None = None,
    ) -> None:
        self.format = format
        self.encoding = encoding
        self._problems: list[Problem] = list(problems)
        self._records: Iterable[Record]
        self._complete = source is None
        self._source = source
        if source is not None:
            self._records = _RecordStream(self, source)
        else:
            self._records = records if records is not None else []

    def _finish(self, sink: ProblemSink) -> None:
        if not self._complete:
            self._complete = True
            self._problems.extend(sink.items)

    @property
    def problems(self) -> list[Problem]:
        if not self._complete and self._source is not None:
            sink = ProblemSink()
            for _ in self._source(sink):
                pass  # documents dropped: this pass only collects problems
            self._finish(sink)
        return self._problems

    @property
    def records(self) -> Iterable[Record]:
        return self._records

    @property
    def ok(self) -> bool:
        """True when the reader found no error (the validator may still find some)."""
        return not any(p.is_error for p in self.problems)

    def __repr__(self) -> str:  # never shows document content
        return f"ReadResult(format={self.format!r}, encoding={self.encoding!r})"
