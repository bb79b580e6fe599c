"""relay-api.md §2.1, §2.4, §3, §4, §5, §7 and C-05…C-11, C-13, C-29, C-30, C-39, C-40 — real agent process."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from typing import Any

import pytest
import requests

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]

SEARCH = "/v1/documents/search"
FETCH = "/v1/documents/fetch"
HEALTH = "/v1/health"
CONTRACT_POINTERS = re.compile(
    r"^(|/request_id|/sent_at|/relay_id|/claim|/claim/claim_no|/claim/consent_id|/patient|/patient/name|"
    r"/patient/rrn|/period|/period/from|/period/to|/document_types(/\d+)?|/document_ids(/\d+)?|/format)$"
)
ERROR_CODES = {
    "missing",
    "type",
    "format",
    "pattern",
    "enum",
    "range",
    "too-long",
    "duplicate",
    "unknown-field",
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    return S.shared_agent(tmp_path_factory)


def common_headers(r: requests.Response) -> None:
    """§2.4 / C-07."""
    assert r.headers.get("Cache-Control") == "no-store", r.headers
    assert r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
    server = r.headers.get("Server")
    assert server is None or server == "silson-agent", server
    assert r.headers.get("Content-Encoding", "identity") == "identity"


def ok_json(r: requests.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    common_headers(r)
    assert r.headers["Content-Type"].replace(" ", "").lower() == "application/json;charset=utf-8"
    body = r.json()
    assert not S.has_float(body)
    return body  # type: ignore[no-any-return]


def problem(r: requests.Response, name: str, *, request_id: str | None | bool = False) -> dict[str, Any]:
    """C-30: media type, type from §7.1, title from the table, integer status = HTTP status, request_id."""
    status, title = S.PROBLEM_TABLE[name]
    assert r.status_code == status, (r.status_code, r.text)
    common_headers(r)
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/problem+json", r.headers
    body = r.json()
    assert body["type"] == S.PROBLEM_PREFIX + name, body
    assert body["title"] == title
    assert type(body["status"]) is int and body["status"] == status
    assert "request_id" in body
    if request_id is not False:
        assert body["request_id"] == request_id
    if "detail" in body:
        assert isinstance(body["detail"], str)
    if status in (429, 503):
        assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers
    if name == "validation-failed":
        assert isinstance(body.get("errors"), list) and body["errors"]
        for e in body["errors"]:
            assert set(e) == {"pointer", "code"}, e
            assert CONTRACT_POINTERS.match(e["pointer"]), e
            assert e["code"] in ERROR_CODES, e
    assert not S.has_float(body)
    return body  # type: ignore[no-any-return]


def errors_of(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["pointer"], e["code"]) for e in body.get("errors", [])}


def post_raw(
    agent: S.AgentProcess,
    path: str,
    data: bytes,
    content_type: str | None = "application/json",
    **headers: str,
) -> requests.Response:
    hdrs = dict(headers)
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    for attempt in range(3):
        s = agent.session()
        try:
            return s.post(agent.base + path, data=data, headers=hdrs, timeout=30)
        except requests.ConnectionError:
            if attempt == 2:
                raise
        finally:
            s.close()
    raise AssertionError("unreachable")


def fake_id(i: int) -> str:
    """A well-formed document id that does not exist."""
    return f"doc_01JBX4Q7M2T9K3V8N5R6W{i:05d}"


def enc(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


# =============================================================================================
# §2.1 routes — C-05, C-06, C-40
# =============================================================================================
@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/status",
        "/docs",
        "/openapi.json",
        "/redoc",
        "/",
        "/v1",
        "/v1/documents",
        "/v1/health/",
        "/v1/documents/search/",
        "/V1/HEALTH",
        "/debug",
        "/v2/health",
        "/status.json",
    ],
)
def test_c05_unknown_paths_are_404_not_found(agent, path: str) -> None:
    problem(agent.request("GET", path), "not-found", request_id=None)


def test_c06_no_get_document_by_id_route(agent) -> None:
    problem(agent.request("GET", "/v1/documents/doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"), "not-found")
    problem(agent.request("POST", "/v1/documents/doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC", json_body={}), "not-found")


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("PUT", SEARCH, "POST"),
        ("GET", SEARCH, "POST"),
        ("DELETE", FETCH, "POST"),
        ("PATCH", FETCH, "POST"),
        ("GET", FETCH, "POST"),
        ("POST", HEALTH, "GET"),
        ("PUT", HEALTH, "GET"),
        ("DELETE", HEALTH, "GET"),
    ],
)
def test_c06_wrong_method_is_405_with_allow(agent, method: str, path: str, allow: str) -> None:
    data = b"{}" if method in ("PUT", "POST", "PATCH") else None
    r = agent.request(method, path, data=data)
    problem(r, "method-not-allowed")
    assert r.headers.get("Allow") == allow


def test_c06_options_is_405_not_cors(agent) -> None:
    r = agent.request("OPTIONS", SEARCH)
    problem(r, "method-not-allowed")
    assert r.headers.get("Allow") == "POST"
    assert not any(h.lower().startswith("access-control-") for h in r.headers)


# =============================================================================================
# §2.4 headers — C-07
# =============================================================================================
def test_c07_success_responses_carry_security_headers(agent) -> None:
    ok_json(agent.health())
    claim, _ = agent.search_ok()
    ok_json(agent.search(S.search_body(claim=claim)))


def test_c07_no_compression_even_when_asked(agent) -> None:
    r = agent.request(
        "POST", SEARCH, json_body=S.search_body(), headers={"Accept-Encoding": "gzip, deflate, br"}
    )
    assert r.raw.headers.get("Content-Encoding") in (None, "identity")
    ok_json(r)


def test_malformed_http_request_gets_no_plain_text_answer(agent) -> None:
    """§7: every error response on the public port is a problem document with the §2.4 headers
    (§7.2 allows closing the connection instead). A request head that is not HTTP must therefore
    get either nothing or a problem document — never a bare text/plain answer."""
    ctx = agent.client_context()
    for req in (b"GARBAGE\r\n\r\n", b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n"):  # 2nd: no Host
        _, data = agent.raw_exchange(ctx, req)
        if not data:
            continue
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: application/problem+json" in head, data[:300]
        assert b"cache-control: no-store" in head and b"x-content-type-options: nosniff" in head, data[:300]


@pytest.mark.parametrize(
    "req",
    [
        b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(70))
        + b"Connection: close\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        + b"a" * 17000
        + b"\r\nConnection: close\r\n\r\n",
    ],
    ids=["url-3000", "70-headers", "17k-header-block"],
)
def test_limits_request_line_and_header_block(agent, req: bytes) -> None:
    """§9: 414/431 or connection close."""
    _, data = agent.raw_exchange(agent.client_context(), req)
    assert data == b"" or re.match(rb"HTTP/1\.1 (414|431) ", data), data[:200]


# =============================================================================================
# §5 health — C-08 (happy part; 503 in test_relay_audit_unavailable)
# =============================================================================================
def test_c08_health_members(agent) -> None:
    body = ok_json(agent.health())
    required = {
        "status",
        "agent_version",
        "api_version",
        "api_revision",
        "institution_code",
        "server_time",
        "clock_tolerance_s",
        "storage",
        "audit_log",
        "ingest",
        "signing_key_id",
    }
    assert required <= set(body), set(body) ^ required
    assert body["status"] == "ok"
    assert body["api_version"] == "v1"
    assert type(body["api_revision"]) is int and body["api_revision"] == 0
    assert body["institution_code"] == "99000001"
    assert type(body["clock_tolerance_s"]) is int and body["clock_tolerance_s"] == 300
    assert body["storage"] == "ok" and body["audit_log"] == "ok" and body["ingest"] == "ok"
    assert isinstance(body["agent_version"], str) and body["agent_version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", body["server_time"])
    server_time = dt.datetime.fromisoformat(body["server_time"].replace("Z", "+00:00"))
    assert abs((server_time - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert re.fullmatch(r"[0-9a-f]{64}", body["signing_key_id"])
    text = json.dumps(body, ensure_ascii=False)
    for phi in S.phi_strings():
        assert phi not in text


def test_c08_health_signing_key_id_is_kid_of_keys_public(agent) -> None:
    key, out, _ = agent.public_key()
    import hashlib

    from cryptography.hazmat.primitives import serialization

    kid = hashlib.sha256(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()
    assert ok_json(agent.health())["signing_key_id"] == kid


def test_health_with_query_string_or_body_is_still_health(agent) -> None:
    ok_json(agent.request("GET", HEALTH + "?x=1"))


# =============================================================================================
# §3 body rules — C-09
# =============================================================================================
def _padded(body: dict[str, Any], size: int) -> bytes:
    raw = enc(body)
    assert len(raw) <= size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_c09_body_of_65537_bytes_is_413_with_null_subject_ref(agent) -> None:
    body = S.search_body()
    data = _padded(body, 65537)
    assert len(data) == 65537
    r = post_raw(agent, SEARCH, data)
    problem(r, "payload-too-large")
    recs = agent.audit_for(body["request_id"], wait=0.5)
    # request_id of an unread body cannot be known; look for the newest 413 record instead
    recs = recs or [x for x in agent.audit_records() if x.get("status") == 413][-1:]
    assert recs and recs[-1]["subject_ref"] is None


def test_c09_body_of_exactly_65536_bytes_is_accepted(agent) -> None:
    data = _padded(S.search_body(), 65536)
    assert len(data) == 65536
    ok_json(post_raw(agent, SEARCH, data))


def test_c09_streamed_chunked_body_over_limit_is_413(agent) -> None:
    data = _padded(S.search_body(), 70000)

    def gen():
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    s = agent.session()
    try:
        r = s.post(agent.base + SEARCH, data=gen(), headers={"Content-Type": "application/json"}, timeout=30)
    finally:
        s.close()
    problem(r, "payload-too-large")


def test_c09_413_takes_precedence_over_415(agent) -> None:
    status, _, body = head_only(
        agent, "POST", SEARCH, {"Content-Type": "text/plain", "Content-Length": "70000"}
    )
    assert status == 413 and body["type"] == S.PROBLEM_PREFIX + "payload-too-large"


@pytest.mark.parametrize(
    "ctype,extra",
    [
        ("text/plain", {}),
        ("application/x-www-form-urlencoded", {}),
        ("application/json; charset=iso-8859-1", {}),
        ("application/json; charset=utf-16", {}),
        (None, {}),
        ("application/json", {"Content-Encoding": "gzip"}),
        ("application/json", {"Content-Encoding": "deflate"}),
        ("application/jsonx", {}),
    ],
)
def test_c09_unsupported_media_type_is_415(agent, ctype: str | None, extra: dict[str, str]) -> None:
    problem(post_raw(agent, SEARCH, enc(S.search_body()), ctype, **extra), "unsupported-media-type")


@pytest.mark.parametrize(
    "ctype",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "application/json; charset=UTF-8",
        "Application/JSON",
    ],
)
def test_c09_json_content_types_accepted(agent, ctype: str) -> None:
    ok_json(post_raw(agent, SEARCH, enc(S.search_body()), ctype))


def test_c09_identity_content_encoding_accepted(agent) -> None:
    ok_json(
        post_raw(agent, SEARCH, enc(S.search_body()), "application/json", **{"Content-Encoding": "identity"})
    )


def test_c09_415_takes_precedence_over_400(agent) -> None:
    problem(post_raw(agent, SEARCH, b"{not json", "text/plain"), "unsupported-media-type")


def _bad_bodies() -> dict[str, bytes]:
    good = S.search_body()
    raw = enc(good)
    return {
        "invalid-utf8": raw[:-1] + b', "x": "\xff\xfe"}',
        "invalid-utf8-in-name": raw.replace(S.A_NAME.encode(), b"\xed\xa0\x80"),  # lone surrogate
        "duplicate-key": raw[:-1] + b', "request_id": "' + str(uuid.uuid4()).encode() + b'"}',
        "nested-duplicate-key": raw.replace(b'"claim": {', b'"claim": {"claim_no": "CLM-1", '),
        "array": b"[" + raw + b"]",
        "string": b'"hello"',
        "number": b"42",
        "null": b"null",
        "NaN": raw[:-1] + b', "x": NaN}',
        "Infinity": raw[:-1] + b', "x": Infinity}',
        "-Infinity": raw[:-1] + b', "x": -Infinity}',
        "trailing-data": raw + b"x",
        "two-objects": raw + raw,
        "empty": b"",
        "truncated": raw[:-5],
        "bom": b"\xef\xbb\xbf" + raw,
        "utf16": json.dumps(good, ensure_ascii=False).encode("utf-16"),
        "single-quotes": raw.replace(b'"', b"'"),
        "comment": b"/* c */" + raw,
    }


@pytest.mark.parametrize("case", list(_bad_bodies()))
def test_c09_malformed_json_is_400_bad_request(agent, case: str) -> None:
    problem(post_raw(agent, SEARCH, _bad_bodies()[case]), "bad-request")


def test_c09_malformed_fetch_is_400_too(agent) -> None:
    problem(post_raw(agent, FETCH, b"[1,2]"), "bad-request")
    problem(post_raw(agent, FETCH, b'{"a":1,"a":2}'), "bad-request")


# =============================================================================================
# §4 envelope, §6 schemas — C-10
# =============================================================================================
def _without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    b = json.loads(json.dumps(body))
    node = b
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return b


@pytest.mark.parametrize(
    "path,pointer",
    [
        (("request_id",), "/request_id"),
        (("sent_at",), "/sent_at"),
        (("relay_id",), "/relay_id"),
        (("claim",), "/claim"),
        (("claim", "claim_no"), "/claim/claim_no"),
        (("claim", "consent_id"), "/claim/consent_id"),
        (("patient",), "/patient"),
        (("patient", "name"), "/patient/name"),
        (("patient", "rrn"), "/patient/rrn"),
        (("period",), "/period"),
        (("period", "from"), "/period/from"),
        (("period", "to"), "/period/to"),
    ],
)
def test_c10_missing_member_of_search_is_422_missing(agent, path: tuple[str, ...], pointer: str) -> None:
    body = _without(S.search_body(), *path)
    b = problem(agent.search(body), "validation-failed")
    assert (pointer, "missing") in errors_of(b), b


def test_c10_missing_request_id_gives_null_request_id(agent) -> None:
    body = _without(S.search_body(), "request_id")
    problem(agent.search(body), "validation-failed", request_id=None)


@pytest.mark.parametrize(
    "path,pointer",
    [
        (("request_id",), "/request_id"),
        (("claim",), "/claim"),
        (("document_ids",), "/document_ids"),
    ],
)
def test_c10_missing_member_of_fetch_is_422(agent, path: tuple[str, ...], pointer: str) -> None:
    body = _without(S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"]), *path)
    b = problem(agent.fetch(body), "validation-failed")
    assert (pointer, "missing") in errors_of(b), b


@pytest.mark.parametrize(
    "sent_at",
    [
        "2025-11-03T05:12:00",
        "2025-11-03T05:12:00+00:00",
        "2025-11-03T14:12:00+09:00",
        "2025-11-03 05:12:00Z",
        "2025-11-03",
        "2025-11-03T05:12Z",
        "2025-11-03T05:12:00.1234567Z",
        "2025-13-03T05:12:00Z",
        "2025-11-03T25:12:00Z",
        "",
        "now",
    ],
)
def test_c10_malformed_sent_at_is_422_not_clock_skew(agent, sent_at: str) -> None:
    body = S.search_body()
    body["sent_at"] = sent_at
    b = problem(agent.search(body), "validation-failed")
    assert any(p == "/sent_at" for p, _ in errors_of(b)), b


def test_sent_at_with_six_fraction_digits_and_milliseconds_accepted(agent) -> None:
    now = dt.datetime.now(dt.UTC)
    for text in (
        now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
    ):
        body = S.search_body()
        body["sent_at"] = text
        ok_json(agent.search(body))


@pytest.mark.parametrize("where", [(), ("claim",), ("patient",), ("period",)])
def test_c10_unknown_member_at_any_level_is_422_unknown_field(agent, where: tuple[str, ...]) -> None:
    body = S.search_body()
    node = body
    for p in where:
        node = node[p]
    node["x_secret_" + S.A_RRN] = S.A_NAME
    r = agent.search(body)
    b = problem(r, "validation-failed")
    pointer = "/" + "/".join(where) if where else ""
    assert (pointer, "unknown-field") in errors_of(b), b
    assert "x_secret_" not in r.text and S.A_RRN not in r.text and S.A_NAME not in r.text


def test_c10_unknown_member_of_fetch_is_422(agent) -> None:
    body = S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    body["signature"] = "x"
    b = problem(agent.fetch(body), "validation-failed")
    assert ("", "unknown-field") in errors_of(b)
    body = S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    body["claim"]["patient"] = "x"
    b = problem(agent.fetch(body), "validation-failed")
    assert ("/claim", "unknown-field") in errors_of(b)


def test_search_members_are_not_allowed_in_fetch_and_vice_versa(agent) -> None:
    body = S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    body["patient"] = {"name": S.A_NAME, "rrn": S.hyph(S.A_RRN)}
    problem(agent.fetch(body), "validation-failed")
    body = S.search_body()
    body["format"] = "standard"
    problem(agent.search(body), "validation-failed")


# -- request_id -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rid",
    [
        "0b6c2f3e-7d0a-1c1e-9a51-3f1f5f2d8a10",  # UUID version 1
        "0b6c2f3e-7d0a-4c1e-7a51-3f1f5f2d8a10",  # v4 with wrong variant
        "0b6c2f3e7d0a4c1e9a513f1f5f2d8a10",  # no hyphens
        "{0b6c2f3e-7d0a-4c1e-9a51-3f1f5f2d8a10}",
        "01JBX5B3W8Q6E2N4T7Y9R1K3M",  # 25 chars
        "01JBX5B3W8Q6E2N4T7Y9R1K3MUU",  # 27 chars
        "01JBX5B3W8Q6E2N4T7Y9R1K3MU",  # U is not Crockford base32
        "01JBX5B3W8Q6E2N4T7Y9R1K3MI",  # I neither
        "",
        "x",
    ],
)
def test_request_id_must_be_uuid4_or_ulid(agent, rid: str) -> None:
    body = S.search_body()
    body["request_id"] = rid
    b = problem(agent.search(body), "validation-failed", request_id=None)
    assert any(p == "/request_id" for p, _ in errors_of(b))


def test_request_id_non_string_is_422_type(agent) -> None:
    body = S.search_body()
    body["request_id"] = 12345
    b = problem(agent.search(body), "validation-failed", request_id=None)
    assert ("/request_id", "type") in errors_of(b)


def test_ulid_request_id_accepted_and_echoed(agent) -> None:
    rid = "01JBX5B3W8Q6E2N4T7Y9R1K3M5"
    rid = rid[:10] + uuid.uuid4().hex.upper()[:16].translate(str.maketrans("ILOU", "ABCD"))
    body = S.search_body(request_id=rid)
    assert ok_json(agent.search(body))["request_id"].upper() == rid


def test_request_id_case_insensitive_for_replay(agent) -> None:
    rid = str(uuid.uuid4())
    claim, _ = agent.search_ok(request_id=rid.upper())
    problem(agent.search(S.search_body(claim=claim, request_id=rid.lower())), "replay-detected")
    ulid = "01K" + "".join(__import__("random").choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(23))
    agent.search_ok(request_id=ulid.lower())
    problem(agent.search(S.search_body(request_id=ulid)), "replay-detected")


def test_problem_request_id_echoes_valid_request_id(agent) -> None:
    rid = str(uuid.uuid4())
    body = S.search_body(request_id=rid)
    body["period"]["from"] = "2025-02-30"
    problem(agent.search(body), "validation-failed", request_id=rid)


# -- relay_id, claim tokens -----------------------------------------------------------------------
@pytest.mark.parametrize("relay_id", ["", "a" * 65, "relay 01", "relay/01", "릴레이", "relay:01"])
def test_relay_id_pattern(agent, relay_id: str) -> None:
    b = problem(agent.search(S.search_body(relay_id=relay_id)), "validation-failed")
    assert any(p == "/relay_id" for p, _ in errors_of(b))


@pytest.mark.parametrize("relay_id", ["a", "A" * 64, "silson24.relay_02-x"])
def test_relay_id_valid_forms_accepted_when_not_enrolled(agent, relay_id: str) -> None:
    ok_json(agent.search(S.search_body(relay_id=relay_id)))


@pytest.mark.parametrize("member", ["claim_no", "consent_id"])
@pytest.mark.parametrize("value", ["", "CLM_1", "CLM 1", "C" * 65, "청구-1"])
def test_claim_token_pattern(agent, member: str, value: str) -> None:
    claim = S.new_claim()
    claim[member] = value
    b = problem(agent.search(S.search_body(claim=claim)), "validation-failed")
    assert any(p == f"/claim/{member}" for p, _ in errors_of(b)), b


def test_claim_tokens_of_64_chars_accepted(agent) -> None:
    tag = uuid.uuid4().hex.upper()
    claim = {"claim_no": ("C" + tag * 2)[:64], "consent_id": ("K" + tag * 2)[:64]}
    ok_json(agent.search(S.search_body(claim=claim)))


# -- patient -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "   ", "\u3000", "\t\n"])
def test_patient_name_empty_after_normalisation_is_422(agent, name: str) -> None:
    b = problem(agent.search(S.search_body(name=name)), "validation-failed")
    assert any(p == "/patient/name" for p, _ in errors_of(b))


def test_patient_name_length_limit_after_normalisation(agent) -> None:
    ok_json(agent.search(S.search_body(name="가" * 100)))
    ok_json(agent.search(S.search_body(name="가" * 100 + "   ")))  # 100 after whitespace removal
    b = problem(agent.search(S.search_body(name="가" * 101)), "validation-failed")
    assert any(p == "/patient/name" for p, _ in errors_of(b))


@pytest.mark.parametrize(
    "rrn",
    [
        "900101-100000",
        "90010-11000001",
        "900101--1000001",
        "900101 1000001",
        "９００１０１-１０００００１",
        "90010110000011",
        "A00101-1000001",
        "",
    ],
)
def test_rrn_shape_is_checked(agent, rrn: str) -> None:
    b = problem(agent.search(S.search_body(rrn=rrn)), "validation-failed")
    assert any(p == "/patient/rrn" for p, _ in errors_of(b))


@pytest.mark.parametrize(
    "rrn",
    [
        "901301-1000001",
        "900001-1000001",
        "900100-1000001",
        "900132-1000001",
        "900229-1000001",  # 1990 is not a leap year
        "000229-1000001",  # 1900 is not a leap year (7th digit 1 → 1900s)
        "010229-3000001",  # 2001 not a leap year
        "900431-2000001",
    ],
)
def test_c18_rrn_birth_date_must_be_valid_for_its_century(agent, rrn: str) -> None:
    b = problem(agent.search(S.search_body(rrn=rrn)), "validation-failed")
    assert any(p == "/patient/rrn" for p, _ in errors_of(b))


@pytest.mark.parametrize(
    "rrn",
    [
        "000229-3000001",  # 2000 is a leap year
        "960229-1000001",
        "000101-4000001",
        "850505-5000002",
        "050505-7000001",
        "900101-1000001",
        "9001011000001",
    ],
)
def test_c18_valid_birth_dates_accepted_without_check_digit(agent, rrn: str) -> None:
    ok_json(agent.search(S.search_body(rrn=rrn)))


# -- period, document_types ----------------------------------------------------------------------
def test_period_rules(agent) -> None:
    ok_json(agent.search(S.search_body(period=("2022-01-01", "2025-01-01"))))  # 1096 days
    ok_json(agent.search(S.search_body(period=("2025-03-14", "2025-03-14"))))
    b = problem(agent.search(S.search_body(period=("2022-01-01", "2025-01-02"))), "validation-failed")  # 1097
    assert any(p.startswith("/period") for p, _ in errors_of(b))
    b = problem(agent.search(S.search_body(period=("2025-03-31", "2025-03-01"))), "validation-failed")
    assert any(p.startswith("/period") for p, _ in errors_of(b))


@pytest.mark.parametrize(
    "value", ["2025-02-30", "2025-3-1", "20250301", "2025-03-01T00:00:00Z", "", "2025/03/01"]
)
def test_period_dates_must_be_calendar_dates(agent, value: str) -> None:
    b = problem(agent.search(S.search_body(period=(value, "2025-03-31"))), "validation-failed")
    assert any(p == "/period/from" for p, _ in errors_of(b)), b


@pytest.mark.parametrize(
    "types", [[], ["receipt", "receipt"], ["diagnosis_certificate"], ["Receipt"], "receipt", [None]]
)
def test_document_types_rules(agent, types: Any) -> None:
    b = problem(agent.search(S.search_body(types=types)), "validation-failed")
    assert any(p.startswith("/document_types") for p, _ in errors_of(b)), b


# -- fetch schema -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ids",
    [
        [],
        ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC", "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"],
        ["doc_01jbx4q7m2t9k3v8n5r6w1y0zc"],
        ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0Z"],
        ["01JBX4Q7M2T9K3V8N5R6W1Y0ZC"],
        ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZU"],
        "doc_x",
        [1],
    ],
)
def test_c23_document_ids_rules(agent, ids: Any) -> None:
    b = problem(agent.fetch(S.fetch_body(S.new_claim(), ids)), "validation-failed")
    assert any(p.startswith("/document_ids") for p, _ in errors_of(b)), b


def test_c23_101_ids_is_too_many_documents(agent) -> None:
    ids = [fake_id(i) for i in range(101)]
    r = agent.fetch(S.fetch_body(S.new_claim(), ids))
    problem(r, "too-many-documents")
    assert "errors" not in r.json() or not r.json()["errors"]


def test_c23_101_ids_with_duplicates_is_still_too_many_documents(agent) -> None:
    ids = ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"] * 101
    problem(agent.fetch(S.fetch_body(S.new_claim(), ids)), "too-many-documents")


def test_c23_100_ids_pass_the_schema(agent) -> None:
    ids = [fake_id(i) for i in range(100)]
    problem(agent.fetch(S.fetch_body(S.new_claim(), ids)), "claim-not-bound")


@pytest.mark.parametrize("fmt", ["pdf", "FHIR", "", 1, None])
def test_fetch_format_enum(agent, fmt: Any) -> None:
    body = S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    body["format"] = fmt
    b = problem(agent.fetch(body), "validation-failed")
    assert any(p == "/format" for p, _ in errors_of(b))


def test_float_anywhere_is_422(agent) -> None:
    body = S.search_body()
    body["relay_id"] = 1.5
    problem(agent.search(body), "validation-failed")


# =============================================================================================
# §4 freshness — C-11; id consumption — C-13
# =============================================================================================
@pytest.mark.parametrize("offset", [-301, 301, -3600, 86400])
def test_c11_sent_at_more_than_300s_off_is_clock_skew(agent, offset: int) -> None:
    rid = str(uuid.uuid4())
    body = S.search_body(request_id=rid, sent_at=S.utc_z(offset_s=offset))
    problem(agent.search(body), "clock-skew", request_id=rid)


def _frac(offset: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_c11_300s_boundary_is_accepted(agent) -> None:
    # 300 s in the future (sub-second precision: latency only shrinks the distance)
    ok_json(agent.search(S.search_body(sent_at=_frac(300))))
    ok_json(agent.search(S.search_body(sent_at=S.utc_z(offset_s=300))))
    # 300 s in the past, allowing 0.3 s for the trip to the agent
    ok_json(agent.search(S.search_body(sent_at=_frac(-299.7))))
    # exactly 300 s in the past, as a relay stamps it: whole seconds (decision 32), and sub-second;
    # stamped early in a second, so that the request cannot reach the agent in the next one
    while dt.datetime.now(dt.UTC).microsecond > 500_000:
        time.sleep(0.01)
    ok_json(agent.search(S.search_body(sent_at=S.utc_z(offset_s=-300))))
    ok_json(agent.search(S.search_body(sent_at=_frac(-300))))


def test_c11_just_over_300s_past_is_rejected(agent) -> None:
    problem(agent.search(S.search_body(sent_at=_frac(-300.5))), "clock-skew")


def test_c11_clock_skew_applies_to_fetch(agent) -> None:
    problem(
        agent.fetch(
            S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"], sent_at=S.utc_z(offset_s=-301))
        ),
        "clock-skew",
    )


def test_c11_clock_skew_comes_after_schema(agent) -> None:
    body = S.search_body(sent_at=S.utc_z(offset_s=-3600))
    body["period"]["to"] = "nope"
    problem(agent.search(body), "validation-failed")


def test_c13_resend_after_400_succeeds(agent) -> None:
    body = S.search_body()
    problem(post_raw(agent, SEARCH, enc(body) + b"x"), "bad-request")
    problem(post_raw(agent, SEARCH, enc(body)[:-1] + b',"a":1,"a":2}'), "bad-request")
    ok_json(agent.search(body))


def test_c13_resend_after_413_succeeds(agent) -> None:
    body = S.search_body()
    problem(post_raw(agent, SEARCH, _padded(body, 65537)), "payload-too-large")
    ok_json(agent.search(body))


def test_c13_resend_after_415_succeeds(agent) -> None:
    body = S.search_body()
    problem(post_raw(agent, SEARCH, enc(body), "text/plain"), "unsupported-media-type")
    problem(
        post_raw(agent, SEARCH, enc(body), "application/json", **{"Content-Encoding": "gzip"}),
        "unsupported-media-type",
    )
    ok_json(agent.search(body))


def test_c13_resend_after_422_schema_succeeds(agent) -> None:
    body = S.search_body()
    bad = json.loads(json.dumps(body))
    bad["extra"] = 1
    problem(agent.search(bad), "validation-failed")
    bad = json.loads(json.dumps(body))
    bad["patient"]["rrn"] = "901301-1000001"
    problem(agent.search(bad), "validation-failed")
    ok_json(agent.search(body))


def test_c13_resend_after_clock_skew_succeeds(agent) -> None:
    """§4: ids are recorded once the envelope passed relay_id and freshness."""
    body = S.search_body(sent_at=S.utc_z(offset_s=-400))
    problem(agent.search(body), "clock-skew")
    body["sent_at"] = S.utc_z()
    ok_json(agent.search(body))


def test_c13_resend_after_405_or_404_succeeds(agent) -> None:
    body = S.search_body()
    problem(agent.request("PUT", SEARCH, json_body=body), "method-not-allowed")
    problem(agent.request("POST", "/v1/documents/searc", json_body=body), "not-found")
    ok_json(agent.search(body))


def test_id_is_consumed_by_a_request_failing_business_rules(agent) -> None:
    body = S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"])
    problem(agent.fetch(body), "claim-not-bound")
    problem(agent.fetch(body), "replay-detected")


def test_replay_is_whatever_the_body(agent) -> None:
    rid = str(uuid.uuid4())
    agent.search_ok(request_id=rid)
    problem(
        agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), request_id=rid)),
        "replay-detected",
        request_id=rid,
    )
    problem(
        agent.fetch(S.fetch_body(S.new_claim(), ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"], request_id=rid)),
        "replay-detected",
    )


# =============================================================================================
# §8 processing order
# =============================================================================================
def head_only(
    agent: S.AgentProcess, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict, dict]:
    """Send a request head announcing a body that is never sent; the agent must answer from the head
    alone (§8: route, method and Content-Length come before the body). Returns (status, headers, json)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    _, data = agent.raw_exchange(agent.client_context(), head.encode("latin-1"), timeout=8)
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1.1 "), data[:200]
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, hdrs, json.loads(body) if body else {}


