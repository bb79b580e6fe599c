"""The ASGI application of the public port: exactly three routes, steps 2–5 of relay-api.md §8.

A plain ASGI callable rather than a framework router, so the order of §8 is visible in one
function: in-flight limit → route/method (404/405) → per-client rate limit (429) → body size
(413) → media type (415). Then a search or fetch goes through ``agent.api.handlers`` in stages,
each where it costs fewest thread hand-offs, and no thread is ever parked waiting for another:

1. the event loop runs steps 6–9 (JSON, schema, envelope, clock window: pure) and queues the
   replay record (step 10) on the store's writer thread, which group-commits every record
   queued meanwhile;
2. that commit queues the request for the workers, which take queued requests in lots: one
   worker does the store reads, rendering and signing (steps 10–11) of every request of its lot
   — so SQLite never stalls the loop that also runs handshakes and deadlines — and hands all
   their audit records to the audit log's group commit at once (one wake-up and at most one
   commit per lot, not per request);
3. the loop is woken when the record is durable (one wake-up per group) and only then sends
   the response (step 12).

Every response carries the §2.4 headers; nothing here ever echoes input.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent import metrics
from agent.api.backend import BackendProtocol
from agent.api.handlers import (
    ConnPeer,
    Handlers,
    Prepared,
    Response,
    Started,
    problem_response,
    today_kst,
)
from agent.api.problems import ProblemError
from agent.api.ratelimit import TokenBucket
from agent.api.tls import PeerIdentity
from agent.clock import Clock
from agent.config import Config

HEALTH = "/v1/health"
SEARCH = "/v1/documents/search"
FETCH = "/v1/documents/fetch"

# path -> (method, audit action or None). The OpenAPI document is generated from this table.
ROUTES: dict[str, tuple[str, str | None]] = {
    HEALTH: ("GET", None),
    SEARCH: ("POST", "documents.search"),
    FETCH: ("POST", "documents.fetch"),
}

_BASE_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
# Worker threads for the reads, rendering and signing of requests. Few on purpose: the work is
# Python (one GIL), no worker waits for a commit it does not write itself (the replay record is
# committed before a worker gets the request, the audit record is awaited by the loop), and
# every extra runnable thread makes the loop and the writer threads wait longer for the GIL and
# costs context switches. Requests are taken in lots (``RelayApp._to_workers``), in FIFO order:
# one worker works through a lot while another may be writing the previous lot's audit group
# commit; the others answer health checks and count 429s.
WORKERS = 4


@dataclasses.dataclass
class ConnInfo:
    """Per-connection facts from the TLS layer, handed to the app in ``scope["state"]["conn"]``."""

    peer: PeerIdentity | None
    ip: str
    port: int
    abort: Callable[[], None]

    @property
    def client_key(self) -> str:
        # §9: the client for rate limiting is the certificate fingerprint, else the address.
        return self.peer.cert_sha256 if self.peer is not None else self.ip

    def conn_peer(self) -> ConnPeer:
        return ConnPeer(
            self.peer.cert_sha256 if self.peer else None,
            self.peer.subject if self.peer else None,
            self.ip,
            self.port,
        )


class _Disconnected(Exception):
    pass


class _LoopInbox:
    """Calls from other threads into the event loop, delivered in batches.

    An audit commit completes every request of its group at once, from one thread: the first
    call of a batch wakes the loop (one write to its self-pipe), the others ride along.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._calls: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._armed = False

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; dropped silently once the loop is closed."""
        with self._lock:
            self._calls.append((fn, args))
            if self._armed:
                return
            self._armed = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the server has stopped
            with self._lock:
                self._calls.clear()
                self._armed = False

    def _drain(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
            self._armed = False
        for fn, args in calls:
            fn(*args)


@dataclasses.dataclass(frozen=True)
class _Job:
    """A search or fetch past the event loop's steps, on its way through a worker; its outcome
    (the prepared response, and the audit error if its record could not be written) is set on
    the loop."""

    started: Prepared | Started | None
    outcome: asyncio.Future[tuple[Prepared, BaseException | None]]
    inbox: _LoopInbox

    def settle(self, prepared: Prepared, error: BaseException | None) -> None:  # any thread
        self.inbox.call(_set_outcome, self.outcome, prepared, error)

    def settle_audited(self, prepared: Prepared, done: concurrent.futures.Future[Any]) -> None:
        self.settle(prepared, done.exception())

    def fail_closed(self, error: BaseException) -> None:  # any thread
        # No record describes this request, so nothing may be sent but the fail-closed 503.
        self.settle(Prepared(problem_response("internal-error", None), {}, None), error)


def _set_outcome(
    outcome: asyncio.Future[tuple[Prepared, BaseException | None]],
    prepared: Prepared,
    error: BaseException | None,
) -> None:
    if not outcome.done():
        outcome.set_result((prepared, error))


class RelayApp:
    def __init__(
        self,
        config: Config,
        backend: BackendProtocol,
        clock: Clock,
        *,
        ingest_status: Callable[[], str] | None = None,
        handler_hook: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        limits = config.limits
        self.config = config
        self.clock = clock
        self.handlers = Handlers(config, backend, clock)
        self.backend = backend
        self.max_in_flight = int(limits.max_in_flight)
        self.max_body = int(limits.max_body_bytes)
        self.body_timeout = float(limits.body_timeout)
        self.write_timeout = float(limits.write_timeout)
        self.doc_rate = TokenBucket(limits.rate_per_s, limits.rate_burst)
        self.health_rate = TokenBucket(limits.health_rate_per_s, limits.health_rate_burst)
        self.ingest_status = ingest_status or (lambda: "ok")
        # Test hook (C-32): awaited inside the in-flight window, so a test can hold requests.
        self.handler_hook = handler_hook
        self.in_flight = 0
        # When the last search or fetch (any outcome) reached the app; `status` and the heartbeat.
        self.last_request_at: dt.datetime | None = None
        self._inbox: _LoopInbox | None = None
        self._jobs_lock = threading.Lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._collecting = False  # a worker has been asked to take the queued jobs
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(WORKERS, self.max_in_flight + 2), thread_name_prefix="relay-api"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        conn: ConnInfo = scope["state"]["conn"]
        started = time.perf_counter()
        path = scope["path"]
        route = path if path in ROUTES else "other"
        # Step 2: in-flight limit, before anything else touches the request.
        response: Response | None
        if self.in_flight >= self.max_in_flight:
            response = problem_response("overloaded", None, retry_after=1)
        else:
            self.in_flight += 1
            try:
                response = await self._dispatch(scope, receive, conn)
            except _Disconnected:
                return
            finally:
                self.in_flight -= 1
        if response is None:
            return
        _requests_counter(route, response.status // 100).inc()
        if response.problem:
            metrics.PROBLEMS.labels(problem_type=response.problem).inc()
        _request_seconds(route).observe(time.perf_counter() - started)
        await self._send(send, response, conn)

    async def _dispatch(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], conn: ConnInfo
    ) -> Response | None:
        loop = asyncio.get_running_loop()
        path, method = scope["path"], scope["method"]
        # Step 3: route and method. A query string is not part of any route.
        if path not in ROUTES:
            return problem_response("not-found", None)
        allowed, action = ROUTES[path]
        if method != allowed:
            response = problem_response("method-not-allowed", None)
            if action is not None:  # reached step 3 of a document route: audited (C-34)
                response = await self._audited(action, conn, ProblemError("method-not-allowed"), None)
            response.headers.append(("allow", allowed))
            return response
        # Step 4: per-client rate limit; a 429 writes no audit record, only the per-day counter.
        bucket = self.health_rate if action is None else self.doc_rate
        retry = bucket.take(conn.client_key, self.clock.monotonic())
        if retry:
            if action is not None:
                await loop.run_in_executor(
                    self.pool, self.backend.count_rate_limited, conn.client_key, today_kst(self.clock.now())
                )
            return problem_response("rate-limited", None, retry_after=retry)
        if self.handler_hook is not None:
            await self.handler_hook(path)
        if action is None:
            return await loop.run_in_executor(self.pool, self.handlers.health, self.ingest_status())
        # Step 5: size, then media type and encoding.
        headers = _header_map(scope["headers"])
        early: ProblemError | None = None
        body: bytes | None = None
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            early = ProblemError("payload-too-large")
        else:
            body = await self._read_body(receive, conn)
            if body is None:
                early = ProblemError("payload-too-large")
        if early is None and not _media_type_ok(headers):
            early = ProblemError("unsupported-media-type")
        return await self._audited(action, conn, early, body)

    async def _audited(
        self, action: str, conn: ConnInfo, early: ProblemError | None, body: bytes | None
    ) -> Response:
        """Steps 6–12 with as few thread hand-offs as possible, and no thread parked waiting.

        The loop runs steps 6–9 (pure) and queues the replay record on the store's writer
        (step 10); once it is committed, a worker does the rest (reads, rendering, signing) with
        its lot and hands the audit records to the audit log's group commit; the loop is woken
        when the record is durable (or could not be written), once for all requests settled
        together.
        """
        self.last_request_at = self.clock.now()  # `status` "last relay request" (cli.md §3.1)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[Prepared, BaseException | None]] = loop.create_future()
        peer = conn.conn_peer()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _LoopInbox(loop)
        try:
            started = self.handlers.start(action, peer, early, body)
        except Exception as exc:  # a bug (start answers every request)
            _Job(None, outcome, inbox).fail_closed(exc)
        else:
            job = _Job(started, outcome, inbox)
            if isinstance(started, Started) and started.record is not None:
                # Runs in the store's writer thread right after the commit (or here, if done).
                started.record.add_done_callback(lambda _: self._to_workers(job))
            else:
                # Answered by ``start``, or outside the clock window: the audit record (and the
                # relay-id read) is a worker's — the loop never waits for the disk.
                self._to_workers(job)
        prepared, error = await outcome
        return self.handlers.audited(prepared, error)

    def _to_workers(self, job: _Job) -> None:
        """Queue ``job`` for the workers (from the loop, or the store's writer thread right after
        a replay commit). Jobs are taken in lots: a worker finishes every job queued when it
        starts, then hands all their audit records to the audit log at once, so a lot costs one
        wake-up of one worker and (at most) one group commit, whatever its size."""
        with self._jobs_lock:
            self._jobs.append(job)
            if self._collecting:
                return  # a worker will take it with its lot
            self._collecting = True
        self._schedule_lot()

    def _schedule_lot(self) -> None:
        try:
            self.pool.submit(self._work_lot)
        except RuntimeError as exc:  # the pool is shut down: the server is stopping
            with self._jobs_lock:
                jobs, self._jobs = list(self._jobs), collections.deque()
                self._collecting = False
            for queued in jobs:
                queued.fail_closed(exc)

    def _work_lot(self) -> None:  # in a worker thread
        with self._jobs_lock:
            jobs, self._jobs = list(self._jobs), collections.deque()
        # Jobs queued from now on form the next lot, taken by another worker once this one has
        # finished these (while it hands their records to the audit log).
        done: list[tuple[_Job, Prepared]] = []
        try:
            for job in jobs:
                try:
                    started = job.started
                    assert started is not None
                    prepared = started if isinstance(started, Prepared) else self.handlers.finish(started)
                except BaseException as exc:  # noqa: BLE001 - a bug (finish answers every request)
                    job.fail_closed(exc)
                    continue
                done.append((job, prepared))
        finally:
            with self._jobs_lock:
                more = bool(self._jobs)
                self._collecting = more
            if more:
                self._schedule_lot()
        if not done:
            return
        try:
            submitted = self.backend.audit_submit_each([prepared.event for _, prepared in done])
        except BaseException as exc:  # noqa: BLE001 - a bug: fail closed
            for job, prepared in done:
                job.settle(prepared, exc)
            return
        # Each record is written whatever becomes of its request (the futures cannot be
        # cancelled). This worker may write them itself, as the audit log's group-commit leader;
        # else another thread does and wakes the loop — no thread waits for them here.
        for (job, prepared), future in zip(done, submitted, strict=True):
            future.add_done_callback(functools.partial(job.settle_audited, prepared))

    async def _read_body(
        self, receive: Callable[[], Awaitable[dict[str, Any]]], conn: ConnInfo
    ) -> bytes | None:
        """The body within ``body_timeout`` (else close, §9); ``None`` when over the size limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                conn.abort()
                raise _Disconnected()
            # A timer rather than ``wait_for`` (a task per call): usually the body came with the
            # head and ``receive`` does not suspend. Aborting makes it return a disconnect.
            timer = loop.call_later(remaining, conn.abort)
            try:
                message = await receive()
            finally:
                timer.cancel()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _send(
        self, send: Callable[[dict[str, Any]], Awaitable[None]], response: Response, conn: ConnInfo
    ) -> None:
        headers = [
            (b"content-type", response.content_type.encode("ascii")),
            (b"content-length", str(len(response.body)).encode("ascii")),
        ] + _BASE_HEADERS
        headers += [(k.encode("ascii"), v.encode("ascii")) for k, v in response.headers]
        if response.close:
            headers.append((b"connection", b"close"))
        # uvicorn waits for the transport to drain before each write: bound that wait (§9). A
        # timer rather than ``wait_for``: the sends rarely suspend, and ``wait_for`` would create
        # a task for each of them.
        timer = asyncio.get_running_loop().call_later(self.write_timeout, conn.abort)
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            timer.cancel()


# The metric children of each (closed) label set, looked up once rather than per request.
@functools.cache
def _requests_counter(route: str, status_class: int) -> Any:
    return metrics.REQUESTS.labels(route=route, status_class=f"{status_class}xx")


@functools.cache
def _request_seconds(route: str) -> Any:
    return metrics.REQUEST_SECONDS.labels(route=route)


def _header_map(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in out and name in (b"content-type", b"content-encoding"):
            out[name] += b"," + value
        else:
            out.setdefault(name, value)
    return out


def _media_type_ok(headers: dict[bytes, bytes]) -> bool:
    """§3: ``application/json`` with at most ``charset=utf-8``; identity content encoding only."""
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() != b"identity":
        return False
    ctype = headers.get(b"content-type")
    if ctype is None:
        return False
    parts = [p.strip() for p in ctype.decode("latin-1").split(";")]
    if parts[0].lower() != "application/json":
        return False
    for param in parts[1:]:
        if not param:
            continue
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return False
    return True
