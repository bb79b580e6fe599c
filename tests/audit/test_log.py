"""``AuditLog`` on a real SQLite file: durability, fail-closed writes, recovery, pruning, anchors.

Read-only storage is produced three real ways (tests run as root, for whom plain mode bits do not
stop the kernel): (1) ``chmod 0400`` — the audit log honours the owner write bit itself, even for
root, so an operator's ``chmod a-w`` fails closed; (2) ``chattr +i`` on ``audit.db`` and its WAL —
the kernel refuses writes, root included; (3) a small tmpfs filled to ENOSPC — a full volume.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audit import ZERO_HASH, AuditLog
from agent.audit.chain import record_hash
from agent.clock import FakeClock
from agent.errors import AuditUnavailableError
from agent.keys import generate_keys, load_keyring
from tests.audit.audithelp import Tamper, relay_event

REPO = Path(__file__).resolve().parents[2]


def test_first_record_links_to_zeros_and_each_next_to_its_predecessor(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        first = log.append(relay_event(1))
        second = log.append(relay_event(2))
    assert first["seq"] == 1 and first["prev_hash"] == ZERO_HASH
    assert second["seq"] == 2 and second["prev_hash"] == first["hash"]
    assert second["hash"] == record_hash(second)


def test_each_row_stores_the_canonical_text_of_the_full_record(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        record = log.append(relay_event(1, reason="partial_name_mismatch"))
    conn = sqlite3.connect(tmp_path / "audit.db")
    (text,) = conn.execute("SELECT record FROM records WHERE seq = 1").fetchone()
    assert json.loads(text) == record
    assert text == json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_files_are_private(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    with AuditLog(tmp_path / "data", keys_dir=tmp_path / "keys") as log:
        log.append(relay_event(1))
        log.write_anchor()
    for name in ("audit.db", "audit-anchors.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / "data" / name).st_mode) == 0o600


def test_update_and_delete_are_rejected_by_triggers(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(1))
    conn = sqlite3.connect(tmp_path / "audit.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET record = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM records")


def test_appends_from_many_threads_form_one_unbroken_chain(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(40):
                log.append(relay_event(k * 100 + i))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = log.verify()
    assert result.ok and result.head[0] == 320
    log.close()


def _append_in_threads(
    log: AuditLog, events: list[dict], results: dict[int, object]
) -> list[threading.Thread]:
    """Start one thread per event, all released at once; ``results[i]`` is its record or error."""
    barrier = threading.Barrier(len(events))

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = log.append(events[i])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the caller
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(events))]
    for t in threads:
        t.start()
    return threads


def test_concurrent_appends_are_group_committed_into_one_unbroken_chain(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(0))
        # Hold the write lock from outside so that the first appender waits inside its
        # transaction while all the others queue behind it.
        blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        before = log.transactions
        results: dict[int, object] = {}
        threads = _append_in_threads(log, [relay_event(i) for i in range(1, 41)], results)
        time.sleep(0.5)
        blocker.execute("ROLLBACK")
        blocker.close()
        for t in threads:
            t.join()
        records = list(results.values())
        assert all(isinstance(r, dict) for r in records), records
        committed = log.transactions - before
        assert committed < len(records) / 4  # 40 records, typically 2 transactions (2 fsyncs)
        assert sorted(r["seq"] for r in records) == list(range(2, 42))  # type: ignore[index]
        result = log.verify()
        assert result.ok and result.head[0] == 41
        conn = sqlite3.connect(tmp_path / "audit.db")
        for record in records:
            (text,) = conn.execute("SELECT record FROM records WHERE seq = ?", (record["seq"],)).fetchone()  # type: ignore[index]
            assert json.loads(text) == record  # each caller got exactly the record it was given


def test_a_failed_group_commit_fails_every_caller_in_it_and_leaves_no_gap(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(0))
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        first: dict[int, object] = {}
        leader = _append_in_threads(log, [relay_event(1)], first)
        time.sleep(0.3)  # the leader now waits for the lock, its writability check done
        queued: dict[int, object] = {}
        followers = _append_in_threads(log, [relay_event(i) for i in range(2, 12)], queued)
        time.sleep(0.3)
        db.chmod(0o400)  # the next batch finds the database read-only
        try:
            blocker.execute("ROLLBACK")
            blocker.close()
            for t in leader + followers:
                t.join()
        finally:
            db.chmod(0o600)
        assert isinstance(first[0], dict) and first[0]["seq"] == 2
        assert all(isinstance(r, AuditUnavailableError) for r in queued.values()), queued
        assert log.head()[0] == 2  # none of the failed batch was written
        assert log.append(relay_event(12))["seq"] == 3
        assert log.verify().ok


def test_submit_completes_its_future_once_durable_or_with_the_error(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(tmp_path) as log:
        first = log.submit(relay_event(1))
        assert first.result(timeout=10)["seq"] == 1
        db.chmod(0o400)
        try:
            failed = log.submit(relay_event(2))  # never raises for an outage: the future carries it
            assert isinstance(failed.exception(timeout=10), AuditUnavailableError)
        finally:
            db.chmod(0o600)
        assert not failed.cancel()  # a submitted record is never withdrawn
        assert log.submit_many([relay_event(3), relay_event(4)]).result(timeout=10)[1]["seq"] == 3
        assert log.verify().ok


def test_submit_each_writes_several_records_in_one_commit_each_with_its_own_future(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(0))
        before = log.transactions
        futures = log.submit_each([relay_event(i) for i in range(1, 11)])
        records = [f.result(timeout=10) for f in futures]
        assert log.transactions - before == 1  # one group commit for the ten records, not ten
        assert [r["seq"] for r in records] == list(range(2, 12))  # in the order given
        assert [r["request_id"] for r in records] == [relay_event(i)["request_id"] for i in range(1, 11)]
        assert log.submit_each([]) == []
        db.chmod(0o400)
        try:
            failed = log.submit_each([relay_event(11), relay_event(12)])
            assert all(isinstance(f.exception(timeout=10), AuditUnavailableError) for f in failed)
        finally:
            db.chmod(0o600)
        assert log.head()[0] == 11  # nothing of the failed commit was written
        assert log.verify().ok


def test_an_unstorable_event_fails_only_its_caller(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(0))
        with pytest.raises(ValueError):
            log.append(relay_event(1, reason="lone surrogate \ud800"))
        with pytest.raises(TypeError):
            log.append(relay_event(1, bytes_out=1.5))
        assert log.head()[0] == 1
        assert log.append(relay_event(2))["seq"] == 2
        assert log.verify().ok


APPENDER = """
import sys
from agent.audit import AuditLog
log = AuditLog.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    rec = log.append({"action": "documents.search", "actor": {"kind": "relay", "relay_id": sys.argv[3]}})
    print(rec["seq"], rec["hash"], flush=True)
