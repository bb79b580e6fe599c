"""The one place ingest talks to the store (``agent.store.Store``): an adapter, so the pipeline
reads as the contract and the store's call signatures live in a single file.

Fingerprints: a file's path is ``<watch folder>/<relpath>``; the store keeps it only as a keyed
HMAC plus ciphertext (security.md §6.3). ``known_fingerprint`` answers "was this exact file
(path, size, mtime) already handled?" — acknowledged in ``keep`` mode, quarantined and left in
``keep`` mode, or a too-large file with its R-001 entry — from the ledger, with an in-memory cache
of the answers that cannot change while the file is unchanged (a ledger row with a digest). An
R-001 entry is looked up every time: another process may run ``quarantine retry`` on it.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from agent.store.models import QUARANTINED, FileFingerprint, FileOutcome

RETRY_KEY = "ingest.retry."  # kv marker: an R-001 entry was retried; look at the file again


def storable_name(name: str) -> str:
    """A file name as text that can be encrypted and hashed: names that are not valid in the file
    system's encoding arrive with surrogate escapes (os.fsdecode), which UTF-8 cannot encode; they
    are kept as backslash escapes of the original bytes (deterministic, so lookups still match)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class CommitResult:
    outcome: str
    versions_stored: int
    problems: list[Any]


class PendingResult:
    """A queued file commit (``IngestStore.submit``)."""

    __slots__ = ("pending",)

    def __init__(self, pending: Any) -> None:
        self.pending = pending

    def done(self) -> bool:
        return bool(self.pending.done())

    def result(self) -> CommitResult:
        outcome: FileOutcome = self.pending.result()
        return CommitResult(outcome.outcome, outcome.versions_stored, list(outcome.problems))


class IngestStore:
    """Ingest's view of the store."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._cache: dict[tuple[int, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    # -- identities ------------------------------------------------------------------------------
    @staticmethod
    def _path(root: Path, relpath: str) -> str:
        return storable_name(f"{Path(root)}/{relpath}")

    def fingerprint(
        self, watch_index: int, root: Path, relpath: str, size: int, mtime_ns: int, sha256: str
    ) -> FileFingerprint:
        return FileFingerprint(self._path(root, relpath), size, mtime_ns, sha256)

    def name_id(self, watch_index: int, root: Path, relpath: str) -> str:
        """Log id of a file that is never read: keyed HMAC of its path (no name, no content)."""
        from agent.ingest.names import unread_id

        return unread_id(self.store.path_hmac(self._path(root, relpath)), watch_index, relpath)

    # -- ledger ----------------------------------------------------------------------------------------
    def ledger_outcome(self, sha256: str) -> bool | None:
        """True when byte-identical content was already committed (None otherwise)."""
        return True if self.store.file_known(sha256) else None

    def same_file_committed(self, fp: FileFingerprint) -> bool:
        """This very file (path, size, mtime, content) already has a committed ledger row."""
        entry = self.store.ledger_lookup(fp.path, fp.size, fp.mtime_ns)
        return entry is not None and entry.sha256 == fp.sha256 and entry.outcome != QUARANTINED

    def quarantined_file(self, fp: FileFingerprint) -> bool:
        """This very file was quarantined before (e.g. a crash before its removal)."""
        entry = self.store.ledger_lookup(fp.path, fp.size, fp.mtime_ns)
        return entry is not None and entry.sha256 == fp.sha256 and entry.outcome == QUARANTINED

    def known_fingerprint(
        self, watch_index: int, root: Path, relpath: str, size: int, mtime_ns: int, *, move: bool = False
    ) -> bool:
        """Handled before and unchanged since: never read again (keep mode, R-001 left in place).

        In ``move`` mode a file that is still there although its ledger row exists was committed
        (or quarantined) just before a crash: it is *not* done — it must still be acknowledged, so
        it goes through the pipeline again, which recognises it by its digest.
        """
        with self._lock:
            if self._cache.get((watch_index, relpath)) == (size, mtime_ns):
                return True
        path = self._path(root, relpath)
        entry = self.store.ledger_lookup(path, size, mtime_ns)
        if entry is None:
            return False
        if move and entry.sha256:
            return False
        if entry.outcome == QUARANTINED and not entry.sha256:
            # R-001 entry (never read, no digest): retried by an operator → look again.
            marker = self.store.kv_get(RETRY_KEY + self.store.path_hmac(path))
            return marker != f"{size}:{mtime_ns}"
        with self._lock:
            self._cache[(watch_index, relpath)] = (size, mtime_ns)
        return True

    def remember_kept(self, watch_index: int, relpath: str, fp: FileFingerprint) -> None:
        """Not to be read again while unchanged: keep mode (the ledger row written with the
        commit/quarantine is the fingerprint), or a committed file that could not be removed."""
        with self._lock:
            if len(self._cache) > 200_000:  # bounded; a miss only costs one ledger look-up
                self._cache.clear()
            self._cache[(watch_index, relpath)] = (fp.size, fp.mtime_ns)

    # -- writes --------------------------------------------------------------------------------------------
    def commit(
        self, fp: FileFingerprint, check: Any, *, file_name: str, content: bytes, profile_name: str
    ) -> CommitResult:
        return self.submit(
            fp, check, file_name=file_name, content=content, profile_name=profile_name
        ).result()

    def submit(
        self, fp: FileFingerprint, check: Any, *, file_name: str, content: bytes, profile_name: str
    ) -> PendingResult:
        """Queue the file's commit; ``result()`` waits until it is durable (see ``Store.submit_file``)."""
        meta = {
            "file_name": file_name,
            "profile": profile_name,
            "format": check.format,
            "encoding": check.encoding,
        }
        return PendingResult(self.store.submit_file(fp, check.records, archive=content, file_meta=meta))

    def record_duplicate(self, fp: FileFingerprint) -> None:
        """Same content already committed under another name: a ledger row with outcome duplicate."""
        self.store.commit_file(fp, [], archive=None, file_meta={})

    def quarantine(
        self,
        fp: FileFingerprint,
        *,
        reason: dict[str, Any],
        original_name: str,
        content: bytes,
        watch_index: int = 0,
    ) -> str:
        return str(self.store.quarantine_add(content, reason, storable_name(original_name), fingerprint=fp))

    def too_large_known(self, watch_index: int, root: Path, relpath: str, size: int, mtime_ns: int) -> bool:
        return self.known_fingerprint(watch_index, root, relpath, size, mtime_ns)

    def quarantine_too_large(
        self, watch_index: int, root: Path, relpath: str, size: int, mtime_ns: int, *, reason: dict[str, Any]
    ) -> str:
        path = self._path(root, relpath)
        reason = dict(
            reason, watch=watch_index, path_hmac=self.store.path_hmac(path), size=size, mtime_ns=mtime_ns
        )
        self.store.kv_set(RETRY_KEY + reason["path_hmac"], "")  # any earlier retry is used up
        fp = FileFingerprint(path, size, mtime_ns, "")
        return str(self.store.quarantine_add(None, reason, storable_name(relpath), fingerprint=fp))
