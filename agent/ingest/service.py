"""The running ingest: scanner loop + one committing worker thread + supervised observers.

- The **scanner thread** scans every folder when due (``scan_interval``; sooner when an event hint
  arrives or a settling file could become ready), supervises the observers, reloads a folder's
  vendor profile when its file changed, and feeds ready files to the queue.
- **Order** (``agent.ingest.order``): files are committed oldest mtime first, ties by name — the
  order the EMR wrote them — for the backlog found at start and for every scan. A file signalled
  complete by an event (renamed in, closed) skips ``settle`` and the wait for the next scan, and
  is queued at once when no older file of its folder is still settling; otherwise the scan
  releases it right after the older ones.
- The **worker thread** decides one file at a time, in that order, and queues its commit on the
  store's writer thread; it decides the next file while the writer commits (the writer groups
  queued files into one COMMIT, each in its own savepoint). A file is acknowledged (moved away /
  fingerprinted) only after its commit is durable, and results are reported in file order. At
  most ``MAX_IN_FLIGHT`` files are queued. During a backfill the next few files are read and
  validated ahead in worker processes (``agent.ingest.prefetch``); memory stays bounded by the
  look-ahead and the in-flight limit.
- **Deferred** files: a folder that is unreachable or a file that failed unexpectedly is retried
  with backoff; a full disk or an unavailable store pauses the worker as a whole (the files in
  hand go back to the queue, in order) and retries with backoff. Status shows them as pending.

``stop()`` lets the worker finish the files being committed, then returns (SIGTERM → clean exit); files
read ahead but not committed are simply read again next time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock, utc_iso
from agent.config import Config
from agent.fsutil import atomic_write
from agent.ingest import process as proc
from agent.ingest.names import is_temp_name, is_unsafe_name, sentinel_target
from agent.ingest.order import ReadyQueue
from agent.ingest.prefetch import Prefetcher
from agent.ingest.process import FileProcessor, Prepared, ProcessResult
from agent.ingest.scanner import FolderScanner, Ready
from agent.ingest.storeport import IngestStore
from agent.ingest.watcher import Supervisor
from agent.metrics import FOLDERS_UNREACHABLE, INGEST_PAUSED, PENDING

log = logging.getLogger("agent.ingest")

SUPERVISE_EVERY = 2.0  # seconds between observer liveness checks
PROFILE_CHECK_EVERY = 1.0  # seconds between checks of the profile files for changes
HINT_DEBOUNCE = 0.2  # a burst of change events causes one scan, not thousands
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
MAX_IN_FLIGHT = 16  # files whose commit is queued on the store's writer, not yet acknowledged …
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024  # … and at most this much of their content
SYNC_EVERY_FILES = 64  # folder fsync after this many acknowledged files in a burst …
SYNC_EVERY_S = 1.0  # … or this long after the first unsynced unlink
PROGRESS_LINE_EVERY = 10.0  # seconds between plain progress lines when stderr is not a terminal
STATE_FILE = "ingest.state.json"


@dataclasses.dataclass
class Progress:
    backlog_total: int = 0
    backlog_done: int = 0
    processed: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)


# Outcomes after which the file is no longer in the folder as it was (or is known by the ledger).
_HANDLED = ("accepted", "duplicate", "superseded", "quarantined", proc.RECOVERED, proc.GONE)


@dataclasses.dataclass
class _InHand:
    """A file taken from the queue: prepared by the pool (``future``) or inline at its turn."""

    item: Ready
    future: concurrent.futures.Future[Prepared] | None = None


class IngestService:
    """Composes scanner, observers, queue, look-ahead and processor for every ``[[watch]]`` folder."""

    def __init__(
        self,
        config: Config,
        store: IngestStore,
        *,
        clock: Clock | None = None,
        profiles: list[Any] | None = None,
        observe: bool = True,
        progress_stream: Any = None,
        workers: int = 0,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.processor = FileProcessor(config, store, clock=self.clock, profiles=profiles)
        self.prefetch = Prefetcher(workers)
        self.queue = ReadyQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._due: list[float] = [0.0] * len(config.watch)
        self._deferred: dict[tuple[int, str], tuple[float, float]] = {}  # key -> (retry_at, backoff)
        self._backlog: list[set[str]] = [set() for _ in config.watch]  # files present at the first scan
        self._pause_until = 0.0
        self._pause_backoff = BACKOFF_START / 2
        self._paused_files = 0
        self._dirty_since: float | None = None
        self._unsynced = 0
        self.progress = Progress()
        self.last_commit_at: str | None = None
        self.current: tuple[int, str] | None = None
        state = self._load_state()
        self.scanners = [
            FolderScanner(
                i,
                w,
                supported=self._supported_for(i),
                is_done=self._is_done,
                sentinel_seen=bool(state.get("sentinel_seen", {}).get(str(i))),
                on_sentinel_seen=self._sentinel_seen,
            )
            for i, w in enumerate(config.watch)
        ]
        self._profile_stats = [self._profile_stat(i) for i in range(len(config.watch))]
        self._profile_lock = threading.Lock()
        self._profile_checked = time.monotonic()
        self.supervisor = Supervisor(config.watch, self.hint) if observe else None
        self._threads: list[threading.Thread] = []
        self._progress_stream = progress_stream if progress_stream is not None else sys.stderr
        self._progress_bar: Any = None
        self.on_result: Callable[[Ready, ProcessResult], None] | None = None

    # -- configuration helpers ----------------------------------------------------------------------
    def _supported_for(self, index: int) -> Callable[[str], bool]:
        from agent.formats import supported_extension

        # Looked up at each call: a reloaded profile may read other extensions.
        return lambda name: supported_extension(name, self.processor.profiles[index])

    def _is_done(self, watch_index: int, relpath: str, size: int, mtime_ns: int) -> bool:
        watch = self.config.watch[watch_index]
        return self.store.known_fingerprint(
            watch_index, Path(watch.path), relpath, size, mtime_ns, move=watch.source_mode == "move"
        )

    def _state_path(self) -> Path:
        return self.config.data_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_path().read_text(encoding="utf-8"))  # type: ignore[no-any-return]
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

    # -- vendor profiles: a corrected profile file is used from the next file on ---------------------
    def _profile_stat(self, index: int) -> tuple[int, int, int] | None:
        profile = self.processor.profiles[index]
        path = getattr(profile, "path", None)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh_profiles(self) -> None:
        for index in range(len(self.config.watch)):
            self.refresh_profile(index)

    def refresh_profile(self, index: int) -> None:
        """Reload a folder's profile when its file changed; a broken edit keeps the last good one.

        Checked before every file is read (one ``stat``) and every second by the scanner, so the
        first file after a fix is read with it. An editor may save in two steps: a profile that
        does not load is reported and tried again at its next change, while files keep being read
        with the profile that worked.
        """
        from agent.formats.profiles import ProfileError, parse_profile_file

        path = getattr(self.processor.profiles[index], "path", None)
        if path is None:
            return
        with self._profile_lock:
            now = self._profile_stat(index)
            if now is None or now == self._profile_stats[index]:
                return
            self._profile_stats[index] = now
            try:
                fresh = parse_profile_file(Path(path))
            except ProfileError as exc:
                log.error(
                    "changed profile does not load; still using the previous one",
                    extra={"watch": index, "error": str(exc)},
                )
                return
            self.processor.profiles[index] = fresh
            log.info("profile reloaded", extra={"watch": index, "profile": fresh.name})

    # -- hints from observers ----------------------------------------------------------------------
    def hint(self, watch_index: int, relpath: str, kind: str) -> None:
        if kind == "signal" and relpath:
            scanner = self.scanners[watch_index]
            name = relpath.rsplit("/", 1)[-1]
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
            scanner.mark_signalled(relpath, *st)
            oldest = scanner.oldest_unobserved
            if scanner.scanned_once and (oldest is None or (st[1], relpath) <= oldest):
                # Complete: read at once, no settle, no wait for a scan — also beside an older
                # file still being written (exports.md §1 "No needless waiting").
                self.queue.put(Ready(watch_index, relpath, st[0], st[1], None, True, is_unsafe_name(name)))
            else:
                # The backlog is not listed yet, or an older backlog file is still settling: the
                # scan, which now treats this file as complete, queues it in write order.
                self._request_scan(watch_index)
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
        """Finish the file in hand, then stop every thread, observer and look-ahead worker."""
        self._stop.set()
        self._wake.set()
        self.queue.wake()
        for thread in self._threads:
            thread.join(timeout)
        if self.supervisor is not None:
            self.supervisor.stop()
        self.prefetch.shutdown()
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
        first = not scanner.scanned_once
        started = time.monotonic()
        with self._lock:
            # A scan requested while this one runs (a completion signal that found an older file
            # still settling) must not be lost when this scan sets its own next time.
            self._due[index] = math.inf
        scanner.observed = (
            self.supervisor is not None
            and not scanner.watch.polling
            and self.supervisor.observers[index].alive()
        )
        result = scanner.scan()
        now = time.monotonic()
        interval = scanner.watch.scan_interval
        due = now + interval
        if result.next_due is not None:
            due = min(due, result.next_due)
        if not result.reachable:
            due = now + min(interval, 5.0)  # look for the share again soon
        with self._lock:
            self._due[index] = min(self._due[index], due)
        if result.reachable and not was_reachable and self.supervisor is not None:
            self.supervisor.restart(index)  # the old watch followed the old directory inode
        if first and result.reachable:
            backlog = {rel for rel, state in list(scanner.files.items()) if not state.done}
            with self._lock:
                self._backlog[index] = backlog
                self.progress.backlog_total += len(backlog)
        ready = []
        for item in result.ready:
            retry = self._deferred.get((item.watch_index, item.relpath))
            if retry is not None and retry[0] > now:
                continue
            ready.append(item)
        self.queue.put_many(ready, listed_at=started)
        # A file handled before this scan started is gone or seen by `is_done` from now on.
        self.queue.forget_finished(index, started)
        if result.reachable:
            self._count_vanished_backlog(index)
        FOLDERS_UNREACHABLE.set(sum(1 for s in self.scanners if not s.reachable))
        PENDING.set(self.pending_total())

    def _count_vanished_backlog(self, index: int) -> None:
        """Backlog files that left the folder without us (removed by someone) count as done."""
        files = self.scanners[index].files
        for rel in list(self._backlog[index]):
            if rel not in files and not self.queue.contains((index, rel)):
                self._backlog_done(index, rel)

    def _backlog_done(self, index: int, rel: str) -> None:
        with self._lock:
            if rel in self._backlog[index]:
                self._backlog[index].discard(rel)
                self.progress.backlog_done += 1

    def rescan_all(self) -> None:
        """Force a full scan of every folder at the next opportunity (scheduler ``rescan`` job)."""
        for i in range(len(self.scanners)):
            self._request_scan(i)

    def _scan_loop(self) -> None:
        last_supervise = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._profile_checked >= PROFILE_CHECK_EVERY:
                self._profile_checked = now
                try:
                    self.refresh_profiles()
                except Exception:
                    log.error("profile check failed", exc_info=True)
            for index in range(len(self.scanners)):
                with self._lock:
                    due = self._due[index] <= now
                if due:
                    try:
                        self.scan_now(index)
                    except Exception:
                        log.error("scan failed; retrying", exc_info=True, extra={"watch": index})
                        with self._lock:
                            self._due[index] = min(self._due[index], now + 5.0)
            if self.supervisor is not None and now - last_supervise >= SUPERVISE_EVERY:
                last_supervise = now
                try:
                    self.supervisor.check([s.reachable for s in self.scanners])
                except Exception:
                    log.error("observer supervision failed", exc_info=True)
            self._report_progress()
            with self._lock:
                next_due = min(self._due) if self._due else now + 1.0
            self._wake.wait(max(0.05, min(next_due - time.monotonic(), SUPERVISE_EVERY, PROFILE_CHECK_EVERY)))
            self._wake.clear()

    # -- worker thread -------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        in_hand: collections.deque[_InHand] = collections.deque()
        # Files whose commit is queued on the store's writer, oldest first: the next file is
        # decided while the writer commits (and fsyncs) the previous ones, often in one group
        # commit; each is acknowledged only once its commit is durable, strictly in order.
        flying: collections.deque[tuple[_InHand, proc.InFlight]] = collections.deque()
        try:
            while not self._stop.is_set():
                if self._paused_wait():
                    continue
                if flying and not in_hand and not self.queue.waiting():
                    if not self._land(flying, in_hand, wait=len(flying)):  # nothing to overlap
                        continue
                self._take(in_hand)
                full = len(flying) >= MAX_IN_FLIGHT or (
                    flying and sum(h.item.size for h, _ in flying) >= MAX_IN_FLIGHT_BYTES
                )
                if flying and not self._land(flying, in_hand, wait=1 if full else 0):
                    continue
                if not in_hand:
                    self._idle()
                    continue
                head = in_hand.popleft()
                result = self._begin(head)
                if isinstance(result, proc.InFlight):
                    flying.append((head, result))
                    continue
                # Done here and now (quarantine, duplicate …): results are reported in file order.
                if flying and not self._land(flying, in_hand, wait=len(flying)):
                    if not self._complete(head, result):  # paused anyway: back in the queue
                        self.queue.release([head.item])
                    continue
                if not self._complete(head, result):
                    self._pause([head, *in_hand])
                    in_hand.clear()
        finally:
            # Stopping: what is being committed is finished and acknowledged; what was read ahead
            # is not committed, it stays in the folder, untouched.
            stalled: list[_InHand] = []
            while flying:
                head, flight = flying.popleft()
                result = self._finish_flight(flight)
                if not self._complete(head, result):
                    stalled.append(head)
            for left in in_hand:
                if left.future is not None:
                    left.future.cancel()
            self.queue.release([left.item for left in [*stalled, *in_hand]])
            self.processor.sync_dirs()

    def _land(
        self,
        flying: collections.deque[tuple[_InHand, proc.InFlight]],
        in_hand: collections.deque[_InHand],
        *,
        wait: int,
    ) -> bool:
        """Finish the in-flight commits that are durable (waiting for the oldest ``wait`` of them),
        in order. Disk full / store unavailable: the rest are finished too (each either committed
        or not), then the worker pauses with every file not committed back in the queue; returns
        False then."""
        stalled: list[_InHand] = []
        while flying:
            head, flight = flying[0]
            if wait <= 0 and not stalled and not flight.done():
                break
            flying.popleft()
            wait -= 1
            result = self._finish_flight(flight)
            if not self._complete(head, result):
                stalled.append(head)
        if not stalled:
            return True
        self._pause([*stalled, *in_hand])
        in_hand.clear()
        return False

    def _complete(self, head: _InHand, result: ProcessResult) -> bool:
        """Report one file's result; False (nothing reported) when it must wait for disk/store."""
        if result.outcome == proc.DEFERRED and result.cause in proc.GLOBAL_CAUSES:
            return False
        handled = result.outcome in _HANDLED
        self.queue.done(head.item, handled_at=time.monotonic() if handled else None)
        self._after(head.item, result)
        self._sync_dirs_if_due()
        return True

    def _take(self, in_hand: collections.deque[_InHand]) -> None:
        """Top up the files in hand: one at a time normally, a bounded look-ahead in a backfill."""
        use_pool = self.prefetch.wanted(self.queue.waiting() + len(in_hand))  # nothing to overlap: inline
        if not in_hand:
            item = self.queue.get(timeout=0.5)
            if item is None:
                return
            in_hand.append(self._start(item, use_pool))
        if not use_pool:
            return
        in_flight = sum(h.item.size for h in in_hand)
        while len(in_hand) < self.prefetch.lookahead and in_flight < self.prefetch.max_bytes:
            item = self.queue.get(timeout=0)
            if item is None:
                break
            in_hand.append(self._start(item, use_pool))
            in_flight += item.size

    def _start(self, item: Ready, use_pool: bool) -> _InHand:
        if not use_pool:
            return _InHand(item)
        self.refresh_profile(item.watch_index)
        args, kwargs = self.processor.prepare_args(item)
        return _InHand(item, self.prefetch.submit(args, kwargs))

    def _wait_prepared(self, future: concurrent.futures.Future[Prepared]) -> Prepared | None:
        """The look-ahead result, without ever hanging: a dead worker or a stop request ends the wait
        and the file is prepared in-process instead (the commit order is unchanged)."""
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not self.prefetch.workers_alive(future) or self._stop.is_set():
                    self.prefetch.broken()
                    return None

    def _begin(self, head: _InHand) -> ProcessResult | proc.InFlight:
        """Wait for (or do) the preparation, then decide: queue the commit, or finish here."""
        self.current = (head.item.watch_index, head.item.relpath)
        try:
            prepared: Prepared | None = None
            if head.future is not None:
                try:
                    prepared = self._wait_prepared(head.future)
                except (BrokenProcessPool, concurrent.futures.CancelledError):
                    self.prefetch.broken()
                except Exception:  # e.g. a result that could not cross the process boundary
                    log.warning("look-ahead failed for a file; preparing it in-process", exc_info=True)
            if prepared is None:
                self.refresh_profile(head.item.watch_index)
                prepared = self.processor.prepare(head.item)
            return self.processor.begin(prepared)
        except Exception:
            log.error("processing failed; the file stays and is retried", exc_info=True)
            return ProcessResult(proc.DEFERRED, cause=proc.CAUSE_ERROR)
        finally:
            self.current = None

    def _finish_flight(self, flight: proc.InFlight) -> ProcessResult:
        try:
            return self.processor.finish(flight)
        except Exception:
            log.error("processing failed; the file stays and is retried", exc_info=True)
            return ProcessResult(proc.DEFERRED, cause=proc.CAUSE_ERROR)

    def _pause(self, in_hand: list[_InHand]) -> None:
        """Disk full / store unavailable: every file would fail alike. Put the files in hand back
        (same place in the order) and wait with backoff before trying the first one again."""
        for left in in_hand:
            if left.future is not None:
                left.future.cancel()
        self.queue.release([left.item for left in in_hand])
        self._pause_backoff = min(BACKOFF_MAX, self._pause_backoff * 2)
        self._pause_until = time.monotonic() + self._pause_backoff
        self._paused_files = max(1, self.queue.waiting())
        INGEST_PAUSED.set(1)
        self.processor.sync_dirs()

    def _paused_wait(self) -> bool:
        remaining = self._pause_until - time.monotonic()
        if remaining <= 0:
            return False
        self._stop.wait(min(remaining, 0.5))
        return True

    def _idle(self) -> None:
        self.processor.sync_dirs()
        self._unsynced = 0
        self._dirty_since = None
        self.prefetch.idle()

    def _sync_dirs_if_due(self) -> None:
        if not self.processor.dirs_to_sync:
            return
        now = time.monotonic()
        self._unsynced += 1
        if self._dirty_since is None:
            self._dirty_since = now
        if (
            self._unsynced >= SYNC_EVERY_FILES
            or now - self._dirty_since >= SYNC_EVERY_S
            or not self.queue.waiting()
        ):
            self.processor.sync_dirs()
            self._unsynced = 0
            self._dirty_since = None

    def _after(self, item: Ready, result: ProcessResult) -> None:
        key = (item.watch_index, item.relpath)
        scanner = self.scanners[item.watch_index]
        if result.outcome == proc.DEFERRED:
            _, backoff = self._deferred.get(key, (0.0, BACKOFF_START / 2))
            backoff = min(BACKOFF_MAX, backoff * 2)
            self._deferred[key] = (time.monotonic() + backoff, backoff)
            self._request_scan(item.watch_index, delay=backoff)
        else:
            self._deferred.pop(key, None)
        if self._paused_files:  # a file went through: disk / store are back
            self._paused_files = 0
            self._pause_backoff = BACKOFF_START / 2
        INGEST_PAUSED.set(1 if self.paused else 0)
        if result.outcome == proc.ABANDONED:
            scanner.restart_settle(item.relpath)  # must settle again
            self._request_scan(item.watch_index, delay=0.5)
        elif result.outcome in _HANDLED:
            scanner.forget(item.relpath)
            if result.outcome != proc.GONE:
                self.progress.processed += 1
            if result.outcome not in ("quarantined", proc.GONE):
                self.last_commit_at = utc_iso(self.clock.now(), millis=False)
        if result.outcome not in (proc.DEFERRED, proc.ABANDONED):
            self._backlog_done(item.watch_index, item.relpath)
        if self.on_result is not None:
            try:
                self.on_result(item, result)
            except Exception:
                log.debug("result callback failed", exc_info=True)

    # -- status ------------------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """Some file is deferred (folder away, unexpected error) or the worker waits (disk, store)."""
        return bool(self._deferred) or bool(self._paused_files)

    def pending_total(self) -> int:
        return sum(self.folder_pending(i) for i in range(len(self.scanners)))

    def folder_pending(self, index: int) -> int:
        scanner = self.scanners[index]
        # list(): the worker thread forgets files while status reads; copy the values atomically.
        waiting = sum(1 for state in list(scanner.files.values()) if not state.done)
        return max(waiting, self.queue.pending_for(index))

    def deferred_total(self) -> int:
        return (
            len(self._deferred)
            + self._paused_files
            + sum(len(s.files) for s in self.scanners if not s.reachable)
        )

    def snapshot(self) -> dict[str, Any]:
        watch = []
        for i, scanner in enumerate(self.scanners):
            observer = "polling" if scanner.watch.polling else "native"
            alive = None
            if self.supervisor is not None:
                alive = self.supervisor.observers[i].alive()
            watch.append(
                {
                    "path": scanner.watch.configured_path or str(scanner.watch.path),
                    "reachable": scanner.reachable,
                    "pending": self.folder_pending(i),
                    "observer": observer,
                    "observer_alive": alive,
                    "sentinel_mode": scanner.watch.sentinel,
                    "sentinel_seen": scanner.sentinel_seen,
                }
            )
        p = self.progress
        elapsed = max(1e-6, time.monotonic() - p.started_at)
        return {
            "watch": watch,
            "files_pending": self.pending_total(),
            "files_deferred": self.deferred_total(),
            "paused": self.paused,
            "last_commit_at": self.last_commit_at,
            "backfill": {
                "total": p.backlog_total,
                "done": p.backlog_done,
                "active": p.backlog_done < p.backlog_total,
                "files_per_s": round(p.processed / elapsed, 2),
            },
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
        if (active and now - self._last_line >= PROGRESS_LINE_EVERY) or (
            not active and self._last_line >= 0 and p.backlog_total
        ):
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
