"""Limits of relay-api.md §9 over real sockets: rate (C-31, S-34), in-flight (C-32), request-head
deadline (C-33), head size, and slow TLS clients (slowloris) not hurting a legitimate client.
Timeouts are configured short (2 s) to keep the tests fast; the mechanism is the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import statistics
import threading
import time
from pathlib import Path

from agent.clock import KST
from tests.api.conftest import ingest, make_doc, start_agent, stop_agent
from tests.api.test_api_documents import CLAIM, fetch, search
from tests.api.test_api_requests import assert_problem, search_body
from tests.api.tlsutil import client_context, exchange


def _closed_without_bytes(sock: socket.socket | ssl.SSLSocket, within: float) -> bool:
    """True when the peer closes the connection within ``within`` seconds sending nothing."""
    sock.settimeout(within)
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b""


def test_rate_limit_per_client_certificate(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={"rate_per_s": 10, "rate_burst": 20, "health_rate_per_s": 0})
    try:
        statuses: list[int] = []
        retry_after: list[str] = []
        lock = threading.Lock()

        def burst() -> None:
            with agent.client() as c:  # same certificate = same client
                for _ in range(6):
                    resp = c.post("/v1/documents/search", search_body())
                    with lock:
                        statuses.append(resp.status_code)
                    if resp.status_code == 429:
                        assert_problem(resp, 429, "rate-limited")
                        retry_after.append(resp.headers["retry-after"])

        started = time.monotonic()
        threads = [threading.Thread(target=burst) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert set(statuses) <= {200, 429}
        assert statuses.count(200) <= 20 + 10 * elapsed + 1
        assert statuses.count(429) >= 1
        assert all(v.isdigit() and int(v) >= 1 for v in retry_after)
        cert, key, _ = agent.certs.issue_client("relay-02")
        with agent.client(cert, key) as other:
            assert other.post("/v1/documents/search", search_body()).status_code == 200
        # 429 writes no audit record, only the per-day per-client counter the report summarises.
        assert len(agent.relay_records()) == statuses.count(200) + 1
        month = dt.datetime.now(KST).strftime("%Y-%m")
        counts = agent.audit.rate_limited_counts(month)
        assert sum(r["count"] for r in counts) == statuses.count(429)
    finally:
        stop_agent(agent)


def test_health_has_its_own_bucket(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 1, "health_rate_burst": 5})
    try:
        with agent.client() as c:
            codes = [c.health().status_code for _ in range(8)]
            assert codes[:5] == [200] * 5 and 429 in codes[5:]
            assert c.post("/v1/documents/search", search_body()).status_code == 200
    finally:
        stop_agent(agent)


def test_in_flight_limit_answers_overloaded(tmp_path: Path) -> None:
    release = threading.Event()

    async def hold(path: str) -> None:
        if path == "/v1/documents/search":
            while not release.is_set():
                await asyncio.sleep(0.01)

    agent = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0}, handler_hook=hold)
    try:
        results: list[int] = []

        def send() -> None:
            with agent.client() as c:
                results.append(c.post("/v1/documents/search", search_body()).status_code)

        threads = [threading.Thread(target=send) for _ in range(32)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while agent.server.app.in_flight < 32 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.server.app.in_flight == 32
        with agent.client() as c:
            resp = c.health()
        assert_problem(resp, 503, "overloaded")
        assert resp.headers["retry-after"] == "1"
        release.set()
        for t in threads:
            t.join()
        assert results == [200] * 32
    finally:
        release.set()
        stop_agent(agent)


def test_stalled_request_head_is_closed_without_response(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0, "header_timeout": "2s"})
    try:
        ctx = client_context(agent.certs.server_ca, agent.certs.client_cert, agent.certs.client_key)
        raw = socket.create_connection(agent.server.address, timeout=5)
        stalled = ctx.wrap_socket(raw, server_hostname="localhost")
        stalled.sendall(b"GET /v1/health HTTP/1.1\r\nHost: loc")
        started = time.monotonic()
        with agent.client() as c:  # others keep being served meanwhile
            assert c.health().status_code == 200
        assert _closed_without_bytes(stalled, 5)
        assert time.monotonic() - started < 3.5
        # The deadline also runs after a response on a keep-alive connection.
        ok, received, sock = exchange(agent.server.address, ctx)
        assert received.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /v1/hea")
        assert _closed_without_bytes(sock, 5)
    finally:
        stop_agent(agent)


def test_oversized_request_line_and_too_many_headers_are_closed(agent) -> None:
    ctx = client_context(agent.certs.server_ca, agent.certs.client_cert, agent.certs.client_key)
    long_line = b"GET /v1/health?" + b"a" * 2100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    many = (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(70)) + b"\r\n"
    )
    for request in (long_line, many):
        ok, received, _ = exchange(agent.server.address, ctx, request)
        assert ok
        assert received == b"" or received.split(b" ")[1] in (b"414", b"431", b"400")
    ok, received, _ = exchange(agent.server.address, ctx)
    assert received.startswith(b"HTTP/1.1 200")


def test_500_slow_tls_clients_do_not_stall_a_legitimate_fetch(tmp_path: Path) -> None:
    agent = start_agent(
        tmp_path,
        limits={"rate_per_s": 0, "health_rate_per_s": 0, "handshake_timeout": "2s", "header_timeout": "2s"},
    )
    slow: list[socket.socket] = []
    try:
        ids = ingest(agent.store, make_doc("receipt"), make_doc("prescription"))
        # A partial ClientHello record header: the server waits for the rest that never comes.
        for n in range(500):
            s = socket.create_connection(agent.server.address, timeout=5)
            if n % 2:
                s.sendall(b"\x16\x03\x01\x02\x00\x01")
            slow.append(s)
        opened = time.monotonic()
        latencies = []
        with agent.client() as c:
            assert search(c).status_code == 200
            while time.monotonic() - opened < 3.0:
                t0 = time.perf_counter()
                assert fetch(c, ids).status_code == 200
                latencies.append(time.perf_counter() - t0)
        # Fresh handshakes are served too.
        t0 = time.perf_counter()
        with agent.client() as c2:
            assert c2.health().status_code == 200
        latencies.append(time.perf_counter() - t0)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        assert p99 < 1.0, (p99, statistics.median(latencies))
        # Every slow connection was closed by the handshake deadline (none got an HTTP byte).
        closed = sum(_closed_without_bytes(s, max(0.1, opened + 4 - time.monotonic())) for s in slow)
        assert closed == 500
        assert len(agent.server._listener.handshaking) == 0
    finally:
        for s in slow:
            s.close()
        stop_agent(agent)


def test_oldest_handshakes_are_dropped_beyond_the_cap(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0, "max_handshakes": 10})
    socks = []
    try:
        for _ in range(15):
            socks.append(socket.create_connection(agent.server.address, timeout=5))
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(agent.server._listener.handshaking) <= 10
        assert all(_closed_without_bytes(s, 2) for s in socks[:5])
        with agent.client() as c:
            assert c.health().status_code == 200
    finally:
        for s in socks:
            s.close()
        stop_agent(agent)


def test_connections_beyond_the_cap_get_busy_and_close(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0, "max_connections": 2})
    try:
        ctx = client_context(agent.certs.server_ca, agent.certs.client_cert, agent.certs.client_key)
        held = [exchange(agent.server.address, ctx)[2] for _ in range(2)]
        ok, received, _ = exchange(agent.server.address, ctx)
        assert received.startswith(b"HTTP/1.1 503")
        for s in held:
            s.close()
        time.sleep(0.2)
        ok, received, _ = exchange(agent.server.address, ctx)
        assert received.startswith(b"HTTP/1.1 200")
    finally:
        stop_agent(agent)


__all__ = ["CLAIM"]
