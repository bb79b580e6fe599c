"""``init`` (cli.md §4), ``--version`` and the exit-code contract of the CLI (cli.md §2)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import load_config
from agent.keys import load_keyring


def test_version_prints_name_and_semver(cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert re.fullmatch(r"silson-agent \d+\.\d+\.\d+\n", result.stdout)


def test_unknown_command_and_option_are_usage_errors(cli) -> None:
    assert cli("frobnicate").code == 2
    result = cli("check", "--no-such-option", "x.json")
    assert result.code == 2
    assert "Traceback" not in result.stderr


def test_init_dev_certs_creates_the_documented_layout(cli, tmp_path: Path) -> None:
    target = tmp_path / "site"
    result = cli(
        "init",
        "--dir",
        str(target),
        "--institution-code",
        "12345678",
        "--institution-type",
        "pharmacy",
        "--dev-certs",
    )
    assert result.code == 0, result.stderr
    for name in (
        "agent.toml",
        "keys/kek-1.key",
        "keys/blind-index.key",
        "keys/signing.key",
        "tls/server.crt",
        "tls/server.key",
        "tls/relay-ca.crt",
        "tls/relay-server-ca.crt",
        "tls/relay-client.crt",
        "tls/relay-client.key",
        "tls/dev-ca.crt",
    ):
        assert (target / name).is_file(), name
    for name in ("inbox", "data", "logs"):
        assert (target / name).is_dir(), name
    for key in (
        "keys/kek-1.key",
        "keys/blind-index.key",
        "keys/signing.key",
        "tls/server.key",
        "tls/relay-client.key",
    ):
        assert stat.S_IMODE(os.stat(target / key).st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(target / "keys").st_mode) == 0o700
    # security.md §10: every file the agent creates is 0600, every directory 0700, except logs.
    for path in target.rglob("*"):
        if path.is_relative_to(target / "logs") or path.is_symlink():
            continue
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path.relative_to(target)

    config = load_config(target / "agent.toml")
    assert config.agent.institution_code == "12345678"
    assert config.agent.institution_type == "pharmacy"
    assert config.data_dir == (target / "data").resolve()
    load_keyring(config.keys_dir, require_signing=True)


def test_dev_server_cert_has_san_and_differs_from_relay_ca(installation: Path) -> None:
    server = x509.load_pem_x509_certificates((installation / "tls/server.crt").read_bytes())
    leaf = server[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    relay_ca = x509.load_pem_x509_certificate((installation / "tls/relay-ca.crt").read_bytes())
    dev_ca = x509.load_pem_x509_certificate((installation / "tls/dev-ca.crt").read_bytes())
    assert leaf.issuer == dev_ca.subject and leaf.issuer != relay_ca.subject
    client = x509.load_pem_x509_certificate((installation / "tls/relay-client.crt").read_bytes())
    assert client.issuer == relay_ca.subject
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_init_refuses_to_overwrite_keys(cli, installation: Path) -> None:
    before = (installation / "keys/kek-1.key").read_bytes()
    result = cli("init", "--dir", str(installation), "--dev-certs")
    assert result.code == 4
    assert "refusing to overwrite" in result.stderr
    assert (installation / "keys/kek-1.key").read_bytes() == before


def test_loose_key_permissions_are_a_config_error(installation: Path) -> None:
    import pytest

    from agent.errors import ConfigError

    os.chmod(installation / "keys/kek-1.key", 0o644)
    with pytest.raises(ConfigError) as info:
        load_keyring(installation / "keys")
    assert "kek-1.key" in str(info.value)
    os.chmod(installation / "keys/kek-1.key", 0o600)
    link = installation / "keys/blind-index.key"
    real = installation / "bidx.real"
    link.rename(real)
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_keyring(installation / "keys")


def test_status_shows_the_watch_path_as_configured(cli, installation: Path) -> None:
    """cli.md §3.1: `"watch": [ { "path": "inbox", ... } ]` for `path = "inbox"` in the config."""
    result = cli("status", "--config", str(installation / "agent.toml"), "--json")
    assert result.code == 0, result.stderr
    watch = result.json()["watch"]
    assert watch[0]["path"] == "inbox" and watch[0]["reachable"] is True
