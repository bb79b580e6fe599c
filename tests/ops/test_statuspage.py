"""The localhost status page, rendered by a real headless Chromium (Debian's ``chromium``).

`make test` installs the package when it is missing; the browser test is skipped only where no
Chromium can be had, and then says so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from agent.ops.statuspage import render_status_html
from tests.ingest.daemon_helpers import DaemonProcess
from tests.ingest.helpers import json_bytes, make_installation, receipt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIXTURE_PHI = ["홍길동", "9001011000001", "900101-1000001", "9001011******", "900101-1******"]


def test_page_escapes_values_and_flags_problems() -> None:
    page = render_status_html(
        {
            "agent_version": "1.0.0",
            "running": False,
            "institution_code": "99000001",
            "watch": [{"path": "/in<script>", "reachable": False, "pending": 3}],
            "ingest": {"files_quarantined": 2},
            "api": {"server_cert_expires_in_days": 5},
            "documents": {},
            "disk": {},
            "jobs": [],
        }
    )
    assert "<script>" not in page and "/in&lt;script&gt;" in page
    assert "not running" in page and "unreachable" in page and "quarantine" in page and "expires in 5" in page


def test_page_shows_what_the_text_status_asks_the_operator_to_look_at() -> None:
    # A failing heartbeat, clock skew, a key rotation under way and an overdue access-log review
    # reach the one person who looks at this page, not only `status` in a terminal.
    page = render_status_html(
        {
            "running": True,
            "relay": {
                "enrolled": True,
                "last_result": "error",
                "last_error": "http_503",
                "consecutive_failures": 4,
                "clock_skew": "warning",
                "clock_skew_message": "clock differs from the relay by 90 s",
            },
            "keys": {
                "current_kek": "kek-2",
                "rotation": {"kek_id": "kek-2", "done": 5, "total": 9, "complete": False},
            },
            "audit": {"review_overdue": True, "review_month": "2026-10"},
            "watch": [],
            "jobs": [],
        }
    )
    assert "heartbeats to the relay fail (http_503, 4 in a row)" in page
    assert "clock differs from the relay by 90 s" in page
    assert "key rotation to kek-2 under way: 5 of 9" in page
    assert "review of 2026-10 is overdue" in page and "All good" not in page


def _dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (make test installs it)")
def test_status_page_in_headless_chromium_shows_counts_and_no_phi(tmp_path: Path) -> None:
    toml = make_installation(tmp_path / "inst", watch={"scan_interval": "1s", "settle": "1s"})
    inbox = tmp_path / "inst" / "inbox"
    (inbox / "export.json").write_bytes(json_bytes([receipt(1), receipt(2)]))
    with DaemonProcess(toml) as daemon:
        daemon.start()
        ready = daemon.ready_line()
        assert ready, "daemon did not become ready"
        admin = ready.split("admin=")[1].strip()
        deadline = time.monotonic() + 15
        while any(inbox.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        raw = urllib.request.urlopen(f"http://{admin}/", timeout=5).read().decode("utf-8")
        dom = _dump_dom(f"http://{admin}/", tmp_path / "chromium-profile")
        assert daemon.terminate() == 0
    assert 'id="overview"' in dom and "silson-agent" in dom
    assert "Current documents, active</th><td" in dom and ">2</td>" in dom
    for needle in FIXTURE_PHI:
        assert needle not in dom and needle not in raw, needle
