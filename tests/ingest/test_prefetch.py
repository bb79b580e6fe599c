"""Backfill look-ahead (agent/ingest/prefetch.py) and the worker's pause: files are prepared ahead
in worker processes but committed one transaction each, strictly in order; a lost worker or a
full disk never reorders, loses or duplicates a file."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from agent.errors import DiskFullError
from agent.ingest.service import IngestService
from agent.ingest.storeport import IngestStore
from agent.store.store import Store

from .helpers import config_for, jsonl_bytes, make_installation, receipt


def _wait(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _pairs(inbox: Path, count: int) -> list[str]:
    """Files alternating an original and, in the next file, its correction: any reordering of two
    neighbours shows as an R-010 quarantine."""
    names = []
    for n in range(count):
        name = f"export-{n:05d}.jsonl"
        key = n // 2
        docs = [receipt(10_000 + key, 1 + n % 2)] + [receipt(100_000 + n * 20 + i) for i in range(19)]
        (inbox / name).write_bytes(jsonl_bytes(docs))
        names.append(name)
    return names


def _service(tmp_path: Path, workers: int, store_wrapper=None):
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    config = config_for(toml)
    store = Store.open(config)
    port = IngestStore(store) if store_wrapper is None else store_wrapper(store)
    service = IngestService(config, port, observe=False, workers=workers)
    order: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(item, result):
        with lock:
            order.append((item.relpath, result.outcome))

    service.on_result = record
    return service, store, Path(config.watch[0].path), order


def test_look_ahead_commits_in_order_and_survives_a_killed_worker(tmp_path: Path):
    service, store, inbox, order = _service(tmp_path, workers=2)
    names = _pairs(inbox, 240)
    time.sleep(1.1)  # settled: a backlog
    service.prefetch.min_backlog = 8
    killed = []
    service.start()
    try:
        assert _wait(
            lambda: service.prefetch.running and service.prefetch._warm is None and len(order) > 10, 30
        )
        pool = service.prefetch._pool
        if pool is not None and pool._processes:
            victim = next(iter(pool._processes))
            os.kill(victim, signal.SIGKILL)  # a worker dies mid-backfill (e.g. out of memory)
            killed.append(victim)
        assert _wait(lambda: not any(inbox.iterdir()), 120, 0.1)
    finally:
        service.stop()
    counts = store.counts()
    store.close()
    assert killed, "the look-ahead pool was not running"
    assert [name for name, _ in order] == names  # strictly in write order, each once
    assert [outcome for _, outcome in order] == ["accepted", "superseded"] * (len(names) // 2)
    assert counts["ingest"]["files_quarantined"] == 0
    assert counts["documents"]["versions_total"] == len(names) * 19 + len(names)


class _DiskFullOnce(IngestStore):
    """The store's commit fails like a full disk for the first ``failures`` files."""

    def __init__(self, store, failures: int) -> None:
        super().__init__(store)
        self.failures = failures

    def submit(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise DiskFullError("disk full while writing the store; nothing was committed")
        return super().submit(*args, **kwargs)


def test_full_disk_pauses_the_worker_and_resumes_in_order(tmp_path: Path):
    holder: dict[str, _DiskFullOnce] = {}

    def wrap(store):
        holder["port"] = _DiskFullOnce(store, failures=2)
        return holder["port"]

    service, store, inbox, order = _service(tmp_path, workers=0, store_wrapper=wrap)
    names = _pairs(inbox, 6)
    time.sleep(1.1)
    service.start()
    try:
        assert _wait(lambda: service.paused, 10)
        status = service.snapshot()
        assert status["paused"] and status["files_deferred"] >= 1
        assert _wait(lambda: len(order) == len(names), 20)
        assert not service.paused
    finally:
        service.stop()
        store.close()
    assert order == [(n, "accepted" if i % 2 == 0 else "superseded") for i, n in enumerate(names)]
