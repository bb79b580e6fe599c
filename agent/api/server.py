"""The public mTLS listener: our own asyncio accept loop around uvicorn's httptools protocol class.

Why not ``uvicorn.Server``: it hands no peer certificate to the application, has no TLS handshake
deadline, no cap on connections still in the handshake and no deadline for an incomplete request
head (PITFALLS.md, relay-api.md §9). So the listener here

1. accepts plain TCP and upgrades with ``loop.start_tls(..., ssl_handshake_timeout=...)``, keeping
   the connections still in the handshake in an ordered map (the oldest is dropped beyond
   ``max_handshakes``);
2. after the handshake reads the peer certificate, applies the fingerprint allow-list and the
   connection cap, and only then attaches the HTTP protocol — a refused client never gets an HTTP
   byte (§2.3);
3. runs uvicorn's ``HttpToolsProtocol`` (the C ``llhttp`` parser: a fetch's HTTP handling cost
   about a fifth of its CPU with the pure-Python h11) with a request-head deadline and head-size
   limits of our own, and the request rules h11 enforced and llhttp does not (one ``Host`` on
   HTTP/1.1, routes taken from the request target as sent).

``RelayServer`` is what the daemon composer uses: ``start()`` runs the event loop in a background
thread and returns once listening; ``stop()``; ``address``; ``reload_tls()`` (SIGHUP hook: new
connections get the new certificate, open ones keep theirs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agent import metrics
from agent.api.app import ConnInfo, RelayApp
from agent.api.backend import Backend, BackendProtocol
from agent.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from agent.api.tls import build_server_context, client_cert_allowed, peer_identity
from agent.clock import Clock, SystemClock
from agent.config import Config, parse_listen
from agent.errors import ConfigError
from agent.keys import check_key_file

log = logging.getLogger("agent.api")

MAX_REQUEST_LINE = 2048
MAX_HEADER_BLOCK = 16 * 1024
MAX_HEADER_FIELDS = 64
_COALESCE_MAX = 256 * 1024  # responses up to this size leave as one write

_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 5\r\nretry-after: 1\r\ncache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\nbusy\n"
)


class _Pending(asyncio.Protocol):
    """Holds bytes that arrive between the end of the handshake and attaching the HTTP protocol.

    With TLS 1.3 the request often travels in the same packet as the client's Finished message;
    ``start_tls`` may deliver it before our coroutine resumes.
    """

    def __init__(self) -> None:
        self.buffer: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class _CoalescingTransport:
    """The TLS transport as the HTTP protocol sees it: what it writes in one go — the status
    line and headers, then the body — leaves as one TLS record and one ``send`` instead of two
    (and the client wakes once). Writes are joined until the response is complete or, at the
    latest, until the event loop's next iteration; ``close`` flushes first, ``abort`` drops them."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            self._transport.write(pending[0])
        elif sum(len(chunk) for chunk in pending) <= _COALESCE_MAX:
            self._transport.write(b"".join(pending))
        else:  # a large body is not copied just to save one record
            for chunk in pending:
                self._transport.write(chunk)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _BadHead(Exception):
    """A request head llhttp accepts but the port refuses (answered ``400 bad-request``)."""