"""


def test_two_processes_appending_at_once_never_fork_the_chain(tmp_path: Path) -> None:
    AuditLog.open(tmp_path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(tmp_path), "60", f"relay-{k}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    seqs = sorted(int(line.split()[0]) for out in outputs for line in out.splitlines())
    assert seqs == list(range(1, 121))
    result = AuditLog.open(tmp_path).verify()
    assert result.ok and result.head[0] == 120


def test_every_acknowledged_record_survives_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path), "100000", "relay-k"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(tuple(line.split()))
        if len(acknowledged) >= 50:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with AuditLog.open(tmp_path) as log:
        result = log.verify()
        assert result.ok
        assert result.head[0] >= 50
        conn = sqlite3.connect(tmp_path / "audit.db")
        for seq, digest in acknowledged:
            (text,) = conn.execute("SELECT record FROM records WHERE seq = ?", (int(seq),)).fetchone()
            assert json.loads(text)["hash"] == digest
        assert log.append(relay_event(1))["seq"] == result.head[0] + 1


def _assert_unavailable_then_recovers(log: AuditLog, make_read_only, restore) -> None:
    log.append(relay_event(1))
    head_before = log.head()
    assert log.healthy()
    make_read_only()
    try:
        with pytest.raises(AuditUnavailableError):
            log.append(relay_event(2))
        assert not log.healthy()
        with pytest.raises(AuditUnavailableError):
            log.append(relay_event(3))
    finally:
        restore()
    assert log.head() == head_before  # the failed writes left nothing behind
    assert log.healthy()  # the same object, no reopen: write access is back
    assert log.append(relay_event(4))["seq"] == head_before[0] + 1
    assert log.verify().ok


def test_chmod_read_only_database_fails_closed_and_recovers_without_reopening(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(tmp_path) as log:
        _assert_unavailable_then_recovers(log, lambda: db.chmod(0o400), lambda: db.chmod(0o600))


def test_chmod_read_only_directory_fails_closed_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with AuditLog.open(data) as log:
        _assert_unavailable_then_recovers(log, lambda: data.chmod(0o500), lambda: data.chmod(0o700))


def _chattr(flag: str, *paths: Path) -> bool:
    if not shutil.which("chattr"):
        return False
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_immutable_database_files_fail_closed_and_recover(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    wal = tmp_path / "audit.db-wal"
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(0))
        if not _chattr("+i", db):
            pytest.skip("chattr +i is not supported here")
        _chattr("-i", db)
        try:
            _assert_unavailable_then_recovers(
                log, lambda: _chattr("+i", db, wal), lambda: _chattr("-i", db, wal)
            )
        finally:
            _chattr("-i", db, wal)


def test_full_volume_fails_closed_and_recovers(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(volume)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    filler = volume / "filler"
    try:
        log = AuditLog.open(volume / "data")

        def fill() -> None:
            with open(filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass

        _assert_unavailable_then_recovers(log, fill, lambda: filler.unlink())
        log.close()
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True)


def test_write_lock_held_beyond_the_timeout_is_unavailable(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(1))
        blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(AuditUnavailableError):
            log.append(relay_event(2))
        assert time.monotonic() - started < 10
        blocker.execute("ROLLBACK")
        blocker.close()
        assert log.append(relay_event(3))["seq"] == 2


def test_prune_removes_old_records_from_the_start_and_verify_starts_there(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2022, 1, 1, tzinfo=dt.UTC))
    with AuditLog.open(tmp_path, clock=clock) as log:
        old = [log.append(relay_event(i)) for i in range(5)]
        clock.advance(400 * 86400)
        log.append(relay_event(5))
        clock.advance(800 * 86400)  # now: record 5 is 800 days old, records 1-5 are 1,200 days old
        assert log.prune() is not None
        pruned = log.last_record("system.audit.pruned")
        assert pruned is not None
        assert pruned["last_pruned_seq"] == 5 and pruned["last_pruned_hash"] == old[-1]["hash"]
        assert pruned["seq"] == 7 and pruned["prev_hash"] == log.last_record("documents.fetch")["hash"]
        assert log.verify().ok
        assert log.prune() is None  # nothing old enough any more
        conn = sqlite3.connect(tmp_path / "audit.db")
        assert [s for (s,) in conn.execute("SELECT seq FROM records ORDER BY seq")] == [6, 7]
        with pytest.raises(sqlite3.IntegrityError):  # the guard is back after pruning
            conn.execute("DELETE FROM records WHERE seq = 6")
        conn.close()
        # Deleting past the pruning point is still caught.
        tamper = Tamper(tmp_path / "audit.db")
        tamper.delete(6)
        tamper.close()
        result = log.verify()
        assert not result.ok and result.first_bad_seq == 6


def test_signed_anchor_is_checked_and_a_forged_one_fails(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    signer = load_keyring(tmp_path / "keys").signer
    with AuditLog(tmp_path / "data", keys_dir=tmp_path / "keys") as log:
        log.append(relay_event(1))
        anchor = log.write_anchor()
        assert anchor is not None and anchor["kid"] == signer.kid and anchor["seq"] == 1
        log.append(relay_event(2))
        assert log.verify().ok
        path = tmp_path / "data" / "audit-anchors.jsonl"
        line = json.loads(path.read_text())
        line["hash"] = log.head()[1]  # claims record 1 had record 2's hash, signature no longer fits
        path.write_text(json.dumps(line) + "\n")
        result = log.verify()
        assert not result.ok and result.kind == "anchor_signature"
        path.write_text("{not json\n")
        assert log.verify().kind == "anchor_file"


def test_rate_limited_counters_accumulate_per_day_and_client(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2025, 11, 30, 16, 0, tzinfo=dt.UTC))  # 2025-12-01 01:00 KST
    with AuditLog.open(tmp_path, clock=clock) as log:
        log.count_rate_limited("client-a")
        log.count_rate_limited("client-a", n=4)
        log.count_rate_limited("client-b", day="2025-12-02")
        assert log.rate_limited_counts("2025-12") == [
            {"day": "2025-12-01", "client": "client-a", "count": 5},
            {"day": "2025-12-02", "client": "client-b", "count": 1},
        ]
        assert log.rate_limited_counts("2025-11") == []


def test_review_overdue_after_the_10th_without_a_report_for_last_month(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2025, 10, 20, tzinfo=dt.UTC))
    with AuditLog.open(tmp_path, clock=clock) as log:
        log.append(relay_event(1))
        assert not log.review_overdue(dt.datetime(2025, 11, 10, 12, tzinfo=dt.UTC))
        assert log.review_overdue(dt.datetime(2025, 11, 11, 12, tzinfo=dt.UTC))
        log.append({"action": "admin.audit.report", "month": "2025-10"})
        assert not log.review_overdue(dt.datetime(2025, 11, 11, 12, tzinfo=dt.UTC))


def test_subject_records_lists_only_that_subject(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(relay_event(1, subject="1" * 64))
        log.append(relay_event(2, subject="2" * 64))
        log.append(relay_event(3, subject="1" * 64))
        assert [r["seq"] for r in log.subject_records("1" * 64)] == [1, 3]


def test_any_single_byte_change_in_the_database_is_detected(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path) as log:
        for i in range(6):
            log.append(relay_event(i, reason="사유" if i == 2 else None))
    db = tmp_path / "audit.db"
    reader = sqlite3.connect(db)
    reader.text_factory = bytes
    originals = {seq: text for seq, text in reader.execute("SELECT seq, record FROM records")}
    reader.close()
    log = AuditLog.open(tmp_path)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(seq=st.integers(1, 6), data=st.data())
    def check(seq: int, data: st.DataObject) -> None:
        text = originals[seq]
        position = data.draw(st.integers(0, len(text) - 1))
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != text[position]))
        tamper = Tamper(db)
        # Stored as TEXT even when the bytes are not valid UTF-8, as a hex editor would leave it.
        tamper.conn.execute(
            "UPDATE records SET record = CAST(? AS TEXT) WHERE seq = ?",
            (text[:position] + bytes([byte]) + text[position + 1 :], seq),
        )
        try:
            result = log.verify()
            assert not result.ok and result.first_bad_seq == seq
        finally:
            tamper.conn.execute("UPDATE records SET record = CAST(? AS TEXT) WHERE seq = ?", (text, seq))
            tamper.close()

    check()
    assert log.verify().ok


def test_database_replaced_under_a_running_log_is_followed_not_written_blindly(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a") as other:
        other.append(relay_event(1))
        other.append(relay_event(2))
    with AuditLog.open(tmp_path / "b") as log:
        log.append(relay_event(9))
        for suffix in ("", "-wal", "-shm"):
            src = tmp_path / "a" / f"audit.db{suffix}"
            if src.exists():
                shutil.copy(src, tmp_path / "b" / f".new{suffix}")
        for suffix in ("-wal", "-shm"):
            (tmp_path / "b" / f"audit.db{suffix}").unlink(missing_ok=True)
            if (tmp_path / "b" / f".new{suffix}").exists():
                os.replace(tmp_path / "b" / f".new{suffix}", tmp_path / "b" / f"audit.db{suffix}")
        os.replace(tmp_path / "b" / ".new", tmp_path / "b" / "audit.db")  # e.g. a restore
        assert log.append(relay_event(3))["seq"] == 3
        assert log.verify().ok
