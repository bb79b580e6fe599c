"""The audit hash chain, pure (security.md §7.2, §7.3): building records and verifying a sequence.

No I/O here: ``build_record`` turns an event into the next record of the chain, and
``verify_chain`` checks rows read from any storage against the chain rules, the pruning point,
the anchors and an optional expected head. Kinds of failure reported by ``verify_chain``:

- ``modified``   a record's text is not canonical JSON, breaks the record rules, or its ``hash``
                 does not match its content (also: an index column disagrees with the text);
- ``missing``    a ``seq`` is absent (a record was deleted);
- ``reordered``  a record stands where another ``seq`` belongs, and that one comes later;
- ``inserted``   a record whose ``seq`` was already passed appears (an extra record);
- ``broken_link``a record is self-consistent but its ``prev_hash`` is not the previous ``hash``;
- ``truncated``  the chain is shorter than the latest anchor (records removed from its end);
- ``anchor_mismatch`` / ``anchor_signature`` an anchor names a different hash / is badly signed;
- ``prune_point`` the stored pruning point disagrees with the chain's last ``system.audit.pruned``;
- ``expect_head`` the head given with ``--expect-head`` is not in the chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from agent.clock import kst_iso, utc_iso

ZERO_HASH = "0" * 64
REASON_MAX = 200
PRUNED_ACTION = "system.audit.pruned"

# Members every record carries; absent ones default to these values (copied per record).
STANDARD_DEFAULTS: dict[str, Any] = {
    "actor": None,
    "source": None,
    "action": None,
    "request_id": None,
    "claim_no": None,
    "subject_ref": None,
    "document_ids": [],
    "result": None,
    "status": None,
    "problem_type": None,
    "reason": None,
    "bytes_out": None,
}
# Search records also carry these (relay-api.md §6.2); null until the API fills them.
SEARCH_DEFAULTS: dict[str, Any] = {"result_count": None, "withheld_count": None}
SEARCH_ACTION = "documents.search"
# Members the chain computes; an event's own values for them are replaced.
COMPUTED = ("seq", "ts_utc", "ts_local", "prev_hash", "hash")

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


# One encoder: ``json.dumps`` with options builds a new one per call (two calls per record).
# Same options as the §7.3 text, so the output is identical.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_text(record: Mapping[str, Any]) -> str:
    """The canonical form of §7.3 (as text; its UTF-8 is what gets hashed and stored)."""
    return _CANONICAL.encode(record)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical form of ``record`` without its ``hash`` member."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_text(body).encode("utf-8")).hexdigest()


def check_json_value(value: Any, where: str = "event") -> None:
    """Refuse anything but str/int/bool/None/list/dict (no floats: §7.2) — a caller's bug.

    Strings must be encodable as UTF-8 (no lone surrogates): such a record could be neither
    hashed nor stored, and with group commit it would fail the records it shares a transaction
    with, so it is refused here, in the caller's thread.
    """
    if isinstance(value, str):
        if not value.isascii():
            value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings")
            if not key.isascii():
                key.encode("utf-8")
            check_json_value(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not allowed in audit records")


def normalise_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with standard members defaulted, computed members dropped, reason capped."""
    if not isinstance(event.get("action"), str) or not event["action"]:
        raise ValueError("an audit event needs an action")
    # Fresh copies of the mutable defaults (they are flat: ``[]``), so records never share them.
    record: dict[str, Any] = {
        key: default.copy() if isinstance(default, list | dict) else default
        for key, default in STANDARD_DEFAULTS.items()
    }
    if event["action"] == SEARCH_ACTION:
        record.update(SEARCH_DEFAULTS)
    for key, value in event.items():
        if key in COMPUTED:
            continue
        record[key] = list(value) if isinstance(value, tuple) else value
    if record["actor"] is None:
        record["actor"] = {"kind": "system"}
    if isinstance(record["reason"], str) and len(record["reason"]) > REASON_MAX:
        record["reason"] = record["reason"][:REASON_MAX]  # §7.2: at most 200 characters
    check_json_value(record)
    return record


def build_record(event: Mapping[str, Any], *, seq: int, prev_hash: str, now: dt.datetime) -> dict[str, Any]:
    """The next record: the normalised event plus seq, both timestamps, prev_hash and hash."""
    return chain_record(normalise_event(event), seq=seq, prev_hash=prev_hash, now=now)