class _RelayHTTP(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the §9 request-head deadline and head-size limits."""

    def __init__(self, listener: _Listener, conn: ConnInfo) -> None:
        super().__init__(listener.uv_config, listener.server_state, {"conn": conn}, _loop=listener.loop)
        self._listener = listener
        self._conn_info = conn
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_seen = 0  # bytes of the current head received so far
        self._head_buf = b""
        self._cycle_at_arm: object | None = None
        self._bad_request_pending = False  # a 400 waits for the response in progress

    # -- request-head deadline ------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._awaiting_head = True
        self._head_buf = b""
        self._cycle_at_arm = self.cycle
        self._head_timer = self.loop.call_later(self._listener.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        # §9: no complete head in time → close without a response.
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self.transport.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._listener.active.add(self)
        metrics.CONNECTIONS.set(len(self._listener.active))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._listener.active.discard(self)
        metrics.CONNECTIONS.set(len(self._listener.active))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and not self._check_head(data):
            self.transport.abort()
            return
        super().data_received(data)
        if self._awaiting_head and self.cycle is not self._cycle_at_arm:
            # The parser produced a request: the head is complete.
            self._awaiting_head = False
            self._head_buf = b""
            self._cancel_head_timer()

    def _check_head(self, data: bytes) -> bool:
        """False when the head breaks the request-line / header-block limits (§9: close)."""
        buf = self._head_buf + data
        end = buf.find(b"\r\n\r\n")
        head = buf if end < 0 else buf[: end + 2]
        line_end = head.find(b"\r\n")
        if (line_end < 0 and len(head) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
            return False
        if len(head) > MAX_HEADER_BLOCK or head.count(b"\r\n") - 1 > MAX_HEADER_FIELDS:
            return False
        # Keep only what a later check needs; once the head is complete, the parser takes over.
        self._head_buf = head if end < 0 else b""
        return True

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]  # the whole response, as one record
        super().on_response_complete()
        if self._bad_request_pending and not self.transport.is_closing():
            self.send_400_response("")  # answered now, unless a pipelined request came first
            return
        if self.transport.get_write_buffer_size() > 0:
            # §9: the client must accept the response within write_timeout.
            self.loop.call_later(self._listener.write_timeout, self._write_deadline)
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            # "within 10 s of connection or of the previous response" (§9).
            self._arm_head_timer()

    def _write_deadline(self) -> None:
        if not self.transport.is_closing() and self.transport.get_write_buffer_size() > 0:
            self.transport.abort()

    def on_headers_complete(self) -> None:
        # Rules h11 enforced that llhttp does not: an HTTP/1.1 request names exactly one Host
        # (RFC 9112 §3.2). Raising here makes the parser fail → ``send_400_response``.
        if self.parser.get_http_version() == "1.1" and sum(n == b"host" for n, _ in self.headers) != 1:
            raise _BadHead()
        super().on_headers_complete()
        # Route on the request target as sent, as before with h11 (only the query is split off):
        # llhttp's URL parser would also map an absolute-form target or a ``#fragment`` onto a
        # route path. The ASGI task has not started yet, so it sees these values.
        raw_path, _, query = self.url.partition(b"?")
        self.scope["raw_path"] = raw_path
        self.scope["path"] = urllib.parse.unquote(raw_path.decode("ascii"))
        self.scope["query_string"] = query

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (garbage request line, no Host …) gets the same kind of
        answer as every other error on this port — a ``bad-request`` problem document with the
        §2.4 headers — instead of uvicorn's plain-text 400, then the connection is closed."""
        if self.cycle is not None and not self.cycle.response_complete:
            # Garbage pipelined behind a request still being answered: that request gets its
            # response first, then this one (as with h11, which parsed one request at a time).
            self._bad_request_pending = True
            self.transport.pause_reading()
            return
        body = problem_body("bad-request", None)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: "
            + PROBLEM_MEDIA_TYPE.encode("ascii")
            + b"\r\ncontent-length: "
            + str(len(body)).encode("ascii")
            + b"\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _Listener:
    """Everything that lives on the server's event loop."""

    def __init__(
        self, config: Config, app: RelayApp, loop: asyncio.AbstractEventLoop, ctx: ssl.SSLContext
    ) -> None:
        limits = config.limits
        self.loop = loop
        self.ctx = ctx
        self.allowed = frozenset(f.lower() for f in config.api.allowed_client_fingerprints)
        self.handshake_timeout = float(limits.handshake_timeout)
        self.header_timeout = float(limits.header_timeout)
        self.write_timeout = float(limits.write_timeout)
        self.max_handshakes = int(limits.max_handshakes)
        self.max_connections = int(limits.max_connections)
        # uvicorn's protocol needs a loaded Config; everything it would add is switched off:
        # no proxy headers (a client could spoof its audited address), no Server header, no
        # lifespan, no websockets, no access log (it would log paths and addresses at INFO).
        self.uv_config = UvicornConfig(
            app=app,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_keep_alive=int(limits.keepalive_timeout),
        )
        self.uv_config.load()
        self.server_state = ServerState()
        self.handshaking: collections.OrderedDict[int, asyncio.BaseTransport] = collections.OrderedDict()
        self.active: set[_RelayHTTP] = set()
        self.server: asyncio.base_events.Server | None = None
        self._date_task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        self.server = await self.loop.create_server(lambda: _Accept(self), sock=sock, backlog=2048)
        self._date_task = self.loop.create_task(self._update_date())

    async def _update_date(self) -> None:
        while True:
            date = email.utils.formatdate(usegmt=True).encode("ascii")
            self.server_state.default_headers = [(b"date", date)]
            await asyncio.sleep(1)

    def accept(self, transport: asyncio.BaseTransport) -> None:
        key = id(transport)
        self.handshaking[key] = transport
        while len(self.handshaking) > self.max_handshakes:
            # §9: the oldest handshakes are dropped first.
            _, oldest = self.handshaking.popitem(last=False)
            oldest.abort()  # type: ignore[attr-defined]
        self.loop.create_task(self._handshake(key, transport))

    async def _handshake(self, key: int, raw: asyncio.BaseTransport) -> None:
        pending = _Pending()
        try:
            tls = await self.loop.start_tls(
                raw,  # type: ignore[arg-type]
                pending,
                self.ctx,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError, RuntimeError):
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            raw.abort()  # type: ignore[attr-defined]
            return
        finally:
            self.handshaking.pop(key, None)
        if tls is None or pending.lost:
            return
        self._attach(tls, pending)

    def _attach(self, tls: asyncio.Transport, pending: _Pending) -> None:
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # Unreachable with CERT_REQUIRED, but the allow-list must never be skipped by accident.
        if not der or not client_cert_allowed(der, self.allowed):
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            tls.abort()
            return
        if len(self.active) >= self.max_connections:
            tls.write(_BUSY_RESPONSE)
            tls.close()
            return
        peer = peer_identity(der)
        addr = tls.get_extra_info("peername") or ("", 0)
        conn = ConnInfo(peer=peer, ip=str(addr[0]), port=int(addr[1]), abort=lambda: None)
        proto = _RelayHTTP(self, conn)
        conn.abort = proto.abort
        tls.set_protocol(proto)
        proto.connection_made(tls)
        for chunk in pending.buffer:
            if proto.transport.is_closing():
                break
            proto.data_received(chunk)
        if pending.eof:
            proto.eof_received()

    async def close(self) -> None:
        if self._date_task is not None:
            self._date_task.cancel()
        if self.server is not None:
            self.server.close()
        for transport in list(self.handshaking.values()):
            transport.abort()  # type: ignore[attr-defined]
        for proto in list(self.active):
            proto.shutdown() if proto.cycle is None or proto.cycle.response_complete else proto.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2) if self.server else None


