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
