"""Configuration: one TOML file, loaded once into a frozen, typed object (cli.md §5).

Every setting lives in ``SETTINGS`` with its type, default and help text (the datasette pattern);
``docs/configuration.md`` is checked against this table by a test. Unknown keys, wrong types,
bad durations and out-of-range values raise ``ConfigError`` (exit 4) naming the key and the file.
Relative paths resolve against the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

ENV_VAR = "SILSON_AGENT_CONFIG"

_DURATION_RE = re.compile(r"^([1-9][0-9]*)([smhdy])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
_TIME_OF_DAY_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])\Z")


def parse_duration(text: str) -> int:
    """Return seconds for ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``"3y"`` (1 y = 365 d)."""
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError('a duration is a positive integer and one unit: s, m, h, d or y (e.g. "30s")')
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration key: its kind, default and help text."""

    kind: str  # str | path | bool | int | duration | time | list[str] | listen | enum
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None


# Section -> key -> Setting. ``watch`` is an array of tables with the keys of WATCH_SETTINGS.
SETTINGS: dict[str, dict[str, Setting]] = {
    "agent": {
        "institution_code": Setting("str", "00000000", "요양기관기호, 8 digits"),
        "institution_type": Setting(
            "enum", "clinic", "hospital | clinic | pharmacy", choices=("hospital", "clinic", "pharmacy")
        ),
        "data_dir": Setting("path", "data", "store, encrypted archive, quarantine, state"),
        "log_dir": Setting("path", "logs", "structured JSON-lines logs"),
    },
    "api": {
        "listen": Setting("listen", "0.0.0.0:8443", "the one port opened in the firewall"),
        "server_cert": Setting("path", "tls/server.crt", "the agent's TLS certificate (PEM chain)"),
        "server_key": Setting("path", "tls/server.key", "the agent's TLS private key (0600)"),
        "client_ca": Setting("path", "tls/relay-ca.crt", "CA bundle client certificates must chain to"),
        "allowed_client_fingerprints": Setting("list[str]", (), "optional SHA-256 of client certs or SPKI"),
        "client_crl": Setting("path?", "", "optional CRL file (PEM) checked for client certificates"),
        "fhir_base": Setting(
            "str", "https://silson-agent.invalid/fhir", "base of project-local FHIR code systems"
        ),
    },
    "api.limits": {
        "max_body_bytes": Setting("int", 65536, "request body limit (413)", minimum=1),
        "max_fetch_ids": Setting("int", 100, "document ids per fetch", minimum=1),
        "max_search_results": Setting("int", 1000, "documents per search response", minimum=1),
        "max_response_bytes": Setting("int", 33554432, "decoded content per fetch response", minimum=1),
        "rate_per_s": Setting("int", 10, "requests/s per client on /v1/documents/* (0 = off)", minimum=0),
        "rate_burst": Setting("int", 20, "token-bucket burst for /v1/documents/*", minimum=1),
        "health_rate_per_s": Setting("int", 1, "requests/s per client on /v1/health (0 = off)", minimum=0),
        "health_rate_burst": Setting("int", 5, "token-bucket burst for /v1/health", minimum=1),
        "max_in_flight": Setting("int", 32, "requests processed at once (503 overloaded beyond)", minimum=1),
        "max_connections": Setting("int", 64, "authenticated connections", minimum=1),
        "max_handshakes": Setting("int", 1024, "connections still in the TLS handshake", minimum=1),
        "handshake_timeout": Setting("duration", "10s", "TLS handshake deadline"),
        "header_timeout": Setting("duration", "10s", "request head deadline"),
        "body_timeout": Setting("duration", "10s", "request body deadline after the head"),
        "keepalive_timeout": Setting("duration", "15s", "idle keep-alive"),
        "write_timeout": Setting("duration", "60s", "client must accept the response within"),
    },
    "admin": {
        "listen": Setting("listen", "127.0.0.1:8780", "status page + /metrics (loopback only)"),
        "allow_non_loopback": Setting("bool", False, "force a non-loopback admin.listen (doctor WARNs)"),
    },
    "relay": {
        "url": Setting("str", "", "enrollment + heartbeat base URL; empty = offline"),
        "server_ca": Setting(
            "path", "tls/relay-server-ca.crt", "verifies the relay's HTTPS on outbound calls"
        ),
        "heartbeat_interval": Setting("duration", "5m", "heartbeat period"),
    },
    "retention": {
        "keep": Setting("duration", "3y", "documents are kept this long after their issue date"),
        "audit_keep": Setting("duration", "3y", "audit records; minimum 3y (security.md §7.4)"),
        "purge_at": Setting("time", "03:00", "local time of the daily purge"),
    },
    "backup": {
        "dir": Setting("path", "data/backups", "where scheduled backups are written"),
        "at": Setting("time", "02:00", "local time of the nightly backup"),
        "keep": Setting("int", 7, "number of nightly backups kept", minimum=1),
    },
    "validation": {
        "default_valid_days": Setting(
            "int", 3, "처방전 사용기간 assumed when absent (W-302, W-507)", minimum=1
        ),
    },
    "keys": {
        "protect": Setting(
            "enum",
            "file",
            "file (0600) | dpapi (Windows; not available in this build: exit 4)",
            choices=("file", "dpapi"),
        ),
    },
}