class _Accept(asyncio.Protocol):
    """First protocol of every TCP connection: hands the transport to the handshake task."""

    def __init__(self, listener: _Listener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Responses go out as several small TLS records: without NODELAY, Nagle + the
            # client's delayed ACK add ~40 ms to every response.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener.accept(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - start_tls swaps us out first
        pass


class RelayServer:
    """The relay-facing server. ``start()`` runs it in its own thread; ``stop()`` ends it."""

    def __init__(
        self,
        config: Config,
        *,
        store: Any,
        audit: Any,
        keyring: Any,
        clock: Clock | None = None,
        ingest_status: Callable[[], str] | None = None,
        handler_hook: Callable[[str], Awaitable[None]] | None = None,
        sock: socket.socket | None = None,
        backend: BackendProtocol | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        # ``backend`` replaces the store adapter (unit tests of the HTTP layer only).
        self.backend = backend or Backend(config, store=store, audit=audit, keyring=keyring, clock=self.clock)
        self.app = RelayApp(
            config, self.backend, self.clock, ingest_status=ingest_status, handler_hook=handler_hook
        )
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: _Listener | None = None
        self._address: tuple[str, int] | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- public API ----------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    def start(self) -> None:
        """Bind, start the loop thread, return once listening (raises what startup raised)."""
        ctx = self._context()
        sock = self._sock or self._bind()
        self._address = sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._run, args=(sock, ctx), name="relay-api", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self.app.close()
        self._loop = None

    def serve_forever(self) -> None:
        """Start and block until the thread ends (``stop()`` from a signal handler ends it)."""
        self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def reload_tls(self) -> None:
        """Load cert/key/CA/CRL again; new handshakes use them, open connections are untouched."""
        ctx = self._context()
        if self._listener is not None and self._loop is not None:
            listener = self._listener
            self._loop.call_soon_threadsafe(setattr, listener, "ctx", ctx)

    # -- internals ----------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        api = self.config.api
        # The TLS key gets the same check as every key file (security.md §5, S-20): exit 4 at start.
        check_key_file(api.server_key)
        for path in (api.server_cert, api.client_ca, api.client_crl):
            if path is not None and not path.is_file():
                raise ConfigError(
                    f"TLS file {path} is missing (api.server_cert, api.client_ca or api.client_crl)"
                )
        try:
            return build_server_context(api.server_cert, api.server_key, api.client_ca, api.client_crl)
        except ssl.SSLError:
            raise ConfigError(
                f"cannot load the TLS certificate, key or client CA "
                f"({api.server_cert}, {api.client_ca}): not PEM or key and certificate differ"
            ) from None

    def _bind(self) -> socket.socket:
        host, port = parse_listen(self.config.api.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    def _run(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._listener = _Listener(self.config, self.app, loop, ctx)
            loop.run_until_complete(self._listener.start(sock))
        except BaseException as exc:  # reported to start()'s caller
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _shutdown(self) -> None:
        if self._listener is not None:
            await self._listener.close()


__all__ = ["RelayServer"]
