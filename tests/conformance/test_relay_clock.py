"""Time-dependent rules with a fake clock in the real agent process — relay-api.md §6.3 (binding life
60 min after the LATEST search, B2, B4, B6), §4 (ids remembered 24 h), C-20; security.md S-15.

The fake clock: the agent is started through a tiny wrapper that makes ``SystemClock.now()`` add an
offset read from a file at every call (see ``AgentProcess.command``)."""

from __future__ import annotations

import uuid

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]


class Clocked:
    def __init__(self, agent: S.AgentProcess, path) -> None:
        self.agent = agent
        self.path = path
        self.offset = 0.0

    def set(self, seconds: float) -> None:
        self.offset = seconds
        self.path.write_text(str(seconds))

    def sent_at(self) -> str:
        return S.utc_z(offset_s=self.offset)


@pytest.fixture(scope="module")
def clocked(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("clock")
    clock_file = base / "offset"
    clock_file.write_text("0")
    a = S.AgentProcess(base / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}, clock_file=clock_file)
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    c = Clocked(a, clock_file)
    yield c
    c.set(0)
    a.close()


def _search(c: Clocked, claim=None):
    claim = claim or S.new_claim()
    r = c.agent.search(S.search_body(claim=claim, sent_at=c.sent_at()))
    assert r.status_code == 200, r.text
    return claim, [d["id"] for d in r.json()["documents"]]


def _fetch(c: Clocked, claim, ids) -> int:
    r = c.agent.fetch(S.fetch_body(claim, ids, sent_at=c.sent_at()))
    if r.status_code == 403:
        assert r.json()["type"] == S.PROBLEM_PREFIX + "claim-not-bound"
    return r.status_code


def test_fake_clock_is_effective(clocked) -> None:
    clocked.set(7200)
    try:
        r = clocked.agent.search(S.search_body(sent_at=S.utc_z()))  # real time is now 2 h off
        assert r.status_code == 422 and r.json()["type"] == S.PROBLEM_PREFIX + "clock-skew"
    finally:
        clocked.set(0)


def test_s15_c20_fetch_59_minutes_after_search_ok_61_minutes_denied(clocked) -> None:
    base = 10 * 3600.0
    clocked.set(base)
    claim, ids = _search(clocked)
    clocked.set(base + 59 * 60)
    assert _fetch(clocked, claim, ids) == 200
    clocked.set(base + 61 * 60)
    assert _fetch(clocked, claim, ids) == 403


def test_b6_fetches_do_not_extend_the_binding(clocked) -> None:
    base = 20 * 3600.0
    clocked.set(base)
    claim, ids = _search(clocked)
    for minutes in (20, 40, 58):
        clocked.set(base + minutes * 60)
        assert _fetch(clocked, claim, ids) == 200
    clocked.set(base + 61 * 60)
    assert _fetch(clocked, claim, ids) == 403


def test_b2_a_later_search_resets_expiry(clocked) -> None:
    base = 30 * 3600.0
    clocked.set(base)
    claim, ids = _search(clocked)
    clocked.set(base + 50 * 60)
    _search(clocked, claim)
    clocked.set(base + 100 * 60)  # 100 min after the first search, 50 after the latest
    assert _fetch(clocked, claim, ids) == 200
    clocked.set(base + 111 * 60)
    assert _fetch(clocked, claim, ids) == 403


def test_b1_expired_binding_lets_a_new_subject_bind_the_claim(clocked) -> None:
    base = 40 * 3600.0
    clocked.set(base)
    claim, _ = _search(clocked)
    clocked.set(base + 61 * 60)
    r = clocked.agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim, sent_at=clocked.sent_at()))
    assert r.status_code == 200, r.text  # no live binding: B1 creates a new one


def test_replay_ids_remembered_for_24_hours(clocked) -> None:
    base = 50 * 3600.0
    clocked.set(base)
    rid = str(uuid.uuid4())
    claim = S.new_claim()
    assert (
        clocked.agent.search(
            S.search_body(claim=claim, request_id=rid, sent_at=clocked.sent_at())
        ).status_code
        == 200
    )
    clocked.set(base + 23 * 3600 + 50 * 60)
    r = clocked.agent.search(S.search_body(claim=claim, request_id=rid, sent_at=clocked.sent_at()))
    assert r.status_code == 409 and r.json()["type"] == S.PROBLEM_PREFIX + "replay-detected"


def test_replay_window_is_24_hours_not_forever(clocked) -> None:
    """§4: only an id accepted "within the last 24 hours" is a replay."""
    base = 80 * 3600.0
    clocked.set(base)
    rid = str(uuid.uuid4())
    assert clocked.agent.search(S.search_body(request_id=rid, sent_at=clocked.sent_at())).status_code == 200
    clocked.set(base + 25 * 3600)
    r = clocked.agent.search(S.search_body(request_id=rid, sent_at=clocked.sent_at()))
    assert r.status_code == 200, r.text


def test_audit_timestamps_follow_the_agent_clock(clocked) -> None:
    import datetime as dt

    base = 100 * 3600.0
    clocked.set(base)
    body = S.search_body(sent_at=clocked.sent_at())
    assert clocked.agent.search(body).status_code == 200
    rec = clocked.agent.audit_for(body["request_id"])[0]
    ts = dt.datetime.fromisoformat(rec["ts_utc"].replace("Z", "+00:00"))
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=base)
    assert abs((ts - expected).total_seconds()) < 30


def test_b3_conflicting_search_does_not_extend_the_binding(clocked) -> None:
    base = 120 * 3600.0
    clocked.set(base)
    claim, ids = _search(clocked)
    clocked.set(base + 50 * 60)
    r = clocked.agent.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim, sent_at=clocked.sent_at()))
    assert r.status_code == 409
    clocked.set(base + 61 * 60)
    assert _fetch(clocked, claim, ids) == 403


def test_b2_name_mismatch_search_of_same_subject_extends_the_binding(clocked) -> None:
    base = 130 * 3600.0
    clocked.set(base)
    claim, ids = _search(clocked)
    clocked.set(base + 50 * 60)
    r = clocked.agent.search(S.search_body("김철수", S.hyph(S.A_RRN), claim=claim, sent_at=clocked.sent_at()))
    assert r.status_code == 200 and r.json()["count"] == 0
    clocked.set(base + 100 * 60)
    assert _fetch(clocked, claim, ids) == 200
