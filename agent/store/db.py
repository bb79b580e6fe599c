"""SQLite access: one writer thread fed by a queue, a small pool of read connections.

This is the datasette pattern: every write runs on one thread and one connection (so writers never
contend and never see "database is locked"), reads run on their own connections in WAL mode (so
they never wait for the writer). Each write job runs inside ``BEGIN IMMEDIATE`` … ``COMMIT``; an
exception rolls the whole job back. "database or disk is full" (SQLITE_FULL / ENOSPC) becomes
``DiskFullError`` after the rollback, so the store stays consistent.

Pragmas (security.md §6.3): WAL, ``synchronous=FULL`` on the writer (a commit after which a file is
acknowledged must survive power loss), ``secure_delete=ON`` (freed pages are zeroed, so purged
ciphertext does not linger), ``temp_store=MEMORY`` (no sort spill files), ``busy_timeout`` on every
connection (readers opening during a checkpoint wait instead of failing).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import DiskFullError, UnavailableError
from agent.store.schema import migrate

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
READ_POOL_SIZE = 4

TraceCallback = Callable[[str], None]


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return True
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        return "database or disk is full" in text or "disk i/o error" in text and _enospc_hint(exc)
    return False


def _enospc_hint(exc: sqlite3.Error) -> bool:
    # SQLite reports some ENOSPC conditions (WAL growth on a full volume) as SQLITE_IOERR_WRITE.
    return getattr(exc, "sqlite_errorname", "") in {"SQLITE_IOERR_WRITE", "SQLITE_FULL"}


def connect(path: Path, *, writer: bool, trace: TraceCallback | None = None) -> sqlite3.Connection:
    """Open one connection with the store's pragmas; creates the file 0600."""
    if not path.exists():
        # Create with 0600 ourselves rather than rely on the umask of whoever started us.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    if trace is not None:
        conn.set_trace_callback(trace)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = " + ("FULL" if writer else "NORMAL"))
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _fix_modes(path: Path) -> None:
    """-wal and -shm are created by SQLite with the process umask: force 0600 (security.md §10)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)


# The mode of a queued write that needs no savepoint (``Database.submit(single_statement=True)``);
# truthy, like the ``True`` of other writes in a transaction.
SINGLE_STATEMENT = "single-statement"


class Database:
    """The writer thread and the read pool over one SQLite file."""

    def __init__(
        self, path: Path, *, trace: TraceCallback | None = None, pool_size: int = READ_POOL_SIZE
    ) -> None:
        self.path = path
        self._trace = trace
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._pool_size = pool_size
        self._pool_created = 0
        self._pool_lock = threading.Lock()
        self._all_readers: list[sqlite3.Connection] = []
        self._jobs: queue.Queue[
            tuple[Callable[[sqlite3.Connection], Any], bool | str, concurrent.futures.Future[Any]] | None
        ] = queue.Queue()
        self._closed = False
        old_umask = os.umask(0o077)  # -wal/-shm created by SQLite inherit it
        try:
            conn = connect(path, writer=True, trace=trace)
            migrate(conn)
        finally:
            os.umask(old_umask)
        self._writer_conn = conn
        _fix_modes(path)
        self._thread = threading.Thread(target=self._run_writer, name="store-writer", daemon=True)
        self._thread.start()

    # -- writes ------------------------------------------------------------------------------
    def _run_writer(self) -> None:
        """Group commit: the writes already waiting are run as one transaction (one fsync), each
        in its own SAVEPOINT so a failing write rolls back only itself. Callers get their result
        only after the COMMIT: nothing is acknowledged before it is durable. If SQLite aborts the
        whole transaction (e.g. database full), that write fails and the others are re-run in a
        fresh transaction. Writes that must run outside a transaction run alone."""
        conn = self._writer_conn
        carry = None
        while True:
            item = carry if carry is not None else self._jobs.get()
            carry = None
            if item is None:
                break
            fn, transaction, future = item
            if not transaction:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(conn))
                    except BaseException as exc:  # noqa: BLE001
                        future.set_exception(exc)
                continue
            batch = [item]
            while len(batch) < 64:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or not nxt[1]:
                    carry = nxt
                    if nxt is None:
                        self._jobs.put(None)
                        carry = None
                    break
                batch.append(nxt)
            batch = [b for b in batch if b[2].set_running_or_notify_cancel()]
            while batch:
                outcomes: list[tuple[bool, Any]] = []
                aborted: tuple[int, BaseException] | None = None
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for index, (fn, mode, _future) in enumerate(batch):
                        # A single-statement write needs no savepoint: SQLite undoes a failed
                        # statement by itself, and there is nothing else of it to undo.
                        guarded = mode is not SINGLE_STATEMENT
                        if guarded:
                            conn.execute("SAVEPOINT job")
                        try:
                            result = fn(conn)
                            if guarded:
                                conn.execute("RELEASE job")
                            outcomes.append((True, result))
                        except BaseException as exc:  # noqa: BLE001
                            if not conn.in_transaction:  # SQLite rolled the whole batch back (e.g. FULL)
                                aborted = (index, exc)
                                break
                            if guarded:
                                conn.execute("ROLLBACK TO job")
                                conn.execute("RELEASE job")
                            outcomes.append((False, exc))
                    if aborted is None:
                        conn.execute("COMMIT")
                except BaseException as exc:  # noqa: BLE001 - BEGIN/COMMIT failed: the whole batch fails
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    for _, _, future in batch:
                        future.set_exception(exc)
                    batch = []
                    break
                if aborted is not None:
                    index, failure = aborted
                    batch[index][2].set_exception(failure)
                    batch = batch[:index] + batch[index + 1 :]  # the others again, in a new transaction
                    continue
                for (_, _, future), out in zip(batch, outcomes, strict=True):
                    (future.set_result if out[0] else future.set_exception)(out[1])
                batch = []
        conn.close()

    def write(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` on the writer thread in one transaction; returns its result."""
        return self.result(self.submit(fn, transaction=transaction))

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        transaction: bool = True,
        single_statement: bool = False,
    ) -> concurrent.futures.Future[T]:
        """Queue ``fn(conn)`` for the writer thread and return at once; writes run in submission
        order and the future resolves only after the COMMIT that made it durable. Use
        ``result(future)`` to wait for it with the store's error mapping.

        ``single_statement``: ``fn`` changes the database with at most one statement and raises
        only from it, so it runs without a savepoint of its own (a failed statement leaves
        nothing behind) — for small, frequent writes such as a relay request's replay record."""
        if self._closed:
            raise UnavailableError("the store is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, SINGLE_STATEMENT if single_statement and transaction else transaction, future))
        return future

    @staticmethod
    def result(future: concurrent.futures.Future[T]) -> T:
        """Wait for a submitted write; disk full is `DiskFullError` (nothing was committed)."""
        try:
            return future.result()
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise DiskFullError("disk full while writing the store; nothing was committed") from None
            raise
        except OSError as exc:
            if exc.errno == 28:
                raise DiskFullError("disk full while writing the store; nothing was committed") from None
            raise

    # -- reads -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection from the pool, inside one short read transaction (a snapshot)."""
        if self._closed:
            raise UnavailableError("the store is closed")
        conn = self._take()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                # Short transactions: a long reader would block WAL checkpoints.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")
        finally:
            self._pool.put(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of one SELECT on a pooled read connection. A single statement is its own
        read transaction, so the rows come from one snapshot without a ``BEGIN``/``COMMIT``."""
        if self._closed:
            raise UnavailableError("the store is closed")
        conn = self._take()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            self._pool.put(conn)

    def _take(self) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            if self._pool_created < self._pool_size:
                self._pool_created += 1
                conn = connect(self.path, writer=False, trace=self._trace)
                self._all_readers.append(conn)
                return conn
        return self._pool.get()

    def close(self) -> None:
        """Checkpoint the WAL with TRUNCATE and close every connection (clean shutdown)."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.write(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), transaction=False)
        self._closed = True
        self._jobs.put(None)
        self._thread.join()
        for conn in self._all_readers:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        _fix_modes(self.path)