WATCH_SETTINGS: dict[str, Setting] = {
    "path": Setting("path", "inbox", "the export folder (local disk or mounted share)"),
    "profile": Setting("str", "standard", 'built-in "standard" or a profile file (exports.md §3)'),
    "recursive": Setting("bool", False, "also watch sub-folders"),
    "polling": Setting("bool", False, "poll instead of OS events (SMB/NFS shares)"),
    "scan_interval": Setting("duration", "30s", "authoritative full rescan period"),
    "settle": Setting("duration", "2s", "unsignalled files must be unchanged this long"),
    "sentinel": Setting(
        "enum", "auto", "auto | required | off (exports.md §1)", choices=("auto", "required", "off")
    ),
    "max_file_size": Setting("int", 67108864, "larger files are quarantined with R-001", minimum=1),
    "source_mode": Setting("enum", "move", "move | keep", choices=("move", "keep")),
}

# Keys of [api.limits] that are timeouts (looser = longer) vs. counts (looser = larger).
_LIMIT_TIMEOUTS = {
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
    "write_timeout",
}
_MIN_AUDIT_KEEP = 3 * 365 * 86400


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    path: Path
    profile: str
    recursive: bool
    polling: bool
    scan_interval: int
    settle: int
    sentinel: str
    max_file_size: int
    source_mode: str
    # ``path`` as written in the config (status shows it so, cli.md §3.1); ``path`` is resolved.
    configured_path: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    """A read-only section: attribute access to its keys."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration. Durations are seconds (int); paths are absolute ``Path``s."""

    source: Path | None
    base_dir: Path
    agent: Section
    watch: tuple[WatchConfig, ...]
    api: Section
    limits: Section
    admin: Section
    relay: Section
    retention: Section
    backup: Section
    validation: Section
    keys: Section

    # Convenience accessors used all over the code base.
    @property
    def data_dir(self) -> Path:
        return self.agent.data_dir  # type: ignore[no-any-return]

    @property
    def log_dir(self) -> Path:
        return self.agent.log_dir  # type: ignore[no-any-return]

    @property
    def keys_dir(self) -> Path:
        return self.base_dir / "keys"

    @property
    def tls_dir(self) -> Path:
        return self.base_dir / "tls"


def _where(file: Path | None, key: str) -> str:
    return f"{key} in {file}" if file else key


def _convert(setting: Setting, value: Any, key: str, file: Path | None, base: Path) -> Any:
    where = _where(file, key)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"configuration error: {where}: expected {expected}")

    kind = setting.kind
    if kind in ("str", "enum", "path", "path?", "listen", "time"):
        if not isinstance(value, str):
            raise bad("a string")
        if kind == "enum" and value not in setting.choices:
            raise bad("one of " + ", ".join(setting.choices))
        if kind == "path":
            if not value:
                raise bad("a non-empty path")
            return (base / value).resolve() if not Path(value).is_absolute() else Path(value)
        if kind == "path?":
            if not value:
                return None
            return (base / value).resolve() if not Path(value).is_absolute() else Path(value)
        if kind == "listen":
            try:
                parse_listen(value)
            except ValueError as exc:
                raise bad(f"HOST:PORT ({exc})") from None
        if kind == "time" and not _TIME_OF_DAY_RE.match(value):
            raise bad("a local time HH:MM")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if setting.minimum is not None and value < setting.minimum:
            raise bad(f"an integer >= {setting.minimum}")
        return value
    if kind == "duration":
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    raise AssertionError(f"unknown setting kind {kind}")


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8443`` for IPv6) into host and port."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("bad host or port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _section_values(name: str, raw: Any, file: Path | None, base: Path) -> dict[str, Any]:
    spec = SETTINGS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration error: {_where(file, name)}: expected a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if name == "api" and key == "limits":
            continue
        if key not in spec:
            raise ConfigError(f"configuration error: unknown key {_where(file, name + '.' + key)}")
        values[key] = _convert(spec[key], value, f"{name}.{key}", file, base)
    for key, setting in spec.items():
        if key not in values:
            values[key] = _convert(
                setting,
                setting.default if setting.kind != "list[str]" else list(setting.default),
                f"{name}.{key}",
                file,
                base,
            )
    return values


