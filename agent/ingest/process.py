"""One file, exactly once: read → sha256 → read_export → validate → commit → acknowledge.

The ordering is the whole guarantee (cli.md §6, exports.md §4):

1. read the bytes from one descriptor (``reading.read_candidate``); a file that changes while we
   read is abandoned with no effect;
2. its SHA-256 is looked up in the ingest ledger: a file that was committed but not yet
   acknowledged when the process died (or the same content under another name) is acknowledged
   without being stored again;
3. every record is validated with ``received_at`` = now; any error quarantines the *whole* file
   (encrypted, reason = rule ids + record indexes, no values), nothing is stored;
4. otherwise records + ledger row + encrypted archive copy are committed in ONE store transaction;
5. only after that commit is the file acknowledged: ``move`` unlinks it (and its sentinel) and
   fsyncs the folder; ``keep`` relies on the fingerprint in the ledger.

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
from agent.pipeline import validate_export

log = logging.getLogger("agent.ingest")

MAX_REASON_PROBLEMS = 200  # a quarantine reason lists at most this many problems (bounded size)

# Outcomes that are not file outcomes of exports.md §4 but tell the caller what to do next.
ABANDONED = "abandoned"    # changed while reading / locked: look again later
GONE = "gone"              # vanished before it could be read
IGNORED = "ignored"        # symlink escaping the folder
DEFERRED = "deferred"      # folder unreachable, disk full, store locked: retry with backoff
TOO_LARGE = "too_large"    # R-001 entry made, file left in place
RECOVERED = "recovered"    # committed before a crash, now acknowledged


@dataclasses.dataclass
class ProcessResult:
    outcome: str
    file_id: str | None = None
    records: int = 0
    quarantine_id: str | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)


def reason_of(file_id: str, problems: list[Problem]) -> dict[str, Any]:
    """The quarantine reason: rule ids, record indexes, JSON paths, fixed messages — no values."""
    errors = [p for p in problems if p.is_error] or list(problems)
    listed = [{"record": p.record, "rule": p.rule, "path": p.path, "message": p.message}
              for p in errors[:MAX_REASON_PROBLEMS]]
    return {
        "file_id": file_id,
        "rules": sorted({p.rule for p in errors}),
        "records": sorted({p.record for p in errors if p.record is not None}),
        "problems": listed,
        "problems_total": len(errors),
    }


class FileProcessor:
    """Processes one ready file at a time; owned by the ingest worker thread."""

    def __init__(self, config: Config, store: IngestStore, *, clock: Clock | None = None,
                 profiles: list[Any] | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.profiles = profiles if profiles is not None else [None] * len(config.watch)

    # -- entry point ----------------------------------------------------------------------------
    def process(self, ready: Ready) -> ProcessResult:
        watch = self.config.watch[ready.watch_index]
        root = Path(watch.path)
        name = ready.relpath.rsplit("/", 1)[-1]
        try:
            fb = reading.read_candidate(root, ready.relpath, max_size=watch.max_file_size,
                                        expect=None if ready.signalled else (ready.size, ready.mtime_ns))
        except reading.TooLarge as big:
            return self._too_large(ready, big.size, big.mtime_ns)
        except reading.Changed:
            return ProcessResult(ABANDONED)
        except reading.Gone:
            return ProcessResult(GONE)
        except reading.Escapes:
            return ProcessResult(IGNORED)
        except reading.Unreachable:
            return ProcessResult(DEFERRED)
        sha = hashlib.sha256(fb.data).hexdigest()
        fid = make_file_id(sha, ready.watch_index, name)
        FILES_SEEN.inc()
        BYTES.inc(len(fb.data))
        fingerprint = self.store.fingerprint(ready.watch_index, root, ready.relpath, fb.size, fb.mtime_ns, sha)
        try:
            return self._decide(ready, root, name, fb, sha, fid, fingerprint)
        except DiskFullError:
            log.warning("disk full: file deferred, nothing consumed", extra={"file_id": fid})
            FILES.labels("deferred").inc()
            return ProcessResult(DEFERRED, fid)
        except UnavailableError:
            log.warning("store unavailable: file deferred", extra={"file_id": fid})
            FILES.labels("deferred").inc()
            return ProcessResult(DEFERRED, fid)

    # -- the decision -----------------------------------------------------------------------------
    def _decide(self, ready: Ready, root: Path, name: str, fb: reading.FileBytes, sha: str, fid: str,
                fingerprint: Any) -> ProcessResult:
        watch = self.config.watch[ready.watch_index]
        prior = self.store.ledger_outcome(sha)
        if prior is not None:
            # Same bytes were already committed: either our own commit before a crash (same file,
            # not yet acknowledged) or the same content under another name (a duplicate).
            if self.store.same_file_committed(fingerprint):
                self._acknowledge(ready, root, fingerprint, watch.source_mode, fid)
                log.info("file recognised as committed before a restart; acknowledged",
                         extra={"file_id": fid})
                return ProcessResult(RECOVERED, fid)
            self.store.record_duplicate(fingerprint)
            FILES.labels("duplicate").inc()
            self._acknowledge(ready, root, fingerprint, watch.source_mode, fid)
            log.info("file ingested", extra={"file_id": fid, "outcome": "duplicate", "records": 0})
            return ProcessResult("duplicate", fid)
        if self.store.quarantined_file(fingerprint):
            # Quarantined before a crash but not yet removed: finish the move, no second entry.
            self._acknowledge(ready, root, fingerprint, watch.source_mode, fid)
            return ProcessResult(RECOVERED, fid)

        if ready.unsafe:
            problems = [problem("R-023", "source.file_name")]
            return self._quarantine(ready, root, name, fb, fid, fingerprint, problems)

        received_at = self.clock.now()
        check = validate_export(fb.data, file_name=name, received_at=received_at,
                                profile=self.profiles[ready.watch_index],
                                default_valid_days=self.config.validation.default_valid_days)
        if not check.ok:
            return self._quarantine(ready, root, name, fb, fid, fingerprint, check.errors)

        result = self.store.commit(fingerprint, check, file_name=name, content=fb.data,
                                   received_at=received_at, profile_name=watch.profile)
        if result.outcome == "quarantined":  # found against the stored versions
            return self._quarantine(ready, root, name, fb, fid, fingerprint, result.problems)
        FILES.labels(result.outcome).inc()
        if result.versions_stored:
            for doc_type, count in _type_counts(check).items():
                RECORDS.labels(doc_type).inc(count)
        INGEST_LAG.observe(max(0.0, time.time() - fb.mtime_ns / 1e9))
        self._acknowledge(ready, root, fingerprint, watch.source_mode, fid)
        log.info("file ingested", extra={"file_id": fid, "outcome": result.outcome,
                                         "records": result.versions_stored})
        return ProcessResult(result.outcome, fid, result.versions_stored)

    def _quarantine(self, ready: Ready, root: Path, name: str, fb: reading.FileBytes, fid: str,
                    fingerprint: Any, problems: list[Problem]) -> ProcessResult:
        watch = self.config.watch[ready.watch_index]
        reason = reason_of(fid, problems)
        reason["watch"] = ready.watch_index  # `quarantine retry` re-reads with this folder's profile
        qid = self.store.quarantine(fingerprint, reason=reason, original_name=ready.relpath,
                                    content=fb.data)
        FILES.labels("quarantined").inc()
        self._acknowledge(ready, root, fingerprint, watch.source_mode, fid, quarantined=True)
        log.warning("file quarantined", extra={"file_id": fid, "quarantine_id": qid,
                                               "rules": ",".join(reason["rules"])})
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
        qid = self.store.quarantine_too_large(ready.watch_index, root, ready.relpath, size, mtime_ns,
                                              reason=reason)
        FILES.labels("quarantined").inc()
        log.warning("file too large: quarantine entry made, file left in place",
                    extra={"file_id": fid, "quarantine_id": qid, "size": size})
        return ProcessResult(TOO_LARGE, fid, 0, qid, problems)

    # -- acknowledgement ----------------------------------------------------------------------------
    def _acknowledge(self, ready: Ready, root: Path, fingerprint: Any, mode: str, fid: str,
                     *, quarantined: bool = False) -> None:
        """Take the file out of the folder (move) or remember its fingerprint (keep).

        Called only after the store committed (or quarantined) the file durably.
        """
        if mode == "keep":
            self.store.remember_kept(fingerprint)
            return
        path = root / ready.relpath
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
                self.store.remember_kept(fingerprint)
        if removed:
            fsync_dir(path.parent)  # or the unlink may be undone by a power failure


def _type_counts(check: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in check.records:
        doc = record.document or {}
        doc_type = str(doc.get("document_type", ""))
        if doc_type:
            counts[doc_type] = counts.get(doc_type, 0) + 1
    return counts


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
