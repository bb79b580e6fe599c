"""Shared body of the atheris harnesses: the property every parser must keep on any input.

A reader returns problems for bad input and never raises (security.md §9). Each harness module
calls `check_read` with its own extension/profile; `run_all.py` runs the harnesses under atheris
for a bounded number of iterations and `test_fuzz_harnesses.py` runs the same bodies on random
inputs in the normal test suite.
"""

from __future__ import annotations

from agent.documents.problems import Problem
from agent.formats import read_export
from agent.formats.profiles import Profile
from agent.formats.result import Record

READER_RULES = frozenset({"R-002", "R-003", "R-004", "R-005", "R-021", "R-025"})


def check_read(data: bytes, file_name: str, profile: Profile | None = None) -> None:
    """Read ``data``; raise AssertionError if the reader broke its contract (anything else
    raised by the reader propagates and is a finding too)."""
    result = read_export(data, file_name=file_name, profile=profile)
    records = list(result.records)
    problems = result.problems
    assert all(isinstance(p, Problem) and p.rule in READER_RULES for p in problems), problems
    assert all(isinstance(r, Record) and isinstance(r.document, dict) for r in records)
    assert records or problems, "a file without records must be reported (R-004)"
