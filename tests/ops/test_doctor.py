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
