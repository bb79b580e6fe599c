"""``doctor``: each check reports OK/WARN/FAIL with a fix; any FAIL → exit 5 (cli.md §3)."""

from __future__ import annotations

import os
from pathlib import Path


def test_fresh_dev_installation_has_no_fail(cli, installation: Path) -> None:
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    assert result.code == 0, result.stdout
    checks = result.json()["checks"]
    assert {c["status"] for c in checks} <= {"OK", "WARN"}
    assert any(c["name"] == "server key matches certificate" and c["status"] == "OK" for c in checks)


def test_loose_key_file_is_a_fail_naming_the_file(cli, installation: Path) -> None:
    os.chmod(installation / "keys" / "signing.key", 0o644)
    result = cli("doctor", "--config", str(installation / "agent.toml"))
    assert result.code == 5
    assert any(line.startswith("FAIL") and "signing.key" in line for line in result.stdout.splitlines())


def test_missing_watch_folder_and_relay_server_ca_fail(cli, installation: Path) -> None:
    (installation / "inbox").rmdir()
    (installation / "tls" / "relay-server-ca.crt").unlink()
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    assert result.code == 5
    failed = {c["name"] for c in result.json()["checks"] if c["status"] == "FAIL"}
    assert {"watch[0] folder", "relay server CA"} <= failed


def test_client_ca_containing_server_issuer_fails(cli, installation: Path) -> None:
    # Trusting the issuer of agent certificates on the public port would let any agent call any other.
    (installation / "tls" / "relay-ca.crt").write_bytes((installation / "tls" / "dev-ca.crt").read_bytes())
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    assert result.code == 5
    assert any(c["name"] == "relay client CA" and c["status"] == "FAIL" for c in result.json()["checks"])


def _store_with_documents(installation: Path, n: int = 3) -> None:
    from agent.config import load_config
    from agent.store import FileFingerprint, Store
    from tests.store.storehelp import make_doc, record

    config = load_config(installation / "agent.toml")
    store = Store.open(config)
    try:
        for i in range(n):
            fp = FileFingerprint(path=f"inbox/f{i}.json", size=10, mtime_ns=i, sha256=f"{i:064x}")
            store.commit_file(fp, [record(make_doc(i))])
    finally:
        store.close()


