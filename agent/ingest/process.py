"""One file, exactly once: read → sha256 → read_export → validate → commit → acknowledge.

Two stages, so that a backfill can read and validate upcoming files in worker processes while
one thread commits in order (``agent.ingest.prefetch``):

- ``prepare`` (pure apart from reading the file; runs in a worker process or inline): read the
  bytes from one descriptor (``reading.read_candidate``; a file that changes while we read is
  abandoned with no effect), sha256, decode + parse + validate every record with the
  ``received_at`` given by the committing side. It never writes anything.
- ``FileProcessor.commit`` (the ingest worker thread, one file at a time, in order):

  1. a file that changed since it was read is abandoned (nothing committed; read again later);
  2. its SHA-256 is looked up in the ingest ledger: a file that was committed but not yet
     acknowledged when the process died (or the same content under another name) is
     acknowledged without being stored again;
  3. any validation error quarantines the *whole* file (encrypted, reason = rule ids + record
     indexes, no values), nothing is stored;
  4. otherwise records + ledger row + encrypted archive copy are committed in ONE store
     transaction (``synchronous=FULL``);
  5. only after that commit is the file acknowledged: ``move`` unlinks it (and its sentinel),
     ``keep`` relies on the fingerprint in the ledger. The folder is fsynced after a burst of
     unlinks (``sync_dirs``), not after each: an unlink lost to a power failure only brings the
     file back, and step 2 recognises it by its digest.

A crash between any two steps leaves either "committed, not acknowledged" (step 2 finds it) or
"untouched" (read again, no duplicate). Nothing here logs a file name: files are ``file_id``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.documents.problems import Problem, problem
from agent.errors import DiskFullError, UnavailableError
from agent.fsutil import fsync_dir
from agent.ingest import reading
from agent.ingest.names import file_id as make_file_id
from agent.ingest.scanner import Ready
from agent.ingest.storeport import IngestStore
from agent.metrics import BYTES, FILES, FILES_SEEN, INGEST_LAG, RECORDS
from agent.pipeline import FileCheck, validate_export

log = logging.getLogger("agent.ingest")

MAX_REASON_PROBLEMS = 200  # a quarantine reason lists at most this many problems (bounded size)

# Outcomes that are not file outcomes of exports.md §4 but tell the caller what to do next.
ABANDONED = "abandoned"  # changed while reading / locked: look again later
GONE = "gone"  # vanished before it could be read
IGNORED = "ignored"  # symlink escaping the folder
DEFERRED = "deferred"  # folder unreachable, disk full, store locked: retry with backoff
TOO_LARGE = "too_large"  # R-001 entry made, file left in place
RECOVERED = "recovered"  # committed before a crash, now acknowledged
READ = "read"  # ``Prepared.status``: read (and validated unless the name is unsafe)

# Why a file was deferred. "disk" and "store" hold for every file, so the worker pauses as a
# whole (and keeps the order); "folder" and "error" concern one folder or one file.
CAUSE_DISK = "disk"
CAUSE_STORE = "store"
CAUSE_FOLDER = "folder"
CAUSE_ERROR = "error"
GLOBAL_CAUSES = (CAUSE_DISK, CAUSE_STORE)


@dataclasses.dataclass
class ProcessResult:
    outcome: str
    file_id: str | None = None
    records: int = 0
    quarantine_id: str | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    cause: str | None = None  # for DEFERRED: CAUSE_*


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` hands to ``FileProcessor.commit`` (picklable: it crosses processes)."""

    ready: Ready
    status: str  # READ, TOO_LARGE, ABANDONED, GONE, IGNORED or DEFERRED
    data: bytes = b""
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    check: FileCheck | None = None  # None when not read, or for an unsafe name (never parsed)


@dataclasses.dataclass
class InFlight:
    """A file whose commit is queued on the store's writer thread (``FileProcessor.begin``)."""

    ready: Ready
    root: Path
    name: str
    prep: Prepared
    fid: str
    fingerprint: Any
    pending: Any  # storeport.PendingResult

    def done(self) -> bool:
        return bool(self.pending.done())


