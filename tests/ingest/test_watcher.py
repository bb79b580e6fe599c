"""Observer events as hints (PITFALLS.md): which events signal a complete file, which only ask
for a scan, and which are ignored — our own reads and removals must not make a backfill re-list
the folder after every file."""

from __future__ import annotations

from pathlib import Path

from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from agent.ingest.watcher import _Handler


def _hints(root: Path, *events) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    handler = _Handler(0, root, lambda index, rel, kind: got.append((rel, kind)))
    for event in events:
        handler.on_any_event(event)
    return got


def test_completion_events_signal_the_file(tmp_path: Path):
    inbox = str(tmp_path)
    assert _hints(
        tmp_path,
        FileMovedEvent(f"{tmp_path}.staging/a.json", f"{inbox}/a.json"),
        FileClosedEvent(f"{inbox}/b.json"),
    ) == [("a.json", "signal"), ("b.json", "signal")]


def test_writes_in_progress_only_ask_for_a_scan(tmp_path: Path):
    inbox = str(tmp_path)
    assert _hints(tmp_path, FileCreatedEvent(f"{inbox}/c.json"), FileModifiedEvent(f"{inbox}/c.json")) == [
        ("c.json", "change"),
        ("c.json", "change"),
    ]


def test_reads_and_removals_are_no_hint(tmp_path: Path):
    inbox = str(tmp_path)
    assert (
        _hints(
            tmp_path,
            FileOpenedEvent(f"{inbox}/d.json"),
            FileClosedNoWriteEvent(f"{inbox}/d.json"),
            FileDeletedEvent(f"{inbox}/d.json"),
            DirModifiedEvent(inbox),
        )
        == []
    )
