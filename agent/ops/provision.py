"""Unattended first boot from a provisioning bundle (cli.md §3 ``provision``; docs/provisioning.md).

A bundle is a folder, a ``.tar.gz``/``.tgz`` or a ``.zip`` holding ``provision.toml`` (at its top,
or inside one top-level folder), the relay program's pinned CA bundle ``relay-server-ca.crt`` and
optionally the enrollment token in a file. Members are read in memory by exact name; nothing is
extracted, so an archive cannot write outside anything.

``provision(bundle, ...)`` runs these steps, each idempotent and recorded as ``ok`` (changed
something), ``unchanged``, ``skipped`` (with why) or ``failed`` (with why; later steps are then
``skipped``):

``bundle`` read and validate (the agent.toml it implies goes through ``build_config``) ·
``service_user`` as root: the account the daemon runs as, created when missing ·
``directory`` the installation folder, owned by that account ·
``init`` agent.toml written from the bundle, keys and folders (``init``'s ``write_installation``);
an existing agent.toml of another institution is refused (exit 4), one that differs otherwise is
left as it is (skipped, naming the keys) ·
``relay_ca`` the pinned ``relay.server_ca`` from the bundle ·
``enroll`` ``agent.ops.enroll.enroll`` unless the store already holds the ``enrollment`` state ·
``service_install``/``service_start`` ``agent.ops.service`` (skipped without systemd, with
``--no-service``; a staging root installs the unit and starts nothing) ·
``acceptance`` ``agent.ops.acceptance.run_acceptance`` (skipped when a previous run's result shows
it passed and nothing changed since, or when the installation cannot run it yet).

Run as root, the installation steps and the acceptance test run in a child process that has
become the service user (``os.fork`` + ``setgid``/``setuid``): key files must be owned by the user
running the agent, so files are created by their final owner; only the service steps stay root.

The result document (``<install dir>/provision-result.json`` or ``--result FILE``, 0600) holds the
steps, the institution code, paths and the agent id — never the token, never document content.
A run that changed nothing does not rewrite an existing result file, so a second run on a
provisioned machine leaves every file as it was. The token lives only in ``Secret`` (whose repr
hides it) and in the enrollment request body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import lzma
import os
import re
import sys
import tarfile
import tomllib
import traceback
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from agent import __version__
from agent.clock import SystemClock, utc_iso
from agent.config import WATCH_SETTINGS, Config, build_config, load_config
from agent.errors import AgentError, ConfigError, ExitStatus, UnavailableError, UsageError
from agent.fsutil import atomic_write, ensure_dir
from agent.ops import service

log = logging.getLogger("agent.provision")

BUNDLE_FILE = "provision.toml"
CA_FILE = "relay-server-ca.crt"
RESULT_FILE = "provision-result.json"
FORMAT = 1
MAX_MEMBER_BYTES = 1 << 20  # provision.toml, the CA bundle and a token file are small
OK, UNCHANGED, SKIPPED, FAILED = "ok", "unchanged", "skipped", "failed"
STEPS = (
    "bundle",
    "service_user",
    "directory",
    "init",
    "relay_ca",
    "enroll",
    "service_install",
    "service_start",
    "acceptance",
)
_INSTALLATION_KEYS = {
    "dir",
    "institution_code",
    "institution_type",
    "api_listen",
    "admin_listen",
    "endpoint",
    "service_user",
}
_REQUIRED_INSTALLATION = ("dir", "institution_code", "institution_type")
_TOP_KEYS = {"format", "installation", "relay", "enrollment", "watch"}


class Secret:
    """A value whose repr and str never show it (the enrollment token)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class Bundle:
    source: Path
    install_dir: Path
    institution_code: str
    institution_type: str
    relay_url: str
    endpoint: str | None
    service_user: str | None
    relay_server_ca: bytes
    token: Secret | None
    config_text: str  # the agent.toml this bundle implies

    @property
    def config_path(self) -> Path:
        return self.install_dir / "agent.toml"


# -- reading the bundle ------------------------------------------------------------------------------------
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)