def _deferred(exc: Exception, fid: str) -> ProcessResult:
    if isinstance(exc, DiskFullError):
        log.warning("disk full: file deferred, nothing consumed", extra={"file_id": fid})
        cause = CAUSE_DISK
    else:
        log.warning("store unavailable: file deferred", extra={"file_id": fid})
        cause = CAUSE_STORE
    FILES.labels("deferred").inc()
    return ProcessResult(DEFERRED, fid, cause=cause)


def prepare(
    ready: Ready,
    root: Path,
    *,
    max_size: int,
    profile: Any,
    received_at: dt.datetime,
    default_valid_days: int,
) -> Prepared:
    """Stage 1: read the file, hash it, decode + parse + validate its records. Writes nothing."""
    try:
        fb = reading.read_candidate(
            root,
            ready.relpath,
            max_size=max_size,
            expect=None if ready.signalled else (ready.size, ready.mtime_ns),
        )
    except reading.TooLarge as big:
        return Prepared(ready, TOO_LARGE, size=big.size, mtime_ns=big.mtime_ns)
    except reading.Changed:
        return Prepared(ready, ABANDONED)
    except reading.Gone:
        return Prepared(ready, GONE)
    except reading.Escapes:
        return Prepared(ready, IGNORED)
    except reading.Unreachable:
        return Prepared(ready, DEFERRED)
    sha = hashlib.sha256(fb.data).hexdigest()
    check = None
    if not ready.unsafe:  # an unsafe name is quarantined without looking inside
        check = validate_export(
            fb.data,
            file_name=ready.relpath.rsplit("/", 1)[-1],
            received_at=received_at,
            profile=profile,
            default_valid_days=default_valid_days,
        )
    return Prepared(ready, READ, fb.data, fb.size, fb.mtime_ns, sha, check)


def reason_of(file_id: str, problems: list[Problem]) -> dict[str, Any]:
    """The quarantine reason: rule ids, record indexes, JSON paths, fixed messages — no values."""
    errors = [p for p in problems if p.is_error] or list(problems)
    listed = [
        {"record": p.record, "rule": p.rule, "path": p.path, "message": p.message}
        for p in errors[:MAX_REASON_PROBLEMS]
    ]
    return {
        "file_id": file_id,
        "rules": sorted({p.rule for p in errors}),
        "records": sorted({p.record for p in errors if p.record is not None}),
        "problems": listed,
        "problems_total": len(errors),
    }


