"""watchdog observers as *hints* (PITFALLS.md: events are neither complete nor final).

One observer per watch folder — native (inotify, ReadDirectoryChangesW, FSEvents) or
``PollingObserver`` when ``polling = true``. Events are turned into two kinds of hint:

- ``signal``: the file is complete now — renamed into the folder (moved event whose destination
  is in the folder) or closed by its writer after writing (``FileClosedEvent``, Linux
  ``IN_CLOSE_WRITE``). Read at once, no ``settle`` (exports.md §1). Also a sentinel appearing.
- ``change``: something happened (created, modified, attributes changed) — only shortens the
  wait for the next scan of that folder. A created/modified file is *not* complete.
- nothing: a file deleted, opened or closed without writing, a directory's own "modified" (its
  entries changed, each with its own event). None of these can make a file ready, and most of
  them are our own doing — reading a file, removing it after its commit — which must not send a
  backfill into re-listing the folder after every file.

Observers die silently (share unmounted, watch limit): ``Supervisor.check()`` runs on a timer,
restarts dead ones and counts ``OBSERVER_RESTARTS``. The periodic scan stays authoritative.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.config import WatchConfig
from agent.metrics import OBSERVER_RESTARTS

log = logging.getLogger("agent.ingest.watch")

HintCallback = Callable[[int, str, str], None]  # (watch_index, relpath or "", "signal" | "change")


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


def _native_observer() -> BaseObserver:
    """The platform observer; on Linux with full events, so a file renamed in from *outside* the
    folder (an unpaired IN_MOVED_TO) arrives as a moved event — complete — not as "created"."""
    if sys.platform.startswith("linux"):
        try:
            from watchdog.observers.inotify import InotifyObserver

            return InotifyObserver(generate_full_events=True)
        except (ImportError, TypeError, OSError):
            pass
    return Observer()


_NO_HINT = (FileDeletedEvent, FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)
# The events we act on; with inotify this is also the kernel's mask, so the opens, reads and
# unlinks of a backfill do not even reach Python.
_WANTED: list[type[FileSystemEvent]] = [
    FileMovedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
]


class _Handler(FileSystemEventHandler):
    def __init__(self, index: int, root: Path, hint: HintCallback) -> None:
        self.index = index
        self.root = os.path.abspath(root)
        self.hint = hint

    def _rel(self, path: str) -> str | None:
        path = os.path.abspath(path)
        if path == self.root or not path.startswith(self.root + os.sep):
            return None
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if isinstance(event, _NO_HINT):
                return
            if isinstance(event, FileMovedEvent):
                rel = self._rel(_text(event.dest_path))
                if rel is not None:
                    self.hint(self.index, rel, "signal")  # renamed into the folder: complete
                else:
                    self.hint(self.index, "", "change")
                return
            if isinstance(event, DirMovedEvent):
                self.hint(self.index, "", "change")
                return
            if event.is_directory:
                self.hint(self.index, "", "change")
                return
            rel = self._rel(_text(event.src_path))
            if isinstance(event, FileClosedEvent):
                # Closed after writing (IN_CLOSE_WRITE): complete. (FileClosedNoWriteEvent is a
                # different class: a reader closing the file says nothing.)
                self.hint(self.index, rel or "", "signal" if rel else "change")
                return
            self.hint(self.index, rel or "", "change")
        except Exception:  # a hint must never kill the observer thread
            log.warning("event hint failed", exc_info=True, extra={"watch": self.index})


class FolderObserver:
    """The observer of one folder, restartable."""

    def __init__(self, index: int, watch: WatchConfig, hint: HintCallback) -> None:
        self.index = index
        self.watch = watch
        self.hint = hint
        self.kind = "polling" if watch.polling else "native"
        self._observer: BaseObserver | None = None
        self.restarts = 0
        self.started_once = False

    def start(self) -> bool:
        """Start watching; False when the folder cannot be watched right now (unreachable)."""
        self.stop()
        if not os.path.isdir(self.watch.path):
            return False
        observer = (
            PollingObserver(timeout=max(1.0, min(self.watch.scan_interval / 4, 5.0)))
            if self.watch.polling
            else _native_observer()
        )
        try:
            observer.schedule(
                _Handler(self.index, Path(self.watch.path), self.hint),
                str(self.watch.path),
                recursive=self.watch.recursive,
                event_filter=_WANTED,
            )
            observer.daemon = True
            observer.start()
        except Exception:
            log.warning(
                "observer could not start; the periodic scan continues",
                exc_info=True,
                extra={"watch": self.index},
            )
            try:
                observer.stop()
            except Exception:
                pass
            return False
        self._observer = observer
        self.started_once = True
        return True

    def alive(self) -> bool:
        """The dispatcher thread and every emitter thread still run (an emitter dies alone when
        its folder is moved away or unmounted)."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in list(observer.emitters))

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                if observer is not threading.current_thread():
                    observer.join(timeout=5)
            except Exception:
                log.debug("observer stop failed", exc_info=True)

    def kill_for_test(self) -> None:
        """Stop the observer as if it had died (tests of the supervisor and the scan fallback)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)


class Supervisor:
    """Keeps one observer per folder alive; restarts dead ones (PITFALLS.md: a dead observer is silent)."""

    def __init__(self, watches: tuple[WatchConfig, ...], hint: HintCallback) -> None:
        self.observers = [FolderObserver(i, w, hint) for i, w in enumerate(watches)]
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            for obs in self.observers:
                obs.start()

    def check(self, reachable: list[bool], *, restart_all: bool = False) -> None:
        """Restart observers that died (or whose folder came back after being unreachable)."""
        with self._lock:
            for obs, ok in zip(self.observers, reachable, strict=False):
                if not ok:
                    continue  # no point watching a folder that is not there; the scan notices return
                if restart_all or not obs.alive():
                    was_running = obs.started_once
                    if obs.start() and was_running:
                        obs.restarts += 1
                        OBSERVER_RESTARTS.inc()
                        log.warning("observer restarted", extra={"watch": obs.index})

    def restart(self, index: int) -> None:
        with self._lock:
            obs = self.observers[index]
            if obs.start():
                obs.restarts += 1
                OBSERVER_RESTARTS.inc()

    def stop(self) -> None:
        with self._lock:
            for obs in self.observers:
                obs.stop()
