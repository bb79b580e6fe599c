"""The audit log (접속기록) on disk: its own SQLite database ``data_dir/audit.db`` (security.md §7).

Guarantees:

- ``append`` returns only after the record is committed with ``synchronous=FULL`` (WAL fsync'd);
  otherwise it raises ``AuditUnavailableError`` and the chain is unchanged (the transaction rolls
  back). Callers fail closed on that error (503 ``audit-unavailable`` / exit 5).
- One writer at a time: within a process a lock serialises writers on one connection; across
  processes (daemon + CLI) ``BEGIN IMMEDIATE`` does, and the head is re-read inside that
  transaction, so two processes never fork the chain.
- Group commit: concurrent appends share one transaction and one fsync. An append is queued;
  if no write is under way its caller becomes the leader and writes, in one transaction, every
  append queued so far (in arrival order), then the next lot, until the queue is empty. Appends
  that arrive while a leader writes wait for it. Each append completes only after the
  transaction holding its records committed; if that transaction fails, every append in it
  gets ``AuditUnavailableError`` and none of its records exists, so ``seq`` stays gapless.
  ``append`` blocks until then; ``submit`` returns a future instead, so a caller with other
  work (the relay API's worker threads) is not held while another thread leads. No separate
  writer thread: whoever finds the log idle writes at once, so a lone append costs no thread
  switch. Durability before the response (security.md §7.3) is unchanged; under load N fsyncs
  become one.
- Read-only or full storage is noticed without a restart: before every write the database file,
  its WAL, and its directory must be writable (``os.access`` — which also sees ``chattr +i`` and
  read-only mounts — *and* the owner write bit, honoured even for root so that ``chmod a-w`` on
  the audit database fails closed whoever runs the agent), and at least ``MIN_FREE_BYTES`` must be
  free. After any failure the writer connection is dropped and reopened on the next attempt, so
  writes resume as soon as access returns.
- Table ``records(seq, ts_utc, action, subject_ref, record)``: ``record`` is the canonical text
  of the full record (the authority); the other columns are index copies that ``verify`` checks
  against it. Triggers reject ``UPDATE``/``DELETE``; only ``prune`` lifts the delete guard, inside
  its own transaction.
- Table ``rate_limited(day, client, count)``: the per-day, per-client ``429`` counters
  (relay-api.md §8) summarised by the monthly report. Table ``meta``: the pruning point.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.audit.anchors import ANCHOR_FILE, append_anchor, read_anchors
from agent.audit.chain import (
    PRUNED_ACTION,
    ZERO_HASH,
    Row,
    VerifyResult,
    canonical_text,
    chain_record,
    normalise_event,
    parse_expect_head,
    record_stamps,
    verify_chain,
)
from agent.clock import KST, Clock, SystemClock, utc_iso
from agent.config import Config
from agent.errors import AuditUnavailableError, ConfigError
from agent.fsutil import ensure_dir
from agent.signing import Signer

DB_FILE = "audit.db"
BUSY_TIMEOUT_S = 2.0  # "locked beyond a short timeout" → unavailable, never an endless wait
MIN_FREE_BYTES = 256 * 1024
DEFAULT_AUDIT_KEEP = 3 * 365 * 86400
REPORT_ACTION = "admin.audit.report"
CONFIG_ACTION = "admin.config.changed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts_utc TEXT,
    action TEXT,
    subject_ref TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts_utc ON records(ts_utc);
CREATE INDEX IF NOT EXISTS records_action ON records(action);
CREATE INDEX IF NOT EXISTS records_subject_ref ON records(subject_ref);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rate_limited (
    day TEXT NOT NULL,
    client TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, client)
);
"""
_NO_UPDATE = (
    "CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"
)
_NO_DELETE = (
    "CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"
)
_INSERT = "INSERT INTO records (seq, ts_utc, action, subject_ref, record) VALUES (?, ?, ?, ?, ?)"


# One queued append: its normalised events, the future its caller waits on, and whether that
# future gets the one record (``submit``) or the list (``submit_many``).
_Pending = tuple[list[dict[str, Any]], "concurrent.futures.Future[Any]", bool]


