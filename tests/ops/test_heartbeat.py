"""Heartbeat to the relay simulator (relay-api.md §11, C-36, C-37).

Real mutual TLS on 127.0.0.1 with the enrolled certificate. The schedule is checked through the
delays the heartbeat computes (an injected ``wait`` and a mid-point ``rng``), never wall time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.api.server import RelayServer
from agent.audit import AuditLog
from agent.config import Config, load_config
from agent.keys import load_keyring
from agent.ops.daemon import status_document
from agent.ops.enroll import STATE_KEY, enroll
from agent.ops.heartbeat import MEMBERS, Heartbeat, backoff_base, skew_level, suggested_interval
from agent.ops.relaysim_server import RelaySimulator
from agent.store import Store


class Mid:
    """An ``rng`` whose jitter is always zero (the mid-point of the range)."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class Enrolled:
    def __init__(self, root: Path, sim: RelaySimulator, *, listen: str = "127.0.0.1:8443") -> None:
        toml = sim.prepare_installation(root, listen=listen)
        enroll(load_config(toml), token=sim.issue_token(), sleep=lambda s: None)
        self.root = root
        self.config: Config = load_config(toml)
        self.keyring = load_keyring(self.config.keys_dir, require_signing=True)
        self.store = Store.open(self.config, keyring=self.keyring)
        self.audit = AuditLog.open(self.config, signer=self.keyring.signer)

    def heartbeat(self, **kwargs: Any) -> Heartbeat:
        kwargs.setdefault("rng", Mid())
        kwargs.setdefault("status_provider", lambda: {})
        return Heartbeat(self.config, store=self.store, audit=self.audit, keyring=self.keyring, **kwargs)

    def close(self) -> None:
        self.store.close()
        self.audit.close()


@pytest.fixture
def agent(tmp_path: Path, sim: RelaySimulator) -> Iterator[Enrolled]:
    enrolled = Enrolled(tmp_path / "inst", sim)
    yield enrolled
    enrolled.close()


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _stop_after(n: int, calls: list[float]):
    """A ``wait`` that returns at once, recording each delay, and asks to stop after ``n`` waits."""

    def wait(delay: float) -> bool:
        calls.append(delay)
        return len(calls) > n

    return wait


# -- C-36: schedule and body ------------------------------------------------------------------------------
def test_first_beat_within_30_s_then_on_schedule(agent: Enrolled, sim: RelaySimulator):
    default = agent.heartbeat(rng=None)
    assert 0 < default.first_delay <= 20  # + at most 10 s of request: reaches the relay within 30 s
    calls: list[float] = []
    hb = agent.heartbeat(first_delay=5, wait=_stop_after(4, calls))
    assert hb.start()
    assert _until(lambda: len(calls) == 5)
    hb.stop()
    assert calls == [5, 300, 300, 300, 300]  # relay.heartbeat_interval default 5 min, no jitter
    assert len(sim.heartbeats) == 4


def test_heartbeats_reach_the_simulator_in_real_time(agent: Enrolled, sim: RelaySimulator):
    hb = agent.heartbeat(first_delay=0.05, interval=0.2)
    sim.next_interval_s = None
    started = time.monotonic()
    hb.start()
    try:
        assert _until(lambda: len(sim.heartbeats) >= 3)
    finally:
        hb.stop()
    assert sim.heartbeat_times[0] - started < 30
    assert hb.state()["last_result"] == "ok" and hb.state()["consecutive_failures"] == 0


