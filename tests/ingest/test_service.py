"""Hand-over rules with the real ingest service (threads, watchdog observer, periodic scan)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.ingest.service import IngestService
from agent.ingest.storeport import IngestStore
from agent.store.store import Store

from .helpers import config_for, json_bytes, make_installation, receipt


def _wait(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def running(tmp_path: Path):
    services = []

    def start(**watch):
        toml = make_installation(tmp_path / f"inst{len(services)}", watch=watch)
        config = config_for(toml)
        store = Store.open(config)
        service = IngestService(config, IngestStore(store))
        service.start()
        services.append((service, store))
        return service, store, Path(config.watch[0].path)

    yield start
    for service, store in services:
        service.stop()
        store.close()


def _versions(store) -> int:
    return store.counts()["documents"]["versions_total"]


def test_renamed_in_file_is_read_at_once(running):
    service, store, inbox = running(scan_interval="30s", settle="30s")
    time.sleep(0.5)  # let the first scan and the observer come up
    tmp = inbox / "a.json.tmp"
    tmp.write_bytes(json_bytes([receipt(1)]))
    outside = inbox.parent / "staged.json"  # renamed in from outside the folder (unpaired move)
    outside.write_bytes(json_bytes([receipt(2)]))
    start = time.monotonic()
    os.rename(tmp, inbox / "a.json")
    os.rename(outside, inbox / "b.json")
    assert _wait(lambda: _versions(store) == 2, timeout=5)
    assert time.monotonic() - start < 2.0  # no settle, no scan wait
    # acknowledged (removed) right after the commit: allow the moment between the two
    assert _wait(lambda: not (inbox / "a.json").exists() and not (inbox / "b.json").exists(), timeout=5)


def test_file_written_in_two_chunks_is_read_once_complete(running):
    service, store, inbox = running(scan_interval="1s", settle="5s")
    data = json_bytes([receipt(n) for n in range(50)])
    half = len(data) // 2
    with open(inbox / "slow.json", "wb") as handle:  # held open: no close event between chunks
        handle.write(data[:half])
        handle.flush()
        time.sleep(2.5)  # longer than one scan
        assert _versions(store) == 0 and store.counts()["ingest"]["files_quarantined"] == 0
        handle.write(data[half:])
    assert _wait(lambda: _versions(store) == 50, timeout=15)
    counts = store.counts()["ingest"]
    assert counts["files_accepted"] == 1 and counts["files_quarantined"] == 0


def test_temp_names_are_never_read(running):
    service, store, inbox = running(scan_interval="1s", settle="1s")
    for name in (
        "x.json.tmp",
        ".hidden.json",
        "~lock.json",
        "y.json.part",
        "z.json.partial",
        "w.json.crdownload",
    ):
        (inbox / name).write_bytes(json_bytes([receipt(1)]))
    time.sleep(3.5)
    assert _versions(store) == 0
    assert len(list(inbox.iterdir())) == 6


def test_observer_stopped_files_still_picked_up_by_the_scan(running):
    service, store, inbox = running(scan_interval="2s", settle="1s")
    time.sleep(0.5)
    service.stop_observer_for_test(0)
    (inbox / "late.json").write_bytes(json_bytes([receipt(9)]))
    assert _wait(lambda: _versions(store) == 1, timeout=2 * 2 + 3)


def test_dead_observer_is_restarted_and_counted(running):
    from agent.metrics import OBSERVER_RESTARTS

    service, store, inbox = running(scan_interval="30s", settle="1s")
    time.sleep(0.5)
    before = OBSERVER_RESTARTS._value.get()
    service.supervisor.observers[0].kill_for_test()
    assert _wait(lambda: service.supervisor.observers[0].alive(), timeout=6)
    assert OBSERVER_RESTARTS._value.get() == before + 1


def test_sentinel_required_waits_then_reads_at_once(running):
    service, store, inbox = running(scan_interval="1s", settle="1s", sentinel="required")
    (inbox / "s.json").write_bytes(json_bytes([receipt(3)]))
    time.sleep(3)
    assert _versions(store) == 0
    assert service.snapshot()["watch"][0]["pending"] == 1
    (inbox / "s.json.done").write_bytes(b"")
    assert _wait(lambda: _versions(store) == 1, timeout=5)
    assert _wait(lambda: not (inbox / "s.json.done").exists(), timeout=3)  # removed with its file


def test_too_large_file_gets_r001_entry_and_stays_in_place(running):
    service, store, inbox = running(scan_interval="1s", settle="1s", max_file_size=1000)
    big = inbox / "big.json"
    big.write_bytes(json_bytes([receipt(n) for n in range(20)]))
    os.chmod(big, 0o200)  # write-only: a read attempt would fail, so R-001 must come from stat
    assert _wait(lambda: len(store.quarantine_list()) == 1, timeout=6)
    time.sleep(2.5)  # several scans later: still one entry, file untouched
    [entry] = store.quarantine_list()
    assert entry.reason["rules"] == ["R-001"] and not entry.has_content
    assert big.exists()


def test_symlink_outside_the_folder_is_ignored_inside_is_ingested(running, tmp_path):
    service, store, inbox = running(scan_interval="1s", settle="1s")
    outside = tmp_path / "outside.json"
    outside.write_bytes(json_bytes([receipt(77)]))
    os.symlink(outside, inbox / "escape.json")
    sub = inbox / "inner.json.tmp"
    sub.write_bytes(json_bytes([receipt(78)]))
    os.symlink(inbox / "inner.json.tmp", inbox / "inner.json")
    assert _wait(lambda: _versions(store) == 1, timeout=6)
    time.sleep(2)
    assert _versions(store) == 1
    assert outside.exists()


def test_folder_renamed_away_and_back_is_unreachable_not_empty(running):
    service, store, inbox = running(scan_interval="1s", settle="3s")
    time.sleep(0.5)
    data = json_bytes([receipt(n) for n in range(30)])
    handle = open(inbox / "w.json", "wb")  # noqa: SIM115
    handle.write(data[: len(data) // 2])
    handle.flush()
    assert _wait(lambda: service.snapshot()["watch"][0]["pending"] == 1, timeout=5)  # seen, settling
    away = inbox.with_name("inbox-away")
    os.rename(inbox, away)
    assert _wait(lambda: service.snapshot()["watch"][0]["reachable"] is False, timeout=8)
    assert service.snapshot()["watch"][0]["pending"] >= 1  # known files are not forgotten
    handle.write(data[len(data) // 2 :])
    os.rename(away, inbox)
    handle.close()
    assert _wait(lambda: service.snapshot()["watch"][0]["reachable"] is True, timeout=8)
    assert _wait(lambda: _versions(store) == 30, timeout=10)
    assert store.counts()["ingest"]["files_quarantined"] == 0


def test_unsafe_name_is_quarantined(running):
    service, store, inbox = running(scan_interval="1s", settle="1s")
    (inbox / "bad\x01name.json").write_bytes(json_bytes([receipt(5)]))
    assert _wait(lambda: len(store.quarantine_list()) == 1, timeout=6)
    assert store.quarantine_list()[0].reason["rules"] == ["R-023"]
    assert _versions(store) == 0


def test_scan_requested_during_a_scan_is_not_lost(tmp_path: Path):
    """A completion signal that finds an older file still settling asks for a scan at once; if a
    scan is running at that moment, its own next time (settle/scan_interval away) must not replace
    the request — else the renamed-in file waits for the settle time (a CI flake, session 3)."""
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "30s", "settle": "30s"})
    config = config_for(toml)
    store = Store.open(config)
    try:
        service = IngestService(config, IngestStore(store))
        scanner = service.scanners[0]
        real_scan = scanner.scan

        def scan_with_a_request_in_the_middle():
            result = real_scan()
            service._request_scan(0)  # the observer thread, while this scan is still running
            return result

        scanner.scan = scan_with_a_request_in_the_middle
        service.scan_now(0)
        assert service._due[0] <= time.monotonic()
        scanner.scan = real_scan
        service.scan_now(0)  # no request this time: the next scan is scan_interval away
        assert service._due[0] > time.monotonic() + 20
    finally:
        store.close()
