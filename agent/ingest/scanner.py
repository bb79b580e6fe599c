"""The authoritative periodic scan of one watch folder and the hand-over rules (exports.md §1).

A scan lists the folder (``os.scandir``, one entry at a time — a folder of 100,000 files costs
names and stats, never contents) and decides for each file whether it is *ready*:

- temporary names are skipped; sentinels (``.done``/``.ok``) mark their file ready at once;
- with ``sentinel = required`` (or ``auto`` after the folder showed one sentinel) a file without
  its sentinel waits and is shown as pending;
- otherwise a plain write is ready when its size, mtime and ctime were identical in two
  consecutive scans and nothing changed for ``settle`` seconds. On POSIX ``ctime`` moves on every
  write and cannot be set by a writer, so "unchanged since" is measured from it as well as from
  our own observations;
- a file signalled complete by an event (``mark_signalled``: renamed in, closed after writing)
  is ready without ``settle``, like a file with its sentinel;
- symlinks pointing outside the folder are ignored (never opened); unknown extensions are
  logged once and left in place.

Ready files are returned in write order (``agent.ingest.order``: oldest mtime first, then name),
and a plain write found settled is **held** while an older file of the folder is still settling:
the EMR wrote the older one first, so it is committed first (a correction should not overtake its
original, documents.md §9.2). A file signalled complete (renamed in, closed after writing, or
with its sentinel) is held only behind an older file first seen without a live observer — the
backlog found at start, which may be complete but renamed in unseen. Beside a file the observer
saw appear and that is still being written, it is read at once (exports.md §1, "No needless
waiting"). A hold lasts at most ``settle`` + two scan intervals from the moment the older file
was first seen, so a file that never settles (locked for ever, touched again and
again) cannot block the folder. Files waiting for a sentinel never hold others (the sentinel may never come).

An unreachable folder (missing, not a directory, permission denied, or a share that was a mount
point and no longer is) is *unreachable*, never empty: candidates already known are kept so that
nothing is forgotten while a share is away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import WatchConfig
from agent.ingest.names import (
    extension_of,
    is_temp_name,
    is_unsafe_name,
    safe_extension,
    sentinel_target,
)

log = logging.getLogger("agent.ingest.scan")

# Minimum gap between two scans of one folder when candidates are settling (keeps a busy folder
# from being listed in a tight loop while still confirming a settled file quickly).
MIN_CONFIRM_GAP = 0.3


@dataclasses.dataclass
class FileState:
    """What the scanner knows about one name in a folder."""

    size: int
    mtime_ns: int
    ctime_ns: int
    last_change: float  # monotonic time the stat last changed (or first seen)
    unchanged_scans: int = 0  # consecutive scans that saw the same stat after the first
    first_seen: float = 0.0  # monotonic time the name was first seen (bounds how long it holds others)
    done: bool = False  # handled before and unchanged since (keep mode, R-001 left in place)
    sentinel: str | None = None
    unsafe: bool = False
    # First seen by a scan that no event could have preceded: the backlog found at start, or a
    # file that appeared while the folder had no live native observer. Such a file may well be
    # complete (renamed in unseen), so even a signalled file written after it waits for it.
    unobserved: bool = False


@dataclasses.dataclass(frozen=True)
class Ready:
    """A file that may be read now."""

    watch_index: int
    relpath: str
    size: int
    mtime_ns: int
    sentinel: str | None
    signalled: bool
    unsafe: bool = False


@dataclasses.dataclass
class ScanResult:
    reachable: bool
    ready: list[Ready]
    pending: int  # settling, held behind an older settling file, or waiting for a sentinel
    settling: bool  # at least one file may become ready by time alone
    next_due: float | None  # monotonic time a confirmation scan would be useful


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns if os.name != "nt" else 0)


class FolderScanner:
    """Scan state of one watch folder; call ``scan()`` from a single thread."""

    def __init__(
        self,
        watch_index: int,
        watch: WatchConfig,
        *,
        supported: Callable[[str], bool],
        is_done: Callable[[int, str, int, int], bool],
        sentinel_seen: bool = False,
        on_sentinel_seen: Callable[[int], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.index = watch_index
        self.watch = watch
        self.root = Path(watch.path)
        self._supported = supported
        self._is_done = is_done
        self.sentinel_seen = sentinel_seen
        self._on_sentinel_seen = on_sentinel_seen
        self._mono = monotonic
        self._wall = wall
        self.files: dict[str, FileState] = {}
        self.reachable = True
        self.last_scan: float | None = None
        self._was_mount: bool | None = None
        self._logged_names: set[str] = set()  # names already logged once (unknown ext, symlink)
        self._real_root: str | None = None
        # Completion signals from the observer thread: relpath -> (size, mtime_ns) when signalled.
        self._signals: dict[str, tuple[int, int]] = {}
        self._signals_lock = threading.Lock()
        self.scanned_once = False
        # (mtime_ns, relpath) of the oldest file still settling at the last scan, None if none:
        # a plain write found settled after it waits for it (a signalled one: ``oldest_unobserved``).
        self.oldest_unready: tuple[int, str] | None = None
        # The same among files first seen without a live observer (``FileState.unobserved``):
        # a signalled file newer than it waits for it too (read from the observer thread).
        self.oldest_unobserved: tuple[int, str] | None = None
        # Set by the ingest service before each scan: a native observer of this folder is alive,
        # so a file renamed in or closed after writing from now on sends its completion event.
        self.observed = False
        # Files handled (``forget``) -> when: a scan whose listing is older than that skips them.
        # Without it a file committed while a scan ran came back as a new, settling file, held
        # the backlog behind it and — being "observed" — let signalled corrections overtake its
        # originals (CI flake of sessions 4-5).
        self._forgotten: dict[str, float] = {}
        # Sentinels whose file is gone (read before the sentinel came): relpath -> first seen (monotonic).
        self._orphans: dict[str, float] = {}

    def _remove_orphan_sentinels(self, listing: dict[str, os.stat_result], sentinels: dict[str, str]) -> None:
        """exports.md §1: the sentinel is removed with its file. A sentinel that arrives after its
        file was already read and acknowledged (a folder that had not shown a sentinel before
        reads closed files at once) is removed once its file has stayed absent for
        ``settle`` + one scan interval — long enough for an EMR that writes the sentinel first.
        Keep mode leaves files and sentinels in place."""
        if self.watch.source_mode != "move":
            return
        now = self._mono()
        orphans = {sent: target for target, sent in sentinels.items() if target not in listing}
        for sent in list(self._orphans):
            if sent not in orphans:
                del self._orphans[sent]
        grace = self.watch.settle + self.watch.scan_interval
        for sent in orphans:
            first = self._orphans.setdefault(sent, now)
            if now - first >= grace:
                with contextlib.suppress(OSError):
                    os.unlink(self.root / sent)  # an empty marker: nothing to lose
                self._orphans.pop(sent, None)

    # -- reachability -------------------------------------------------------------------------
    def _check_root(self) -> bool:
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or not os.access(self.root, os.R_OK | os.X_OK):
            return False
        mount = os.path.ismount(self.root)
        if self._was_mount is None:
            self._was_mount = mount
        elif self._was_mount and not mount:
            return False  # the share went away and left its empty mount-point directory behind
        self._real_root = os.path.realpath(self.root)
        return True

    def needs_sentinel(self) -> bool:
        mode = self.watch.sentinel
        return mode == "required" or (mode == "auto" and self.sentinel_seen)

    # -- listing --------------------------------------------------------------------------------
    def _walk(self) -> tuple[dict[str, os.stat_result], dict[str, str], set[str]]:
        """(regular files by relpath, target -> sentinel relpath, unsafe relpaths); OSError if gone."""
        files: dict[str, os.stat_result] = {}
        sentinels: dict[str, str] = {}
        unsafe: set[str] = set()
        stack = [""]
        while stack:
            prefix = stack.pop()
            directory = self.root / prefix if prefix else self.root
            try:
                iterator = os.scandir(directory)
            except OSError:
                if not prefix:
                    raise
                continue  # a sub-folder that vanished or is unreadable: the next scan retries
            with iterator:
                for entry in iterator:
                    name = entry.name
                    rel = f"{prefix}{name}"
                    try:
                        if entry.is_symlink():
                            st = self._symlink_target_stat(rel)
                            if st is None:
                                continue
                        elif entry.is_dir(follow_symlinks=False):
                            if self.watch.recursive and not is_temp_name(name):
                                stack.append(rel + "/")
                            continue
                        else:
                            st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished between listing and stat
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    if is_temp_name(name):
                        continue
                    if is_unsafe_name(name):
                        unsafe.add(rel)
                        files[rel] = st
                        continue
                    target = sentinel_target(name)
                    if target is not None and self.watch.sentinel != "off":
                        sentinels[f"{prefix}{target}"] = rel
                        continue
                    if not self._supported(name):
                        self._log_once(rel, "unknown extension left in place")
                        continue
                    files[rel] = st
        return files, sentinels, unsafe

    def _symlink_target_stat(self, rel: str) -> os.stat_result | None:
        """Stat of a symlink's target if it stays inside the folder; None (never opened) else."""
        real_root = self._real_root or os.path.realpath(self.root)
        target = os.path.realpath(self.root / rel)
        try:
            inside = os.path.commonpath([real_root, target]) == real_root and target != real_root
        except ValueError:
            inside = False
        if not inside:
            self._log_once(rel, "symlink pointing outside the watch folder ignored")
            return None
        try:
            return os.stat(target)
        except OSError:
            return None

    def _log_once(self, rel: str, message: str) -> None:
        if rel in self._logged_names:
            return
        if len(self._logged_names) > 100_000:  # bounded: a hostile folder cannot grow it forever
            self._logged_names.clear()
        self._logged_names.add(rel)
        log.info(message, extra={"watch": self.index, "ext": safe_extension(rel)})

    # -- the scan -------------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        now = self._mono()
        self.last_scan = now
        if not self._check_root():
            return self._unreachable()
        try:
            listing, sentinels, unsafe = self._walk()
        except OSError as exc:
            if exc.errno in (
                errno.ENOENT,
                errno.ENOTDIR,
                errno.EACCES,
                errno.EPERM,
                errno.ESTALE,
                errno.EIO,
                errno.ENODEV,
                errno.EHOSTDOWN,
                errno.ENOTCONN,
            ):
                return self._unreachable()
            raise
        if not self.reachable:
            log.info("watch folder reachable again", extra={"watch": self.index})
        self.reachable = True
        if sentinels and not self.sentinel_seen and self.watch.sentinel == "auto":
            self.sentinel_seen = True
            if self._on_sentinel_seen:
                self._on_sentinel_seen(self.index)
        for gone in set(self.files) - set(listing):
            self.files.pop(gone, None)  # (the worker may have forgotten it meanwhile)
        self._remove_orphan_sentinels(listing, sentinels)
        with self._signals_lock:
            for gone in set(self._signals) - set(listing):
                del self._signals[gone]
            signals = dict(self._signals)
            # Only files handled after this scan began matter to it (and to later scans).
            self._forgotten = {rel: at for rel, at in self._forgotten.items() if at >= now}
        ready: list[Ready] = []
        pending = 0
        settling = False
        next_due: float | None = None
        unready: list[tuple[int, str]] = []  # settling files that hold newer ready ones
        unobserved: list[tuple[int, str]] = []  # those of them first seen without an observer
        wall_now = self._wall()
        need_sentinel = self.needs_sentinel()
        hold_max = self.watch.settle + 2 * self.watch.scan_interval
        for rel, st in listing.items():
            if self._forgotten.get(rel, -1.0) >= now:
                # Handled since this scan began: what the listing shows under that name is the
                # handled file itself (or a new one, which the next scan finds).
                continue
            key = _stat_key(st)
            state = self.files.get(rel)
            if state is None or (state.size, state.mtime_ns, state.ctime_ns) != key:
                state = FileState(
                    *key,
                    last_change=now,
                    first_seen=state.first_seen if state else now,
                    unobserved=state.unobserved if state else not (self.scanned_once and self.observed),
                )
                self.files[rel] = state
            else:
                state.unchanged_scans += 1
            state.done = self._is_done(self.index, rel, st.st_size, st.st_mtime_ns)
            if state.done:
                continue  # acknowledged in keep mode, or a too-large file already quarantined
            state.unsafe = rel in unsafe
            state.sentinel = sentinels.get(rel)
            if state.sentinel is not None:
                ready.append(
                    Ready(self.index, rel, st.st_size, st.st_mtime_ns, state.sentinel, True, state.unsafe)
                )
                continue
            if signals.get(rel) == (st.st_size, st.st_mtime_ns) and not (need_sentinel and not state.unsafe):
                ready.append(Ready(self.index, rel, st.st_size, st.st_mtime_ns, None, True, state.unsafe))
                continue
            if need_sentinel and not state.unsafe:
                pending += 1
                continue
            # Plain write: two consecutive identical scans and `settle` seconds without change.
            quiet_for = now - state.last_change
            if os.name != "nt":
                changed_at = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
                quiet_for = max(quiet_for, wall_now - changed_at)
            if state.unchanged_scans >= 1 and quiet_for >= self.watch.settle:
                ready.append(Ready(self.index, rel, st.st_size, st.st_mtime_ns, None, False, state.unsafe))
                continue
            pending += 1
            settling = True
            if now - state.first_seen < hold_max:
                unready.append((st.st_mtime_ns, rel))
                if state.unobserved:
                    unobserved.append((st.st_mtime_ns, rel))
            wait = (
                max(MIN_CONFIRM_GAP, self.watch.settle - quiet_for)
                if state.unchanged_scans >= 1
                else max(MIN_CONFIRM_GAP, min(self.watch.settle - quiet_for, self.watch.scan_interval))
            )
            due = now + wait
            next_due = due if next_due is None else min(next_due, due)
        oldest = min(unready) if unready else None
        oldest_unobserved = min(unobserved) if unobserved else None
        if oldest is not None:
            # Written after a file that is still settling: wait for it, keep the write order. A
            # file signalled complete (event, sentinel) waits only for an older file first seen
            # without an observer (the backlog found at start: it may be complete, renamed in
            # unseen). A file the live observer saw appear and not yet complete is still being
            # written by its writer: a signalled file is read at once beside it (exports.md §1,
            # "No needless waiting"; decision 22).
            def held(r: Ready) -> bool:
                bar = oldest_unobserved if r.signalled else oldest
                return bar is not None and (r.mtime_ns, r.relpath) > bar

            waiting = [r for r in ready if held(r)]
            if waiting:
                ready = [r for r in ready if not held(r)]
                pending += len(waiting)
        ready.sort(key=lambda r: (r.mtime_ns, r.relpath))
        self.oldest_unready = oldest
        self.oldest_unobserved = oldest_unobserved
        self.scanned_once = True
        return ScanResult(True, ready, pending, settling, next_due)

    def _unreachable(self) -> ScanResult:
        if self.reachable:
            log.warning(
                "watch folder unreachable; its files are deferred, not taken as gone",
                extra={"watch": self.index},
            )
        self.reachable = False
        # Known candidates stay known: an unreachable share is never "empty" (exports.md §4).
        return ScanResult(False, [], len(self.files), False, None)

    def forget(self, relpath: str) -> None:
        """The file was handled: a file found under this name later is a new file — but not one
        found by a scan whose listing was taken before the handling (it is the handled file)."""
        with self._signals_lock:
            self.files.pop(relpath, None)
            self._signals.pop(relpath, None)
            if len(self._forgotten) > 100_000:  # bounded even if no scan ever prunes it
                self._forgotten.clear()
            self._forgotten[relpath] = self._mono()

    def restart_settle(self, relpath: str) -> None:
        """The file changed while it was read (or is locked): it must settle again from now.

        ``first_seen`` is kept, so a file that is locked for ever stops holding newer files once
        its hold time is over.
        """
        with self._signals_lock:
            self._signals.pop(relpath, None)
        state = self.files.get(relpath)
        if state is not None:
            state.unchanged_scans = 0
            state.last_change = self._mono()

    def mark_signalled(self, relpath: str, size: int, mtime_ns: int) -> None:
        """An event said the file is complete (renamed in / closed after writing): no settle needed
        while its size and mtime stay as signalled. Called from the observer thread."""
        with self._signals_lock:
            if len(self._signals) > 100_000:  # bounded: an event storm cannot grow it for ever
                self._signals.clear()
            self._signals[relpath] = (size, mtime_ns)

    def extension_supported(self, name: str) -> bool:
        return self._supported(name) and bool(extension_of(name))
