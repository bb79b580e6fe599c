"""relay-api.md §9 with STRICTER configured limits (always allowed; keys of cli.md §5 [api.limits]),
§6.4 response-too-large, §5 health `degraded` — real agent process."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]

LIMITS = {
    "rate_per_s": 0,
    "health_rate_per_s": 0,
    "max_body_bytes": 4096,
    "max_fetch_ids": 5,
    "max_search_results": 3,
    "max_response_bytes": 5000,
    "max_in_flight": 4,
    "max_connections": 8,
    "header_timeout": "2s",
    "max_handshakes": 8,
    "body_timeout": "2s",
    "keepalive_timeout": "3s",
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(tmp_path_factory.mktemp("cfglim") / "inst", limits=LIMITS)
    text = a.config.read_text(encoding="utf-8").replace('scan_interval = "30s"', 'scan_interval = "1s"')
    a.config.write_text(text, encoding="utf-8")
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    yield a
    a.close()


def _type(r) -> str:
    return r.json()["type"].removeprefix(S.PROBLEM_PREFIX)


def _padded(body, size: int) -> bytes:
    raw = json.dumps(body, ensure_ascii=False).encode()
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_configured_body_limit(agent) -> None:
    r = agent.request(
        "POST",
        "/v1/documents/search",
        data=_padded(S.search_body(), 4097),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and _type(r) == "payload-too-large"
    r = agent.request(
        "POST",
        "/v1/documents/search",
        data=_padded(S.search_body(types=["prescription"]), 4096),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_configured_search_result_limit(agent) -> None:
    r = agent.search(S.search_body())  # 7 matches
    assert r.status_code == 422 and _type(r) == "too-many-results"
    assert (
        agent.search(S.search_body(types=["receipt_detail", "prescription", "pharmacy_receipt"])).status_code
        == 200
    )


def test_configured_fetch_id_limit(agent) -> None:
    ids = [f"doc_01JBX4Q7M2T9K3V8N5R6W{i:05d}" for i in range(6)]
    r = agent.fetch(S.fetch_body(S.new_claim(), ids))
    assert r.status_code == 422 and _type(r) == "too-many-documents"


def test_response_too_large_releases_nothing(agent) -> None:
    claim = S.new_claim()
    ids = []
    for types in (["receipt"],):
        for period in (("2025-03-01", "2025-03-15"), ("2025-03-16", "2025-03-31")):
            r = agent.search(S.search_body(claim=claim, types=types, period=period))
            assert r.status_code == 200, r.text
            ids += [d["id"] for d in r.json()["documents"]]
    assert len(ids) >= 3
    one = agent.fetch(S.fetch_body(claim, ids[:1]))
    assert one.status_code == 200
    size = len(base64.b64decode(one.json()["documents"][0]["content_base64"]))
    n = 5000 // size + 1
    assert n <= 5 and len(ids) >= n, (size, len(ids))
    body = S.fetch_body(claim, ids[:n])
    r = agent.fetch(body)
    assert r.status_code == 422 and _type(r) == "response-too-large", r.text
    assert r.json()["title"] == "Response would be too large"
    assert "content_base64" not in r.text
    rec = agent.audit_for(body["request_id"])
    assert len(rec) == 1 and rec[0]["status"] == 422
    assert agent.fetch(S.fetch_body(claim, ids[: n - 1])).status_code == 200


def _hold(agent: S.AgentProcess, partial_head: bool = False):
    tls = agent.client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", agent.api_port), timeout=10), server_hostname="localhost"
    )
    if partial_head:
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: loc")
    else:
        tls.sendall(
            b"POST /v1/documents/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300\r\n\r\n{"
        )
    return tls


def test_configured_in_flight_limit(agent) -> None:
    held = [_hold(agent) for _ in range(4)]
    try:
        time.sleep(0.3)
        r = agent.search(S.search_body())
        assert r.status_code == 503 and _type(r) == "overloaded"
        assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", ""))
    finally:
        for t in held:
            t.close()
    time.sleep(0.3)
    assert agent.search(S.search_body(types=["prescription"])).status_code == 200


def test_configured_connection_limit(agent) -> None:
    held = [_hold(agent, partial_head=True) for _ in range(8)]
    try:
        time.sleep(0.3)
        got: bytes = b""
        try:
            ctx = agent.client_context()
            _, got = S.raw_exchange(
                ("127.0.0.1", agent.api_port),
                ctx,
                b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                3,
            )
        except OSError:
            got = b""
        assert not got.startswith(b"HTTP/1.1 200"), got[:200]
        assert got == b"" or got.startswith(b"HTTP/1.1 503"), got[:200]
    finally:
        for t in held:
            t.close()
    time.sleep(0.5)
    assert agent.health().status_code == 200


def test_configured_header_timeout(agent) -> None:
    tls = _hold(agent, partial_head=True)
    tls.settimeout(10)
    t0 = time.monotonic()
    data = b""
    try:
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    assert time.monotonic() - t0 <= 3.0 and data == b""


@pytest.mark.slow
def test_health_degraded_when_watch_folder_unreachable(agent) -> None:
    gone = agent.inbox.with_name("inbox.gone")
    os.rename(agent.inbox, gone)
    try:
        deadline = time.monotonic() + 40
        body = {}
        while time.monotonic() < deadline:
            r = agent.health()
            body = r.json()
            if body["status"] != "ok":
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        assert body["status"] == "degraded" and body["ingest"] == "degraded", body
        assert body["storage"] == "ok" and body["audit_log"] == "ok"
        # serving still works
        assert agent.search(S.search_body(types=["prescription"])).status_code == 200
    finally:
        os.rename(gone, agent.inbox)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and agent.health().json()["status"] != "ok":
        time.sleep(0.5)
    assert agent.health().json()["status"] == "ok"


def test_oldest_pending_handshake_is_dropped_beyond_the_cap(agent) -> None:
    """§9: connections still in the TLS handshake are capped (here 8); the oldest is dropped first."""
    socks = [socket.create_connection(("127.0.0.1", agent.api_port), timeout=5)]
    time.sleep(0.2)
    socks += [socket.create_connection(("127.0.0.1", agent.api_port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.5)
        first = socks[0]
        first.settimeout(1.5)
        try:
            closed = first.recv(1) == b""
        except TimeoutError:
            closed = False
        except OSError:
            closed = True
        assert closed, "the oldest handshake was not dropped"
        last = socks[-1]
        last.settimeout(0.2)
        try:
            still_open = last.recv(1) != b""
        except TimeoutError:
            still_open = True
        except OSError:
            still_open = False
        assert still_open, "the newest handshake was dropped instead of the oldest"
        assert agent.search(S.search_body(types=["prescription"])).status_code == 200
    finally:
        for s_ in socks:
            s_.close()
