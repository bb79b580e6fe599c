"""Shared helpers for the generator tests: read + validate a generated file like ingest does."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from agent.documents.problems import Problem
from agent.documents.validate import Validation, validate_document
from agent.formats import read_export
from agent.synth import ANCHOR_DATE, SynthFile

KST = dt.timezone(dt.timedelta(hours=9))
# The day after the generator's anchor date: every document is from the past and none is
# more than 10 years old (W-023), whatever the date the tests run on.
RECEIVED_AT = dt.datetime.combine(ANCHOR_DATE + dt.timedelta(days=1), dt.time(9, 0), KST)


@dataclass
class ReadBack:
    file_problems: list[Problem]
    records: list[tuple[int, dict[str, Any], Validation]]

    @property
    def errors(self) -> set[tuple[str, int | None]]:
        """(rule, record index) of every error, file-level and per record."""
        out = {(p.rule, p.record) for p in self.file_problems if p.is_error}
        for index, _, v in self.records:
            out |= {(p.rule, index) for p in v.errors}
        return out

    @property
    def warnings(self) -> set[str]:
        return {p.rule for _, _, v in self.records for p in v.warnings} | {
            p.rule for p in self.file_problems if p.is_warning
        }


def read_back(f: SynthFile, received_at: dt.datetime = RECEIVED_AT) -> ReadBack:
    result = read_export(f.data, file_name=f.name)
    records = [
        (r.index, r.document, validate_document(r.document, received_at=received_at)) for r in result.records
    ]
    return ReadBack(list(result.problems), records)


def natural_key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return (doc["institution"]["ykiho"], doc["document_type"], doc["document_no"])
