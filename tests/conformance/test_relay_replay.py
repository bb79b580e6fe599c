"""relay-api.md §4 replay protection across restarts, §6.3 persisted bindings, relay-id list —
C-12, C-14, C-22 (other relay node); security.md S-05 — real agent processes killed with SIGKILL."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(
        tmp_path_factory.mktemp("replay") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    yield a
    a.close()


def test_c12_same_request_id_twice_is_replay(agent) -> None:
    body = S.search_body()
    assert agent.search(body).status_code == 200
    r = agent.search(body)
    assert r.status_code == 409 and r.json()["type"] == S.PROBLEM_PREFIX + "replay-detected"
    assert r.json()["request_id"] == body["request_id"]


def test_c12_s05_replay_survives_sigkill_and_restart_and_so_do_bindings(agent) -> None:
    search = S.search_body()
    r = agent.search(search)
    assert r.status_code == 200
    doc_id = r.json()["documents"][0]["id"]
    fetch = S.fetch_body(search["claim"], [doc_id])
    assert agent.fetch(fetch).status_code == 200
    agent.kill()  # SIGKILL: no clean shutdown
    agent.start()
    r = agent.search(search)
    assert r.status_code == 409 and r.json()["type"] == S.PROBLEM_PREFIX + "replay-detected"
    r = agent.fetch(fetch)
    assert r.status_code == 409
    # the binding was persisted too: a new fetch in the claim still works
    assert agent.fetch(S.fetch_body(search["claim"], [doc_id])).status_code == 200
    # S-05: a request 301 s old is refused
    r = agent.search(S.search_body(sent_at=S.utc_z(offset_s=-301)))
    assert r.status_code == 422 and r.json()["type"] == S.PROBLEM_PREFIX + "clock-skew"


def test_c12_replay_survives_a_clean_restart(agent) -> None:
    body = S.search_body()
    assert agent.search(body).status_code == 200
    assert agent.stop() == 0
    agent.start()
    assert agent.search(body).status_code == 409


@pytest.mark.parametrize("route", ["search", "fetch"])
def test_c12_concurrent_sends_give_exactly_one_non_409(agent, route: str) -> None:
    claim, res = agent.search_ok()
    doc_id = res["documents"][0]["id"]
    for _ in range(5):
        body = S.search_body(claim=claim) if route == "search" else S.fetch_body(claim, [doc_id])
        n = 6
        barrier = threading.Barrier(n)
        statuses: list[int] = []
        lock = threading.Lock()
        sessions = [agent.session() for _ in range(n)]
        data = json.dumps(body, ensure_ascii=False).encode()

        def send(i: int, barrier=barrier, sessions=sessions, data=data, lock=lock, statuses=statuses) -> None:
            barrier.wait()
            r = sessions[i].post(
                agent.base + f"/v1/documents/{route}",
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            with lock:
                statuses.append(r.status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in sessions:
            s.close()
        assert len(statuses) == n
        assert sorted(statuses) == [200] + [409] * (n - 1), statuses
        assert len(agent.audit_for(body["request_id"])) == n  # every attempt audited once


# -- C-14 relay-id list ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory):
    """An agent holding the relay ids of an enrollment. The project has no `enroll` against a
    simulator we could drive here, so the list is written where the agent keeps its state
    (store key/value table under data_dir) while it is stopped."""
    a = S.AgentProcess(
        tmp_path_factory.mktemp("enrolled") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    assert a.stop() == 0
    conn = sqlite3.connect(a.data / "store.db")
    try:
        conn.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES ('relay_ids', ?)",
            (json.dumps(["silson24-relay-01", "silson24-relay-02"]),),
        )
        conn.commit()
    finally:
        conn.close()
    a.start()
    yield a
    a.close()


def test_c14_relay_id_not_enrolled_is_403(enrolled) -> None:
    body = S.search_body(relay_id="silson24-relay-03")
    r = enrolled.search(body)
    assert r.status_code == 403, r.text
    assert r.json()["type"] == S.PROBLEM_PREFIX + "relay-not-allowed"
    assert r.json()["title"] == "Relay is not allowed"
    rec = enrolled.audit_for(body["request_id"])
    assert len(rec) == 1 and rec[0]["result"] == "denied"
    # §4: the id was not consumed (rejected at step 1 of §4)
    body["relay_id"] = "silson24-relay-01"
    assert enrolled.search(body).status_code == 200


def test_c14_relay_check_comes_before_clock_and_after_schema(enrolled) -> None:
    r = enrolled.search(S.search_body(relay_id="silson24-relay-03", sent_at=S.utc_z(offset_s=-4000)))
    assert r.status_code == 403
    bad = S.search_body(relay_id="silson24-relay-03")
    bad["patient"]["rrn"] = "x"
    assert enrolled.search(bad).status_code == 422


def test_c14_fetch_with_unenrolled_relay_is_403(enrolled) -> None:
    claim, res = enrolled.search_ok()
    r = enrolled.fetch(S.fetch_body(claim, [res["documents"][0]["id"]], relay_id="other-relay"))
    assert r.status_code == 403 and r.json()["type"] == S.PROBLEM_PREFIX + "relay-not-allowed"


def test_c22_fetch_from_another_enrolled_relay_node(enrolled) -> None:
    claim, res = enrolled.search_ok(relay_id="silson24-relay-01")
    ids = [d["id"] for d in res["documents"]]
    r = enrolled.fetch(S.fetch_body(claim, ids, relay_id="silson24-relay-02"))
    assert r.status_code == 200 and r.json()["count"] == len(ids)
    r = enrolled.search(S.search_body(S.B_NAME, S.hyph(S.B_RRN), claim=claim, relay_id="silson24-relay-02"))
    assert r.status_code == 409 and r.json()["type"] == S.PROBLEM_PREFIX + "claim-conflict"
