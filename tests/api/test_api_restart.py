"""Replay protection survives a crash (C-12, S-05): a real server process, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from agent.api.relaysim import RelayClient
from tests.api.conftest import start_agent, stop_agent
from tests.api.test_api_documents import search
from tests.api.test_api_requests import assert_problem

REPO = Path(__file__).resolve().parents[2]


def _spawn(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.api.serve_agent", str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, int(line.split()[1])


def test_replayed_request_id_is_rejected_after_sigkill_and_restart(tmp_path: Path) -> None:
    # Prepare the installation (certs, keys, store) in-process, then serve it from a child.
    stop_agent(start_agent(tmp_path))
    tls = tmp_path / "tls"
    rid = str(uuid.uuid4())
    proc, port = _spawn(tmp_path)
    try:
        with RelayClient(
            f"https://127.0.0.1:{port}", tls / "client.crt", tls / "client.key", tls / "server-ca.crt"
        ) as c:
            assert search(c, request_id=rid).status_code == 200
            assert_problem(search(c, request_id=rid), 409, "replay-detected")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    proc, port = _spawn(tmp_path)
    try:
        with RelayClient(
            f"https://127.0.0.1:{port}", tls / "client.crt", tls / "client.key", tls / "server-ca.crt"
        ) as c:
            assert_problem(search(c, request_id=rid), 409, "replay-detected")
            assert search(c).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