def test_order_404_before_everything(agent) -> None:
    status, hdrs, body = head_only(
        agent, "POST", "/v1/documents/other", {"Content-Type": "text/plain", "Content-Length": "70000"}
    )
    assert status == 404 and body["type"] == S.PROBLEM_PREFIX + "not-found"


def test_order_405_before_413(agent) -> None:
    status, hdrs, body = head_only(
        agent, "PUT", SEARCH, {"Content-Type": "text/plain", "Content-Length": "70000"}
    )
    assert status == 405 and body["type"] == S.PROBLEM_PREFIX + "method-not-allowed"
    assert hdrs.get("allow") == "POST"


def test_c09_declared_length_over_limit_is_413_without_reading_the_body(agent) -> None:
    status, hdrs, body = head_only(
        agent, "POST", SEARCH, {"Content-Type": "application/json", "Content-Length": "65537"}
    )
    assert status == 413 and body["type"] == S.PROBLEM_PREFIX + "payload-too-large"
    assert hdrs.get("cache-control") == "no-store" and hdrs.get("content-type", "").startswith(
        "application/problem+json"
    )


def test_order_422_schema_before_replay(agent) -> None:
    rid = str(uuid.uuid4())
    agent.search_ok(request_id=rid)
    body = S.search_body(request_id=rid)
    body["patient"]["rrn"] = "bad"
    problem(agent.search(body), "validation-failed")