def _check_limits(limits: dict[str, Any], file: Path | None) -> None:
    for key, setting in SETTINGS["api.limits"].items():
        value = limits[key]
        default = parse_duration(setting.default) if key in _LIMIT_TIMEOUTS else setting.default
        if key in ("rate_per_s", "health_rate_per_s") and value == 0:
            continue
        if key in _LIMIT_TIMEOUTS:
            ok = default / 10 <= value <= default * 100
        else:
            ok = value <= default * 100
        if not ok:
            raise ConfigError(
                f"configuration error: {_where(file, 'api.limits.' + key)}: "
                f"out of range (at most 100x the default"
                + (", at least 1/10 of it" if key in _LIMIT_TIMEOUTS else "")
                + ")"
            )


def _is_url(value: str, *, schemes: tuple[str, ...]) -> bool:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname) and not any(c.isspace() for c in value)


def build_config(raw: Mapping[str, Any], file: Path | None, base_dir: Path) -> Config:
    """Validate a parsed TOML mapping into a ``Config`` (raises ``ConfigError``)."""
    known = set(SETTINGS) - {"api.limits"} | {"watch"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"configuration error: unknown key {_where(file, key)}")
    sections = {
        name: _section_values(name, raw.get(name), file, base_dir)
        for name in SETTINGS
        if name != "api.limits"
    }
    api_raw = raw.get("api") or {}
    limits_raw = api_raw.get("limits") if isinstance(api_raw, dict) else None
    limits = _section_values("api.limits", limits_raw, file, base_dir)
    _check_limits(limits, file)

    watch_raw = raw.get("watch")
    if watch_raw is None:
        watch_raw = [{}]
    if not isinstance(watch_raw, list) or not all(isinstance(w, dict) for w in watch_raw):
        raise ConfigError(f"configuration error: {_where(file, 'watch')}: expected [[watch]] tables")
    watches = []
    for index, entry in enumerate(watch_raw):
        values = {}
        for key, value in entry.items():
            if key not in WATCH_SETTINGS:
                raise ConfigError(f"configuration error: unknown key {_where(file, f'watch[{index}].{key}')}")
            values[key] = _convert(WATCH_SETTINGS[key], value, f"watch[{index}].{key}", file, base_dir)
        for key, setting in WATCH_SETTINGS.items():
            values.setdefault(
                key, _convert(setting, setting.default, f"watch[{index}].{key}", file, base_dir)
            )
        raw_path = entry.get("path", WATCH_SETTINGS["path"].default)
        watches.append(WatchConfig(**values, configured_path=str(raw_path)))

    fingerprints = sections["api"]["allowed_client_fingerprints"]
    if any(not re.fullmatch(r"[0-9a-fA-F]{64}", fp) for fp in fingerprints):
        raise ConfigError(
            f"configuration error: {_where(file, 'api.allowed_client_fingerprints')}: "
            "expected SHA-256 fingerprints (64 hex digits)"
        )
    sections["api"]["allowed_client_fingerprints"] = tuple(fp.lower() for fp in fingerprints)
    code = sections["agent"]["institution_code"]
    if not re.fullmatch(r"[0-9]{8}", code):
        raise ConfigError(f"configuration error: {_where(file, 'agent.institution_code')}: expected 8 digits")
    if sections["retention"]["audit_keep"] < _MIN_AUDIT_KEEP:
        raise ConfigError(
            f"configuration error: {_where(file, 'retention.audit_keep')}: "
            'must be at least "3y" (security.md §7.4)'
        )
    relay_url = sections["relay"]["url"]
    if relay_url and not _is_url(relay_url, schemes=("https",)):
        raise ConfigError(
            f'configuration error: {_where(file, "relay.url")}: expected an https:// URL (or "" = offline)'
        )
    if not _is_url(sections["api"]["fhir_base"], schemes=("https", "http")):
        raise ConfigError(f"configuration error: {_where(file, 'api.fhir_base')}: expected an absolute URL")
    if sections["keys"]["protect"] == "dpapi":
        # Not built: accepting it would leave the keys as plain 0600 files while the operator
        # believes they are DPAPI-protected. Say so instead (exit 4).
        raise ConfigError(
            f'configuration error: {_where(file, "keys.protect")}: "dpapi" is not available in this '
            'build (Windows DPAPI); keys are protected as 0600 files: use "file"'
        )
    admin_host, _ = parse_listen(sections["admin"]["listen"])
    if not is_loopback(admin_host) and not sections["admin"]["allow_non_loopback"]:
        raise ConfigError(
            f"configuration error: {_where(file, 'admin.listen')}: not a loopback address "
            "(set admin.allow_non_loopback = true to force it)"
        )
    return Config(
        source=file,
        base_dir=base_dir,
        agent=Section(sections["agent"]),
        watch=tuple(watches),
        api=Section(sections["api"]),
        limits=Section(limits),
        admin=Section(sections["admin"]),
        relay=Section(sections["relay"]),
        retention=Section(sections["retention"]),
        backup=Section(sections["backup"]),
        validation=Section(sections["validation"]),
        keys=Section(sections["keys"]),
    )


