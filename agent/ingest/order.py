"""The processing order of ready files: the order in which the EMR wrote them.

Versions of one document must reach the store in the order the EMR exported them: a correction
(v2) committed before its original (v1) makes the original a "late, older record" — R-010,
quarantined (documents.md §9.2 case 4). That is right for a record that really is late, but
wrong when only *our* order was arbitrary (a directory listing is in hash order, not write
order). So every ready file is taken **oldest modification time first, ties broken by relative
path (file name), then watch-folder index** — for the backlog found at start, for every scan,
and for files signalled complete by an event.

``ReadyQueue`` is a priority queue with that order and de-duplication by (watch, relpath): a file
is queued at most once, and stays "taken" (still counted, never queued twice) from ``get`` until
``done``/``release``. A completion signal for a file queued earlier by a scan replaces its entry
(the signalled read needs no stat comparison); the position is the same, since it is the same
file. A scan that listed a file before it was handled must not queue it again: ``put_many``
takes the time the scan started and skips files ``done`` since then.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable

from agent.ingest.scanner import Ready

OrderKey = tuple[int, str, int]
FileKey = tuple[int, str]


def order_key(item: Ready) -> OrderKey:
    """(mtime_ns, relpath, watch_index): oldest first, then by name."""
    return (item.mtime_ns, item.relpath, item.watch_index)


def file_key(item: Ready) -> FileKey:
    return (item.watch_index, item.relpath)


class ReadyQueue:
    """Ready files in write order, each at most once; thread-safe."""

    def __init__(self) -> None:
        self._heap: list[tuple[OrderKey, int, Ready]] = []
        self._queued: dict[FileKey, tuple[OrderKey, int, Ready]] = {}
        self._taken: set[FileKey] = set()
        self._finished: dict[FileKey, float] = {}  # handled at (monotonic), until the next scan
        self._seq = itertools.count()
        self.cond = threading.Condition()

    def __len__(self) -> int:
        with self.cond:
            return len(self._queued) + len(self._taken)

    def waiting(self) -> int:
        """Files queued and not yet taken."""
        with self.cond:
            return len(self._queued)

    def _put_locked(self, item: Ready) -> bool:
        key = file_key(item)
        if key in self._taken:
            return False  # in hand: the worker decides its fate; a later scan sees what is left
        old = self._queued.get(key)
        if old is not None:
            same_stat = (old[2].size, old[2].mtime_ns) == (item.size, item.mtime_ns)
            if same_stat and (old[2].signalled or not item.signalled):
                return False
            # Changed since it was queued, or now signalled complete: the newer knowledge wins.
        entry = (order_key(item), next(self._seq), item)
        self._queued[key] = entry
        heapq.heappush(self._heap, entry)
        return old is None

    def put(self, item: Ready) -> bool:
        """Queue one file; False if it was already queued or in hand."""
        with self.cond:
            added = self._put_locked(item)
            self.cond.notify()
            return added

    def put_many(self, items: Iterable[Ready], *, listed_at: float | None = None) -> int:
        """Queue a scan's ready files at once, so the worker never sees a partial, unordered batch.

        ``listed_at``: when the scan started; files handled since then are what the scan saw
        before they were handled (gone now), not new files.
        """
        with self.cond:
            added = 0
            for item in items:
                if listed_at is not None and self._finished.get(file_key(item), -1.0) >= listed_at:
                    continue
                added += self._put_locked(item)
            self.cond.notify_all()
            return added

    def forget_finished(self, watch_index: int, before: float) -> None:
        """Scans started after ``before`` see the folder as the handling left it."""
        with self.cond:
            for key in [k for k, t in self._finished.items() if k[0] == watch_index and t < before]:
                del self._finished[key]

    def _pop_locked(self) -> Ready | None:
        while self._heap:
            entry = heapq.heappop(self._heap)
            key = file_key(entry[2])
            if self._queued.get(key) is entry:  # else replaced: a stale heap entry
                del self._queued[key]
                self._taken.add(key)
                return entry[2]
        return None

    def get(self, timeout: float) -> Ready | None:
        """The oldest queued file (now in hand), waiting up to ``timeout`` seconds for one."""
        with self.cond:
            if not self._queued and timeout > 0:
                self.cond.wait(timeout)
            return self._pop_locked()

    def peek_key(self) -> OrderKey | None:
        with self.cond:
            while self._heap:
                entry = self._heap[0]
                if self._queued.get(file_key(entry[2])) is entry:
                    return entry[0]
                heapq.heappop(self._heap)
            return None

    def done(self, item: Ready, *, handled_at: float | None = None) -> None:
        """The file in hand is finished; ``handled_at`` when it was committed, quarantined or found
        gone (not for a file that is left to be read again)."""
        with self.cond:
            key = file_key(item)
            self._taken.discard(key)
            if handled_at is not None:
                if len(self._finished) > 100_000:  # bounded even if no scan ever prunes
                    self._finished.clear()
                self._finished[key] = handled_at

    def release(self, items: Iterable[Ready]) -> None:
        """Files in hand go back to the queue unprocessed (pause, stop): same place in the order."""
        with self.cond:
            for item in items:
                self._taken.discard(file_key(item))
                self._put_locked(item)
            self.cond.notify_all()

    def contains(self, key: FileKey) -> bool:
        """Queued or in hand."""
        with self.cond:
            return key in self._queued or key in self._taken

    def pending_for(self, watch_index: int) -> int:
        with self.cond:
            return sum(1 for w, _ in self._queued if w == watch_index) + sum(
                1 for w, _ in self._taken if w == watch_index
            )

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