def test_order_clock_skew_before_replay(agent) -> None:
    rid = str(uuid.uuid4())
    agent.search_ok(request_id=rid)
    problem(agent.search(S.search_body(request_id=rid, sent_at=S.utc_z(offset_s=-1000))), "clock-skew")


def test_order_replay_before_business_rules(agent) -> None:
    claim, _ = agent.search_ok()
    rid = str(uuid.uuid4())
    problem(
        agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim, request_id=rid)), "claim-conflict"
    )
    problem(
        agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim, request_id=rid)), "replay-detected"
    )


# =============================================================================================
# C-29 / C-30 / C-39 / S-31 / S-32 — problem documents never leak request values
# =============================================================================================
def _battery(agent: S.AgentProcess) -> list[requests.Response]:
    out = []
    claim = {"claim_no": "CLM-SECRET-77231", "consent_id": "CNS-SECRET-99120"}
    foreign = "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"
    for rrn in (S.hyph(S.A_RRN), S.A_RRN):
        b = S.search_body(claim=claim, rrn=rrn)
        b["patient"]["name"] = S.A_NAME * 60  # too long
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["patient"][S.A_NAME] = rrn  # unknown member named after a name
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn + "9")
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["period"]["from"] = S.A_RRN[:6]
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn, sent_at=S.utc_z(offset_s=-999))
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["claim"]["claim_no"] = "CLM " + rrn
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["request_id"] = rrn
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["relay_id"] = S.A_NAME
        out.append(agent.search(b))
        b = S.search_body(claim=claim, rrn=rrn)
        b["document_types"] = [S.A_NAME, S.A_RRN]
        out.append(agent.search(b))
        out.append(post_raw(agent, SEARCH, enc(b)[:-1] + (',"x":"' + rrn + '","x":1}').encode()))
        out.append(post_raw(agent, SEARCH, enc(b), "text/plain"))
        out.append(post_raw(agent, SEARCH, enc(b) + rrn.encode()))
    out.append(agent.fetch(S.fetch_body(claim, [foreign])))
    out.append(agent.fetch(S.fetch_body(claim, [foreign, foreign])))
    out.append(agent.fetch(S.fetch_body(claim, [foreign] + ["doc_" + S.A_RRN])))
    out.append(agent.fetch(S.fetch_body(claim, [fake_id(i) for i in range(101)])))
    f = S.fetch_body(claim, [foreign])
    f["format"] = S.A_NAME
    out.append(agent.fetch(f))
    # a bound claim, then a foreign id and another consent
    bound, _ = agent.search_ok(claim={"claim_no": "CLM-SECRET-77232", "consent_id": "CNS-SECRET-99121"})
    out.append(agent.fetch(S.fetch_body(bound, [foreign])))
    out.append(
        agent.fetch(S.fetch_body({"claim_no": bound["claim_no"], "consent_id": "CNS-OTHER-1"}, [foreign]))
    )
    out.append(agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=bound)))
    return out