def test_body_has_exactly_the_section_11_members(agent: Enrolled, sim: RelaySimulator):
    agent.audit.append(
        {
            "actor": {"kind": "system"},
            "source": {"local": True, "tty": None},
            "action": "system.test",
            "result": "success",
        }
    )
    hb = agent.heartbeat()
    assert hb.beat_once() is True
    body = sim.last_heartbeat()
    assert body is not None
    assert set(body) == set(MEMBERS) and len(body) == 16
    state = json.loads(agent.store.kv_get(STATE_KEY))
    assert body["agent_id"] == state["agent_id"]
    assert body["institution_code"] == "99000001"
    assert body["agent_version"] == "1.0.0" and body["api_revision"] == 0
    assert body["signing_key_id"] == agent.keyring.signer.kid
    seq, head = agent.audit.head()
    assert body["audit_head"] == {"seq": seq, "hash": head} and seq >= 1
    assert body["audit_review_overdue"] is False
    assert body["status"] == "ok"
    for key in ("uptime_s", "queue_depth", "quarantined_total", "disk_free_bytes", "cert_expiry_days"):
        assert isinstance(body[key], int) and not isinstance(body[key], bool), key
    assert 360 <= body["cert_expiry_days"] <= 366
    dt.datetime.strptime(body["sent_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert not any(isinstance(v, float) for v in body.values())


def test_body_from_the_status_document(agent: Enrolled, sim: RelaySimulator):
    """The daemon passes its ``status --json`` document; members are mapped from it."""

    def provider() -> dict[str, Any]:
        doc = status_document(agent.config, agent.store, None)
        doc["ingest"]["files_quarantined"] = 3
        doc["ingest"]["files_pending"] = 2
        doc["ingest"]["last_commit_at"] = "2025-11-03T05:14:41Z"
        doc["api"]["last_request_at"] = "2025-11-03T05:12:05Z"
        doc["uptime_s"] = 86400
        return doc

    hb = agent.heartbeat(status_provider=provider)
    assert hb.beat_once()
    body = sim.last_heartbeat()
    assert set(body) == set(MEMBERS)
    assert body["quarantined_total"] == 3 and body["queue_depth"] == 2 and body["uptime_s"] == 86400
    assert body["last_ingest_at"] == "2025-11-03T05:14:41Z"
    assert body["last_relay_request_at"] == "2025-11-03T05:12:05Z"
    assert body["disk_free_bytes"] > 0


def test_a_failing_status_provider_still_sends_a_complete_body(agent: Enrolled, sim: RelaySimulator):
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    hb = agent.heartbeat(status_provider=broken)
    assert hb.beat_once()
    assert set(sim.last_heartbeat()) == set(MEMBERS)


def test_backoff_30_60_120_up_to_15_min_with_the_simulator_down(agent: Enrolled, sim: RelaySimulator):
    sim.stop()  # connection refused
    calls: list[float] = []
    hb = agent.heartbeat(first_delay=1, wait=_stop_after(9, calls))
    hb.start()
    assert _until(lambda: len(calls) == 10)
    hb.stop()
    assert calls == [1, 30, 60, 120, 240, 480, 900, 900, 900, 900]
    state = hb.state()
    assert state["consecutive_failures"] == 9 and state["last_result"] == "error"
    assert state["last_error"] == "ConnectionError"
    assert [backoff_base(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


def test_backoff_jitter_is_within_20_percent_and_success_resumes_schedule(
    agent: Enrolled, sim: RelaySimulator
):
    import random

    sim.heartbeat_down = True  # 503
    hb = agent.heartbeat(rng=random.Random(7))
    for n in range(1, 9):
        assert hb.beat_once() is False
        delay = hb.next_delay()
        base = min(30 * 2 ** (n - 1), 900)
        assert 0.8 * base <= delay <= 1.2 * base
    sim.heartbeat_down = False
    assert hb.beat_once() is True
    delay = hb.next_delay()
    assert 0.9 * 300 <= delay <= 1.1 * 300
    assert hb.state()["consecutive_failures"] == 0


def test_non_2xx_is_a_failure(agent: Enrolled, sim: RelaySimulator):
    sim.heartbeat_status = 500
    hb = agent.heartbeat()
    assert hb.beat_once() is False
    assert hb.state()["last_error"] == "http_500"
    assert hb.next_delay() == 30


def test_serving_continues_while_heartbeats_fail(tmp_path: Path, sim: RelaySimulator):
    agent = Enrolled(tmp_path / "served", sim, listen="127.0.0.1:0")
    server = RelayServer(agent.config, store=agent.store, audit=agent.audit, keyring=agent.keyring)
    server.start()
    sim.heartbeat_down = True
    stop = threading.Event()
    calls: list[float] = []

    def wait(delay: float) -> bool:
        calls.append(delay)
        return stop.wait(0.01)

    hb = agent.heartbeat(first_delay=0, wait=wait)
    hb.start()
    try:
        client_cert, client_key = tmp_path / "relay.crt", tmp_path / "relay.key"
        sim.issue_relay_client_cert(client_cert, client_key)
        host, port = server.address
        assert _until(lambda: hb.state()["consecutive_failures"] >= 3)
        for _ in range(3):
            response = requests.get(
                f"https://{host}:{port}/v1/health",
                cert=(str(client_cert), str(client_key)),
                verify=str(sim.server_ca_path),
                timeout=(5, 10),
            )
            assert response.status_code == 200
            assert "heartbeat" not in response.text
        assert hb.state()["running"] is True
    finally:
        stop.set()
        hb.stop()
        server.stop()
        agent.close()
    assert calls[1:4] == [30, 60, 120]


def test_not_enrolled_sends_nothing_and_relay_url_empty_does_not_start(tmp_path: Path, sim: RelaySimulator):
    toml = sim.prepare_installation(tmp_path / "fresh")
    config = load_config(toml)
    keyring = load_keyring(config.keys_dir)
    store = Store.open(config, keyring=keyring)
    try:
        hb = Heartbeat(config, store=store, audit=None, keyring=keyring, status_provider=dict, rng=Mid())
        assert hb.beat_once() is False
        assert sim.heartbeats == [] and hb.state()["enrolled"] is False
        assert hb.next_delay() == 300  # keeps looking on the normal schedule
        toml.write_text(toml.read_text().replace(f'url = "{sim.base_url}"', 'url = ""'))
        off = Heartbeat(load_config(toml), store=store, audit=None, keyring=keyring, status_provider=dict)
        assert off.start() is False and off.state()["enabled"] is False
    finally:
        store.close()


def test_loop_survives_unexpected_errors(
    agent: Enrolled, sim: RelaySimulator, monkeypatch: pytest.MonkeyPatch
):
    calls: list[float] = []
    hb = agent.heartbeat(first_delay=0, wait=_stop_after(3, calls))

    def explode() -> bool:
        raise RuntimeError("bug")

    monkeypatch.setattr(hb, "beat_once", explode)
    hb.start()
    assert _until(lambda: len(calls) == 4)
    hb.stop()
    assert calls == [0, 300, 300, 300]


# -- C-37: the response changes nothing but the skew state and (bounded) interval -------------------------
def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for sub in ("tls", "keys"):
        for path in (root / sub).rglob("*"):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    out["agent.toml"] = hashlib.sha256((root / "agent.toml").read_bytes()).hexdigest()
    return out


def test_extra_response_members_change_nothing(agent: Enrolled, sim: RelaySimulator):
    before = _snapshot(agent.root)
    state_before = agent.store.kv_get(STATE_KEY)
    relay_ids_before = agent.store.kv_get("relay_ids")
    sim.next_interval_s = None
    sim.heartbeat_extra = {
        "config": {"relay": {"url": "https://evil.invalid"}, "api": {"client_ca": "/tmp/x"}},
        "command": "shutdown",
        "relay_ids": ["evil"],
        "heartbeat_interval_s": 61,
        "heartbeat_url": "https://evil.invalid/hb",
        "client_ca_pem": "-----BEGIN CERTIFICATE-----",
        "signing_key_id": "0" * 64,
    }
    hb = agent.heartbeat()
    assert hb.beat_once() is True
    assert _snapshot(agent.root) == before
    assert agent.store.kv_get(STATE_KEY) == state_before
    assert agent.store.kv_get("relay_ids") == relay_ids_before
    assert hb.state()["interval_s"] == 300 and hb.next_delay() == 300
    assert hb.beat_once() is True
    assert sim.heartbeats[-1]["agent_id"] == json.loads(state_before)["agent_id"]


@pytest.mark.parametrize(
    "suggested, expected",
    [
        (10, 300),
        (59, 300),
        (60, 60),
        (120, 120),
        (3600, 3600),
        (3601, 300),
        (7200, 300),
        (True, 300),
        ("120", 300),
        (120.5, 300),
    ],
)
def test_next_interval_honoured_only_within_60_to_3600(
    agent: Enrolled, sim: RelaySimulator, suggested, expected
):
    sim.next_interval_s = suggested
    hb = agent.heartbeat()
    assert hb.beat_once() is True
    assert hb.next_delay() == expected


def test_suggestion_reverts_when_the_relay_stops_sending_it(agent: Enrolled, sim: RelaySimulator):
    sim.next_interval_s = 120
    hb = agent.heartbeat()
    hb.beat_once()
    assert hb.next_delay() == 120
    sim.next_interval_s = None
    hb.beat_once()
    assert hb.next_delay() == 300
    assert suggested_interval(10) is None and suggested_interval(600) == 600


@pytest.mark.parametrize(
    "offset, level",
    [
        (0, "ok"),
        (30, "ok"),
        (-45, "ok"),
        (90, "warning"),
        (-250, "warning"),
        (400, "error"),
        (-400, "error"),
        (3600, "error"),
    ],
)
def test_server_time_skew_sets_the_clock_state(agent: Enrolled, sim: RelaySimulator, offset: int, level: str):
    sim.server_time_offset_s = offset
    hb = agent.heartbeat()
    assert hb.state()["clock_skew"] == "unknown"
    assert hb.beat_once() is True
    state = hb.state()
    assert state["clock_skew"] == level
    assert abs(state["clock_skew_s"] - offset) <= 2
    if level == "ok":
        assert state["clock_skew_message"] is None
    else:
        assert str(state["clock_skew_s"]) in state["clock_skew_message"]


@pytest.mark.parametrize(
    "server_time",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2025-13-40T00:00:00Z", "yesterday", 7, None],
)
def test_an_unusable_server_time_leaves_the_skew_unknown(agent: Enrolled, sim: RelaySimulator, server_time):
    # A relay answer whose server_time cannot be read (or converted to UTC) is still a successful
    # heartbeat; the skew stays unmeasured (was an OverflowError for the calendar's edges).
    sim.heartbeat_extra = {"server_time": server_time}
    hb = agent.heartbeat()
    assert hb.beat_once() is True
    state = hb.state()
    assert state["clock_skew"] == "unknown" and state["clock_skew_s"] is None


def test_skew_levels():
    assert [skew_level(s) for s in (None, 0, 60, 61, 300, 301, -301)] == [
        "unknown",
        "ok",
        "ok",
        "warning",
        "warning",
        "error",
        "error",
    ]


def test_state_is_json_serialisable(agent: Enrolled, sim: RelaySimulator):
    hb = agent.heartbeat()
    hb.beat_once()
    json.dumps(hb.state())
