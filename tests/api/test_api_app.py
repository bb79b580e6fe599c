"""``agent.api.app``: requests that pass the event loop's steps together are worked in lots —
one worker, one audit group commit — and a lot never mixes up its requests' outcomes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from tests.api.conftest import start_agent, stop_agent
from tests.api.test_api_requests import assert_problem, search_body

SEARCH = "/v1/documents/search"
N = 24


def _held_searches(agent: Any, release: threading.Event, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Send ``bodies`` at once from separate connections while the hook holds them, then release
    them together, so they reach the workers as (nearly) one lot. Returns responses by id."""
    responses: dict[str, Any] = {}
    lock = threading.Lock()

    def send(body: dict[str, Any]) -> None:
        with agent.client() as c:
            resp = c.post(SEARCH, body)
        with lock:
            responses[body["request_id"]] = resp

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while agent.server.app.in_flight < len(bodies) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert agent.server.app.in_flight == len(bodies)
    release.set()
    for t in threads:
        t.join()
    return responses


def _hold_until(release: threading.Event) -> Any:
    async def hold(path: str) -> None:
        if path == SEARCH:
            while not release.is_set():
                await asyncio.sleep(0.005)

    return hold


def test_requests_released_together_share_few_audit_commits_and_keep_their_own_records(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    agent = start_agent(
        tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0}, handler_hook=_hold_until(release)
    )
    try:
        before = agent.audit.transactions
        bodies = [search_body() for _ in range(N)]
        responses = _held_searches(agent, release, bodies)
        assert {rid: r.status_code for rid, r in responses.items()} == {b["request_id"]: 200 for b in bodies}
        for body in bodies:  # each response answers its own request
            assert responses[body["request_id"]].json()["request_id"] == body["request_id"]
        records = agent.relay_records()
        assert sorted(r["request_id"] for r in records) == sorted(b["request_id"] for b in bodies)
        assert all(r["result"] == "success" and r["status"] == 200 for r in records)
        # Without lots each record would be its own commit (or nearly): 24 requests, a handful.
        assert agent.audit.transactions - before <= N // 3
        assert agent.audit.verify().ok
    finally:
        release.set()
        stop_agent(agent)


def test_a_bug_in_one_request_of_a_lot_fails_only_that_request_and_closed(tmp_path: Path) -> None:
    release = threading.Event()
    agent = start_agent(
        tmp_path, limits={"rate_per_s": 0, "health_rate_per_s": 0}, handler_hook=_hold_until(release)
    )
    try:
        bodies = [search_body() for _ in range(8)]
        doomed = bodies[3]["request_id"]
        handlers = agent.server.app.handlers
        finish = handlers.finish

        def buggy_finish(started: Any) -> Any:
            if started.ctx.request_id == doomed:
                raise RuntimeError("a bug in the handler")
            return finish(started)

        handlers.finish = buggy_finish
        responses = _held_searches(agent, release, bodies)
        # No record describes it, so it gets the fail-closed 503 and nothing else (no input echoed).
        assert_problem(responses[doomed], 503, "audit-unavailable")
        assert responses[doomed].json()["request_id"] is None
        for body in bodies:
            if body["request_id"] != doomed:
                assert responses[body["request_id"]].status_code == 200
        recorded = {r["request_id"] for r in agent.relay_records()}
        assert recorded == {b["request_id"] for b in bodies} - {doomed}
    finally:
        release.set()
        stop_agent(agent)


def test_last_request_at_is_the_time_of_the_last_search_or_fetch(agent) -> None:
    # `status` shows the last relay request (cli.md §3.1 api.last_request_at); health is not one.
    import datetime as dt

    assert agent.server.app.last_request_at is None
    with agent.client() as c:
        assert c.health().status_code == 200
        assert agent.server.app.last_request_at is None
        before = dt.datetime.now(dt.UTC)
        assert c.post(SEARCH, search_body()).status_code == 200
    seen = agent.server.app.last_request_at
    assert seen is not None and before <= seen <= dt.datetime.now(dt.UTC)