def test_c29_c30_problem_documents_never_contain_request_values(agent) -> None:
    responses = _battery(agent)
    forbidden = S.phi_strings() + [
        "CLM-SECRET-77231",
        "CLM-SECRET-77232",
        "CNS-SECRET",
        "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC",
        "doc_" + S.A_RRN,
        "doc_01JBX4Q7M2T9K3V8N5R6W0",
    ]
    for r in responses:
        assert r.status_code >= 400, r.text
        body = r.json()
        name = body["type"].removeprefix(S.PROBLEM_PREFIX)
        problem(r, name)
        text = r.content.decode("utf-8")
        unescaped = json.dumps(body, ensure_ascii=False)
        for f in forbidden:
            assert f not in text and f not in unescaped, (f, text)
        detail = body.get("detail", "")
        assert not re.search(
            r"Traceback|File \"|\.py|SELECT |sqlite|pydantic|input_value|/work/|/tmp/", detail
        ), detail


def test_c30_detail_is_fixed_text_per_type(agent) -> None:
    """§7: detail is fixed, generic text — the same problem type gives the same detail whatever the input."""
    details: dict[str, set[str]] = {}
    for r in _battery(agent):
        b = r.json()
        details.setdefault(b["type"], set()).add(b.get("detail", ""))
    for t, d in details.items():
        assert len(d) == 1, (t, d)