def chain_record(
    normalised: dict[str, Any],
    *,
    seq: int,
    prev_hash: str,
    now: dt.datetime,
    stamps: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``build_record`` for an event already passed through ``normalise_event`` (a fresh copy).

    ``stamps``: ``record_stamps(now)`` when the caller chains several records at one instant.
    """
    ts_utc, ts_local = stamps or record_stamps(now)
    record = dict(normalised)
    record["seq"] = seq
    record["ts_utc"] = ts_utc
    record["ts_local"] = ts_local
    record["prev_hash"] = prev_hash
    record["hash"] = record_hash(record)
    return record


def record_stamps(now: dt.datetime) -> tuple[str, str]:
    """``(ts_utc, ts_local)`` of a record written at ``now`` (§7.2: the same instant twice)."""
    return utc_iso(now), kst_iso(now)


def _reject_constant(name: str) -> Any:
    raise ValueError("NaN/Infinity are not JSON values")


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return False


def parse_record(data: bytes | str) -> dict[str, Any] | None:
    """The record stored as ``data`` if it is a well-formed, canonical, correctly hashed record.

    ``None`` for anything else: invalid UTF-8, invalid JSON, a non-canonical spelling (which is
    how a one-byte change that keeps the same JSON value — e.g. ``\\u001f`` vs ``\\u001F`` — is
    caught), floats, bad member types or a hash that does not match.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        record = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or _has_float(record):
        return None
    if canonical_text(record) != text:
        return None
    seq, prev, digest = record.get("seq"), record.get("prev_hash"), record.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return None
    if not isinstance(prev, str) or not _HEX64.match(prev) or not isinstance(digest, str):
        return None
    if record_hash(record) != digest:
        return None
    return record


@dataclasses.dataclass(frozen=True)
class Row:
    """One stored row: the key column, the stored text, and the derived index columns."""

    seq: int
    text: bytes | str
    columns: Mapping[str, Any] | None = None  # e.g. {"ts_utc": ..., "action": ..., "subject_ref": ...}


@dataclasses.dataclass(frozen=True)
class AnchorRef:
    """An anchor as far as verification needs it; ``signature_ok`` is ``None`` when unchecked."""

    seq: int
    hash: str
    signature_ok: bool | None = None


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification; ``head`` is the last record's ``(seq, hash)`` that was read."""

    ok: bool
    first_bad_seq: int | None
    kind: str | None
    head: tuple[int, str]
    records: int = 0
    message: str = "intact"


def parse_expect_head(text: str) -> tuple[int, str]:
    """``"SEQ:HASH"`` → ``(seq, hash)``; raises ``ValueError`` on anything else."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or not _HEX64.match(digest.lower()):
        raise ValueError("--expect-head must be SEQ:HASH (a number, a colon and 64 hex digits)")
    return int(seq_text), digest.lower()


def verify_chain(
    rows: Iterable[Row],
    *,
    start: tuple[int, str] = (0, ZERO_HASH),
    anchors: Iterable[AnchorRef] = (),
    expect_head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Check ``rows`` (in storage order) as the chain continuing after ``start``.

    ``start`` is the pruning point: the last pruned ``(seq, hash)``, or ``(0, 64 zeros)``.
    Stops at the first bad record: what follows a break cannot be trusted anyway.
    """
    anchors = sorted(anchors, key=lambda a: a.seq)
    wanted = {a.seq for a in anchors}
    if expect_head is not None:
        wanted.add(expect_head[0])
    seen_hashes: dict[int, str] = {start[0]: start[1]}
    expected = start[0] + 1
    prev = start[1]
    head = start
    count = 0
    last_pruned: tuple[int, str] | None = None
    iterator: Iterator[Row] = iter(rows)

    def fail(seq: int | None, kind: str, message: str) -> VerifyResult:
        return VerifyResult(False, seq, kind, head, count, message)

    for row in iterator:
        record = parse_record(row.text)
        if record is None:
            return fail(expected, "modified", f"record {expected} does not match its hash or is malformed")
        seq = record["seq"]
        if seq != expected:
            if seq < expected:
                # A second record claiming an already-passed seq: the forged/extra one is named.
                return fail(seq, "inserted", f"a second record {seq} stands where record {expected} belongs")
            later = any(_seq_of(r) == expected for r in iterator)
            if later:
                return fail(expected, "reordered", f"record {expected} is out of order")
            return fail(expected, "missing", f"record {expected} is missing")
        if row.seq != seq or not _columns_agree(row.columns, record):
            return fail(
                expected, "modified", f"record {expected}: stored index columns disagree with the record"
            )
        if record["prev_hash"] != prev:
            return fail(expected, "broken_link", f"record {expected} does not link to record {expected - 1}")
        if record.get("action") == PRUNED_ACTION:
            last_pruned = (record.get("last_pruned_seq"), record.get("last_pruned_hash"))  # type: ignore[assignment]
        if seq in wanted:
            seen_hashes[seq] = record["hash"]
        prev = record["hash"]
        head = (seq, prev)
        count += 1
        expected += 1

    if start[0] > 0 and last_pruned != start:
        return fail(
            start[0] + 1,
            "prune_point",
            "the pruning point does not match the last system.audit.pruned record",
        )
    for anchor in anchors:
        if anchor.signature_ok is False:
            return fail(
                anchor.seq, "anchor_signature", f"the anchor for record {anchor.seq} is not validly signed"
            )
        if anchor.seq < start[0]:
            continue  # pruned away: nothing left to compare with
        if anchor.seq > head[0]:
            return fail(
                head[0] + 1,
                "truncated",
                f"the chain ends at {head[0]} but an anchor names record {anchor.seq}",
            )
        if seen_hashes.get(anchor.seq) != anchor.hash:
            return fail(anchor.seq, "anchor_mismatch", f"record {anchor.seq} differs from its anchor")
    if expect_head is not None:
        seq, digest = expect_head
        if seq > head[0]:
            return fail(
                head[0] + 1,
                "expect_head",
                f"the chain ends at {head[0]} and does not reach the expected head {seq}",
            )
        if seq >= start[0] and seen_hashes.get(seq) != digest:
            return fail(seq, "expect_head", f"record {seq} differs from the expected head")
    return VerifyResult(True, None, None, head, count, "intact")


def _seq_of(row: Row) -> int | None:
    try:
        text = row.text.decode("utf-8") if isinstance(row.text, bytes) else row.text
        value = json.loads(text).get("seq")
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, int) else None


def _columns_agree(columns: Mapping[str, Any] | None, record: Mapping[str, Any]) -> bool:
    if not columns:
        return True
    return all(record.get(name) == value for name, value in columns.items())
