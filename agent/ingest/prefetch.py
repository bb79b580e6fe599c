"""Look-ahead for a backfill: upcoming files are read and validated in worker processes.

Decoding, parsing and validating a file is pure CPU work (``process.prepare``) that Python runs
on one core at a time; committing must stay on one thread, in order, one transaction per file.
So during a backfill a small ``ProcessPoolExecutor`` prepares the next few files while the ingest
worker commits the current one:

- **bounded**: at most ``lookahead`` files and ``max_bytes`` of file content in flight (always at
  least one file), so memory stays bounded whatever the backlog;
- **in order**: the worker commits files strictly in the order it took them from the queue
  (``agent.ingest.order``), whatever order the workers finish in;
- **no effect until commit**: a worker only reads the file; the commit, the quarantine and the
  acknowledgement happen in the worker thread. A crash anywhere (worker or daemon) leaves every
  file either committed + acknowledged or untouched;
- **small folders stay in-process**: the pool is started only when at least ``min_backlog``
  files are waiting (files are prepared in-process until its first worker is up) and stopped
  again after ``idle_s`` without work; with ``workers = 0`` it is never used (tests, one-core
  machines). A broken pool (a worker killed) falls back to
  in-process preparation of the affected files and is recreated on the next backlog.

Workers are started by ``forkserver`` where available (``spawn`` elsewhere): forking the daemon
itself would copy its threads' locks and its keys into the children. A worker exits as soon as
the daemon is gone (it watches the read end of a pipe only the daemon writes to): a
``ProcessPoolExecutor`` worker would otherwise wait for work for ever after a SIGKILL.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from agent.ingest.process import Prepared, prepare

log = logging.getLogger("agent.ingest")

DEFAULT_LOOKAHEAD = 6
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MIN_BACKLOG = 16
DEFAULT_IDLE_S = 60.0
WORKER_NICE = 10
MAX_FAILED_STARTS = 3  # pools in a row whose first worker never came up: give up on the pool


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        # Imported once in the fork server, not once per worker.
        ctx.set_forkserver_preload(["agent.ingest.process"])
    return ctx


def _warm_up() -> int:
    """A first task: the pool counts as ready once a worker has run it (files are prepared
    in-process meanwhile, so a starting pool never delays the first commits)."""
    return os.getpid()


def _release_broken(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Make sure a broken pool's manager thread can end (or the process could never exit).

    A worker killed while writing its result leaves a half-written message in the result pipe;
    the manager thread then waits for the rest forever, since this process holds the pipe's write
    end too. The remaining workers are killed (their look-aheads are prepared in-process again)
    and our write end is closed: the reader sees end-of-file and the pool winds down."""
    processes = dict(getattr(pool, "_processes", None) or {})
    for process in processes.values():
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass
    for process in processes.values():
        try:
            process.join(timeout=2.0)
        except (OSError, ValueError, AssertionError, AttributeError):
            pass
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass


def _worker_init(lifeline: Any, nice: int) -> None:
    """Worker initializer: lower priority, and exit when the daemon's end of ``lifeline`` closes.

    The committing thread is the one serial step of a backfill; when the cores are busy it must
    not wait for look-ahead work, so the workers yield to it (``nice``).
    """
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass

    def watch() -> None:
        try:
            lifeline.recv()  # nothing is ever sent: this returns only with EOF
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


