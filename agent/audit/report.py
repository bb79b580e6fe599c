"""The monthly access-log review (월 1회 이상 점검, security.md §7.5), pure.

``build_report`` turns one month's records (Asia/Seoul calendar month), the ``429`` counters and a
chain verification into a JSON-ready dict; ``render_text`` and ``render_csv`` present it. Nothing
here reads files. Self-test traffic (``actor.kind = "selftest"``) is counted apart and kept out of
the relay statistics (security.md §10). The report holds pseudonymous subject references, claim
numbers and document ids, never an RRN or a name (the log holds none).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from agent.audit.chain import VerifyResult
from agent.audit.csvsafe import write_csv
from agent.clock import KST, utc_iso

MONTH_RE = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])\Z")
SEARCH, FETCH = "documents.search", "documents.fetch"
NAME_MISMATCH_REASONS = ("name_mismatch", "partial_name_mismatch")
# Download-reason check (safeguards art. 8): these actions are listed with their stated reason.
REASON_REVIEW_ACTIONS = ("backup", "restore", "quarantine.show")
CONFIRM_REASON = "confirm reason"
OFF_HOURS = (22, 7)  # [22:00, 07:00) Asia/Seoul
TOP_SUBJECTS = 10
CLAIM_DOCUMENT_THRESHOLD = 20


def month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    """Start (inclusive) and end (exclusive) of a ``YYYY-MM`` month in Asia/Seoul."""
    match = MONTH_RE.match(month)
    if not match:
        raise ValueError("a month is YYYY-MM")
    year, number = int(match.group(1)), int(match.group(2))
    start = dt.datetime(year, number, 1, tzinfo=KST)
    end = dt.datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=KST)
    return start, end


def _kind(record: Mapping[str, Any]) -> str:
    actor = record.get("actor")
    return str(actor.get("kind")) if isinstance(actor, dict) else "unknown"


def _actor_field(record: Mapping[str, Any], name: str) -> Any:
    actor = record.get("actor")
    return actor.get(name) if isinstance(actor, dict) else None


def _is_off_hours(ts_local: str) -> bool:
    try:
        hour = int(ts_local[11:13])
    except ValueError:
        return False
    return hour >= OFF_HOURS[0] or hour < OFF_HOURS[1]


def _short_action(action: str) -> str:
    for prefix in ("admin.", "system."):
        if action.startswith(prefix):
            return action[len(prefix) :]
    return action


def _event_line(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": record.get("seq"),
        "ts_local": record.get("ts_local"),
        "action": record.get("action"),
        "relay_id": _actor_field(record, "relay_id"),
        "result": record.get("result"),
        "status": record.get("status"),
        "problem_type": record.get("problem_type"),
        "reason": record.get("reason"),
        "claim_no": record.get("claim_no"),
        "subject_ref": record.get("subject_ref"),
    }


def _admin_line(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": record.get("seq"),
        "ts_local": record.get("ts_local"),
        "action": record.get("action"),
        "actor_kind": _kind(record),
        "os_user": _actor_field(record, "os_user"),
        "uid": _actor_field(record, "uid"),
        "host": _actor_field(record, "host"),
        "result": record.get("result"),
        "reason": record.get("reason"),
    }


def build_report(
    month: str,
    records: Iterable[Mapping[str, Any]],
    rate_limited: Iterable[Mapping[str, Any]],
    verification: VerifyResult,
    *,
    generated_at: dt.datetime,
) -> dict[str, Any]:
    start, end = month_bounds(month)
    by_action_result: Counter[tuple[str, str]] = Counter()
    relays: dict[tuple[Any, Any, Any], Counter[str]] = defaultdict(Counter)
    subjects: set[str] = set()
    fetches_per_subject: Counter[str] = Counter()
    documents_per_subject: Counter[str] = Counter()
    off_hours: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    denied: Counter[str] = Counter()
    claim_documents: dict[str, set[str]] = defaultdict(set)
    admin_actions: list[dict[str, Any]] = []
    reason_review: list[dict[str, Any]] = []
    selftest: Counter[str] = Counter()
    total = 0

    for record in records:
        action = str(record.get("action"))
        kind = _kind(record)
        if kind == "selftest":
            selftest[action] += 1
            continue
        total += 1
        result = str(record.get("result"))
        by_action_result[(action, result)] += 1
        relay_request = action in (SEARCH, FETCH)
        if kind == "relay" or relay_request:
            key = (
                _actor_field(record, "relay_id"),
                _actor_field(record, "cert_sha256"),
                _actor_field(record, "cert_subject"),
            )
            relays[key]["requests"] += 1
            relays[key][action] += 1
            relays[key][f"result:{result}"] += 1
            if _is_off_hours(str(record.get("ts_local", ""))):
                off_hours.append(_event_line(record))
        subject = record.get("subject_ref")
        if isinstance(subject, str) and relay_request:
            subjects.add(subject)
        if action == FETCH and isinstance(subject, str):
            fetches_per_subject[subject] += 1
            if result == "success":
                documents_per_subject[subject] += len(record.get("document_ids") or [])
        if action == FETCH and result == "success" and record.get("claim_no"):
            claim_documents[str(record["claim_no"])].update(str(d) for d in record.get("document_ids") or [])
        if record.get("reason") in NAME_MISMATCH_REASONS:
            line = _event_line(record)
            line["withheld_count"] = record.get("withheld_count")
            mismatches.append(line)
        if result == "denied":
            denied[str(record.get("problem_type"))] += 1
        if kind == "admin" or action.startswith("admin."):
            admin_actions.append(_admin_line(record))
        if _short_action(action) in REASON_REVIEW_ACTIONS:
            line = _admin_line(record)
            line["flag"] = CONFIRM_REASON
            reason_review.append(line)

    rate_rows = [dict(r) for r in rate_limited]
    rate_by_client: Counter[str] = Counter()
    for row in rate_rows:
        rate_by_client[str(row["client"])] += int(row["count"])

    by_action: Counter[str] = Counter()
    for (action, _result), count in by_action_result.items():
        by_action[action] += count

    return {
        "month": month,
        "timezone": "Asia/Seoul",
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "generated_at": utc_iso(generated_at),
        "records": total,
        "by_action": dict(sorted(by_action.items())),
        "by_action_result": [
            {"action": a, "result": r, "count": c} for (a, r), c in sorted(by_action_result.items())
        ],
        "by_relay": [
            {
                "relay_id": rid,
                "cert_sha256": fp,
                "cert_subject": subj,
                "requests": counts["requests"],
                "searches": counts[SEARCH],
                "fetches": counts[FETCH],
                "denied": counts["result:denied"],
                "errors": counts["result:error"],
            }
            for (rid, fp, subj), counts in sorted(relays.items(), key=lambda kv: tuple(map(str, kv[0])))
        ],
        "distinct_subjects": len(subjects),
        "top_subjects": [
            {"subject_ref": ref, "fetches": n, "documents": documents_per_subject[ref]}
            for ref, n in sorted(fetches_per_subject.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SUBJECTS]
        ],
        "off_hours": {"window": "22:00-07:00", "count": len(off_hours), "requests": off_hours},
        "name_mismatch": {"count": len(mismatches), "events": mismatches},
        "denied_by_problem_type": dict(sorted(denied.items())),
        "claims_over_20_documents": [
            {"claim_no": claim, "documents": len(ids)}
            for claim, ids in sorted(claim_documents.items())
            if len(ids) > CLAIM_DOCUMENT_THRESHOLD
        ],
        "rate_limited": {
            "total": sum(rate_by_client.values()),
            "by_client": [{"client": c, "count": n} for c, n in sorted(rate_by_client.items())],
            "by_day": rate_rows,
        },
        "admin_actions": {"count": len(admin_actions), "actions": admin_actions},
        "reason_review": reason_review,
        "selftest": {"count": sum(selftest.values()), "by_action": dict(sorted(selftest.items()))},
        "chain": {
            "ok": verification.ok,
            "first_bad_seq": verification.first_bad_seq,
            "kind": verification.kind,
            "message": verification.message,
            "records_verified": verification.records,
            "head": {"seq": verification.head[0], "hash": verification.head[1]},
        },
        "head": {"seq": verification.head[0], "hash": verification.head[1]},
    }


def render_text(report: Mapping[str, Any]) -> str:
    """A plain-text version for a terminal."""
    lines = [
        f"Audit review {report['month']} (Asia/Seoul), generated {report['generated_at']}",
        f"records: {report['records']}  distinct subjects: {report['distinct_subjects']}",
        "",
        "Totals per action and result:",
    ]
    lines += [f"  {r['action']:<32} {r['result']:<8} {r['count']}" for r in report["by_action_result"]]
    lines += ["", "Per relay and certificate:"]
    lines += [
        f"  {r['relay_id']} {r['cert_sha256'] or '-'} requests={r['requests']} searches={r['searches']} "
        f"fetches={r['fetches']} denied={r['denied']}"
        for r in report["by_relay"]
    ]
    lines += ["", "Top subjects by fetches:"]
    lines += [
        f"  {r['subject_ref']} fetches={r['fetches']} documents={r['documents']}"
        for r in report["top_subjects"]
    ]
    lines += ["", f"Off-hours requests (22:00-07:00): {report['off_hours']['count']}"]
    lines += [
        f"  #{r['seq']} {r['ts_local']} {r['action']} {r['relay_id']} {r['result']}"
        for r in report["off_hours"]["requests"]
    ]
    lines += ["", f"name_mismatch events: {report['name_mismatch']['count']}"]
    lines += [
        f"  #{r['seq']} {r['ts_local']} {r['reason']} claim={r['claim_no']}"
        for r in report["name_mismatch"]["events"]
    ]
    lines += ["", "Denied by problem type:"]
    lines += [f"  {k}: {v}" for k, v in report["denied_by_problem_type"].items()]
    lines += ["", "Claims with more than 20 documents fetched:"]
    lines += [f"  {r['claim_no']}: {r['documents']}" for r in report["claims_over_20_documents"]]
    lines += ["", f"429 rate-limited: {report['rate_limited']['total']}"]
    lines += [f"  {r['client']}: {r['count']}" for r in report["rate_limited"]["by_client"]]
    lines += ["", f"Admin actions: {report['admin_actions']['count']}"]
    lines += [
        f"  #{r['seq']} {r['ts_local']} {r['action']} by {r['os_user']} {r['result']}"
        for r in report["admin_actions"]["actions"]
    ]
    lines += ["", "Backups, restores and quarantine views (download-reason check):"]
    lines += [
        f"  #{r['seq']} {r['ts_local']} {r['action']} by {r['os_user']} reason={r['reason']!r} [{r['flag']}]"
        for r in report["reason_review"]
    ]
    lines += ["", f"Self-test records: {report['selftest']['count']}"]
    chain = report["chain"]
    state = "intact" if chain["ok"] else f"BROKEN at seq {chain['first_bad_seq']} ({chain['kind']})"
    lines += ["", f"Chain verification: {state}", f"Head: {report['head']['seq']}:{report['head']['hash']}"]
    return "\n".join(lines) + "\n"


CSV_HEADER = (
    "section",
    "key",
    "value",
    "seq",
    "ts_local",
    "action",
    "actor",
    "result",
    "status",
    "problem_type",
    "claim_no",
    "subject_ref",
    "reason",
    "flag",
)


def render_csv(report: Mapping[str, Any]) -> str:
    """One formula-safe CSV: summary rows fill key/value, event rows the event columns."""
    rows: list[list[Any]] = []

    def summary(section: str, key: Any, value: Any) -> None:
        rows.append([section, key, value] + [None] * (len(CSV_HEADER) - 3))

    def event(section: str, line: Mapping[str, Any], actor: Any, flag: Any = None) -> None:
        rows.append(
            [
                section,
                None,
                None,
                line.get("seq"),
                line.get("ts_local"),
                line.get("action"),
                actor,
                line.get("result"),
                line.get("status"),
                line.get("problem_type"),
                line.get("claim_no"),
                line.get("subject_ref"),
                line.get("reason"),
                flag,
            ]
        )

    summary("month", "month", report["month"])
    summary("records", "total", report["records"])
    summary("distinct_subjects", "count", report["distinct_subjects"])
    for r in report["by_action_result"]:
        summary("by_action_result", f"{r['action']}/{r['result']}", r["count"])
    for r in report["by_relay"]:
        summary("by_relay", f"{r['relay_id']}/{r['cert_sha256']}", r["requests"])
    for r in report["top_subjects"]:
        summary("top_subjects", r["subject_ref"], r["fetches"])
    for r in report["off_hours"]["requests"]:
        event("off_hours", r, r.get("relay_id"))
    for r in report["name_mismatch"]["events"]:
        event("name_mismatch", r, r.get("relay_id"))
    for key, value in report["denied_by_problem_type"].items():
        summary("denied_by_problem_type", key, value)
    for r in report["claims_over_20_documents"]:
        summary("claims_over_20_documents", r["claim_no"], r["documents"])
    for r in report["rate_limited"]["by_day"]:
        summary("rate_limited", f"{r['day']}/{r['client']}", r["count"])
    for r in report["admin_actions"]["actions"]:
        event("admin_actions", r, r.get("os_user"))
    for r in report["reason_review"]:
        event("reason_review", r, r.get("os_user"), r.get("flag"))
    summary("selftest", "count", report["selftest"]["count"])
    summary("chain", "ok", report["chain"]["ok"])
    summary("chain", "first_bad_seq", report["chain"]["first_bad_seq"])
    summary("head", "seq", report["head"]["seq"])
    summary("head", "hash", report["head"]["hash"])
    return write_csv(CSV_HEADER, rows)
