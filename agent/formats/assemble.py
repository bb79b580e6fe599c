"""Rows → documents for the row-oriented formats (standard CSV, vendor CSV and fixed-width).

A row arrives as typed header values and typed line values keyed by field path. Rows are grouped
into documents by their group key (``document_no`` + ``version``); the rows of one document must
be contiguous and repeat every header value identically (exports.md §2, R-004). Each row with any
line value adds one line; a document without lines has ``lines`` absent; objects whose values are
all absent are absent because only present values are ever set.
"""

from __future__ import annotations

from typing import Any

from agent.formats.result import ProblemSink, Record

Path = tuple[str, ...]


class StopReading(Exception):
    """A structural problem was reported; the rest of the file cannot be interpreted."""


def set_path(target: dict[str, Any], path: Path, value: Any) -> None:
    """Set ``value`` at a dotted path, creating intermediate objects."""
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def nest(flat: dict[Path, Any]) -> dict[str, Any]:
    """The object the dotted paths of ``flat`` describe (a document head or one line)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        set_path(out, path, value)
    return out


class GroupAssembler:
    """Groups consecutive rows into documents; returns each document when its group ends."""

    def __init__(self, sink: ProblemSink, array_name: str = "lines") -> None:
        self.sink = sink
        self.array_name = array_name
        self._key: tuple[Any, ...] | None = None
        self._header: dict[Path, Any] = {}
        self._lines: list[dict[str, Any]] = []
        self._seen: set[tuple[Any, ...]] = set()
        self.index = -1

    def add_row(
        self, key: tuple[Any, ...], header: dict[Path, Any], line: dict[Path, Any], row_no: int
    ) -> Record | None:
        """Add one row; return the previous document when this row starts a new one.

        Raises `StopReading` after reporting R-004 for non-contiguous or disagreeing rows.
        """
        if self._key is not None and key == self._key:
            if header != self._header:
                self.sink.add(
                    "R-004",
                    "",
                    f"row {row_no} disagrees with the first row of its document "
                    "in a repeated (non-line) cell",
                    self.index,
                )
                raise StopReading
            self._add_line(line)
            return None
        finished = self.finish()
        if key in self._seen:
            self.sink.add(
                "R-004", "", f"row {row_no}: rows of one document are not contiguous", self.index + 1
            )
            raise StopReading
        self._seen.add(key)
        self.index += 1
        self._key = key
        self._header = header
        self._lines = []
        self._add_line(line)
        return finished

    def _add_line(self, line: dict[Path, Any]) -> None:
        if not line:
            return  # every line cell empty: this row adds no line
        self._lines.append(nest(line))

    def finish(self) -> Record | None:
        """The document of the current group (None before the first row); resets the group."""
        if self._key is None:
            return None
        document = nest(self._header)
        if self._lines:
            document[self.array_name] = self._lines
        record = Record(self.index, document)
        self._key = None
        self._header = {}
        self._lines = []
        return record

    @property
    def count(self) -> int:
        """Documents started so far."""
        return self.index + 1
