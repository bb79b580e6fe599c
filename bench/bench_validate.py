"""Validation throughput per document type and serialisation, next to the cost of a plain parse.

Baseline: the same bytes parsed by the standard library alone (json.loads / csv / ElementTree),
no decoding detection, normalisation or rules. Ratio = our documents/s ÷ baseline documents/s.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
import xml.etree.ElementTree as ET
from collections import defaultdict

from agent.formats import write_export
from agent.pipeline import validate_export
from agent.synth import generate_documents

FORMATS = ("json", "jsonl", "csv", "xml")


def _baseline(fmt: str, data: bytes) -> int:
    if fmt == "json":
        return len(json.loads(data))
    if fmt == "jsonl":
        return sum(1 for line in data.splitlines() if line.strip() and json.loads(line) is not None)
    if fmt == "csv":
        return sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"))))
    return len(ET.fromstring(data))


def _rate(fn, n_docs: int, min_seconds: float = 1.0) -> float:
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return runs * n_docs / elapsed


def run(report: list[str]) -> None:
    docs = generate_documents(2000, seed=7)
    by_type: dict[str, list[dict]] = defaultdict(list)
    for doc in docs:
        by_type[doc["document_type"]].append(doc)
    now = dt.datetime.now(dt.UTC)
    report += [
        "## Validation throughput (issue 3)",
        "",
        "Read + decode + normalise + validate every rule, per document type and serialisation, "
        "against a standard-library parse of the same bytes.",
        "",
        "| type | format | docs | validated docs/s | stdlib parse docs/s | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for doc_type, items in sorted(by_type.items()):
        items = items[:300]
        for fmt in FORMATS:
            data = write_export(items, format=fmt)
            name = f"bench.{fmt}"
            check = validate_export(data, file_name=name, received_at=now)
            assert check.ok, [p.rule for p in check.errors][:5]
            ours = _rate(lambda d=data, n=name: validate_export(d, file_name=n, received_at=now), len(items))
            base = _rate(lambda f=fmt, d=data: _baseline(f, d), len(items))
            report.append(
                f"| {doc_type} | {fmt} | {len(items)} | {ours:,.0f} | {base:,.0f} | {ours / base:.3f} |"
            )
    report.append("")
