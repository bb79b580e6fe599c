"""The quarantine flow behind ``quarantine list / show / retry / drop`` (cli.md §3).

``retry`` re-processes an entry's encrypted copy through the same stages as the folder path
(read_export with the folder's *current* profile, validate with ``received_at`` = now, commit in
one transaction) — so an entry quarantined under a broken profile is ingested normally once the
profile is fixed. The entry is removed only after the commit; a retry that fails again leaves it
as it was and reports the new problems. A too-large entry (R-001, never read, file left in place)
is retried by marking its file to be looked at again by the running (or next) daemon.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.documents.problems import Problem
from agent.ingest.process import reason_of
from agent.ingest.storeport import RETRY_KEY, IngestStore
from agent.pipeline import validate_export
from agent.store.models import FileFingerprint, QuarantineEntry


@dataclasses.dataclass
class RetryResult:
    qid: str
    outcome: str  # accepted | duplicate | superseded | quarantined | requeued | missing
    versions_stored: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)


def entry_json(entry: QuarantineEntry) -> dict[str, Any]:
    """An entry as shown by ``quarantine list --json``: ids, time, rules, indexes — no PHI."""
    reason = entry.reason or {}
    return {
        "id": entry.qid,
        "file_id": entry.file_id or reason.get("file_id"),
        "created_at": entry.created_at,
        "rules": reason.get("rules", []),
        "records": reason.get("records", []),
        "problems": reason.get("problems", []),
        "size": entry.size if entry.size is not None else reason.get("size"),
        "has_content": entry.has_content,
        "watch": reason.get("watch"),
    }


ProfileFor = Callable[[int], Any]  # watch index -> that folder's profile, loaded now (None = standard)


def _profile_for(config: Config, watch_index: int, profile_for: ProfileFor | None) -> Any:
    if not (0 <= watch_index < len(config.watch)):
        return None
    if profile_for is not None:
        return profile_for(watch_index)
    name = config.watch[watch_index].profile
    if not name or name == "standard":
        return None
    raise ValueError("retry_entry: a folder with a vendor profile needs profile_for")


def retry_entry(
    config: Config, store: Any, qid: str, *, clock: Clock | None = None, profile_for: ProfileFor | None = None
) -> RetryResult:
    """Re-process one quarantine entry; remove it only when its content is committed.

    ``profile_for(watch_index)`` gives the folder's profile as it is on disk *now* (the caller
    loads it), so an entry quarantined under a broken profile is read with the corrected one.
    """
    clock = clock or SystemClock()
    item = store.quarantine_get(qid)
    if item is None:
        return RetryResult(qid, "missing")
    reason = item.entry.reason or {}
    watch_index = int(reason.get("watch", 0) or 0)
    if item.content is None:
        # the file is still in its folder; let the scanner look at it again.
        path_hmac = reason.get("path_hmac")
        if path_hmac:
            store.kv_set(RETRY_KEY + path_hmac, f"{reason.get('size')}:{reason.get('mtime_ns')}")
        store.quarantine_remove(qid)
        return RetryResult(qid, "requeued")
    content: bytes = item.content
    name = item.original_name.rsplit("/", 1)[-1] or "file"
    received_at = clock.now()
    check = validate_export(
        content,
        file_name=name,
        received_at=received_at,
        profile=_profile_for(config, watch_index, profile_for),
        default_valid_days=config.validation.default_valid_days,
    )
    if not check.ok:
        return RetryResult(qid, "quarantined", problems=check.errors)
    sha = hashlib.sha256(content).hexdigest()
    root = Path(config.watch[watch_index].path) if watch_index < len(config.watch) else Path(".")
    fingerprint = FileFingerprint(IngestStore._path(root, item.original_name), len(content), 0, sha)
    profile_name = config.watch[watch_index].profile if watch_index < len(config.watch) else "standard"
    outcome = store.commit_file(
        fingerprint,
        check.records,
        archive=content,
        file_meta={
            "file_name": name,
            "profile": profile_name,
            "format": check.format,
            "encoding": check.encoding,
        },
    )
    if outcome.outcome == "quarantined":
        return RetryResult(qid, "quarantined", problems=list(outcome.problems))
    store.quarantine_remove(qid)
    return RetryResult(qid, outcome.outcome, outcome.versions_stored)


def retry_reason(result: RetryResult) -> dict[str, Any]:
    return reason_of(result.qid, result.problems)
