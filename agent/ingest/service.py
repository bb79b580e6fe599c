"""The running ingest: scanner loop + one worker thread + supervised observers.

- The **scanner thread** scans every folder when due (``scan_interval``; sooner when an event hint
  arrives or a settling file could become ready), supervises the observers, and feeds ready files
  to the queue.
- The **worker thread** processes one file at a time (bounded memory: one file's bytes at most),
  so a backfill of thousands of files never holds more than one of them.
- **Queue order**: files signalled complete (renamed in, closed, sentinel) first; then the files
  found after start ("fresh") alternate with the initial backlog, so a backfill never starves new
  exports.
- **Deferred** files (folder unreachable, disk full, store locked) are retried with backoff and
  shown as pending.

``stop()`` lets the worker finish the file in hand, then returns (SIGTERM → clean exit).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock, utc_iso
from agent.config import Config
from agent.fsutil import atomic_write
from agent.ingest import process as proc
from agent.ingest.process import FileProcessor, ProcessResult
from agent.ingest.scanner import FolderScanner, Ready
from agent.ingest.storeport import IngestStore
from agent.ingest.watcher import Supervisor
from agent.metrics import FOLDERS_UNREACHABLE, INGEST_PAUSED, PENDING

log = logging.getLogger("agent.ingest")

SUPERVISE_EVERY = 2.0        # seconds between observer liveness checks
HINT_DEBOUNCE = 0.2          # a burst of change events causes one scan, not thousands
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
PROGRESS_LINE_EVERY = 10.0   # seconds between plain progress lines when stderr is not a terminal
STATE_FILE = "ingest.state.json"


@dataclasses.dataclass
class Progress:
    backlog_total: int = 0
    backlog_done: int = 0
    processed: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)


class _Queue:
    """Three FIFO lanes with de-duplication by (watch, relpath)."""

    def __init__(self) -> None:
        self.signalled: collections.deque[Ready] = collections.deque()
        self.fresh: collections.deque[Ready] = collections.deque()
        self.backlog: collections.deque[Ready] = collections.deque()
        self.keys: set[tuple[int, str]] = set()
        self._turn = 0
        self.cond = threading.Condition()

    def __len__(self) -> int:
        return len(self.keys)

    def put(self, item: Ready, lane: str) -> bool:
        key = (item.watch_index, item.relpath)
        with self.cond:
            if key in self.keys:
                if lane == "signalled":  # promote: a completion signal jumps the queue
                    for q in (self.fresh, self.backlog):
                        for old in list(q):
                            if (old.watch_index, old.relpath) == key:
                                q.remove(old)
                                self.signalled.append(item)
                                self.cond.notify()
                                return True
                return False
            self.keys.add(key)
            getattr(self, lane).append(item)
            self.cond.notify()
            return True

    def get(self, timeout: float) -> Ready | None:
        with self.cond:
            if not self.keys:
                self.cond.wait(timeout)
            if self.signalled:
                item = self.signalled.popleft()
            elif self.fresh and (not self.backlog or self._turn % 2 == 0):
                item = self.fresh.popleft()
                self._turn += 1
            elif self.backlog:
                item = self.backlog.popleft()
                self._turn += 1
            else:
                return None
            return item

    def done(self, item: Ready) -> None:
        with self.cond:
            self.keys.discard((item.watch_index, item.relpath))

    def pending_for(self, watch_index: int) -> int:
        with self.cond:
            return sum(1 for w, _ in self.keys if w == watch_index)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class IngestService:
    """Composes scanner, observers, queue and processor for every ``[[watch]]`` folder."""

    def __init__(self, config: Config, store: IngestStore, *, clock: Clock | None = None,
                 profiles: list[Any] | None = None, observe: bool = True,
                 progress_stream: Any = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.processor = FileProcessor(config, store, clock=self.clock, profiles=profiles)
        self.queue = _Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._hinted: set[int] = set()
        self._due: list[float] = [0.0] * len(config.watch)
        self._deferred: dict[tuple[int, str], tuple[float, float]] = {}  # key -> (retry_at, backoff)
        self._abandoned: dict[tuple[int, str], int] = {}
        self._first_scan_done = [False] * len(config.watch)
        self.progress = Progress()
        self.paused = False
        self.last_commit_at: str | None = None
        self.current: tuple[int, str] | None = None
        state = self._load_state()
        self.scanners = [
            FolderScanner(i, w, supported=self._supported_for(i), is_done=self._is_done,
                          sentinel_seen=bool(state.get("sentinel_seen", {}).get(str(i))),
                          on_sentinel_seen=self._sentinel_seen)
            for i, w in enumerate(config.watch)
        ]
        self.processor_profiles = profiles
        self.supervisor = Supervisor(config.watch, self.hint) if observe else None
        self._threads: list[threading.Thread] = []
        self._progress_stream = progress_stream if progress_stream is not None else sys.stderr
        self._progress_bar: Any = None
        self.on_result: Callable[[Ready, ProcessResult], None] | None = None

    # -- configuration helpers ----------------------------------------------------------------------
    def _supported_for(self, index: int) -> Callable[[str], bool]:
        from agent.formats import supported_extension

        profile = self.processor.profiles[index]
        return lambda name: supported_extension(name, profile)

    def _is_done(self, watch_index: int, relpath: str, size: int, mtime_ns: int) -> bool:
        watch = self.config.watch[watch_index]
        return self.store.known_fingerprint(watch_index, Path(watch.path), relpath, size, mtime_ns,
                                            move=watch.source_mode == "move")

    def _state_path(self) -> Path:
        return self.config.data_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _sentinel_seen(self, index: int) -> None:
        """``sentinel = auto``: remember across restarts that this folder uses sentinels."""
        state = self._load_state()
        state.setdefault("sentinel_seen", {})[str(index)] = True
        try:
            atomic_write(self._state_path(), json.dumps(state).encode())
        except OSError:
            log.warning("could not persist the sentinel state", exc_info=True)

    # -- hints from observers ----------------------------------------------------------------------
    def hint(self, watch_index: int, relpath: str, kind: str) -> None:
        if kind == "signal" and relpath:
            scanner = self.scanners[watch_index]
            name = relpath.rsplit("/", 1)[-1]
            from agent.ingest.names import is_temp_name, is_unsafe_name, sentinel_target

            target = sentinel_target(name)
            if target is not None and scanner.watch.sentinel != "off":
                self._request_scan(watch_index)  # the sentinel's file is found by the scan, at once
                return
            if is_temp_name(name) or not (scanner._supported(name) or is_unsafe_name(name)):
                self._request_scan(watch_index)
                return
            if scanner.needs_sentinel():
                self._request_scan(watch_index)
                return
            st = proc.reading.stat_candidate(Path(scanner.watch.path), relpath)
            if st is None:
                return
            if self._is_done(watch_index, relpath, *st):
                return
            self.queue.put(Ready(watch_index, relpath, st[0], st[1], None, True, is_unsafe_name(name)),
                           "signalled")
            return
        self._request_scan(watch_index, delay=HINT_DEBOUNCE)

    def _request_scan(self, watch_index: int, delay: float = 0.0) -> None:
        with self._lock:
            when = time.monotonic() + delay
            self._due[watch_index] = min(self._due[watch_index], when)
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start()
        for target, name in ((self._scan_loop, "ingest-scan"), (self._work_loop, "ingest-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the file in hand, then stop every thread and observer."""
        self._stop.set()
        self._wake.set()
        self.queue.wake()
        for thread in self._threads:
            thread.join(timeout)
        if self.supervisor is not None:
            self.supervisor.stop()
        self._close_progress()

    def stop_observer_for_test(self, index: int) -> None:
        """Kill one observer and keep the supervisor from reviving it (scan-fallback tests)."""
        if self.supervisor is not None:
            self.supervisor.observers[index].kill_for_test()
            self.supervisor = None

    # -- scanner thread ------------------------------------------------------------------------------
    def scan_now(self, index: int) -> None:
        """Scan one folder and queue what is ready (also used by tests and the rescan job)."""
        scanner = self.scanners[index]
        was_reachable = scanner.reachable
        result = scanner.scan()
        now = time.monotonic()
        interval = scanner.watch.scan_interval
        due = now + interval
        if result.next_due is not None:
            due = min(due, result.next_due)
        if not result.reachable:
            due = now + min(interval, 5.0)  # look for the share again soon
        with self._lock:
            self._due[index] = due
        if result.reachable and not was_reachable and self.supervisor is not None:
            self.supervisor.restart(index)  # the old watch followed the old directory inode
        lane = "fresh" if self._first_scan_done[index] else "backlog"
        for item in result.ready:
            key = (item.watch_index, item.relpath)
            retry = self._deferred.get(key)
            if retry is not None and retry[0] > now:
                continue
            if self.queue.put(item, lane) and lane == "backlog":
                self.progress.backlog_total += 1
        self._first_scan_done[index] = True
        FOLDERS_UNREACHABLE.set(sum(1 for s in self.scanners if not s.reachable))
        PENDING.set(self.pending_total())

    def rescan_all(self) -> None:
        """Force a full scan of every folder at the next opportunity (scheduler ``rescan`` job)."""
        for i in range(len(self.scanners)):
            self._request_scan(i)

    def _scan_loop(self) -> None:
        last_supervise = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            for index in range(len(self.scanners)):
                with self._lock:
                    due = self._due[index] <= now
                if due:
                    try:
                        self.scan_now(index)
                    except Exception:
                        log.error("scan failed; retrying", exc_info=True, extra={"watch": index})
                        with self._lock:
                            self._due[index] = now + 5.0
            if self.supervisor is not None and now - last_supervise >= SUPERVISE_EVERY:
                last_supervise = now
                try:
                    self.supervisor.check([s.reachable for s in self.scanners])
                except Exception:
                    log.error("observer supervision failed", exc_info=True)
            self._report_progress()
            with self._lock:
                next_due = min(self._due) if self._due else now + 1.0
            self._wake.wait(max(0.05, min(next_due - time.monotonic(), SUPERVISE_EVERY)))
            self._wake.clear()

    # -- worker thread -------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=0.5)
            if item is None:
                continue
            key = (item.watch_index, item.relpath)
            self.current = key
            try:
                result = self.processor.process(item)
            except Exception:
                log.error("processing failed; the file stays and is retried", exc_info=True)
                result = ProcessResult(proc.DEFERRED)
            finally:
                self.current = None
                self.queue.done(item)
            self._after(item, result)

    def _after(self, item: Ready, result: ProcessResult) -> None:
        key = (item.watch_index, item.relpath)
        scanner = self.scanners[item.watch_index]
        if result.outcome == proc.DEFERRED:
            _, backoff = self._deferred.get(key, (0.0, BACKOFF_START / 2))
            backoff = min(BACKOFF_MAX, backoff * 2)
            self._deferred[key] = (time.monotonic() + backoff, backoff)
            self.paused = True
            INGEST_PAUSED.set(1)
            self._request_scan(item.watch_index, delay=backoff)
        else:
            self._deferred.pop(key, None)
            if self.paused and not self._deferred:
                self.paused = False
                INGEST_PAUSED.set(0)
        if result.outcome == proc.ABANDONED:
            scanner.forget(item.relpath)  # must settle again from scratch
            self._request_scan(item.watch_index, delay=0.5)
        elif result.outcome in ("accepted", "duplicate", "superseded", "quarantined", proc.RECOVERED):
            scanner.forget(item.relpath)
            self.progress.processed += 1
            if result.outcome != "quarantined":
                self.last_commit_at = utc_iso(self.clock.now(), millis=False)
        if result.outcome not in (proc.DEFERRED, proc.ABANDONED) and \
                self.progress.backlog_done < self.progress.backlog_total:
            self.progress.backlog_done += 1
        if self.on_result is not None:
            try:
                self.on_result(item, result)
            except Exception:
                log.debug("result callback failed", exc_info=True)

    # -- status ------------------------------------------------------------------------------------------
    def pending_total(self) -> int:
        return sum(self.folder_pending(i) for i in range(len(self.scanners)))

    def folder_pending(self, index: int) -> int:
        scanner = self.scanners[index]
        # list(): the worker thread forgets files while status reads; copy the keys atomically.
        waiting = sum(1 for rel in list(scanner.files)
                      if not self.store.known_fingerprint_cached(index, rel))
        return max(waiting, self.queue.pending_for(index))

    def deferred_total(self) -> int:
        return len(self._deferred) + sum(len(s.files) for s in self.scanners if not s.reachable)

    def snapshot(self) -> dict[str, Any]:
        watch = []
        for i, scanner in enumerate(self.scanners):
            observer = "polling" if scanner.watch.polling else "native"
            alive = None
            if self.supervisor is not None:
                alive = self.supervisor.observers[i].alive()
            watch.append({"path": str(scanner.watch.path), "reachable": scanner.reachable,
                          "pending": self.folder_pending(i), "observer": observer,
                          "observer_alive": alive,
                          "sentinel_mode": scanner.watch.sentinel,
                          "sentinel_seen": scanner.sentinel_seen})
        p = self.progress
        elapsed = max(1e-6, time.monotonic() - p.started_at)
        return {
            "watch": watch,
            "files_pending": self.pending_total(),
            "files_deferred": self.deferred_total(),
            "paused": self.paused,
            "last_commit_at": self.last_commit_at,
            "backfill": {"total": p.backlog_total, "done": p.backlog_done,
                         "active": p.backlog_done < p.backlog_total,
                         "files_per_s": round(p.processed / elapsed, 2)},
        }

    # -- progress display ------------------------------------------------------------------------------
    _last_line = 0.0

    def _report_progress(self) -> None:
        p = self.progress
        if p.backlog_total < 50:  # a handful of files is not a backfill worth a bar
            return
        active = p.backlog_done < p.backlog_total
        stream = self._progress_stream
        if stream is not None and getattr(stream, "isatty", lambda: False)():
            self._rich_progress(active)
            return
        now = time.monotonic()
        if (active and now - self._last_line >= PROGRESS_LINE_EVERY) or (not active and self._last_line >= 0
                                                                          and p.backlog_total):
            self._last_line = now if active else -1.0
            log.info("backfill progress", extra={"done": p.backlog_done, "total": p.backlog_total})

    def _rich_progress(self, active: bool) -> None:
        try:
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        if self._progress_bar is None and active:
            bar = RichProgress(transient=False)
            bar.start()
            self._progress_bar = (bar, bar.add_task("backfill", total=self.progress.backlog_total))
        if self._progress_bar is not None:
            bar, task = self._progress_bar
            bar.update(task, completed=self.progress.backlog_done, total=self.progress.backlog_total)
            if not active:
                self._close_progress()

    def _close_progress(self) -> None:
        if self._progress_bar is not None:
            try:
                self._progress_bar[0].stop()
            except Exception:
                pass
            self._progress_bar = None
