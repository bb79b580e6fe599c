"""The daemon as a real process: ready line, admin listener, status, SIGTERM, quarantine CLI."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.conftest import run_cli
from tests.ingest.daemon_helpers import DaemonProcess
from tests.ingest.helpers import json_bytes, make_installation, receipt

STATUS_MEMBERS = {"agent_version", "running", "institution_code", "documents", "ingest", "watch", "api",
                  "disk", "jobs"}


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_run_ingests_serves_status_and_stops_cleanly_on_sigterm(tmp_path: Path):
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    inbox = tmp_path / "inst" / "inbox"
    (inbox / "홍길동_영수증.json").write_bytes(json_bytes([receipt(1), receipt(2)]))
    (inbox / "broken.json").write_bytes(b"[")
    with DaemonProcess(toml) as daemon:
        daemon.start()
        ready = daemon.ready_line()
        assert ready and ready.startswith("ready: api=127.0.0.1:") and " admin=127.0.0.1:" in ready
        admin = ready.split("admin=")[1].strip()
        assert _wait(lambda: not any(inbox.iterdir()))
        metrics = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
        assert 'silson_ingest_files_total{outcome="accepted"} 1.0' in metrics
        live = json.loads(urllib.request.urlopen(f"http://{admin}/status", timeout=5).read())
        assert live["running"] is True
        status = run_cli("status", "--json", "--config", str(toml))
        doc = status.json()
        assert STATUS_MEMBERS <= set(doc)
        assert doc["running"] is True
        assert doc["ingest"]["files_accepted"] == 1 and doc["ingest"]["files_quarantined"] == 1
        assert doc["documents"] == {"current_active": 2, "current_cancelled": 0, "versions_total": 2}
        assert doc["watch"][0]["reachable"] is True and doc["watch"][0]["observer"] == "native"
        assert {j["name"] for j in doc["jobs"]} >= {"rescan", "purge", "backup"}
        assert daemon.terminate() == 0
    stopped = run_cli("status", "--json", "--config", str(toml)).json()
    assert stopped["running"] is False
    assert stopped["ingest"]["records_committed"] == 2  # from the store while stopped
    # No original file name anywhere in logs or data (S-29).
    for folder in (tmp_path / "inst" / "logs", tmp_path / "inst" / "data"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert "홍길동".encode() not in path.read_bytes(), path
                assert "홍길동" not in path.name
    log_dir = tmp_path / "inst" / "logs"
    assert oct(log_dir.stat().st_mode & 0o777) == "0o750"
    assert oct((log_dir / "agent.log").stat().st_mode & 0o777) == "0o640"


def test_quarantine_list_show_retry_drop_through_the_cli(tmp_path: Path):
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    inbox = tmp_path / "inst" / "inbox"
    (inbox / "bad.json").write_bytes(b"{oops")
    (inbox / "bad2.json").write_bytes(b"[1, 2")
    with DaemonProcess(toml) as daemon:
        daemon.start()
        assert _wait(lambda: not any(inbox.iterdir()))
        assert daemon.terminate() == 0
    listed = run_cli("quarantine", "list", "--json", "--config", str(toml))
    assert listed.code == 0
    entries = listed.json()
    assert len(entries) == 2 and all(e["rules"] == ["R-004"] for e in entries)
    assert "bad" not in listed.stdout
    qid = entries[0]["id"]
    shown = run_cli("quarantine", "show", qid, "--reason", "checking export", "--config", str(toml))
    assert shown.code == 0
    retried = run_cli("quarantine", "retry", qid, "--config", str(toml))
    assert retried.code == 3  # still invalid: the entry stays
    assert len(run_cli("quarantine", "list", "--json", "--config", str(toml)).json()) == 2
    dropped = run_cli("quarantine", "drop", qid, "--config", str(toml))
    assert dropped.code == 0
    assert [e["id"] for e in run_cli("quarantine", "list", "--json", "--config", str(toml)).json()] \
        == [entries[1]["id"]]
