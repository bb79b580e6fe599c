"""The daemon as a real process: ready line, admin listener, status, SIGTERM, quarantine CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import run_cli
from tests.ingest.daemon_helpers import DaemonProcess
from tests.ingest.helpers import json_bytes, make_installation, receipt

STATUS_MEMBERS = {
    "agent_version",
    "running",
    "institution_code",
    "documents",
    "ingest",
    "watch",
    "api",
    "disk",
    "jobs",
}


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
    assert [e["id"] for e in run_cli("quarantine", "list", "--json", "--config", str(toml)).json()] == [
        entries[1]["id"]
    ]


SAMPLES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def _site_profile(broken: bool) -> str:
    """A site profile copied from the shipped vendor_a_csv; ``broken`` swaps two amount columns
    (본인부담금 ↔ 수납금액), as a wrong column mapping in a site's copy would."""
    text = (SAMPLES / "vendor_a_csv.toml").read_text(encoding="utf-8")
    text = text.replace('name = "vendor_a_csv"', 'name = "site_a"')
    if broken:
        text = text.replace('source = "본인부담금"\ntarget = "totals.copay"', 'source = "@copay@"')
        text = text.replace(
            'source = "수납금액"\ntarget = "patient_charge_total"',
            'source = "본인부담금"\ntarget = "patient_charge_total"',
        )
        text = text.replace('source = "@copay@"', 'source = "수납금액"\ntarget = "totals.copay"')
    return text


def _vendor_file(offset: int) -> bytes:
    """The shipped vendor A sample (CP949) with its two receipts renumbered by ``offset``."""
    data = (SAMPLES / "samples" / "vendor_a_pharmacy.csv").read_bytes()
    for n in (42, 43):
        data = data.replace(f"P202503-{n:06d}".encode(), f"P202503-{n + offset:06d}".encode())
    return data


def test_retry_after_a_profile_fix_ingests_the_file_and_the_daemon_uses_the_fixed_profile(tmp_path: Path):
    root = tmp_path / "inst"
    toml = make_installation(root, watch={"scan_interval": "1s", "settle": "1s", "profile": "site_a"})
    profile = root / "site_a.toml"  # a site profile next to the config
    profile.write_text(_site_profile(broken=True), encoding="utf-8")
    inbox = root / "inbox"
    with DaemonProcess(toml) as daemon:
        daemon.start()
        (inbox / "vendor-1.csv").write_bytes(_vendor_file(0))
        assert _wait(lambda: not any(inbox.iterdir()))
        [entry] = run_cli("quarantine", "list", "--json", "--config", str(toml)).json()
        assert {"R-401", "R-402"} <= set(entry["rules"])
        profile.write_text(_site_profile(broken=False), encoding="utf-8")  # the fix
        retried = run_cli("quarantine", "retry", entry["id"], "--config", str(toml))
        assert retried.code == 0, retried.stderr
        assert f"{entry['id']}: accepted (2 records)" in retried.stderr
        assert run_cli("quarantine", "list", "--json", "--config", str(toml)).json() == []
        # The running daemon reads the next export of that vendor with the corrected profile.
        (inbox / "vendor-2.csv").write_bytes(_vendor_file(100))
        assert _wait(lambda: not any(inbox.iterdir()))
        status = run_cli("status", "--json", "--config", str(toml)).json()
        assert status["documents"]["current_active"] == 4
        assert status["ingest"]["files_quarantined"] == 1  # the first attempt, history
        assert daemon.terminate() == 0
    assert run_cli("quarantine", "list", "--json", "--config", str(toml)).json() == []


def test_too_large_file_is_ingested_by_the_daemon_after_raising_the_limit_and_retry(tmp_path: Path):
    """exports.md §1: an R-001 file stays in place until `quarantine retry` (after raising
    max_file_size); the running daemon then reads it like any other file."""
    root = tmp_path / "inst"
    toml = make_installation(root, watch={"scan_interval": "1s", "settle": "1s", "max_file_size": 2000})
    inbox = root / "inbox"
    big = inbox / "month-end.json"
    big.write_bytes(json_bytes([receipt(n) for n in range(10)]))
    assert big.stat().st_size > 2000
    with DaemonProcess(toml) as daemon:
        daemon.start()
        assert _wait(lambda: len(run_cli("quarantine", "list", "--json", "--config", str(toml)).json()) == 1)
        assert daemon.terminate() == 0
    [entry] = run_cli("quarantine", "list", "--json", "--config", str(toml)).json()
    assert entry["rules"] == ["R-001"] and big.exists()
    text = toml.read_text(encoding="utf-8").replace("max_file_size = 2000", "max_file_size = 67108864")
    toml.write_text(text, encoding="utf-8")
    with DaemonProcess(toml) as daemon:
        daemon.start()
        time.sleep(1.5)  # several scans: the file is not read again on its own
        assert big.exists()
        retried = run_cli("quarantine", "retry", entry["id"], "--config", str(toml))
        assert retried.code == 0 and f"{entry['id']}: requeued" in retried.stderr
        assert _wait(lambda: not big.exists())
        status = run_cli("status", "--json", "--config", str(toml)).json()
        assert status["documents"]["versions_total"] == 10
        assert daemon.terminate() == 0
    assert run_cli("quarantine", "list", "--json", "--config", str(toml)).json() == []


def test_a_second_run_on_the_same_installation_is_refused_while_the_first_runs(tmp_path: Path):
    """One daemon per installation: two would both serve the port's store and ingest the folder."""
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    with DaemonProcess(toml) as daemon:
        daemon.start()
        assert daemon.ready_line()
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(toml)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(toml.parent),
        )
        assert second.returncode == 5, second.stderr
        assert "already running" in second.stderr and "Traceback" not in second.stderr
        assert daemon.terminate() == 0
    # The lock dies with its process: after the stop (or a SIGKILL) the next start is allowed.
    with DaemonProcess(toml) as daemon:
        daemon.start()
        assert daemon.ready_line()
        daemon.kill()
    with DaemonProcess(toml) as daemon:
        daemon.start()
        assert daemon.ready_line()
        assert daemon.terminate() == 0