def test_store_integrity_sampled_ok_then_fail_after_corruption(cli, installation: Path) -> None:
    import sqlite3

    _store_with_documents(installation)
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    check = next(c for c in result.json()["checks"] if c["name"] == "store integrity")
    assert check["status"] == "OK", check
    db = sqlite3.connect(installation / "data" / "store.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    table = "versions" if "versions" in tables else "documents"
    column = next(
        r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] in ("ciphertext", "content_ct", "ct")
    )
    rowid, blob = db.execute(f"SELECT rowid, {column} FROM {table} LIMIT 1").fetchone()
    flipped = bytes([blob[0] ^ 0x01]) + bytes(blob[1:])
    db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (flipped, rowid))
    db.commit()
    db.close()
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    assert result.code == 5
    failed = [c for c in result.json()["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["store integrity"], failed


def test_port_held_by_another_program_is_a_fail_when_the_agent_is_not_running(
    cli, installation: Path
) -> None:
    """cli.md §2/§3: "port in use" is exit 5; doctor checks "port bindable"."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        toml = installation / "agent.toml"
        toml.write_text(toml.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1))
        result = cli("doctor", "--config", str(toml), "--json")
    assert result.code == 5, result.stdout
    failed = {c["name"] for c in result.json()["checks"] if c["status"] == "FAIL"}
    assert "api.listen bindable" in failed


def test_relay_cas_are_reported_before_enrollment_too(cli, tmp_path: Path) -> None:
    """cli.md §4: doctor reports FAIL while either relay CA is missing — also when there is no
    server certificate yet (init without --dev-certs)."""
    assert cli("init", "--dir", str(tmp_path / "site")).code == 0
    result = cli("doctor", "--config", str(tmp_path / "site" / "agent.toml"), "--json")
    assert result.code == 5
    failed = {c["name"] for c in result.json()["checks"] if c["status"] == "FAIL"}
    assert {"server certificate", "relay client CA", "relay server CA"} <= failed


def test_a_watch_profile_that_does_not_load_is_a_fail(cli, installation: Path) -> None:
    toml = installation / "agent.toml"
    text = toml.read_text()
    assert 'profile = "standard"' in text
    toml.write_text(text.replace('profile = "standard"', 'profile = "nosuch_vendor"', 1))
    result = cli("doctor", "--config", str(toml), "--json")
    assert result.code == 5
    assert any(c["name"] == "watch[0] profile" and c["status"] == "FAIL" for c in result.json()["checks"])


def _fake_running_state(installation: Path, relay: dict | None) -> None:
    """A state file as a running daemon writes it (this test process's pid is alive)."""
    import json

    from agent.config import load_config
    from agent.ops.daemon import state_path

    state = {"running": True, "pid": os.getpid(), "relay": relay}
    state_path(load_config(installation / "agent.toml")).write_text(json.dumps(state), encoding="utf-8")


def _relay_state(skew: int, level: str | None) -> dict:
    return {"clock_skew_s": skew, "clock_skew": level, "clock_skew_message": f"clock differs by {skew} s"}


def test_clock_skew_against_the_relay_is_a_warning_then_an_error(cli, installation: Path) -> None:
    # relay-api.md §11 / C-37: the skew measured by the daemon's heartbeat; > 60 s WARN, > 300 s FAIL.
    config = str(installation / "agent.toml")

    def clock_check() -> tuple[int, dict]:
        result = cli("doctor", "--config", config, "--json")
        return result.code, next(c for c in result.json()["checks"] if c["name"] == "clock vs relay")

    code, check = clock_check()
    assert check["status"] == "OK" and "not running" in check["detail"]
    _fake_running_state(installation, _relay_state(5, "ok"))
    assert clock_check()[1]["status"] == "OK"
    _fake_running_state(installation, _relay_state(100, "warning"))
    # (The exit code is 5 from here on anyway: the "daemon" is this test process, run as root.)
    code, check = clock_check()
    assert check["status"] == "WARN" and "100 s" in check["detail"]
    _fake_running_state(installation, _relay_state(-400, "error"))
    code, check = clock_check()
    assert (code, check["status"]) == (5, "FAIL") and "-400 s" in check["detail"]
    status = cli("status", "--config", config)
    assert "ERROR: clock differs by -400 s" in status.stdout


def test_overdue_monthly_audit_review_is_reported_until_the_report_is_made(
    cli, installation: Path, monkeypatch
) -> None:
    # security.md §7.5: no report for the previous month by the 10th → status and doctor say so.
    import datetime as dt

    from agent.audit import AuditLog
    from agent.clock import FakeClock
    from agent.config import load_config
    from agent.ops import doctor
    from agent.ops.daemon import audit_review, status_document
    from tests.audit.audithelp import relay_event

    config = load_config(installation / "agent.toml")
    october = dt.datetime(2026, 10, 20, 3, 0, tzinfo=dt.UTC)
    with AuditLog.open(config, clock=FakeClock(october)) as log:
        log.append(relay_event(1))
    now = dt.datetime(2026, 11, 11, 1, 0, tzinfo=dt.UTC)  # 11 Nov in Seoul: October's review is due
    monkeypatch.setattr(doctor, "_now", lambda: now)
    with AuditLog.open(config) as log:
        assert audit_review(log, now) == {"review_overdue": True, "review_month": "2026-10"}
        assert audit_review(log, now.replace(day=10))["review_overdue"] is False  # due by the 10th
        doc = status_document(config, None, None, now=now, audit=log)
    assert doc["audit"] == {"review_overdue": True, "review_month": "2026-10"}
    from agent.ops.daemon import attention_lines

    assert any("review of 2026-10 is overdue" in line for line in attention_lines(doc))
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    review = next(c for c in result.json()["checks"] if c["name"] == "monthly audit review")
    assert review["status"] == "WARN" and "2026-10" in review["fix"]
    assert (
        cli("audit", "report", "--month", "2026-10", "--config", str(installation / "agent.toml")).code == 0
    )
    result = cli("doctor", "--config", str(installation / "agent.toml"), "--json")
    review = next(c for c in result.json()["checks"] if c["name"] == "monthly audit review")
    assert review["status"] == "OK"


def test_a_failing_heartbeat_is_a_warning(cli, installation: Path) -> None:
    # relay-api.md §11: a failing heartbeat "shows in `status`, `doctor` and the log".
    toml = installation / "agent.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace('url = ""', 'url = "https://relay.invalid"'),
        encoding="utf-8",
    )

    def heartbeat_check() -> dict:
        result = cli("doctor", "--config", str(toml), "--json")
        return next(c for c in result.json()["checks"] if c["name"] == "relay heartbeat")

    assert heartbeat_check()["status"] == "OK"  # not running: nothing measured
    failing = {
        "enrolled": True,
        "last_result": "error",
        "last_error": "http_500",
        "consecutive_failures": 3,
        "last_success_at": None,
    }
    _fake_running_state(installation, failing)
    check = heartbeat_check()
    assert check["status"] == "WARN" and "http_500" in check["detail"] and "3 in a row" in check["detail"]
    assert check["fix"]
    status = cli("status", "--config", str(toml))  # "it shows in `status`, `doctor` and the log"
    assert "heartbeats to the relay fail (http_500, 3 in a row)" in status.stdout
    _fake_running_state(
        installation, {**failing, "last_result": "ok", "last_success_at": "2026-11-24T05:00:00Z"}
    )
    assert heartbeat_check()["status"] == "OK"


def test_a_server_certificate_whose_chain_cannot_be_built_is_reported(cli, installation: Path) -> None:
    # cli.md §3: doctor checks "certificates (chain, expiry, key match)".
    from cryptography.hazmat.primitives import serialization

    from agent import pki

    config = str(installation / "agent.toml")

    def chain_check() -> dict:
        result = cli("doctor", "--config", config, "--json")
        return next(c for c in result.json()["checks"] if c["name"] == "server certificate chain")

    assert chain_check()["status"] == "OK"  # dev certificates: leaf + dev CA in the file
    tls = installation / "tls"
    key = serialization.load_pem_private_key((tls / "server.key").read_bytes(), password=None)
    other_key, other_ca = pki.make_ca("Unrelated CA")
    _, leaf = pki.make_cert(other_key, other_ca, "12345678", dns=["localhost"], server=True, key=key)
    (tls / "server.crt").write_bytes(pki.cert_pem(leaf))  # same key, foreign issuer, no chain
    check = chain_check()
    assert check["status"] == "WARN" and "issuer of CN=12345678" in check["detail"] and check["fix"]
    dev_ca = pki.make_ca("Another CA")[1]
    (tls / "server.crt").write_bytes(pki.cert_pem(leaf, dev_ca))  # a "chain" whose link is broken
    check = chain_check()
    assert check["status"] == "FAIL" and "not signed by the next" in check["detail"]


def test_status_of_a_stopped_agent_keeps_the_last_job_results(cli, installation: Path) -> None:
    # cli.md §3 status: "scheduled jobs with next run" for a running or stopped agent. Stopped,
    # nothing is due, but a job that failed before the stop still shows it.
    import json

    from agent.config import load_config
    from agent.ops.daemon import state_path

    jobs = [
        {"name": "backup", "next_run_at": "2026-11-25T17:00:00Z", "last_result": "error", "last_run_at": "x"},
        {"name": "rescan", "next_run_at": "2026-11-24T05:00:30Z", "last_result": "ok"},
    ]
    state = {"running": False, "pid": os.getpid(), "jobs": jobs}
    state_path(load_config(installation / "agent.toml")).write_text(json.dumps(state), encoding="utf-8")
    doc = cli("status", "--json", "--config", str(installation / "agent.toml")).json()
    by_name = {j["name"]: j for j in doc["jobs"]}
    assert doc["running"] is False
    assert by_name["backup"] == {
        "name": "backup",
        "next_run_at": None,
        "last_result": "error",
        "last_run_at": "x",
    }
    assert by_name["rescan"]["last_result"] == "ok" and by_name["rescan"]["next_run_at"] is None
    assert by_name["purge"] == {"name": "purge", "next_run_at": None, "last_result": None}
