"""Store benchmark: encrypted insert throughput and look-up latency next to plain SQLite.

``run(report)`` appends markdown lines to ``report``. Sizes: ``BENCH_STORE_N`` documents
(default 100,000) for insert throughput and look-ups; ``BENCH_STORE_1M=1`` adds look-up latency on
a 1,000,000-document store bulk-loaded through the same code path without per-batch fsyncs (see
``_bulk_loaded``; about 10 minutes and 2 GB of temporary disk on a small machine). The baseline
is a plain (unencrypted) SQLite table of the documents with an RRN index, in the same process with
the same pragmas and batch size, inserted alternately with the store batch by batch (see
``_insert_both``). Two baselines: the SAME store code with envelope encryption switched off
(``_NullCipher``) — the issue's "same operations on an unencrypted baseline", so that ratio is
what encryption costs — and a minimal plain table, whose ratio shows the whole cost of the store
(versions, blind indexes, link columns, writer thread and encryption). All data is synthetic.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 500
BULK = 10_000  # records per file when bulk-loading the 1M store (look-ups only)
LOOKUPS = 2000
MILLION = 1_000_000


def _doc(i: int) -> dict[str, Any]:
    day = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
    return {
        "schema_version": "1.0",
        "document_type": "receipt",
        "document_no": f"B{i:09d}",
        "version": 1,
        "status": "active",
        "issued_on": day,
        "institution": {"ykiho": "99000001", "name": "예시가정의원", "type_code": "31"},
        "patient": {"name": "환자" + str(i % 9973), "rrn": _rrn(i), "patient_reg_no": f"{i:08d}"},
        "visit_type": "outpatient",
        "care_period": {"start": day, "end": day},
        "lines": [
            {"item": "consultation", "copay": 5400, "insurer": 12600, "full_copay": 0, "non_covered": 0}
        ],
        "total_charge": 18000,
    }


def _rrn(i: int) -> str:
    return f"90{1 + (i // 28) % 12:02d}{1 + i % 28:02d}{1000000 + (i * 7919) % 1000000:07d}"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


class _Baseline:
    """Plain SQLite: the documents as JSON in one table with an RRN index, no encryption."""

    def __init__(self, root: Path) -> None:
        self.conn = sqlite3.connect(root / "plain.db", isolation_level=None)
        for pragma in ("journal_mode = WAL", "synchronous = FULL", "temp_store = MEMORY"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute(
            "CREATE TABLE documents (doc_id TEXT PRIMARY KEY, document_no TEXT, rrn TEXT, name TEXT, "
            "issued_on TEXT, care_start TEXT, care_end TEXT, body TEXT)"
        )
        self.conn.execute("CREATE INDEX d_rrn ON documents (rrn)")

    def insert(self, start: int, stop: int) -> float:
        t0 = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        for i in range(start, stop):
            d = _doc(i)
            body = json.dumps(d, ensure_ascii=False, sort_keys=True)
            hashlib.sha256(body.encode()).hexdigest()
            self.conn.execute(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?)",
                (
                    f"doc_{i}",
                    d["document_no"],
                    d["patient"]["rrn"],
                    d["patient"]["name"],
                    d["issued_on"],
                    d["care_period"]["start"],
                    d["care_period"]["end"],
                    body,
                ),
            )
        self.conn.execute("COMMIT")
        return time.perf_counter() - t0

    def lookups(self, n: int) -> dict[str, float]:
        rng = random.Random(1)
        point, search = [], []
        for _ in range(LOOKUPS):
            i = rng.randrange(n)
            t = time.perf_counter()
            json.loads(
                self.conn.execute("SELECT body FROM documents WHERE doc_id = ?", (f"doc_{i}",)).fetchone()[0]
            )
            point.append(time.perf_counter() - t)
            t = time.perf_counter()
            rows = self.conn.execute(
                "SELECT doc_id, name FROM documents WHERE rrn = ? AND care_start <= ? AND care_end >= ?",
                (_rrn(i), "2025-12-31", "2025-01-01"),
            ).fetchall()
            assert rows
            search.append(time.perf_counter() - t)
        return {
            "point_p50": _pct(point, 0.5),
            "point_p99": _pct(point, 0.99),
            "search_p50": _pct(search, 0.5),
            "search_p99": _pct(search, 0.99),
        }

    def close(self) -> None:
        self.conn.close()


def _records(start: int, stop: int) -> list[Any]:
    # Canonical form and content hash are ingest's work (validation), done before the store and
    # outside the timed part. content_hash(doc) = sha256(serialize(canonical_form(doc))): hash the
    # form already built instead of canonicalising twice (matters for the 1M load).
    from agent.documents.canonical import canonical_form, serialize
    from agent.store import StoreRecord

    records = []
    for i in range(start, stop):
        canon = canonical_form(_doc(i))
        records.append(StoreRecord(i - start, canon, hashlib.sha256(serialize(canon)).hexdigest()))
    return records


def _open_store(root: Path) -> Any:
    from agent.config import build_config
    from agent.keys import generate_keys
    from agent.store import Store

    config = build_config({}, None, root / "inst")
    generate_keys(config.keys_dir)
    return Store.open(config)


def _lookups(store: Any, ids: list[str], n: int) -> dict[str, float]:
    rng = random.Random(1)
    point, search = [], []
    for _ in range(LOOKUPS):
        i = rng.randrange(n)
        t = time.perf_counter()
        assert store.get_current(ids[i]) is not None
        point.append(time.perf_counter() - t)
        t = time.perf_counter()
        hits = store.search(
            rrn=_rrn(i), name="환자" + str(i % 9973), period_from="2025-01-01", period_to="2025-12-31"
        ).hits
        assert hits
        search.append(time.perf_counter() - t)
    return {
        "point_p50": _pct(point, 0.5),
        "point_p99": _pct(point, 0.99),
        "search_p50": _pct(search, 0.5),
        "search_p99": _pct(search, 0.99),
    }


class _NullCipher:
    """The same store code with encryption switched off, for the "same operations" baseline.

    Replaces ``agent.store.crypto.seal``/``open_sealed`` by identity functions inside this
    benchmark process only (the store has no plaintext mode): rows, indexes, versions, blind
    indexes, link columns and the writer thread stay exactly the same, so the ratio against it is
    what envelope encryption costs.
    """

    def __enter__(self) -> None:
        from agent.store import crypto

        self._saved = (crypto.seal, crypto.open_sealed)

        def seal(kind: str, record_id: str, version: Any, plaintext: bytes, kek_id: str, kek: bytes) -> Any:
            return crypto.Sealed(kek_id, b"", b"", b"", plaintext)

        def open_sealed(
            kind: str, record_id: str, version: Any, sealed: Any, kek: bytes, *, what: str
        ) -> bytes:
            return bytes(sealed.ciphertext)

        crypto.seal, crypto.open_sealed = seal, open_sealed  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        from agent.store import crypto

        crypto.seal, crypto.open_sealed = self._saved  # type: ignore[assignment]


def _insert_both(root: Path, n: int) -> tuple[Any, list[str], dict[str, float], dict[str, float]]:
    """Insert ``n`` documents into the store and into the baseline, alternating batch by batch.

    Alternating (rather than all baseline, then all store) exposes both to the same machine load
    and the same disk, so the ratio holds on a shared machine where a minute-long run of one side
    can meet a different load than the other.
    """
    from agent.store import FileFingerprint

    base = _Baseline(root)
    store = _open_store(root)
    (root / "nullc").mkdir()
    null_store = _open_store(root / "nullc")
    ids: list[str] = []
    null_ids: list[str] = []
    store_s = base_s = null_s = 0.0
    for start in range(0, n, BATCH):
        stop = min(n, start + BATCH)
        base_s += base.insert(start, stop)
        records = _records(start, stop)
        sha = hashlib.sha256(f"bench-{start}".encode()).hexdigest()
        fp = FileFingerprint(f"/bench/{start}", 1, 1, sha)
        with _NullCipher():
            t0 = time.perf_counter()
            null_ids += null_store.commit_file(fp, records).doc_ids
            null_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        ids += store.commit_file(fp, records).doc_ids
        store_s += time.perf_counter() - t0
    base_result = {"insert_per_s": n / base_s, **base.lookups(n)}
    base.close()
    with _NullCipher():
        null_result = {"insert_per_s": n / null_s, **_lookups(null_store, null_ids, n)}
    null_store.close()
    base_result["same_ops"] = null_result
    return store, ids, {"insert_per_s": n / store_s}, base_result


def _bulk_loaded(root: Path, n: int) -> dict[str, float]:
    """Look-up latency on an ``n``-document store filled quickly.

    Same code path as ingest (``commit_file``: same schema, indexes, envelope encryption, blind
    indexes), but in files of ``BULK`` records and with ``synchronous=OFF`` on the writer for the
    load only: durability is not what is measured here, and at 1,000,000 documents per-500 fsyncs
    would make the run take far longer. Synchronous is set back to FULL before the look-ups.
    """
    from agent.store import FileFingerprint

    store = _open_store(root)
    store.db.write(lambda c: c.execute("PRAGMA synchronous = OFF"), transaction=False)
    ids: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, n, BULK):
        records = _records(start, min(n, start + BULK))
        sha = hashlib.sha256(f"bulk-{start}".encode()).hexdigest()
        ids += store.commit_file(FileFingerprint(f"/bench/{start}", 1, 1, sha), records).doc_ids
    store.db.write(lambda c: c.execute("PRAGMA synchronous = FULL"), transaction=False)
    store.checkpoint()
    load_s = time.perf_counter() - t0
    result = {"load_s": load_s, **_lookups(store, ids, n)}
    store.close()
    return result


def _one(report: list[str], n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    old = os.umask(0o077)
    try:
        store, ids, enc, base = _insert_both(root, n)
        enc.update(_lookups(store, ids, n))
        store.close()
    finally:
        os.umask(old)
        shutil.rmtree(root, ignore_errors=True)
    report.append(
        f"| {n:,} | encrypted store | {enc['insert_per_s']:,.0f} | {enc['point_p50']:.2f} / "
        f"{enc['point_p99']:.2f} | {enc['search_p50']:.2f} / {enc['search_p99']:.2f} |"
    )
    same = base["same_ops"]
    report.append(
        f"| {n:,} | same operations, unencrypted (baseline) | {same['insert_per_s']:,.0f} | "
        f"{same['point_p50']:.2f} / {same['point_p99']:.2f} | {same['search_p50']:.2f} / "
        f"{same['search_p99']:.2f} |"
    )
    report.append(
        f"| {n:,} | minimal plain table (one row + RRN index) | {base['insert_per_s']:,.0f} | "
        f"{base['point_p50']:.2f} / {base['point_p99']:.2f} | {base['search_p50']:.2f} / "
        f"{base['search_p99']:.2f} |"
    )
    ratio = enc["insert_per_s"] / same["insert_per_s"]
    raw = enc["insert_per_s"] / base["insert_per_s"]
    report.append(
        f"| {n:,} | ratio encrypted / same operations unencrypted | {ratio:.0%} (target ≥ 50%: "
        f"{'met' if ratio >= 0.5 else 'MISSED'}) | | patient search p99 {enc['search_p99']:.2f} ms "
        f"(target < 10 ms: {'met' if enc['search_p99'] < 10 else 'MISSED'}) |"
    )
    report.append(
        f"| {n:,} | ratio encrypted / minimal plain table | {raw:.0%} (whole cost of the store: "
        f"versions, blind indexes, link columns, encryption) | | |"
    )


def _million(report: list[str], n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-store-1m-"))
    old = os.umask(0o077)
    try:
        enc = _bulk_loaded(root, n)
    finally:
        os.umask(old)
        shutil.rmtree(root, ignore_errors=True)
    report.append(
        f"| {n:,} | encrypted store, bulk-loaded (see below) | — (loaded in {enc['load_s']:,.0f} s) | "
        f"{enc['point_p50']:.2f} / {enc['point_p99']:.2f} | {enc['search_p50']:.2f} / "
        f"{enc['search_p99']:.2f} (target < 10 ms: {'met' if enc['search_p99'] < 10 else 'MISSED'}) |"
    )


def run(report: list[str]) -> None:
    n = int(os.environ.get("BENCH_STORE_N", "100000"))
    million = os.environ.get("BENCH_STORE_1M") == "1"
    report.append("## Store")
    report.append("")
    report.append(
        f"Batches of {BATCH} documents per transaction (synchronous=FULL), store and baseline "
        f"alternating batch by batch; {LOOKUPS} random look-ups; latencies in ms (p50 / p99)."
    )
    report.append("")
    report.append("| documents | variant | insert docs/s | point read p50/p99 | patient search p50/p99 |")
    report.append("|---|---|---|---|---|")
    _one(report, n)
    if million:
        _million(report, MILLION)
    report.append("")
    if million:
        report.append(
            f"{MILLION:,} documents: look-up latency only. The store is filled through the ingest code "
            f"path (`Store.commit_file`: same schema, indexes, envelope encryption and blind indexes) "
            f"in files of {BULK:,} records with `synchronous=OFF` during the load (set back to FULL, "
            "WAL checkpointed, before the look-ups); insert throughput is the figure measured above "
            f"at {n:,}."
        )
    else:
        report.append(
            f"{MILLION:,} documents: not run by default (set BENCH_STORE_1M=1: look-up latency on a "
            "bulk-loaded store; the load takes about 10 minutes and 2 GB of disk on a 2-core machine)."
        )
    report.append("")


if __name__ == "__main__":
    lines: list[str] = []
    run(lines)
    print("\n".join(lines))