def test_s31_log_has_no_fixture_phi_after_invalid_requests(agent) -> None:
    _battery(agent)
    text = agent.log_text()
    for phi in S.phi_strings():
        assert phi not in text, phi


def test_s32_metrics_have_no_fixture_phi_or_ids(agent) -> None:
    _battery(agent)
    m = agent.metrics()
    for phi in S.phi_strings() + ["CLM-SECRET", "CNS-SECRET", "doc_01"]:
        assert phi not in m, phi


def test_s32_admin_status_page_has_no_fixture_phi(agent) -> None:
    for path in ("/status", "/"):
        r = requests.get(agent.admin_base + path, timeout=10)
        if r.status_code != 200:
            continue
        for phi in S.phi_strings():
            assert phi not in r.text


# =============================================================================================
# C-40 light fuzz: only documented statuses, never 500
# =============================================================================================
DOCUMENTED = {200, 400, 403, 404, 405, 409, 413, 415, 422, 429, 503}


def test_c40_fuzzed_requests_get_only_documented_statuses(agent) -> None:
    import random

    rnd = random.Random(1234)
    base = S.search_body()
    values: list[Any] = [
        None,
        True,
        0,
        -1,
        2**70,
        "",
        "x" * 300,
        [],
        {},
        [1, "a"],
        {"a": {}},
        "\u0000",
        "\ud7ff",
        "2025-03-01",
        "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC",
    ]
    for i in range(120):
        body = json.loads(json.dumps(base))
        body["request_id"] = str(uuid.uuid4())
        target = rnd.choice([body, body["claim"], body["patient"], body["period"]])
        key = rnd.choice(list(target))
        target[key] = rnd.choice(values)
        path = SEARCH if i % 2 else FETCH
        r = agent.request("POST", path, json_body=body)
        assert r.status_code in DOCUMENTED, (r.status_code, r.text)
        if r.status_code != 200:
            name = r.json()["type"].removeprefix(S.PROBLEM_PREFIX)
            problem(r, name)


