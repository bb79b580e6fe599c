"""Cross-document links and W-5xx warnings evaluated inside a commit (documents.md §7).

A rule is evaluated whenever either side of a pair gets a new current version and both current
versions are on this agent; the result goes into ``validation.cross_warnings`` of both documents
and is recomputed on change. ``commit_file`` calls ``CrossEvaluator.run`` in its transaction after
it has written the ``documents`` rows of the file (so every query here sees the state after the
file) and before it seals the new versions (so their warnings are sealed once, not re-sealed).

Finding partners without decrypting the store: the clear link columns of ``documents`` (schema
migration 4 -> 5) narrow the candidates in SQL, then the pure link rules of
``agent.documents.crossdoc`` decide on the decrypted documents. Every SQL filter here is implied by
the link rule it stands for, so the candidates are always a superset of the true partners:

- detail -> receipt by ``receipt_no``: same ykiho and ``receipt.document_no = receipt_no``;
- detail -> receipt fallback (no ``receipt_no``): receipts with the same care start (indexed),
  then the same ykiho, ``preg_hmac`` (keyed HMAC of ykiho and ``patient_reg_no`` — the number
  itself is personal data and never stored in clear) and care end, compared in the row;
- receipt -> fallback details: details without ``receipt_no`` with the same ``preg_hmac``
  (indexed; such details are rare) and equal care period columns;
- pharmacy receipt -> prescription: ``prescription.document_no = prescription_issue_no``.

Which documents are re-evaluated: the ones changed by the file, every candidate partner of their
new link values and of their previous ones (a detail whose ``receipt_no`` changed leaves its old
receipt, whose warnings must be recomputed). Re-evaluating a document whose partners did not change
gives the same result and is not rewritten by the caller.

Queries are batched per file (one ``IN`` query per kind of link), so a file of 500 receipts with no
counterparts costs two statements, not 500.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.documents.crossdoc import cross_warnings, find_prescription_for_pharmacy, find_receipt_for_detail
from agent.documents.problems import Problem

RECEIPT, DETAIL, PRESCRIPTION, PHARMACY = "receipt", "receipt_detail", "prescription", "pharmacy_receipt"
LINK_COLUMNS = (
    "doc_id, document_type, ykiho, document_no, receipt_no, prescription_issue_no, preg_hmac, "
    "care_start, care_end"
)
_IN_CHUNK = 400  # bound parameters per IN list (well under SQLite's limit)


@dataclasses.dataclass(frozen=True, slots=True)
class LinkRow:
    """The clear link columns of one document's current version (no personal data)."""

    doc_id: str
    document_type: str
    ykiho: str
    document_no: str
    receipt_no: str | None
    prescription_issue_no: str | None
    preg_hmac: str | None
    care_start: str | None
    care_end: str | None