def default_config_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The lookup order of cli.md §1 (after ``--config``)."""
    environ = os.environ if environ is None else environ
    paths = []
    if environ.get(ENV_VAR):
        paths.append(Path(environ[ENV_VAR]))
    paths.append(Path.cwd() / "agent.toml")
    if sys.platform == "win32":
        paths.append(Path(environ.get("ProgramData", r"C:\ProgramData")) / "silson-agent" / "agent.toml")
    else:
        paths.append(Path("/etc/silson-agent/agent.toml"))
    return paths


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"configuration error: config file {path} not found")
        return path.resolve()
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR):
        path = Path(environ[ENV_VAR])
        if not path.is_file():
            raise ConfigError(f"configuration error: {ENV_VAR} names {path}, which does not exist")
        return path.resolve()
    for path in default_config_paths(environ):
        if path.is_file():
            return path.resolve()
    raise ConfigError(
        "configuration error: no agent.toml found (give --config PATH, set "
        f"{ENV_VAR}, or run in the installation directory)"
    )


def load_config(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Find, read and validate the configuration file (raises ``ConfigError``)."""
    path = find_config_file(explicit, environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise ConfigError(f"configuration error: cannot read {path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration error: {path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration error: {path} is not valid TOML: {exc}") from None
    return build_config(raw, path, path.parent)


def default_config(base_dir: Path) -> Config:
    """The embedded defaults, rooted at ``base_dir`` (used by ``demo`` and tests)."""
    return build_config({}, None, base_dir)


ConfigFactory = Callable[[], Config]


def settings_markdown() -> str:
    """The reference table of every key (docs/configuration.md is checked against this)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `agent/config.py` (`python -m agent.config > docs/configuration.md`); "
        'a test fails when this page and the code disagree. Durations are `"30s"`, `"5m"`, '
        '`"2h"`, `"7d"`, `"3y"` (1 y = 365 d). Relative paths resolve against the config file.',
        "",
    ]

    def table(prefix: str, spec: dict[str, Setting]) -> None:
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        for key, s in spec.items():
            meaning = s.help.replace("|", "\\|")
            lines.append(f"| `{prefix}{key}` | {s.kind} | `{_toml_value(s)}` | {meaning} |")
        lines.append("")

    for name, spec in SETTINGS.items():
        lines.extend([f"## [{name}]", ""])
        table(f"{name}.", spec)
        if name == "agent":
            lines.extend(["## [[watch]] (one table per export folder)", ""])
            table("watch.", WATCH_SETTINGS)
    return "\n".join(lines)


def _toml_value(setting: Setting) -> str:
    default = setting.default
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return "[" + ", ".join(f'"{v}"' for v in default) + "]"
    if isinstance(default, str):
        return f'"{default}"'
    return str(default)


def settings_toml() -> str:
    """``config/agent.example.toml``: every key at its default, with its meaning (checked by a test
    against this function, and loaded by it: the example is a valid configuration)."""
    lines = [
        "# silson-agent — example configuration (cli.md §5): every key at its default value.",
        "# Generated from agent/config.py (`python -m agent.config --toml`). Copy what you change;",
        "# a key left out takes the default shown here. Relative paths resolve against this file's",
        '# folder. Durations: "30s", "5m", "2h", "7d", "3y" (1 y = 365 d). Unknown keys are an error',
        "# (exit 4). A changed file takes effect on restart.",
    ]

    def table(header: str, spec: dict[str, Setting]) -> None:
        lines.extend(["", header])
        width = max(len(f"{key} = {_toml_value(s)}") for key, s in spec.items())
        for key, s in spec.items():
            entry = f"{key} = {_toml_value(s)}"
            lines.append(f"{entry.ljust(width)}  # {s.help}")

    for name, spec in SETTINGS.items():
        table(f"[{name}]", spec)
        if name == "agent":
            table("[[watch]]  # one table per export folder", WATCH_SETTINGS)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(settings_toml() if "--toml" in sys.argv[1:] else settings_markdown() + "\n")
