"""Ingest benchmark (not a test): backfill throughput vs a raw baseline, rename→fetchable latency,
peak RSS of the daemon during backfill. ``run(report)`` appends markdown lines; ``make bench``.

- backfill: 100,000 synthetic receipts in JSONL files of 20 documents, present before the daemon
  starts; docs/s from daemon start to an empty folder (includes start-up), against a baseline in
  the same run that reads bytes, sha256, parses JSON and inserts plain rows into SQLite (no
  validation, no encryption) — target ≥ 50 %;
- latency: a file renamed into the watched folder until it is committed (move mode removes the
  file only after the commit, so "gone" = committed = fetchable) — target p50 < 250 ms;
- peak RSS of the daemon process (``wait4`` rusage) — target < 250 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOCS = int(os.environ.get("BENCH_INGEST_DOCS", "100000"))
PER_FILE = 20
LATENCY_SAMPLES = 60


def _corpus(inbox: Path) -> int:
    from tests.ingest.helpers import jsonl_bytes, receipt

    n = 0
    files = 0
    while n < DOCS:
        docs = [receipt(i) for i in range(n, min(DOCS, n + PER_FILE))]
        (inbox / f"b-{files:06d}.jsonl").write_bytes(jsonl_bytes(docs))
        n += len(docs)
        files += 1
    return files


def _baseline(src: Path, db_path: Path) -> float:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE docs (sha TEXT, idx INTEGER, document_no TEXT, body TEXT)")
    start = time.perf_counter()
    for path in sorted(src.iterdir()):
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        rows = [(sha, i, d["document_no"], json.dumps(d)) for i, d in
                enumerate(json.loads(line) for line in data.splitlines() if line.strip())]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO docs VALUES (?,?,?,?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return DOCS / elapsed


def _start(toml: Path, err: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(toml)],
                            stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=env)  # noqa: SIM115


def _wait_ready(err: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"ready: " in err.read_bytes():
            return
        time.sleep(0.02)
    raise RuntimeError("daemon not ready")


def run(report: list[str]) -> None:
    from tests.ingest.helpers import json_bytes, make_installation, receipt

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        toml = make_installation(base / "inst", watch={"scan_interval": "30s", "settle": "2s"})
        inbox = base / "inst" / "inbox"
        files = _corpus(inbox)
        copy = base / "baseline-src"
        copy.mkdir()
        for p in inbox.iterdir():
            (copy / p.name).write_bytes(p.read_bytes())
        baseline = _baseline(copy, base / "baseline.db")

        err = base / "daemon.err"
        start = time.perf_counter()
        proc = _start(toml, err)
        while any(True for _ in os.scandir(inbox)):
            time.sleep(0.1)
            if proc.poll() is not None:
                raise RuntimeError("daemon died during backfill")
        backfill_s = time.perf_counter() - start
        rate = DOCS / backfill_s

        # Latency: rename a complete file into the watched folder, wait until it is committed.
        latencies = []
        staging = base / "staging"
        staging.mkdir()
        for i in range(LATENCY_SAMPLES):
            name = f"lat-{i:04d}.json"
            (staging / name).write_bytes(json_bytes([receipt(DOCS + i)]))
            t0 = time.perf_counter()
            os.rename(staging / name, inbox / name)
            while (inbox / name).exists():
                time.sleep(0.002)
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        peak_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        exit_code = os.waitstatus_to_exitcode(status)

    report.append("## Ingest")
    report.append("")
    report.append(f"- backfill: {DOCS:,} documents in {files:,} JSONL files: {backfill_s:.1f} s = "
                  f"**{rate:,.0f} docs/s** (incl. daemon start-up)")
    report.append(f"- raw baseline (read + sha256 + json + plain SQLite insert): {baseline:,.0f} docs/s → "
                  f"agent = **{100 * rate / baseline:.0f} %** of baseline (target ≥ 50 %)")
    report.append(f"- rename → committed latency over {LATENCY_SAMPLES} files: p50 **{p50:.0f} ms**, "
                  f"p99 {p99:.0f} ms (target p50 < 250 ms)")
    report.append(f"- daemon peak RSS during backfill + latency run: **{peak_mb:.0f} MB** (target < 250 MB); "
                  f"exit on SIGTERM: {exit_code}")


if __name__ == "__main__":
    lines: list[str] = []
    run(lines)
    print("\n".join(lines))