def test_c39_no_floats_in_any_response(agent) -> None:
    claim, res = agent.search_ok(types=["receipt", "pharmacy_receipt"])
    ids = [d["id"] for d in res["documents"]]
    for fmt in ("standard", "fhir"):
        r = agent.fetch(S.fetch_body(claim, ids, fmt=fmt))
        body = ok_json(r)
        import base64

        for d in body["documents"]:
            raw = base64.b64decode(d["content_base64"])
            if fmt == "standard":
                assert not S.has_float(json.loads(raw)), d["type"]
    ok_json(agent.health())


def test_c40_schemathesis_against_documented_schema(agent, tmp_path) -> None:
    import subprocess
    from pathlib import Path

    st = Path(S.PY).with_name("st")
    schema = S.REPO / "docs" / "relay-api.openapi.json"
    if not st.exists() or not schema.exists():
        pytest.skip("schemathesis or the documented schema is not available")
    cmd = [
        str(st),
        "run",
        str(schema),
        "--url",
        agent.base,
        "--tls-verify",
        str(agent.server_ca),
        "--request-cert",
        str(agent.client_cert),
        "--request-cert-key",
        str(agent.client_key),
        "-n",
        "30",
        "--seed",
        "1",
        "-c",
        "not_a_server_error,status_code_conformance,content_type_conformance",
    ]
    env = {k: v for k, v in __import__("os").environ.items() if "CA_BUNDLE" not in k}
    # run from tmp_path: schemathesis keeps a `.schemathesis/` cache in its working directory
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def _raw(agent: S.AgentProcess, req: bytes) -> bytes:
    _, data = agent.raw_exchange(agent.client_context(), req)
    return data


def test_limits_request_line_of_2048_bytes_is_served(agent) -> None:
    prefix, suffix = b"GET /v1/health?x=", b" HTTP/1.1"
    line = prefix + b"a" * (2048 - len(prefix) - len(suffix)) + suffix
    assert len(line) == 2048
    assert _raw(agent, line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_limits_64_header_fields_and_15_kib_block_are_served(agent) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(62))  # + Host + Connection = 64
    assert _raw(
        agent, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n" + fields + b"Connection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200")
    pad = b"X-Pad: " + b"a" * 15000 + b"\r\n"
    assert _raw(
        agent, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n" + pad + b"Connection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200")