class AuditLog:
    """The hash-chained access log. Thread-safe; open once per process and share."""

    def __init__(
        self,
        data_dir: Path,
        *,
        keys_dir: Path | None = None,
        audit_keep: int = DEFAULT_AUDIT_KEEP,
        signer: Signer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self._wal_path = Path(f"{self.path}-wal")
        self.anchor_path = self.data_dir / ANCHOR_FILE
        self.keys_dir = keys_dir
        self.audit_keep = audit_keep
        self.clock: Clock = clock or SystemClock()
        self._signer = signer
        self._signer_loaded = signer is not None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) the connection writes to
        # Group commit (see the module docstring): appends waiting for a leader, and whether
        # one is writing. ``_queue_lock`` is never held across I/O.
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self.transactions = 0  # write transactions committed by this object (tests, benchmarks)

    @classmethod
    def open(
        cls,
        config_or_data_dir: Config | Path | str,
        *,
        signer: Signer | None = None,
        clock: Clock | None = None,
    ) -> AuditLog:
        """Open (creating when absent) the audit log. Never fails for unwritable storage:
        that shows in ``healthy()`` and in the ``AuditUnavailableError`` of each write."""
        if isinstance(config_or_data_dir, Config):
            config = config_or_data_dir
            log = cls(
                config.data_dir,
                keys_dir=config.keys_dir,
                audit_keep=config.retention.audit_keep,
                signer=signer,
                clock=clock,
            )
        else:
            log = cls(Path(config_or_data_dir), signer=signer, clock=clock)
        with log._lock, contextlib.suppress(AuditUnavailableError):
            log._writer()
        return log

    def close(self) -> None:
        with self._lock:  # waits for a transaction under way
            self._drop_writer()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Add one record; durable when this returns. Raises ``AuditUnavailableError``."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add several records in one transaction (all or none), durable when this returns.

        Concurrent callers are group-committed: their records may share the transaction, which
        changes nothing they can observe except that they return sooner under load.
        """
        return self.submit_many(events).result()  # type: ignore[no-any-return]

    def submit(self, event: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        """Queue one record; the future completes once it is durable, or with the error.

        The record is written whatever becomes of the future (it cannot be cancelled). The
        caller may itself write a batch (it leads when no write is under way) before this
        returns; it never waits for another append's transaction. Done-callbacks run in the
        leading thread and must not append synchronously.
        """
        return self._submit([event], single=True)

    def submit_each(
        self, events: Iterable[Mapping[str, Any]]
    ) -> list[concurrent.futures.Future[dict[str, Any]]]:
        """``submit`` for several independent records at once, each with its own future: all are
        queued together for the same group commit, so a caller with many records leads (at most)
        one commit for them, not one per record."""
        normalised = [normalise_event(event) for event in events]
        futures: list[concurrent.futures.Future[Any]] = []
        for _ in normalised:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            futures.append(future)
        self._enqueue([([event], future, True) for event, future in zip(normalised, futures, strict=True)])
        return futures

    def submit_many(
        self, events: Iterable[Mapping[str, Any]]
    ) -> concurrent.futures.Future[list[dict[str, Any]]]:
        """``submit`` for several records in one transaction (all or none)."""
        return self._submit(events, single=False)

    def _submit(self, events: Iterable[Mapping[str, Any]], *, single: bool) -> concurrent.futures.Future[Any]:
        # A caller's bug (no action, floats) raises here, in its own thread: not "unavailable".
        normalised = [normalise_event(event) for event in events]
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        if not normalised:
            future.set_result([])
            return future
        self._enqueue([(normalised, future, single)])
        return future

    def _enqueue(self, lots: list[_Pending]) -> None:
        """Queue ``lots`` for the group commit; lead it (write until the queue is empty) unless
        another thread already does."""
        if not lots:
            return
        with self._queue_lock:
            self._queue.extend(lots)
            if self._leading:
                return  # the current leader writes them
            self._leading = True
        self._lead()

    def _lead(self) -> None:
        """Write what is queued, one transaction per lot, until the queue is empty."""
        try:
            while True:
                with self._queue_lock:
                    if not self._queue:
                        self._leading = False
                        return
                    batch, self._queue = self._queue, []
                self._write_batch(batch)
        except BaseException:
            # Only an interruption of the leading thread (a signal) gets here: let the next
            # caller lead, so that nothing queued is stranded.
            with self._queue_lock:
                self._leading = False
            raise

    def _write_batch(self, batch: list[_Pending]) -> None:
        appends = [events for events, _, _ in batch]
        failure: BaseException | None = None
        try:
            with self._lock:
                results = self._write(lambda conn: self._append_batch(conn, appends))
        except AuditUnavailableError as exc:
            failure = exc
        except Exception as exc:  # a bug: fail closed, and let the next lot be tried
            failure = AuditUnavailableError(f"audit log unavailable: {type(exc).__name__}")
        except BaseException as exc:
            for _, future, _ in batch:
                future.set_exception(AuditUnavailableError(f"audit log unavailable: {type(exc).__name__}"))
            raise
        if failure is not None:
            for _, future, _ in batch:
                # One instance per caller: exceptions carry tracebacks of where they are raised.
                future.set_exception(AuditUnavailableError(str(failure)))
            return
        for (_, future, single), records in zip(batch, results, strict=True):
            future.set_result(records[0] if single else records)

    def _append_batch(
        self, conn: sqlite3.Connection, batch: list[list[dict[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """Chain the normalised events of every append of ``batch``, in order, inside the open
        transaction; returns each append's records."""
        seq, prev = _head(conn)  # re-read inside the write transaction: another process may append
        now = self.clock.now()
        stamps = record_stamps(now)
        rows: list[tuple[int, str, str, str | None, str]] = []
        out: list[list[dict[str, Any]]] = []
        for events in batch:
            records = []
            for event in events:
                seq += 1
                record = chain_record(event, seq=seq, prev_hash=prev, now=now, stamps=stamps)
                subject = record.get("subject_ref")
                rows.append(
                    (
                        seq,
                        record["ts_utc"],
                        record["action"],
                        subject if isinstance(subject, str) else None,
                        canonical_text(record),
                    )
                )
                prev = record["hash"]
                records.append(record)
            out.append(records)
        conn.executemany(_INSERT, rows)
        return out

    def healthy(self) -> bool:
        """Can a record be written right now? Performs a real durable write to find out."""
        now = utc_iso(self.clock.now())

        def probe(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (now,),
            )

        with self._lock:
            try:
                self._write(probe)
            except AuditUnavailableError:
                return False
        return True

    def count_rate_limited(self, client: str, day: str | dt.date | None = None, n: int = 1) -> None:
        """Add ``n`` to the ``429`` counter of ``client`` for ``day`` (Asia/Seoul date, default today)."""
        if day is None:
            day = self.clock.now().astimezone(KST).date()
        day_text = day.isoformat() if isinstance(day, dt.date) else str(day)

        def bump(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO rate_limited (day, client, count) VALUES (?, ?, ?) "
                "ON CONFLICT(day, client) DO UPDATE SET count = count + excluded.count",
                (day_text, client, n),
            )

        with self._lock:
            self._write(bump)

    def prune(self, now: dt.datetime | None = None) -> dict[str, Any] | None:
        """Remove records older than ``audit_keep`` from the chain start (security.md §7.4).

        Writes ``system.audit.pruned`` naming the last pruned ``seq`` and ``hash`` and stores that
        pair as the verification starting point, all in one transaction. Returns the new record,
        or ``None`` when nothing was old enough.
        """
        now = now or self.clock.now()
        cutoff = utc_iso(now - dt.timedelta(seconds=self.audit_keep))

        def do_prune(conn: sqlite3.Connection) -> dict[str, Any] | None:
            last: tuple[int, str] | None = None
            count = 0
            cursor = conn.execute("SELECT record FROM records ORDER BY seq")
            for (text,) in cursor:
                record = json.loads(text)
                if not record.get("ts_utc", "") < cutoff:
                    break
                last = (record["seq"], record["hash"])
                count += 1
            cursor.close()
            if last is None:
                return None
            # Only here is the delete guard lifted, and only inside this transaction.
            conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
            conn.execute("DELETE FROM records WHERE seq <= ?", (last[0],))
            conn.execute(_NO_DELETE)
            _set_meta(conn, "prune_seq", str(last[0]))
            _set_meta(conn, "prune_hash", last[1])
            event = {
                "actor": {"kind": "system"},
                "action": PRUNED_ACTION,
                "result": "success",
                "last_pruned_seq": last[0],
                "last_pruned_hash": last[1],
                "pruned_count": count,
            }
            return self._append_in(conn, [event])[0]

        with self._lock:
            return self._write(do_prune)

    def write_anchor(self) -> dict[str, Any] | None:
        """Append the signed head to ``audit-anchors.jsonl``; ``None`` when the chain is empty."""
        seq, digest = self.head()
        if seq == 0:
            return None
        return append_anchor(self.anchor_path, seq, digest, self.clock.now(), self.signer())

    # ------------------------------------------------------------------ reading

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record (the pruning point, or ``(0, zeros)``, if none)."""
        with self._reader() as conn:
            return _head(conn)

    def verify(self, expect_head: tuple[int, str] | str | None = None) -> VerifyResult:
        """Verify the whole chain, the pruning point, the anchors and an optional expected head."""
        if isinstance(expect_head, str):
            expect_head = parse_expect_head(expect_head)
        signer = self.signer()
        # Anchors first: every anchor then names a head committed before our snapshot below.
        anchor_file = read_anchors(self.anchor_path, signer.public_key if signer else None)
        with self._reader() as conn:
            conn.text_factory = bytes
            conn.execute("BEGIN")  # one snapshot for the whole pass
            start = _prune_point(conn)
            rows = (
                Row(seq, text, {"ts_utc": _text(ts), "action": _text(action), "subject_ref": _text(ref)})
                for seq, ts, action, ref, text in conn.execute(
                    "SELECT seq, ts_utc, action, subject_ref, record FROM records ORDER BY seq"
                )
            )
            result = verify_chain(rows, start=start, anchors=anchor_file.anchors, expect_head=expect_head)
            conn.execute("COMMIT")
        if result.ok and anchor_file.bad_lines:
            return VerifyResult(
                False,
                None,
                "anchor_file",
                result.head,
                result.records,
                f"line {anchor_file.bad_lines[0]} of {ANCHOR_FILE} is malformed",
            )
        return result

    def records_between(self, start: dt.datetime, end: dt.datetime) -> Iterator[dict[str, Any]]:
        """Records with ``start <= ts_utc < end`` in chain order."""
        with self._reader() as conn:
            cursor = conn.execute(
                "SELECT record FROM records WHERE ts_utc >= ? AND ts_utc < ? ORDER BY seq",
                (utc_iso(start), utc_iso(end)),
            )
            for (text,) in cursor:
                yield json.loads(text)

    def subject_records(self, subject_ref: str) -> list[dict[str, Any]]:
        """Every record concerning one data subject (by blind index), in chain order."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT record FROM records WHERE subject_ref = ? ORDER BY seq", (subject_ref,)
            ).fetchall()
        records = [json.loads(text) for (text,) in rows]
        return [r for r in records if r.get("subject_ref") == subject_ref]

    def last_record(self, action: str) -> dict[str, Any] | None:
        with self._reader() as conn:
            row = conn.execute(
                "SELECT record FROM records WHERE action = ? ORDER BY seq DESC LIMIT 1", (action,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def rate_limited_counts(self, month: str) -> list[dict[str, Any]]:
        """The ``429`` counters of one month: ``[{day, client, count}]``."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT day, client, count FROM rate_limited WHERE substr(day, 1, 7) = ? "
                "ORDER BY day, client",
                (month,),
            ).fetchall()
        return [{"day": day, "client": client, "count": count} for day, client, count in rows]

    def report(self, month: str) -> dict[str, Any]:
        """The monthly review of security.md §7.5 (read-only: the caller records it as an event)."""
        from agent.audit.report import build_report, month_bounds

        start, end = month_bounds(month)
        records = [r for r in self.records_between(start, end) if str(r.get("ts_local", ""))[:7] == month]
        verification = self.verify()
        return build_report(
            month, records, self.rate_limited_counts(month), verification, generated_at=self.clock.now()
        )

    def review_overdue(self, now: dt.datetime | None = None) -> bool:
        """True after the 10th day of a month when no report covers the previous month.

        An installation whose first record is from this month has nothing to review yet.
        """
        local = (now or self.clock.now()).astimezone(KST)
        if local.day <= 10:
            return False
        month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        previous = review_month(local)
        with self._reader() as conn:
            first = conn.execute("SELECT ts_utc FROM records ORDER BY seq LIMIT 1").fetchone()
            if first is None or first[0] >= utc_iso(month_start):
                return False
            for (text,) in conn.execute(
                "SELECT record FROM records WHERE action = ? ORDER BY seq DESC", (REPORT_ACTION,)
            ):
                if json.loads(text).get("month") == previous:
                    return False
        return True

    def set_signer(self, signer: Signer) -> None:
        """Sign anchors with this key from now on (signing-key rotation)."""
        self._signer, self._signer_loaded = signer, True

    def signer(self) -> Signer | None:
        """The signing key for anchors: the one given, else ``keys_dir/signing.key`` if usable."""
        if not self._signer_loaded:
            self._signer_loaded = True
            if self.keys_dir is not None and (self.keys_dir / "signing.key").exists():
                from agent.keys import load_signing_key

                try:
                    self._signer = Signer(load_signing_key(self.keys_dir / "signing.key"))
                except ConfigError:
                    self._signer = None
        return self._signer

    # ------------------------------------------------------------------ internals

    def _append_in(self, conn: sqlite3.Connection, events: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self._append_batch(conn, [[normalise_event(event) for event in events]])[0]

    def _write(self, work: Any) -> Any:
        """Run ``work(conn)`` in a ``BEGIN IMMEDIATE`` transaction; map every failure to
        ``AuditUnavailableError`` after rolling back and dropping the connection."""
        conn = None
        try:
            conn = self._writer()  # creates the directory and database on first use
            self._check_writable()
            conn.execute("BEGIN IMMEDIATE")
            result = work(conn)
            conn.execute("COMMIT")
            self.transactions += 1
            return result
        except AuditUnavailableError:
            self._drop_writer()
            raise
        except BaseException as exc:
            # Whatever went wrong, nothing of this transaction may stay behind or be committed
            # later by the next writer on this connection.
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._drop_writer()
            if isinstance(exc, sqlite3.Error | OSError):
                raise AuditUnavailableError(f"audit log unavailable: {_describe(exc)}") from None
            raise

    def _check_writable(self) -> None:
        """Fail before touching SQLite when the storage is read-only or (nearly) full."""
        for target, required in ((self.data_dir, True), (self.path, False), (self._wal_path, False)):
            try:
                mode = os.stat(target).st_mode
            except FileNotFoundError:
                if not required:
                    continue  # no database or WAL file yet: the directory check covers it
                raise AuditUnavailableError("audit log unavailable: the data directory is missing") from None
            if not (mode & stat.S_IWUSR) or not os.access(target, os.W_OK):
                raise AuditUnavailableError("audit log unavailable: the audit database is read-only")
        if shutil.disk_usage(self.data_dir).free < MIN_FREE_BYTES:
            raise AuditUnavailableError("audit log unavailable: no space left for the audit database")

    def _writer(self) -> sqlite3.Connection:
        if self._conn is not None:
            if self._file_id == _file_id(self.path):
                return self._conn
            # The file was removed or replaced (e.g. restored) under us: writing on through the
            # old descriptor would lose records, so follow the path to the current file.
            self._drop_writer()
        try:
            ensure_dir(self.data_dir)
            if not self.path.exists():
                # Create it 0600 ourselves: SQLite would use the umask, and tests may not set one.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss (§6.3)
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(_NO_UPDATE)
                conn.execute(_NO_DELETE)
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailableError(f"audit log unavailable: {_describe(exc)}") from None
        self._conn = conn
        self._file_id = _file_id(self.path)
        return conn

    def _drop_writer(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A short-lived read-only connection (works while the database is read-only)."""
        if not self.path.exists():
            with self._lock:
                self._writer()
        conn = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            yield conn
        finally:
            conn.close()


def review_month(now: dt.datetime) -> str:
    """``YYYY-MM`` of the month whose access-log review is due this month (the previous one, in
    Asia/Seoul; security.md §7.5)."""
    return (now.astimezone(KST).replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT record FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return _prune_point(conn)
    try:
        text = row[0].decode("utf-8") if isinstance(row[0], bytes) else row[0]
        record = json.loads(text)
        return int(record["seq"]), str(record["hash"])
    except (ValueError, KeyError, TypeError, AttributeError):
        # A damaged head must not be silently chained over; `audit verify` says what is wrong.
        raise sqlite3.DatabaseError("the newest audit record is unreadable; run `audit verify`") from None


def _prune_point(conn: sqlite3.Connection) -> tuple[int, str]:
    values = {
        _text(k): _text(v)
        for k, v in conn.execute("SELECT key, value FROM meta WHERE key IN ('prune_seq', 'prune_hash')")
    }
    seq, digest = values.get("prune_seq"), values.get("prune_hash")
    if seq is None or digest is None or not seq.isdigit():
        return 0, ZERO_HASH
    return int(seq), digest


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return value


def _describe(exc: BaseException) -> str:
    """A failure named by its kind (SQLite error name / errno), never by data."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return str(name)
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return type(exc).__name__