class _Members:
    """Read-only access to the bundle's files by exact relative name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefix = ""
        self._dir: Path | None = None
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        name = path.name.lower()
        try:
            if path.is_dir():
                self._dir = path
            elif name.endswith((".tar.gz", ".tgz", ".tar")):
                self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed in close()
            elif name.endswith(".zip"):
                self._zip = zipfile.ZipFile(path)  # noqa: SIM115 - closed in close()
            elif path.exists():
                raise self.error(None, "not a folder, .tar.gz, .tgz or .zip")
            else:
                raise self.error(None, "not found")
        except PermissionError:
            raise self.error(None, "permission denied") from None
        except FileNotFoundError:
            raise self.error(None, "not found") from None
        except _ARCHIVE_ERRORS:
            raise self.error(None, "not a readable archive") from None
        if self.read(BUNDLE_FILE) is None:
            tops = {PurePosixPath(n).parts[0] for n in self._names() if PurePosixPath(n).parts}
            if len(tops) == 1:
                self.prefix = tops.pop() + "/"
            if not self.prefix or self.read(BUNDLE_FILE) is None:
                self.prefix = ""
                raise self.error(None, f"no {BUNDLE_FILE} in it (at its top or in one top-level folder)")

    def error(self, member: str | None, message: str) -> ConfigError:
        where = f"{self.path}" + (f" ({self.prefix}{member})" if member else "")
        return ConfigError(f"provisioning bundle {where}: {message}")

    def _names(self) -> list[str]:
        if self._tar is not None:
            return [m.name.removeprefix("./") for m in self._tar.getmembers()]
        if self._zip is not None:
            return self._zip.namelist()
        assert self._dir is not None
        return [p.name for p in self._dir.iterdir()]

    def read(self, member: str) -> bytes | None:
        if "/" in member or member in ("", ".", ".."):
            raise self.error(member, "a bundle file name must be a plain name (no folders)")
        full = self.prefix + member
        try:
            if self._dir is not None:
                path = self._dir / full
                if not path.exists():
                    return None
                if not path.is_file():
                    raise self.error(member, "not a regular file")
                if path.stat().st_size > MAX_MEMBER_BYTES:
                    raise self.error(member, "too large")
                return path.read_bytes()
            if self._tar is not None:
                info = None
                for candidate in (full, "./" + full):
                    with contextlib.suppress(KeyError):
                        info = self._tar.getmember(candidate)
                if info is None:
                    return None
                if not info.isfile():
                    raise self.error(member, "not a regular file")
                if info.size > MAX_MEMBER_BYTES:
                    raise self.error(member, "too large")
                handle = self._tar.extractfile(info)
                return handle.read() if handle is not None else None
            assert self._zip is not None
            try:
                zinfo = self._zip.getinfo(full)
            except KeyError:
                return None
            if zinfo.is_dir():
                raise self.error(member, "not a regular file")
            if zinfo.file_size > MAX_MEMBER_BYTES:
                raise self.error(member, "too large")
            return self._zip.read(zinfo)
        except PermissionError:
            raise self.error(member, "permission denied") from None
        except _ARCHIVE_ERRORS:
            # A damaged archive fails in many ways (bad offsets are OSError, an unknown zip
            # method NotImplementedError, bad deflate data zlib.error): all are "cannot be read".
            raise self.error(member, "cannot be read from the archive") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._zip is not None:
            self._zip.close()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


CONFIG_HEADER = """\
# silson-agent configuration (cli.md §5), written by `silson-agent provision` from a provisioning
# bundle. Relative paths resolve against this file's folder. Re-running provision never rewrites it.
"""


def render_config(
    *,
    code: str,
    kind: str,
    relay_url: str,
    api_listen: str,
    admin_listen: str,
    watch: list[dict[str, Any]],
) -> str:
    lines = [CONFIG_HEADER.rstrip("\n"), "[agent]"]
    lines += [f"institution_code = {_toml_value(code)}", f"institution_type = {_toml_value(kind)}"]
    lines += ['data_dir = "data"', 'log_dir = "logs"', ""]
    for table in watch:
        lines.append("[[watch]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    lines += ["[api]", f"listen = {_toml_value(api_listen)}"]
    lines += ['server_cert = "tls/server.crt"', 'server_key = "tls/server.key"']
    lines += ['client_ca = "tls/relay-ca.crt"', ""]
    lines += ["[admin]", f"listen = {_toml_value(admin_listen)}", ""]
    lines += ["[relay]", f"url = {_toml_value(relay_url)}", 'server_ca = "tls/relay-server-ca.crt"', ""]
    lines += ["[retention]", 'keep = "3y"', 'audit_keep = "3y"']
    return "\n".join(lines) + "\n"


def read_bundle(path: Path) -> Bundle:
    """Read and check a bundle; ``ConfigError`` (exit 4) names the bundle and the member."""
    members = _Members(path)
    try:
        return _parse_bundle(members)
    finally:
        members.close()


def _table(members: _Members, raw: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise members.error(BUNDLE_FILE, f"[{name}] must be a table")
    for key in value:
        if key not in allowed:
            raise members.error(BUNDLE_FILE, f"unknown key {name}.{key}")
    return value


def _string(
    members: _Members, table: Mapping[str, Any], key: str, where: str, *, required: bool
) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise members.error(BUNDLE_FILE, f"{where}.{key} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise members.error(BUNDLE_FILE, f"{where}.{key} must be a non-empty string")
    return value.strip()


def _parse_bundle(members: _Members) -> Bundle:
    data = members.read(BUNDLE_FILE)
    assert data is not None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise members.error(BUNDLE_FILE, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise members.error(BUNDLE_FILE, f"not valid TOML ({exc})") from None
    for key in raw:
        if key not in _TOP_KEYS:
            raise members.error(BUNDLE_FILE, f"unknown key {key}")
    if raw.get("format", FORMAT) != FORMAT:
        raise members.error(
            BUNDLE_FILE, f"format = {raw.get('format')!r} is not supported (expected {FORMAT})"
        )
    inst = _table(members, raw, "installation", _INSTALLATION_KEYS)
    relay = _table(members, raw, "relay", {"url"})
    enrollment = _table(members, raw, "enrollment", {"token", "token_file"})
    values = {
        k: _string(members, inst, k, "installation", required=k in _REQUIRED_INSTALLATION) for k in inst
    }
    for key in _REQUIRED_INSTALLATION:
        values.setdefault(key, _string(members, inst, key, "installation", required=True))
    install_dir = Path(str(values["dir"]))
    if not install_dir.is_absolute():
        raise members.error(BUNDLE_FILE, "installation.dir must be an absolute path")
    relay_url = _string(members, relay, "url", "relay", required=True)
    assert relay_url is not None
    if not re.match(r"^https://[^/\s]+", relay_url):
        raise members.error(BUNDLE_FILE, "relay.url must start with https:// and name a host")

    watch_raw = raw.get("watch", [{"path": "inbox"}])
    if not isinstance(watch_raw, list) or not watch_raw or not all(isinstance(w, dict) for w in watch_raw):
        raise members.error(BUNDLE_FILE, "[[watch]] must be one or more tables")
    for index, table in enumerate(watch_raw):
        for key in table:
            if key not in WATCH_SETTINGS:
                raise members.error(BUNDLE_FILE, f"unknown key watch[{index}].{key}")
        if "path" not in table:
            raise members.error(BUNDLE_FILE, f"watch[{index}].path is required")

    text = render_config(
        code=str(values["institution_code"]),
        kind=str(values["institution_type"]),
        relay_url=relay_url,
        api_listen=values.get("api_listen") or "0.0.0.0:8443",
        admin_listen=values.get("admin_listen") or "127.0.0.1:8780",
        watch=watch_raw,
    )
    # The agent.toml the bundle implies must be a valid configuration (exit 4 naming the key).
    try:
        build_config(tomllib.loads(text), Path(f"{members.path}/{members.prefix}{BUNDLE_FILE}"), install_dir)
    except ConfigError as exc:
        raise ConfigError(exc.message.replace("configuration error: ", "provisioning bundle: ", 1)) from None

    ca = members.read(CA_FILE)
    if ca is None:
        raise members.error(CA_FILE, "missing: the relay program's pinned CA bundle must be in the bundle")
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError:
        raise members.error(CA_FILE, "not PEM certificates") from None

    token = _token(members, enrollment)
    return Bundle(
        source=members.path,
        install_dir=install_dir,
        institution_code=str(values["institution_code"]),
        institution_type=str(values["institution_type"]),
        relay_url=relay_url.rstrip("/"),
        endpoint=values.get("endpoint"),
        service_user=values.get("service_user"),
        relay_server_ca=ca,
        token=token,
        config_text=text,
    )


def _token(members: _Members, enrollment: Mapping[str, Any]) -> Secret | None:
    from agent.ops.enroll import read_token

    if "token" in enrollment and "token_file" in enrollment:
        raise members.error(BUNDLE_FILE, "give enrollment.token or enrollment.token_file, not both")
    if "token_file" in enrollment:
        name = enrollment["token_file"]
        if not isinstance(name, str):
            raise members.error(BUNDLE_FILE, "enrollment.token_file must be a file name")
        data = members.read(name)
        if data is None:
            raise members.error(name, "missing (named by enrollment.token_file)")
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise members.error(name, "the enrollment token is not text") from None
        where = name
    elif "token" in enrollment:
        value = enrollment["token"] if isinstance(enrollment["token"], str) else ""
        where = BUNDLE_FILE
    else:
        return None
    try:
        read_token(value, None)
    except UsageError:  # its message says "enroll:"; never repeat the value
        raise members.error(
            where, "the enrollment token is not in the expected form (printable characters, no spaces)"
        ) from None
    return Secret(value)


# -- steps --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Step:
    name: str
    status: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ProvisionResult:
    bundle: Path
    started_at: str
    steps: list[Step] = dataclasses.field(default_factory=list)
    exit_code: int = 0
    finished_at: str | None = None
    institution_code: str | None = None
    install_dir: Path | None = None
    service_user: str | None = None
    agent_id: str | None = None
    result_file: Path | None = None
    result_written: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def changed(self) -> bool:
        return any(s.status == OK for s in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "agent_version": __version__,
            "bundle": str(self.bundle),
            "institution_code": self.institution_code,
            "install_dir": str(self.install_dir) if self.install_dir else None,
            "config": str(self.install_dir / "agent.toml") if self.install_dir else None,
            "service_user": self.service_user,
            "agent_id": self.agent_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "changed": self.changed,
            "steps": [s.as_json() for s in self.steps],
            "result_file": str(self.result_file) if self.result_file else None,
            "result_written": self.result_written,
        }


class _Run:
    """Records steps; after a failure every remaining step is recorded as skipped."""

    def __init__(self, result: ProvisionResult, report: Callable[[Step], None]) -> None:
        self.result = result
        self.report = report

    @property
    def failed(self) -> bool:
        return self.result.exit_code != 0

    def add(self, name: str, status: str, reason: str) -> Step:
        step = Step(name, status, reason)
        self.result.steps.append(step)
        self.report(step)
        return step

    def fail(self, name: str, error: AgentError) -> None:
        self.add(name, FAILED, error.message)
        self.result.exit_code = int(error.exit_status)

    def run(self, name: str, fn: Callable[[], tuple[str, str]]) -> bool:
        if self.failed:
            return False
        try:
            status, reason = fn()
        except AgentError as exc:
            self.fail(name, exc)
            return False
        except OSError as exc:  # the environment: a folder that cannot be made, a full disk …
            where = f" {exc.filename}" if exc.filename else ""
            self.fail(name, ConfigError(f"cannot use{where}: {exc.strerror or type(exc).__name__}"))
            return False
        self.add(name, status, reason)
        return True

    def skip_rest(self) -> None:
        done = {s.name for s in self.result.steps}
        failed = next((s.name for s in self.result.steps if s.status == FAILED), None)
        for name in STEPS:
            if name not in done and name != "bundle":
                self.add(name, SKIPPED, f"not run: step {failed} failed")


# -- running as the service user ------------------------------------------------------------------------------
def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"


def run_as(account: service.ServiceUser | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a child process that has become ``account`` (root only), its JSON value returned;
    ``None``: in this process. An ``AgentError`` in the child is raised here with its exit status."""
    if account is None:
        return fn()
    assert account.uid is not None and account.gid is not None
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: become the service user, run, send the outcome, never return
        code = 0
        try:
            os.close(read_fd)
            os.initgroups(account.name, account.gid)
            os.setgid(account.gid)
            os.setuid(account.uid)
            try:
                payload: dict[str, Any] = {"value": fn()}
            except AgentError as exc:
                payload = {"error": exc.message, "exit": int(exc.exit_status)}
            except OSError as exc:
                where = f" {exc.filename}" if exc.filename else ""
                payload = {"error": f"cannot use{where}: {exc.strerror or type(exc).__name__}", "exit": 4}
            except Exception as exc:  # a bug: class and place, never the message (it may carry data)
                payload = {"bug": f"{type(exc).__name__} at {_where(exc)}"}
            with os.fdopen(write_fd, "wb") as out:
                out.write(json.dumps(payload).encode("utf-8"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    try:
        payload = json.loads(data)
    except ValueError:
        raise UnavailableError(f"the step run as {account.name} ended without an answer") from None
    if "bug" in payload:  # a bug, shown like the CLI shows one: class and place, exit 1
        error = AgentError(
            f"internal error (run as {account.name}): {payload['bug']}; this is a bug in silson-agent, please report it"
        )
        error.exit_status = ExitStatus.INTERNAL
        raise error
    if "error" in payload:
        error = AgentError(str(payload["error"]))
        error.exit_status = ExitStatus(int(payload["exit"]))
        raise error
    return payload["value"]


def _can_traverse(path: Path, account: service.ServiceUser) -> Path | None:
    """The first existing ancestor of ``path`` the account cannot enter, or None."""
    for folder in reversed(path.parents):
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None
        if st.st_uid == account.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == account.gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return folder
    return None


# -- the installation steps (run as the service user) ---------------------------------------------------------
def _config_differences(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(existing) | set(wanted)):
        a, b = existing.get(section), wanted.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(section)
    return keys


def step_init(bundle: Bundle) -> tuple[str, str]:
    from agent.commands.init import write_installation
    from agent.keys import kek_files

    root = bundle.install_dir
    path = bundle.config_path
    done = []
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            existing = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the existing {path} is not valid TOML ({exc}); fix or remove it") from None
        code = str((existing.get("agent") or {}).get("institution_code", ""))
        if code != bundle.institution_code:
            raise ConfigError(
                f"{root} is the installation of institution {code or '(none)'}, the bundle is for "
                f"{bundle.institution_code}; refusing to touch it"
            )
        differs = (
            []
            if text == bundle.config_text
            else _config_differences(existing, tomllib.loads(bundle.config_text))
        )
    else:
        atomic_write(path, bundle.config_text.encode("utf-8"), 0o600)
        done.append("agent.toml written")
        differs = []
    if not kek_files(root / "keys"):
        config = load_config(path)
        write_installation(
            root,
            code=bundle.institution_code,
            kind=bundle.institution_type,
            dev_certs=False,
            listen=config.api.listen,
            admin=config.admin.listen,
        )
        done.append("keys and folders made")
    config = load_config(path)
    notes = []
    for watch in config.watch:
        if watch.path.exists():
            continue
        if root in watch.path.parents:
            ensure_dir(watch.path)
            done.append(f"watch folder {watch.path} made")
        else:
            notes.append(f"watch folder {watch.path} does not exist yet (the agent reports it until it does)")
    if differs:
        return SKIPPED, (
            f"{path} exists for the same institution but differs from the bundle in "
            f"{', '.join(differs)}; left as it is (edit it, or remove it to provision again)"
            + ("; " + "; ".join(done) if done else "")
            + ("; " + "; ".join(notes) if notes else "")
        )
    if done:
        return OK, "; ".join(done + notes)
    return UNCHANGED, f"{path} matches the bundle" + ("; " + "; ".join(notes) if notes else "")


def enrollment_of(config: Config) -> dict[str, Any] | None:
    """The store's ``enrollment`` state, without creating a store that does not exist yet."""
    from agent.ops.enroll import enrollment_state
    from agent.store import Store

    if not (config.data_dir / "store.db").exists():
        return None
    store = Store.open(config)
    try:
        return enrollment_state(store)
    finally:
        store.close()


def step_relay_ca(bundle: Bundle, config: Config) -> tuple[str, str]:
    from agent.ops.enroll import CERT_MODE

    target = Path(config.relay.server_ca)
    current = target.read_bytes() if target.is_file() else None
    if current == bundle.relay_server_ca:
        return UNCHANGED, f"{target} matches the bundle"
    if current is not None and enrollment_of(config) is not None:
        return SKIPPED, f"enrolled: {target} holds the bundle the relay sent at enrollment; kept"
    ensure_dir(target.parent)
    atomic_write(target, bundle.relay_server_ca, CERT_MODE)
    return OK, f"{'replaced' if current is not None else 'copied to'} {target}"


def installation_phase(bundle: Bundle, environ: Mapping[str, str]) -> dict[str, Any]:
    """init, relay_ca and enroll; returns ``{"steps": [...], "exit": int, "agent_id": ...}`` (plain
    JSON so it can cross from the child process)."""
    steps: list[dict[str, str]] = []
    out: dict[str, Any] = {"steps": steps, "exit": 0, "agent_id": None}

    def record(name: str, fn: Callable[[], tuple[str, str]]) -> bool:
        try:
            status, reason = fn()
        except AgentError as exc:
            steps.append({"name": name, "status": FAILED, "reason": exc.message})
            out["exit"] = int(exc.exit_status)
            return False
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            steps.append({"name": name, "status": FAILED, "reason": f"cannot use{where}: {exc.strerror}"})
            out["exit"] = int(ExitStatus.CONFIG)
            return False
        steps.append({"name": name, "status": status, "reason": reason})
        return True

    if not record("init", lambda: step_init(bundle)):
        return out
    config = load_config(bundle.config_path)
    if not record("relay_ca", lambda: step_relay_ca(bundle, config)):
        return out

    def enroll_step() -> tuple[str, str]:
        from agent.ops.enroll import enroll

        state = enrollment_of(config)
        if state is not None:
            out["agent_id"] = state.get("agent_id")
            return UNCHANGED, f"already enrolled as {state.get('agent_id')}"
        if bundle.token is None:
            raise ConfigError(
                "this installation is not enrolled and the bundle has no enrollment token "
                "([enrollment] token_file or token)"
            )
        result = enroll(config, token=bundle.token.reveal(), endpoint=bundle.endpoint, environ=environ)
        out["agent_id"] = result.agent_id
        return OK, (
            f"enrolled as {result.agent_id} (endpoint {result.endpoint.host}:{result.endpoint.port}; "
            f"certificate valid until {result.certificate_expires_at})"
        )

    record("enroll", enroll_step)
    return out


def acceptance_phase(config_path: str) -> dict[str, Any]:
    from agent.ops.acceptance import run_acceptance

    report = run_acceptance(load_config(config_path))
    return {
        "ok": report.ok,
        "checks": len(report.checks),
        "failed": [f"{c.name} ({c.detail})" for c in report.checks if c.status != "PASS"],
        "duration_s": report.duration_s,
    }


def acceptance_blockers(config: Config) -> list[str]:
    """Files acceptance needs that the installation does not hold yet."""
    needed = [Path(config.api.server_cert), Path(config.api.server_key), Path(config.api.client_ca)]
    return [str(p) for p in needed if not p.exists()]


# -- the whole run --------------------------------------------------------------------------------------------
def _previous_result(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _acceptance_passed_before(previous: dict[str, Any] | None) -> str | None:
    if not previous:
        return None
    for step in previous.get("steps") or []:
        if isinstance(step, dict) and step.get("name") == "acceptance" and step.get("status") == OK:
            return str(previous.get("finished_at") or "an earlier run")
    return None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _current_user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        import getpass

        return getpass.getuser()


def provision(
    bundle_path: Path,
    *,
    result_path: Path | None = None,
    user: str | None = None,
    no_service: bool = False,
    service_root: Path | None = None,
    systemd: service.Systemd | None = None,
    environ: Mapping[str, str] | None = None,
    report: Callable[[Step], None] = lambda step: None,
) -> ProvisionResult:
    """Run every step (see the module docstring); never raises for a step's failure."""
    clock = SystemClock()
    environ = dict(os.environ if environ is None else environ)
    result = ProvisionResult(bundle=bundle_path, started_at=utc_iso(clock.now(), millis=False))
    run = _Run(result, report)
    bundle: Bundle | None = None

    try:
        bundle = read_bundle(bundle_path)
    except AgentError as exc:  # the only way "bundle" becomes a step: reading changes nothing
        run.fail("bundle", exc)
    else:
        token = "an enrollment token" if bundle.token is not None else "no enrollment token"
        report(
            Step(
                "bundle",
                "read",
                f"institution {bundle.institution_code} ({bundle.institution_type}), install dir "
                f"{bundle.install_dir}, relay {bundle.relay_url}, {token}",
            )
        )
        result.institution_code = bundle.institution_code
        result.install_dir = bundle.install_dir
    result.result_file = result_path or (bundle.install_dir / RESULT_FILE if bundle else None)
    previous = _previous_result(result.result_file) if result.result_file else None
    if bundle is None:
        return _finish(run, clock, None)

    # The account the daemon runs as. When root installs a live system service, the installation is
    # made by (and belongs to) that account; otherwise it belongs to whoever runs provision.
    systemd = systemd or service.Systemd()
    live_service = not no_service and service_root is None and sys.platform != "win32" and systemd.running()
    account: service.ServiceUser | None = None

    def service_user() -> tuple[str, str]:
        nonlocal account
        current = _current_user_name()
        if not _is_root() or not live_service:
            why = "not root" if not _is_root() else "no system service is installed here"
            result.service_user = current
            if service_root is not None or no_service:
                result.service_user = user or bundle.service_user or service.DEFAULT_USER
            hint = ""
            if current == "root":  # doctor FAILs a daemon running as root (security.md §10)
                hint = "; run the daemon as an unprivileged account (`service install` hands it over)"
            return SKIPPED, f"{why}: the installation belongs to {current}, who runs provision{hint}"
        name = service.check_user_name(user or bundle.service_user or service.DEFAULT_USER)
        account, created = service.ensure_user(name)
        result.service_user = name
        return (OK, f"{name} created") if created else (UNCHANGED, f"{name} exists")

    def directory() -> tuple[str, str]:
        root = bundle.install_dir
        made = not root.exists()
        if made:
            service.make_dirs(root.parent)
            root.mkdir(mode=0o700)
        changed = 0
        if account is not None:
            assert account.uid is not None and account.gid is not None
            blocked = _can_traverse(root, account)
            if blocked is not None:
                raise ConfigError(
                    f"the service user {account.name} cannot reach {root}: {blocked} is not searchable "
                    f"for it (chmod o+x {blocked}, or choose another installation folder)"
                )
            changed = service.hand_over([root], account.uid, account.gid)
        if made:
            return OK, f"{root} made" + (f", owned by {account.name}" if account else "")
        if changed:
            return OK, f"{changed} path(s) in {root} handed over to {account.name if account else '?'}"
        return UNCHANGED, f"{root} exists" + (f", owned by {account.name}" if account else "")

    run.run("service_user", service_user)
    run.run("directory", directory)
    if not run.failed:
        try:
            phase = run_as(account, lambda: installation_phase(bundle, environ))
        except AgentError as exc:
            run.fail("init", exc)
        else:
            for step in phase["steps"]:
                run.add(step["name"], step["status"], step["reason"])
            result.agent_id = phase.get("agent_id")
            if phase["exit"]:
                result.exit_code = int(phase["exit"])
    config: Config | None = None
    if not run.failed:
        try:
            config = load_config(bundle.config_path)
        except AgentError as exc:
            run.fail("service_install", exc)

    # The system service (root's part).
    if not run.failed and config is not None:
        _service_steps(run, config, result, no_service=no_service, service_root=service_root, systemd=systemd)

    # The 검수 self-test, as the service user.
    if not run.failed and config is not None:
        passed = _acceptance_passed_before(previous)

        def acceptance() -> tuple[str, str]:
            if passed and not result.changed:
                return SKIPPED, (
                    f"passed at {passed} and nothing changed since (see {result.result_file}); "
                    "run `silson-agent acceptance` to test again"
                )
            blockers = acceptance_blockers(config)
            if blockers:
                return SKIPPED, f"cannot run yet: {', '.join(blockers)} missing"
            outcome = run_as(account, lambda: acceptance_phase(str(bundle.config_path)))
            if not outcome["ok"]:
                raise UnavailableError(
                    f"acceptance FAILED ({len(outcome['failed'])} of {outcome['checks']} checks): "
                    + "; ".join(outcome["failed"])
                )
            return OK, f"passed ({outcome['checks']} checks in {outcome['duration_s']:.1f} s)"

        run.run("acceptance", acceptance)
    return _finish(run, clock, account)


def _service_steps(
    run: _Run,
    config: Config,
    result: ProvisionResult,
    *,
    no_service: bool,
    service_root: Path | None,
    systemd: service.Systemd,
) -> None:
    if no_service:
        run.add("service_install", SKIPPED, "--no-service")
        run.add("service_start", SKIPPED, "--no-service")
        return
    if service_root is not None:
        systemd = service.Systemd(
            root=service_root, systemctl=systemd.systemctl, runtime_dir=systemd.runtime_dir
        )
    elif sys.platform != "win32" and not systemd.running():
        why = f"no systemd ({systemd.runtime_dir} is absent); run `silson-agent run --config {config.source}` under your own supervisor"
        run.add("service_install", SKIPPED, why)
        run.add("service_start", SKIPPED, "no systemd")
        return
    elif sys.platform != "win32" and not _is_root():
        run.add("service_install", SKIPPED, "not root: only root can install the system service")
        run.add("service_start", SKIPPED, "not root")
        return

    def install() -> tuple[str, str]:
        report = service.install(config, user=result.service_user, systemd=systemd)
        changed = [o for o in report.outcomes if o.status == OK]
        shown = changed or [o for o in report.outcomes if o.name in ("unit", "enable")]
        detail = "; ".join(f"{o.name}: {o.detail}" for o in shown)
        warn = ("; warning: " + "; ".join(report.warnings)) if report.warnings else ""
        return (OK if changed else UNCHANGED), detail + warn

    if not run.run("service_install", install):
        return
    if service_root is not None:
        run.add("service_start", SKIPPED, f"staging root {service_root}: nothing is started")
        return

    def start() -> tuple[str, str]:
        outcome = service.start(config, systemd=systemd)
        return outcome.status, outcome.detail

    run.run("service_start", start)


def _finish(run: _Run, clock: SystemClock, account: service.ServiceUser | None) -> ProvisionResult:
    result = run.result
    if run.failed:
        run.skip_rest()
    result.finished_at = utc_iso(clock.now(), millis=False)
    path = result.result_file
    failed = any(s.status == FAILED for s in result.steps)
    if path is not None and result.install_dir is not None and result.install_dir in path.parents:
        if not _same_institution(result.install_dir / "agent.toml", result.institution_code):
            path = None  # another institution's installation: not a byte is written into it
            result.result_file = None
    if result.install_dir is not None and (result.changed or failed):
        _audit_provision(result, account, failed)
    if path is not None and (result.changed or failed or not path.exists()):
        try:
            write_result(path, result, account)
        except OSError as exc:  # the outcome is on screen; the file is a convenience
            result.result_written = False
            run.report(Step("result", FAILED, f"cannot write {path}: {exc.strerror or type(exc).__name__}"))
    return result


def _audit_provision(result: ProvisionResult, account: service.ServiceUser | None, failed: bool) -> None:
    """security.md §7.1 lists `provision` among the audited admin actions: one ``admin.provision``
    record per run that changed something or failed (a run that changes nothing writes nothing,
    not even this: cli.md §3 "a second run changes nothing"). Written as the service user, who
    owns the audit log; steps by name and status only (no token, no secret)."""
    assert result.install_dir is not None
    config_path = result.install_dir / "agent.toml"
    if not config_path.is_file() or not _same_institution(config_path, result.institution_code):
        return  # nothing was installed (or another institution's installation): no log to write to
    steps = {s.name: s.status for s in result.steps}

    def write() -> None:
        from agent.adminctx import audit_admin
        from agent.config import load_config

        audit_admin(
            load_config(config_path),
            "provision",
            result="failure" if failed else "success",
            extra={"steps": steps, "bundle": result.bundle.name},
        )

    try:
        run_as(account, write)
    except Exception as exc:  # the outcome is on screen and in the result file; the log said why
        log.warning("provision audit record not written", extra={"error_class": type(exc).__name__})


def _same_institution(config_path: Path, code: str | None) -> bool:
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return str((raw.get("agent") or {}).get("institution_code", "")) == code


def write_result(path: Path, result: ProvisionResult, account: service.ServiceUser | None) -> None:
    result.result_written = True
    data = json.dumps(result.as_json(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    if not path.parent.exists():
        service.make_dirs(path.parent)
    atomic_write(path, data.encode("utf-8"), 0o600)
    if account is not None and account.uid is not None and result.install_dir is not None:
        if result.install_dir in path.parents:  # the installation stays the service user's
            with contextlib.suppress(OSError):
                os.chown(path, account.uid, account.gid if account.gid is not None else -1)


__all__ = [
    "Bundle",
    "ProvisionResult",
    "STEPS",
    "Secret",
    "Step",
    "provision",
    "read_bundle",
    "render_config",
    "run_as",
]