class Prefetcher:
    """A lazily started process pool for ``process.prepare``; used by the ingest worker only."""

    def __init__(
        self,
        workers: int,
        *,
        lookahead: int = DEFAULT_LOOKAHEAD,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_backlog: int = DEFAULT_MIN_BACKLOG,
        idle_s: float = DEFAULT_IDLE_S,
    ) -> None:
        self.workers = max(0, workers)
        self.lookahead = max(1, lookahead)
        self.max_bytes = max_bytes
        self.min_backlog = min_backlog
        self.idle_s = idle_s
        self.nice = WORKER_NICE
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        # The pool each pending look-ahead was submitted to (weak: forgotten with the future).
        self._pool_of: weakref.WeakKeyDictionary[concurrent.futures.Future[Prepared], Any] = (
            weakref.WeakKeyDictionary()
        )
        self._lifeline: Any = None  # our (write) end of the workers' lifeline pipe
        self._lifeline_theirs: Any = None
        self._warm: concurrent.futures.Future[int] | None = None
        self._failed_starts = 0
        self._last_used = time.monotonic()
        self.starts = 0

    @property
    def running(self) -> bool:
        return self._pool is not None

    def wanted(self, waiting: int) -> bool:
        """Use the pool for this many files waiting? Starts it when a backlog makes it worth it;
        a single file is prepared in-process even while the pool runs (no look-ahead to gain)."""
        if self.workers == 0 or waiting < 2:
            return False
        if self._pool is None and waiting < self.min_backlog:
            return False
        if self._pool is None:
            self._start()
        warm = self._warm
        if warm is not None:
            if not warm.done():
                return False
            self._warm = None
            if warm.cancelled() or warm.exception() is not None:
                self._failed_starts += 1
                self.broken()
                if self._failed_starts >= MAX_FAILED_STARTS:
                    log.warning("look-ahead workers cannot start; preparing files in-process from now on")
                    self.workers = 0
                return False
            self._failed_starts = 0
        return self._pool is not None

    def _start(self) -> None:
        try:
            ctx = _context()
            theirs, ours = ctx.Pipe(duplex=False)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(theirs, self.nice),
            )
            self._lifeline = ours
            self._lifeline_theirs = theirs
            self._warm = self._pool.submit(_warm_up)
            self.starts += 1
            log.info("backfill look-ahead started", extra={"workers": self.workers})
        except (OSError, ValueError, RuntimeError):
            log.warning("process pool unavailable; preparing files in-process", exc_info=True)
            self.workers = 0
            self._pool = None

    def submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[Prepared] | None:
        """``prepare(*args, **kwargs)`` in a worker; None when the pool is not running (prepare inline)."""
        if self._pool is None:
            return None
        self._last_used = time.monotonic()
        try:
            future = self._pool.submit(prepare, *args, **kwargs)
        except (BrokenProcessPool, RuntimeError):
            self.broken()
            return None
        self._pool_of[future] = self._pool
        return future

    def workers_alive(self, future: concurrent.futures.Future[Prepared] | None = None) -> bool:
        """False when a process of the pool (of ``future``, else the current one) has died, or that
        pool was already dropped as broken. ProcessPoolExecutor normally fails the pending futures
        then, but not always: a worker killed while writing its result can leave the pool's
        manager thread blocked on a half-written message forever. The waiter checks this."""
        pool = self._pool if future is None else self._pool_of.get(future)
        if pool is None or pool is not self._pool:
            return False
        processes = getattr(pool, "_processes", None) or {}
        return all(p.is_alive() for p in list(processes.values()))

    def broken(self) -> None:
        """A worker died (killed, out of memory): drop the pool; the next backlog makes a new one."""
        pool, self._pool, self._warm = self._pool, None, None
        if pool is not None:
            log.warning("look-ahead worker lost; preparing in-process until the next backlog")
            _release_broken(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            self._close_lifeline()

    def _close_lifeline(self) -> None:
        for end in (self._lifeline, self._lifeline_theirs):
            if end is not None:
                try:
                    end.close()
                except OSError:
                    pass
        self._lifeline = self._lifeline_theirs = None

    def idle(self) -> None:
        """Called when there is no work: stop the pool after ``idle_s`` (its memory goes back)."""
        if self._pool is not None and time.monotonic() - self._last_used >= self.idle_s:
            self.shutdown()

    def shutdown(self) -> None:
        pool, self._pool, self._warm = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            self._close_lifeline()
            log.info("backfill look-ahead stopped")
