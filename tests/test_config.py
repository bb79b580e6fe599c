"""Configuration contract (cli.md §5): typed, frozen, strict, documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.config import (
    SETTINGS,
    WATCH_SETTINGS,
    build_config,
    default_config,
    load_config,
    parse_duration,
    settings_markdown,
    settings_toml,
)
from agent.errors import ConfigError, ExitStatus

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "agent.example.toml"
CLI_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "cli.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text,seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("3y", 1095 * 86400)]
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "5", "5 m", "1.5h", "-3d", "3w", "", "s"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_and_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ninstitution_code = "12345678"\n[[watch]]\npath = "in"\n')
    config = load_config(path)
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.watch[0].path == (tmp_path / "in").resolve()
    assert config.watch[0].scan_interval == 30
    assert config.limits.max_body_bytes == 65536
    assert config.retention.keep == 1095 * 86400
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.source = None  # type: ignore[misc]


@pytest.mark.parametrize(
    "text,key",
    [
        ("[agent]\nnosuch = 1\n", "agent.nosuch"),
        ("[bogus]\n", "bogus"),
        ("[api]\nlisten = 8443\n", "api.listen"),
        ('[[watch]]\nsettle = "2 seconds"\n', "watch[0].settle"),
        ('[[watch]]\npolling = "yes"\n', "watch[0].polling"),
        ("[api.limits]\nmax_body_bytes = 99999999999\n", "api.limits.max_body_bytes"),
        ('[api.limits]\nheader_timeout = "100ms"\n', "api.limits.header_timeout"),
        ('[retention]\naudit_keep = "2y"\n', "retention.audit_keep"),
        ('[admin]\nlisten = "0.0.0.0:8780"\n', "admin.listen"),
        ('[agent]\ninstitution_code = "1234"\n', "agent.institution_code"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_status == ExitStatus.CONFIG


def test_non_loopback_admin_allowed_only_when_forced(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[admin]\nlisten = "0.0.0.0:8780"\nallow_non_loopback = true\n'))
    assert config.admin.listen == "0.0.0.0:8780"


def test_rate_zero_turns_limiting_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[api.limits]\nrate_per_s = 0\n")).limits.rate_per_s == 0


def test_lookup_order_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    a.mkdir()
    write(a, '[agent]\ninstitution_code = "11111111"\n')
    b = tmp_path / "b"
    b.mkdir()
    write(b, '[agent]\ninstitution_code = "22222222"\n')
    monkeypatch.chdir(b)
    assert load_config(environ={}).agent.institution_code == "22222222"
    env = {"SILSON_AGENT_CONFIG": str(a / "agent.toml")}
    assert load_config(environ=env).agent.institution_code == "11111111"
    with pytest.raises(ConfigError):
        load_config(environ={"SILSON_AGENT_CONFIG": str(tmp_path / "missing.toml")})


def test_missing_config_file_is_exit_4(cli, tmp_path: Path) -> None:
    result = cli("check", "--config", str(tmp_path / "nope.toml"), str(tmp_path))
    assert result.code == 4
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr


def test_example_config_is_generated_and_loads_to_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text == settings_toml(), "regenerate: python -m agent.config --toml > config/agent.example.toml"
    copy = write(tmp_path, text)
    assert load_config(copy) == dataclasses.replace(default_config(tmp_path), source=copy)
    for section, spec in SETTINGS.items():
        assert f"[{section}]" in text
        for key in spec:
            assert re.search(rf"^{re.escape(key)} = ", text, re.M), (section, key)


def test_docs_list_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert text.strip() == settings_markdown().strip(), (
        "regenerate: python -m agent.config > docs/configuration.md"
    )
    for section, spec in SETTINGS.items():
        for key in spec:
            assert f"`{section}.{key}`" in text
    for key in WATCH_SETTINGS:
        assert f"`watch.{key}`" in text


def test_every_key_of_the_cli_spec_is_implemented() -> None:
    """The TOML block of cli.md §5 parses with our schema, and every key in it is known."""
    spec = CLI_SPEC.read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", spec, re.S).group(1)
    import tomllib

    raw = tomllib.loads(block)
    config = build_config(raw, None, Path("/tmp"))
    assert config.agent.institution_code == "12345678"
    assert config.limits.write_timeout == 60


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("relay", "url", "not a url"),
        ("relay", "url", "http://relay.example"),  # outbound calls are TLS with a pinned CA only
        ("api", "fhir_base", "fhir"),
        ("keys", "protect", "dpapi"),  # not built: never accepted silently
    ],
)
def test_values_that_cannot_work_are_configuration_errors(tmp_path, section, key, value) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[{section}]\n{key} = "{value}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(toml)
    assert f"{section}.{key}" in str(err.value)
