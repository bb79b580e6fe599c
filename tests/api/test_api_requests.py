"""Routes, headers, envelope and body rules of the public port (relay-api.md §2.1, §2.4, §3–§5, §7;
C-05–C-11, C-13, C-14, C-29, C-30, C-39)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest

from agent.api.problems import PROBLEMS
from agent.api.relaysim import now_rfc3339
from tests.api.conftest import PATIENT_NAME, PATIENT_RRN, ingest, make_doc

SEARCH = "/v1/documents/search"
FETCH = "/v1/documents/fetch"


def search_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "sent_at": now_rfc3339(),
        "relay_id": "silson24-relay-01",
        "claim": {"claim_no": "CLM-20250314-000001", "consent_id": "CNS-20250314-0001"},
        "patient": {"name": PATIENT_NAME, "rrn": PATIENT_RRN},
        "period": {"from": "2025-03-01", "to": "2025-03-31"},
    }
    body.update(over)
    return body


def assert_problem(resp, status: int, name: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc = resp.json()
    assert doc["type"] == "urn:silson-agent:problem:" + name
    assert doc["title"] == PROBLEMS[name][1]
    assert doc["status"] == status and isinstance(doc["status"], int)
    assert "request_id" in doc and "detail" in doc
    return doc


def assert_security_headers(resp) -> None:
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-content-type-options"] == "nosniff"
    server = resp.headers.get("server")
    assert server in (None, "silson-agent")


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/status",
        "/docs",
        "/openapi.json",
        "/redoc",
        "/",
        "/v1/documents/doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC",
    ],
)
def test_unknown_paths_are_not_found(agent, path: str) -> None:
    with agent.client() as c:
        resp = c.session.get(agent.base_url + path, timeout=5)
    assert_problem(resp, 404, "not-found")
    assert resp.json()["request_id"] is None
    assert_security_headers(resp)


def test_known_path_with_wrong_method_is_405_with_allow(agent) -> None:
    with agent.client() as c:
        put = c.session.put(agent.base_url + SEARCH, data=b"{}", timeout=5)
        post = c.session.post(agent.base_url + "/v1/health", data=b"{}", timeout=5)
        get = c.session.get(agent.base_url + FETCH, timeout=5)
    assert_problem(put, 405, "method-not-allowed")
    assert put.headers["allow"] == "POST"
    assert_problem(post, 405, "method-not-allowed")
    assert post.headers["allow"] == "GET"
    assert get.headers["allow"] == "POST"


def test_health_body_members_and_headers(agent) -> None:
    with agent.client() as c:
        resp = c.health()
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    assert_security_headers(resp)
    body = resp.json()
    assert set(body) == {
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
    assert body["status"] == "ok" and body["api_version"] == "v1" and body["clock_tolerance_s"] == 300
    assert body["signing_key_id"] == agent.keyring.signer.kid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["server_time"])
    assert agent.relay_records() == []  # health is never audited (C-34)


def test_body_over_64_kib_is_413_and_audited_without_subject(agent) -> None:
    body = json.dumps(search_body(pad="x" * 65537)).encode()
    assert len(body) > 65536
    with agent.client() as c:
        resp = c.post(SEARCH, body)
    assert_problem(resp, 413, "payload-too-large")
    records = agent.relay_records()
    assert len(records) == 1 and records[0]["status"] == 413 and records[0]["subject_ref"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Encoding": "gzip"},
        {"Content-Type": "application/json; charset=latin-1"},
    ],
)
def test_wrong_media_type_or_encoding_is_415(agent, headers: dict[str, str]) -> None:
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(), headers=headers)
    assert_problem(resp, 415, "unsupported-media-type")


def test_charset_utf8_parameter_is_accepted(agent) -> None:
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(), headers={"Content-Type": "application/json; charset=UTF-8"})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'{"request_id": "\xff\xfe"}',
        b'{"a": 1, "a": 2}',
        b"[1, 2]",
        b'{"request_id": NaN}',
        b'{"x": Infinity}',
        b'{"request_id": "x"} trailing',
        b"\xef\xbb\xbf{}",
        b"",
        b'{"patient": {"name": "\\ud800"}}',  # an escaped lone surrogate is not Unicode text
        b'{"\\udc00": 1}',
    ],
)
def test_malformed_json_is_400(agent, raw: bytes) -> None:
    # (An escaped surrogate *pair* is fine: see test_escaped_surrogate_pair_is_text.)
    with agent.client() as c:
        resp = c.post(SEARCH, raw)
    doc = assert_problem(resp, 400, "bad-request")
    assert doc["request_id"] is None


def _pointers(resp) -> set[tuple[str, str]]:
    return {(e["pointer"], e["code"]) for e in resp.json()["errors"]}


def test_missing_request_id_is_422_with_pointer(agent) -> None:
    body = search_body()
    del body["request_id"]
    with agent.client() as c:
        resp = c.post(SEARCH, body)
    assert_problem(resp, 422, "validation-failed")
    assert ("/request_id", "missing") in _pointers(resp)


@pytest.mark.parametrize(
    "sent_at",
    [
        "2025-03-14T10:00:00",
        "2025-03-14T10:00:00+09:00",
        "2025-03-14T10:00:00.1234567Z",
        "2025-03-14 10:00:00Z",
    ],
)
def test_malformed_sent_at_is_422(agent, sent_at: str) -> None:
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(sent_at=sent_at))
    assert_problem(resp, 422, "validation-failed")
    assert ("/sent_at", "format") in _pointers(resp)


def test_unknown_member_at_any_level_names_only_the_enclosing_object(agent) -> None:
    body = search_body(secret_extra="홍길동")
    body["patient"]["nickname"] = "길동이"
    body["claim"]["extra"] = 1
    with agent.client() as c:
        resp = c.post(SEARCH, body)
    assert_problem(resp, 422, "validation-failed")
    pointers = _pointers(resp)
    assert {("", "unknown-field"), ("/patient", "unknown-field"), ("/claim", "unknown-field")} <= pointers
    assert "nickname" not in resp.text and "secret_extra" not in resp.text


def test_float_anywhere_is_a_type_error_not_a_crash(agent) -> None:
    with agent.client() as c:
        resp = c.post(
            FETCH,
            {
                "request_id": str(uuid.uuid4()),
                "sent_at": now_rfc3339(),
                "relay_id": "r",
                "claim": {"claim_no": "C1", "consent_id": "N1"},
                "document_ids": [1.5],
            },
        )
    assert_problem(resp, 422, "validation-failed")
    assert ("/document_ids/0", "type") in _pointers(resp)


@pytest.mark.parametrize("offset,status", [(-301, 422), (301, 422), (-299, 200), (299, 200)])
def test_sent_at_window(agent, offset: int, status: int) -> None:
    sent = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(sent_at=now_rfc3339(sent)))
    if status == 422:
        assert_problem(resp, 422, "clock-skew")
    else:
        assert resp.status_code == 200


def test_ten_minute_old_sent_at_is_clock_skew(agent) -> None:
    sent = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(sent_at=now_rfc3339(sent)))
    assert_problem(resp, 422, "clock-skew")


def test_rejected_request_id_can_be_reused(agent) -> None:
    # C-13: 400/413/415/422 do not consume the id.
    rid = str(uuid.uuid4())
    with agent.client() as c:
        bad = search_body(request_id=rid)
        del bad["period"]
        assert c.post(SEARCH, bad).status_code == 422
        assert (
            c.post(SEARCH, search_body(request_id=rid), headers={"Content-Type": "text/plain"}).status_code
            == 415
        )
        assert c.post(SEARCH, b'{"request_id": "' + rid.encode() + b'", ').status_code == 400
        assert c.post(SEARCH, search_body(request_id=rid)).status_code == 200
        assert_problem(c.post(SEARCH, search_body(request_id=rid)), 409, "replay-detected")


def test_request_id_is_case_normalised(agent) -> None:
    rid = str(uuid.uuid4())
    with agent.client() as c:
        assert c.post(SEARCH, search_body(request_id=rid)).status_code == 200
        doc = assert_problem(c.post(SEARCH, search_body(request_id=rid.upper())), 409, "replay-detected")
    assert doc["request_id"] == rid


def test_ulid_request_id_is_accepted(agent) -> None:
    with agent.client() as c:
        resp = c.post(SEARCH, search_body(request_id="01jbx5b3w8q6e2n4t7y9r1k3m5"))
    assert resp.status_code == 200 and resp.json()["request_id"] == "01JBX5B3W8Q6E2N4T7Y9R1K3M5"


def test_enrolled_relay_ids_are_enforced(agent) -> None:
    agent.store.kv_set("relay_ids", json.dumps(["silson24-relay-01", "silson24-relay-02"]))
    with agent.client() as c:
        assert_problem(c.post(SEARCH, search_body(relay_id="rogue-relay")), 403, "relay-not-allowed")
        assert c.post(SEARCH, search_body(relay_id="silson24-relay-02")).status_code == 200


def test_rrn_check_digit_not_validated_but_date_is(agent) -> None:
    with agent.client() as c:
        assert (
            c.post(SEARCH, search_body(patient={"name": PATIENT_NAME, "rrn": "900101-1000001"})).status_code
            == 200
        )
        resp = c.post(SEARCH, search_body(patient={"name": PATIENT_NAME, "rrn": "901301-1000001"}))
    assert_problem(resp, 422, "validation-failed")
    assert ("/patient/rrn", "format") in _pointers(resp)


def test_period_longer_than_1096_days_or_reversed_is_422(agent) -> None:
    with agent.client() as c:
        long = c.post(SEARCH, search_body(period={"from": "2020-01-01", "to": "2025-01-01"}))
        rev = c.post(SEARCH, search_body(period={"from": "2025-03-31", "to": "2025-03-01"}))
    assert_problem(long, 422, "validation-failed")
    assert_problem(rev, 422, "validation-failed")


def test_problem_documents_never_echo_fixture_data(agent) -> None:
    """C-29 / S-32: a battery of invalid requests built from fixture data."""
    ingest(agent.store, make_doc("receipt"))
    secrets = [
        PATIENT_RRN,
        PATIENT_RRN.replace("-", ""),
        PATIENT_NAME,
        "9001011******",
        "900101-1******",
        "CLM-20250314-000001",
        "CNS-20250314-0001",
        "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC",
    ]
    bodies: list[Any] = [
        search_body(patient={"name": PATIENT_NAME, "rrn": PATIENT_RRN + "9"}),
        search_body(patient={"name": PATIENT_NAME * 60, "rrn": PATIENT_RRN}),
        search_body(patient={"name": PATIENT_NAME, "rrn": PATIENT_RRN, PATIENT_NAME: PATIENT_RRN}),
        search_body(claim={"claim_no": "CLM-20250314-000001!", "consent_id": "CNS-20250314-0001"}),
        search_body(period={"from": PATIENT_RRN, "to": "CLM-20250314-000001"}),
        search_body(document_types=[PATIENT_NAME]),
        search_body(request_id=PATIENT_RRN),
        search_body(sent_at=PATIENT_RRN),
        {
            "request_id": str(uuid.uuid4()),
            "sent_at": now_rfc3339(),
            "relay_id": "r",
            "claim": {"claim_no": "CLM-20250314-000001", "consent_id": "CNS-20250314-0001"},
            "document_ids": ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC", "doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"],
        },
        {
            "request_id": str(uuid.uuid4()),
            "sent_at": now_rfc3339(),
            "relay_id": "r",
            "claim": {"claim_no": "CLM-20250314-000001", "consent_id": "CNS-20250314-0001"},
            "document_ids": ["doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC"],
        },
        json.dumps({"patient": {"rrn": PATIENT_RRN}, "x": PATIENT_NAME}).encode() + b"{",
    ]
    with agent.client() as c:
        for index, body in enumerate(bodies):
            path = FETCH if isinstance(body, dict) and "document_ids" in body else SEARCH
            resp = c.post(path, body)
            assert resp.status_code >= 400, index
            assert resp.headers["content-type"] == "application/problem+json"
            text = resp.content.decode("utf-8")
            for secret in secrets:
                assert secret not in text, (index, secret)


def test_no_floats_in_any_json_body(agent) -> None:
    # C-39: parse with a float hook that fails.
    ids = ingest(agent.store, make_doc("receipt"))

    def no_float(text: str) -> Any:
        raise AssertionError("float in a response body")

    with agent.client() as c:
        responses = [c.health(), c.post(SEARCH, search_body())]
        responses.append(
            c.fetch(claim_no="CLM-20250314-000001", consent_id="CNS-20250314-0001", document_ids=ids)
        )
        responses.append(c.post(SEARCH, b"[]"))
    for resp in responses:
        json.loads(resp.text, parse_float=no_float)


def test_escaped_surrogate_pair_is_text(agent) -> None:
    body = json.dumps(search_body(), ensure_ascii=True)
    body = body.replace(json.dumps(PATIENT_NAME), json.dumps(PATIENT_NAME + "\U0001f600"))
    assert "\\ud83d\\ude00" in body  # the pair, escaped
    with agent.client() as c:
        resp = c.post(SEARCH, body.encode("ascii"))
    assert resp.status_code == 200  # a valid (non-matching) name: no 400