class FileProcessor:
    """Commits prepared files one at a time, in order; owned by the ingest worker thread."""

    def __init__(
        self,
        config: Config,
        store: IngestStore,
        *,
        clock: Clock | None = None,
        profiles: list[Any] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.profiles = profiles if profiles is not None else [None] * len(config.watch)
        self._dirty_dirs: set[Path] = set()

    # -- entry points -----------------------------------------------------------------------------
    def process(self, ready: Ready) -> ProcessResult:
        """Prepare and commit one file here and now (no look-ahead), folder fsynced before return."""
        try:
            return self.commit(self.prepare(ready))
        finally:
            self.sync_dirs()

    def prepare_args(self, ready: Ready) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of ``prepare`` for this file: the folder's current profile, ``received_at`` now."""
        watch = self.config.watch[ready.watch_index]
        return (
            (ready, Path(watch.path)),
            {
                "max_size": watch.max_file_size,
                "profile": self.profiles[ready.watch_index],
                "received_at": self.clock.now(),
                "default_valid_days": self.config.validation.default_valid_days,
            },
        )

    def prepare(self, ready: Ready) -> Prepared:
        args, kwargs = self.prepare_args(ready)
        return prepare(*args, **kwargs)

    def commit(self, prep: Prepared) -> ProcessResult:
        """Stage 2: decide, commit, acknowledge (see the module docstring)."""
        started = self.begin(prep)
        return self.finish(started) if isinstance(started, InFlight) else started

    def begin(self, prep: Prepared) -> ProcessResult | InFlight:
        """Stage 2a: decide; a file to be stored has its commit queued and comes back `InFlight`
        (the caller may begin the next file meanwhile, then calls ``finish`` in the same order).
        Anything else (quarantine, duplicate, recovered, abandoned …) is done here and now."""
        ready = prep.ready
        if prep.status == TOO_LARGE:
            return self._too_large(ready, prep.size, prep.mtime_ns)
        if prep.status == DEFERRED:
            return ProcessResult(DEFERRED, cause=CAUSE_FOLDER)
        if prep.status != READ:
            return ProcessResult(prep.status)
        watch = self.config.watch[ready.watch_index]
        root = Path(watch.path)
        name = ready.relpath.rsplit("/", 1)[-1]
        fid = make_file_id(prep.sha256, ready.watch_index, name)
        if not self._unchanged_since_read(root, ready.relpath, prep):
            return ProcessResult(ABANDONED, fid)  # changed after it was read: nothing committed
        FILES_SEEN.inc()
        BYTES.inc(len(prep.data))
        fingerprint = self.store.fingerprint(
            ready.watch_index, root, ready.relpath, prep.size, prep.mtime_ns, prep.sha256
        )
        try:
            return self._decide(ready, root, name, prep, fid, fingerprint)
        except (DiskFullError, UnavailableError) as exc:
            return _deferred(exc, fid)

    def finish(self, flight: InFlight) -> ProcessResult:
        """Stage 2b: wait until the queued commit is durable, then acknowledge the file."""
        ready, root, prep, fid, fingerprint = (
            flight.ready,
            flight.root,
            flight.prep,
            flight.fid,
            flight.fingerprint,
        )
        try:
            result = flight.pending.result()
            if result.outcome == "quarantined":  # found against the stored versions
                return self._quarantine(ready, root, flight.name, prep, fid, fingerprint, result.problems)
        except (DiskFullError, UnavailableError) as exc:
            return _deferred(exc, fid)
        watch = self.config.watch[ready.watch_index]
        FILES.labels(result.outcome).inc()
        if result.versions_stored and prep.check is not None:
            for doc_type, count in _type_counts(prep.check).items():
                RECORDS.labels(doc_type).inc(count)
        INGEST_LAG.observe(max(0.0, time.time() - prep.mtime_ns / 1e9))
        self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, prep)
        log.info(
            "file ingested",
            extra={"file_id": fid, "outcome": result.outcome, "records": result.versions_stored},
        )
        return ProcessResult(result.outcome, fid, result.versions_stored)

    @staticmethod
    def _unchanged_since_read(root: Path, relpath: str, prep: Prepared) -> bool:
        """The file is still the one that was read (or gone: what was read was complete)."""
        now = reading.stat_candidate(root, relpath)
        return now is None or now == (prep.size, prep.mtime_ns)

    # -- the decision -----------------------------------------------------------------------------
    def _decide(
        self, ready: Ready, root: Path, name: str, prep: Prepared, fid: str, fingerprint: Any
    ) -> ProcessResult | InFlight:
        watch = self.config.watch[ready.watch_index]
        prior = self.store.ledger_outcome(prep.sha256)
        if prior is not None:
            # Same bytes were already committed: either our own commit before a crash (same file,
            # not yet acknowledged) or the same content under another name (a duplicate).
            if self.store.same_file_committed(fingerprint):
                self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, prep)
                log.info(
                    "file recognised as committed before a restart; acknowledged", extra={"file_id": fid}
                )
                return ProcessResult(RECOVERED, fid)
            self.store.record_duplicate(fingerprint)
            FILES.labels("duplicate").inc()
            self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, prep)
            log.info("file ingested", extra={"file_id": fid, "outcome": "duplicate", "records": 0})
            return ProcessResult("duplicate", fid)
        if self.store.quarantined_file(fingerprint):
            # Quarantined before a crash but not yet removed: finish the move, no second entry.
            self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, prep)
            return ProcessResult(RECOVERED, fid)

        check = prep.check
        if ready.unsafe or check is None:
            problems = [problem("R-023", "source.file_name")]
            return self._quarantine(ready, root, name, prep, fid, fingerprint, problems)
        if not check.ok:
            return self._quarantine(ready, root, name, prep, fid, fingerprint, check.errors)

        pending = self.store.submit(
            fingerprint, check, file_name=name, content=prep.data, profile_name=watch.profile
        )
        return InFlight(ready, root, name, prep, fid, fingerprint, pending)

    def _quarantine(
        self,
        ready: Ready,
        root: Path,
        name: str,
        prep: Prepared,
        fid: str,
        fingerprint: Any,
        problems: list[Problem],
    ) -> ProcessResult:
        watch = self.config.watch[ready.watch_index]
        reason = reason_of(fid, problems)
        reason["watch"] = ready.watch_index  # `quarantine retry` re-reads with this folder's profile
        qid = self.store.quarantine(
            fingerprint, reason=reason, original_name=ready.relpath, content=prep.data
        )
        FILES.labels("quarantined").inc()
        self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, prep)
        log.warning(
            "file quarantined",
            extra={"file_id": fid, "quarantine_id": qid, "rules": ",".join(reason["rules"])},
        )
        return ProcessResult("quarantined", fid, 0, qid, problems)

    def _too_large(self, ready: Ready, size: int, mtime_ns: int) -> ProcessResult:
        """R-001 from fstat alone: an entry with the reason only; the file stays where it is."""
        watch = self.config.watch[ready.watch_index]
        root = Path(watch.path)
        if self.store.too_large_known(ready.watch_index, root, ready.relpath, size, mtime_ns):
            return ProcessResult(TOO_LARGE)
        problems = [problem("R-001", "")]
        fid = self.store.name_id(ready.watch_index, root, ready.relpath)
        reason = reason_of(fid, problems)
        reason["size"] = size
        qid = self.store.quarantine_too_large(
            ready.watch_index, root, ready.relpath, size, mtime_ns, reason=reason
        )
        FILES.labels("quarantined").inc()
        log.warning(
            "file too large: quarantine entry made, file left in place",
            extra={"file_id": fid, "quarantine_id": qid, "size": size},
        )
        return ProcessResult(TOO_LARGE, fid, 0, qid, problems)

    # -- acknowledgement ----------------------------------------------------------------------------
    def _acknowledge(
        self, ready: Ready, root: Path, fingerprint: Any, mode: str, fid: str, prep: Prepared
    ) -> None:
        """Take the file out of the folder (move) or remember its fingerprint (keep).

        Called only after the store committed (or quarantined) the file durably.
        """
        if mode == "keep":
            self.store.remember_kept(ready.watch_index, ready.relpath, fingerprint)
            return
        path = root / ready.relpath
        if not self._unchanged_since_read(root, ready.relpath, prep):
            # Rewritten in place since we read it: that is new content, not what was committed.
            # Leave it; it is read again (the ledger knows the committed bytes by their digest).
            log.warning("file changed after its commit; left for the next read", extra={"file_id": fid})
            return
        removed = False
        for victim in (path, root / ready.sentinel if ready.sentinel else None):
            if victim is None:
                continue
            try:
                os.unlink(victim)
                removed = True
            except FileNotFoundError:
                pass
            except OSError:
                # Could not remove (read-only share): the ledger still recognises it by sha256,
                # so it is never stored twice; keep the fingerprint so it is not read again.
                log.warning("could not remove an acknowledged file", extra={"file_id": fid})
                self.store.remember_kept(ready.watch_index, ready.relpath, fingerprint)
        if removed:
            self._dirty_dirs.add(path.parent)

    def sync_dirs(self) -> int:
        """fsync every folder with unlinks since the last call (or a power failure may undo them —
        harmless, the ledger recognises such a file, but it would be read once more)."""
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        for directory in dirs:
            try:
                fsync_dir(directory)
            except OSError:
                log.debug("folder fsync failed", exc_info=True)
        return len(dirs)

    @property
    def dirs_to_sync(self) -> int:
        return len(self._dirty_dirs)


def _type_counts(check: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in check.records:
        doc = record.document or {}
        doc_type = str(doc.get("document_type", ""))
        if doc_type:
            counts[doc_type] = counts.get(doc_type, 0) + 1
    return counts