def link_values(
    doc: dict[str, Any], preg_hmac: Callable[[str, str], str]
) -> tuple[str | None, str | None, str | None]:
    """``(receipt_no, prescription_issue_no, preg_hmac)`` columns for a current version's content.

    ``preg_hmac`` is kept only where the §7.1 fallback can use it: on receipts, and on details that
    carry no ``receipt_no`` (a detail with one never links by the fallback).
    """
    doc_type = doc.get("document_type")
    receipt_no = doc.get("receipt_no") if doc_type == DETAIL else None
    receipt_no = receipt_no if isinstance(receipt_no, str) else None
    issue_no = doc.get("prescription_issue_no") if doc_type == PHARMACY else None
    issue_no = issue_no if isinstance(issue_no, str) else None
    preg = None
    if doc_type == RECEIPT or (doc_type == DETAIL and doc.get("receipt_no") is None):
        patient = doc.get("patient")
        institution = doc.get("institution")
        reg = patient.get("patient_reg_no") if isinstance(patient, dict) else None
        ykiho = institution.get("ykiho") if isinstance(institution, dict) else None
        if reg is not None and isinstance(ykiho, str):
            preg = preg_hmac(ykiho, str(reg))
    return receipt_no, issue_no, preg


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class CrossEvaluator:
    """One evaluation over the state of an open write transaction.

    ``pending``: doc id -> current content of every document the file gave a new current version
    (their ``documents`` rows are already written). ``load``: reads and decrypts the current
    versions of other documents (doc id -> stored document dict), in one batch.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        pending: dict[str, dict[str, Any]],
        load: Callable[[Sequence[str]], dict[str, dict[str, Any]]],
        *,
        default_valid_days: int,
    ) -> None:
        self.conn = conn
        self.pending = pending
        self._load = load
        self.default_valid_days = default_valid_days
        self._memo: dict[tuple[str, ...], list[LinkRow]] = {}
        self._cands: dict[str, list[LinkRow]] = {}  # doc id -> candidates of its current link values
        self._contents: dict[str, dict[str, Any]] = dict(pending)

    # -- candidates ----------------------------------------------------------------------------
    @staticmethod
    def _keys(row: LinkRow) -> list[tuple[str, ...]]:
        """The candidate queries a document's link values stand for (memo keys)."""
        if row.document_type == DETAIL:
            if row.receipt_no is not None:
                return [("receipt_by_no", row.ykiho, row.receipt_no)]
            return [("receipt_by_care", row.care_start)] if row.preg_hmac and row.care_start else []
        if row.document_type == RECEIPT:
            keys: list[tuple[str, ...]] = [("detail_by_no", row.ykiho, row.document_no)]
            if row.preg_hmac:
                keys.append(("detail_by_preg", row.preg_hmac))
            return keys
        if row.document_type == PHARMACY:
            return [("rx_by_no", row.prescription_issue_no)] if row.prescription_issue_no else []
        if row.document_type == PRESCRIPTION:
            return [("pharmacy_by_issue_no", row.document_no)]
        return []

    def _fetch(self, keys: Iterable[tuple[str, ...]]) -> None:
        """Run the not yet memoised candidate queries, one ``IN`` query per kind (and ykiho)."""
        missing = {k for k in keys if k not in self._memo}
        for k in missing:
            self._memo[k] = []
        by_kind: dict[tuple[str, ...], list[str]] = {}
        for k in sorted(missing):
            kind = k[0]
            if kind in ("receipt_by_no", "detail_by_no"):
                by_kind.setdefault((kind, k[1]), []).append(k[2])
            else:
                by_kind.setdefault((kind,), []).append(k[1])
        for group, values in by_kind.items():
            kind = group[0]
            for chunk in _chunks(values):
                marks = _marks(len(chunk))
                if kind == "receipt_by_no":
                    sql = (
                        f"SELECT {LINK_COLUMNS} FROM documents WHERE ykiho = ? AND document_type = 'receipt' "
                        f"AND document_no IN ({marks})"
                    )
                    params: tuple[Any, ...] = (group[1], *chunk)
                elif kind == "detail_by_no":
                    sql = f"SELECT {LINK_COLUMNS} FROM documents WHERE ykiho = ? AND receipt_no IN ({marks})"
                    params = (group[1], *chunk)
                elif kind == "receipt_by_care":
                    sql = (
                        f"SELECT {LINK_COLUMNS} FROM documents WHERE document_type = 'receipt' "
                        f"AND care_start IN ({marks})"
                    )
                    params = tuple(chunk)
                elif kind == "detail_by_preg":
                    sql = (
                        f"SELECT {LINK_COLUMNS} FROM documents WHERE document_type = 'receipt_detail' "
                        f"AND preg_hmac IS NOT NULL AND preg_hmac IN ({marks})"
                    )
                    params = tuple(chunk)
                elif kind == "rx_by_no":
                    sql = (
                        f"SELECT {LINK_COLUMNS} FROM documents WHERE document_type = 'prescription' "
                        f"AND document_no IN ({marks})"
                    )
                    params = tuple(chunk)
                else:  # pharmacy_by_issue_no
                    sql = f"SELECT {LINK_COLUMNS} FROM documents WHERE prescription_issue_no IN ({marks})"
                    params = tuple(chunk)
                for r in self.conn.execute(sql, params):
                    row = LinkRow(*r)
                    self._memo[self._result_key(kind, group, row)].append(row)

    @staticmethod
    def _result_key(kind: str, group: tuple[str, ...], row: LinkRow) -> tuple[str, ...]:
        if kind == "receipt_by_no":
            return (kind, group[1], row.document_no)
        if kind == "detail_by_no":
            return (kind, group[1], row.receipt_no or "")
        if kind == "receipt_by_care":
            return (kind, row.care_start or "")
        if kind == "detail_by_preg":
            return (kind, row.preg_hmac or "")
        if kind == "rx_by_no":
            return (kind, row.document_no)
        return (kind, row.prescription_issue_no or "")

    def _candidates(self, row: LinkRow, *, previous: bool = False) -> list[LinkRow]:
        """Possible partners of ``row`` (memoised queries, then the clear-column part of §7.1).

        Rows of current link values are cached by doc id; ``previous`` rows (link values before the
        file) are not, they share the doc id of the changed document.
        """
        if not previous and row.doc_id in self._cands:
            return self._cands[row.doc_id]
        out: list[LinkRow] = []
        seen = {row.doc_id}
        same_care = (row.care_start, row.care_end)
        for key in self._keys(row):
            for c in self._memo.get(key, ()):
                if c.doc_id in seen:
                    continue
                if key[0] == "receipt_by_care" and (
                    c.ykiho != row.ykiho
                    or c.preg_hmac != row.preg_hmac
                    or (c.care_start, c.care_end) != same_care
                ):
                    continue
                if key[0] == "detail_by_preg" and (
                    c.ykiho != row.ykiho
                    or c.receipt_no is not None
                    or (c.care_start, c.care_end) != same_care
                ):
                    continue
                seen.add(c.doc_id)
                out.append(c)
        if not previous:
            self._cands[row.doc_id] = out
        return out

    # -- contents ------------------------------------------------------------------------------
    def _ensure_loaded(self, doc_ids: Iterable[str]) -> None:
        missing = sorted({d for d in doc_ids if d not in self._contents})
        if missing:
            self._contents.update(self._load(missing))

    def content(self, doc_id: str) -> dict[str, Any] | None:
        """The current version of a document as evaluated (pending content or decrypted stored form)."""
        return self._contents.get(doc_id)

    # -- evaluation ----------------------------------------------------------------------------
    def run(self, changed: Sequence[LinkRow], previous: Sequence[LinkRow]) -> dict[str, list[Problem]]:
        """Cross warnings of every document whose result may have changed: doc id -> problems."""
        self._fetch(k for r in [*changed, *previous] for k in self._keys(r))
        affected: dict[str, LinkRow] = {r.doc_id: r for r in changed}
        for r, prev in [*((r, False) for r in changed), *((r, True) for r in previous)]:
            for c in self._candidates(r, previous=prev):
                affected.setdefault(c.doc_id, c)
        if len(affected) == len(changed) and not any(self._cands[r.doc_id] for r in changed):
            # The usual case — counterparts not arrived yet, or kept by another agent: nothing links
            # to any changed document, so nothing to decrypt and every result is empty.
            return {r.doc_id: [] for r in changed}
        # A receipt's (prescription's) partners are the details (pharmacy receipts) that link to it,
        # and whether one does depends on all of *its* candidates (first match / exactly one).
        self._fetch(k for r in affected.values() for k in self._keys(r))
        second = [
            c
            for r in affected.values()
            if r.document_type in (RECEIPT, PRESCRIPTION)
            for c in self._candidates(r)
        ]
        self._fetch(k for r in second for k in self._keys(r))
        wanted = set(affected)
        for r in list(affected.values()) + second:
            wanted.update(c.doc_id for c in self._candidates(r))
            wanted.add(r.doc_id)
        self._ensure_loaded(wanted)

        result: dict[str, list[Problem]] = {}
        for doc_id, row in affected.items():
            doc = self.content(doc_id)
            if doc is None:
                continue
            seen: set[tuple[str, str]] = set()
            problems: list[Problem] = []
            for partner_id in self._partners(row):
                partner = self.content(partner_id)
                if partner is None:
                    continue
                for p in cross_warnings(doc, partner, default_valid_days=self.default_valid_days):
                    if (p.rule, p.path) not in seen:
                        seen.add((p.rule, p.path))
                        problems.append(p)
            result[doc_id] = sorted(problems, key=lambda p: (p.rule, p.path))
        return result

    def _partner_of(self, row: LinkRow) -> str | None:
        """The one document a detail or pharmacy receipt links to (§7.1), if any."""
        doc = self.content(row.doc_id)
        if doc is None:
            return None
        cands = [(c.doc_id, self.content(c.doc_id)) for c in self._candidates(row)]
        docs = [d for _, d in cands if d is not None]
        if row.document_type == DETAIL:
            match = find_receipt_for_detail(doc, docs)
        elif row.document_type == PHARMACY:
            match = find_prescription_for_pharmacy(doc, docs)
        else:
            return None
        return next((cid for cid, d in cands if d is match), None) if match is not None else None

    def _partners(self, row: LinkRow) -> list[str]:
        if row.document_type in (DETAIL, PHARMACY):
            partner = self._partner_of(row)
            return [partner] if partner else []
        return sorted(c.doc_id for c in self._candidates(row) if self._partner_of(c) == row.doc_id)
