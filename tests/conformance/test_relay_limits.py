"""relay-api.md §9 limits with the DEFAULT configuration — C-31, C-32, C-33, C-34 (429 not audited);
security.md S-34 — real agent process. Buckets are per client certificate, so every test uses
fresh client certificates."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(tmp_path_factory.mktemp("limits") / "inst")  # default [api.limits]
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    yield a
    a.close()


def fresh(agent: S.AgentProcess, tag: str) -> tuple[Path, Path]:
    c, k, _ = agent.issue_client(f"relay-{tag}")
    return c, k


def _burst(agent: S.AgentProcess, cert: tuple[Path, Path], n: int, path: str = "/v1/documents/search"):
    s = agent.session(cert)
    out = []
    t0 = time.monotonic()
    try:
        for _ in range(n):
            if path == "/v1/health":
                r = s.get(agent.base + path, timeout=30)
            else:
                r = s.post(
                    agent.base + path,
                    data=json.dumps(S.search_body(), ensure_ascii=False).encode(),
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
            out.append(r)
    finally:
        s.close()
    return out, time.monotonic() - t0


def test_c31_rate_limit_429_with_retry_after_and_other_client_unaffected(agent) -> None:
    a, b = fresh(agent, "a"), fresh(agent, "b")
    n_audit = len(agent.audit_records())
    responses, elapsed = _burst(agent, a, 40)
    codes = [r.status_code for r in responses]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, codes
    assert set(codes) <= {200, 429}
    ok = codes.count(200)
    assert ok >= 20 and ok <= 20 + int(10 * elapsed) + 1, (ok, elapsed)
    for r in limited:
        assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers
        body = r.json()
        assert body["type"] == S.PROBLEM_PREFIX + "rate-limited" and body["title"] == "Too many requests"
        assert body["status"] == 429 and "request_id" in body
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.headers.get("Cache-Control") == "no-store"
    # another client is unaffected
    other, _ = _burst(agent, b, 5)
    assert [r.status_code for r in other] == [200] * 5
    # C-34: 429 writes no audit record
    time.sleep(0.3)
    assert len(agent.audit_records()) == n_audit + ok + 5


def test_c31_bucket_refills(agent) -> None:
    a = fresh(agent, "refill")
    responses, _ = _burst(agent, a, 30)
    assert any(r.status_code == 429 for r in responses)
    wait = max(int(r.headers["Retry-After"]) for r in responses if r.status_code == 429)
    time.sleep(min(wait, 3) + 0.2)
    again, _ = _burst(agent, a, 1)
    assert again[0].status_code == 200


def test_health_rate_limit_is_separate(agent) -> None:
    a = fresh(agent, "health")
    responses, elapsed = _burst(agent, a, 12, "/v1/health")
    codes = [r.status_code for r in responses]
    assert 429 in codes, codes
    assert codes.count(200) <= 5 + int(elapsed) + 1
    for r in responses:
        if r.status_code == 429:
            assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", ""))
            assert r.json()["type"] == S.PROBLEM_PREFIX + "rate-limited"
    # the document bucket of the same client is untouched
    docs, _ = _burst(agent, a, 3)
    assert [r.status_code for r in docs] == [200] * 3


def test_s34_rate_limited_requests_counted_in_monthly_report(agent) -> None:
    a = fresh(agent, "s34")
    responses, _ = _burst(agent, a, 35)
    n429 = sum(r.status_code == 429 for r in responses)
    assert n429 > 0
    month = dt.datetime.now(S.KST).strftime("%Y-%m")
    r = agent.cli("audit", "report", "--month", month, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    text = json.dumps(report)
    assert re.search(r"429|rate", text), text[:2000]

    def find_counts(node, acc, inside=False):
        if isinstance(node, dict):
            for k, v in node.items():
                hit = inside or "429" in k or "rate" in k.lower()
                if hit and type(v) is int:
                    acc.append(v)
                find_counts(v, acc, hit)
        elif isinstance(node, list):
            for v in node:
                find_counts(v, acc, inside)
        return acc

    assert max(find_counts(report, [0])) >= n429, text[:2000]


# -- C-32 in-flight limit -------------------------------------------------------------------------
def _hold(agent: S.AgentProcess, cert: tuple[Path, Path]) -> ssl.SSLSocket:
    """A search whose head announced a body that never comes: it stays in flight (until §9 body timeout)."""
    ctx = agent.client_context(cert)
    raw = socket.create_connection(("127.0.0.1", agent.api_port), timeout=15)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(
        b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n{"
    )
    return tls


def test_c32_33rd_in_flight_request_gets_503_overloaded(agent) -> None:
    certs = [fresh(agent, f"hold{i}") for i in range(4)]  # 8 per certificate stays below the burst
    held = []
    try:
        for i in range(32):
            held.append(_hold(agent, certs[i % 4]))
        time.sleep(0.5)
        extra = fresh(agent, "33rd")
        r = agent.search(S.search_body(), cert=extra)
        assert r.status_code == 503, r.text
        assert r.json()["type"] == S.PROBLEM_PREFIX + "overloaded" and r.json()["title"] == "Agent is busy"
        assert r.headers.get("Retry-After") == "1"  # §9 table: 503 overloaded + Retry-After: 1
    finally:
        for t in held:
            t.close()
    time.sleep(0.5)
    assert agent.search(S.search_body(), cert=fresh(agent, "after")).status_code == 200


# -- C-33 slow clients -------------------------------------------------------------------------------
def _time_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    sock.settimeout(limit)
    t0 = time.monotonic()
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return float("inf"), data
    except OSError:
        pass
    return time.monotonic() - t0, data


@pytest.mark.slow
def test_c33_stalled_head_body_handshake_and_idle_are_cut_while_others_are_served(agent) -> None:
    results: dict[str, tuple[float, bytes]] = {}
    cert = fresh(agent, "slow")

    def half_head() -> None:
        tls = agent.client_context(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", agent.api_port)), server_hostname="localhost"
        )
        tls.sendall(b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
        results["head"] = _time_until_closed(tls, 20)

    def no_handshake() -> None:
        s = socket.create_connection(("127.0.0.1", agent.api_port))
        results["handshake"] = _time_until_closed(s, 20)

    def stalled_body() -> None:
        tls = agent.client_context(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", agent.api_port)), server_hostname="localhost"
        )
        tls.sendall(
            b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        results["body"] = _time_until_closed(tls, 20)

    def idle() -> None:
        tls = agent.client_context(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", agent.api_port)), server_hostname="localhost"
        )
        results["idle"] = _time_until_closed(tls, 25)

    def after_response() -> None:
        """§9: idle keep-alive 15 s (the head deadline, 10 s after the previous response, may be shorter)."""
        tls = agent.client_context(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", agent.api_port)), server_hostname="localhost"
        )
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tls.settimeout(5)
        first = tls.recv(65536)
        elapsed, data = _time_until_closed(tls, 25)
        results["keepalive"] = (elapsed, first[:12] + b"|" + data)

    threads = [
        threading.Thread(target=f) for f in (half_head, no_handshake, stalled_body, idle, after_response)
    ]
    for t in threads:
        t.start()
    good = fresh(agent, "good")
    served = []
    for _ in range(6):
        t0 = time.monotonic()
        r = agent.search(S.search_body(), cert=good)
        served.append((r.status_code, time.monotonic() - t0))
        time.sleep(1.0)
    for t in threads:
        t.join(30)
    assert all(code == 200 for code, _ in served), served
    assert sorted(d for _, d in served)[-2] < 1.0, served  # one outlier tolerated on a loaded machine
    elapsed, data = results["head"]
    assert elapsed <= 11.0 and data == b"", results["head"]
    elapsed, data = results["handshake"]
    assert elapsed <= 11.0, results["handshake"]
    elapsed, data = results["body"]
    assert elapsed <= 11.0 and (data == b"" or data.startswith(b"HTTP/1.1 408")), results["body"]
    elapsed, data = results["idle"]
    assert elapsed <= 11.0 and data == b"", results["idle"]  # a fresh connection gets the head deadline
    elapsed, data = results["keepalive"]
    assert data == b"HTTP/1.1 200|" and elapsed <= 16.0, results["keepalive"]


@pytest.mark.slow
def test_s9_500_idle_tcp_connections_do_not_stop_authenticated_clients(agent) -> None:
    idle = []
    try:
        for _ in range(500):
            try:
                idle.append(socket.create_connection(("127.0.0.1", agent.api_port), timeout=5))
            except OSError:
                break
        assert len(idle) >= 400
        good = fresh(agent, "p99")
        s = agent.session(good)
        lat = []
        try:
            for _ in range(20):
                t0 = time.monotonic()
                r = s.post(
                    agent.base + "/v1/documents/search",
                    data=json.dumps(S.search_body()).encode(),
                    headers={"Content-Type": "application/json"},
                    timeout=10,
                )
                lat.append(time.monotonic() - t0)
                assert r.status_code == 200
        finally:
            s.close()
        # p99 < 1 s per §9; tolerate one outlier of 20 samples on a loaded test machine
        assert sorted(lat)[-2] < 1.0, lat
    finally:
        for c in idle:
            c.close()


@pytest.mark.slow
def test_s9_60_dribbling_authenticated_connections_do_not_stop_others(agent) -> None:
    cert = fresh(agent, "dribble")
    ctx = agent.client_context(cert)
    conns = []
    try:
        for _ in range(60):
            tls = ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", agent.api_port), timeout=5),
                server_hostname="localhost",
            )
            tls.sendall(b"GET /v1/health HTTP/1.1\r\n")
            conns.append(tls)
        good = fresh(agent, "dribble-good")
        lat = []
        for i in range(10):
            for c in conns[i::10]:
                try:
                    c.sendall(b"X")
                except OSError:
                    pass
            t0 = time.monotonic()
            r = agent.search(S.search_body(), cert=good)
            lat.append(time.monotonic() - t0)
            assert r.status_code == 200
            time.sleep(0.3)
        assert sorted(lat)[-2] < 1.0, lat
    finally:
        for c in conns:
            c.close()
