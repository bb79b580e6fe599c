"""The agent as a system service (cli.md §3 ``service``, security.md §10): a systemd unit on Linux.

``install(config, ...)`` makes the agent a boot-time service that runs
``<executable> run --config <agent.toml>`` as a dedicated unprivileged user:

1. the service user (``silson-agent`` unless told otherwise; never root) is created when missing;
2. the installation is handed over to it (key files must be owned by the user running the agent,
   ``keys.check_key_file``): every path of the installation folder, ``data_dir``, ``log_dir``,
   ``tls/`` and ``keys/`` not owned by it is ``chown``-ed; watch folders outside the installation
   (the EMR's export folder, shares) are not touched;
3. the unit ``silson-agent.service`` is rendered from ``UNIT_TEMPLATE`` with the hardening of
   security.md §10 and written only when its text changed (so a second install is "unchanged");
4. it is enabled: ``systemctl enable`` with a running systemd, else the ``multi-user.target.wants``
   link ``systemctl enable`` would make (images built in a chroot, containers).

Everything that asks systemd (``daemon-reload``, ``enable``, ``start``, ``stop``, ``is-active``)
happens only when systemd runs here (``/run/systemd/system`` exists); ``start``/``stop``/``status``
without it raise ``UnavailableError`` (exit 5), never a traceback. ``Systemd(root=DIR)`` writes into
a staging root instead of ``/`` and never touches the live system (package builds, tests).

Why ``tls/`` and ``keys/`` are writable although security.md §10 names only ``data_dir``,
``log_dir`` and the watch folders: the daemon itself renews the server certificate and rotates the
signing key (relay-api.md §10), which write there (docs/decisions.md).

Windows: ``agent.ops.winservice`` (pywin32), imported only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.config import Config, parse_listen
from agent.errors import ConfigError, UnavailableError, UsageError
from agent.fsutil import atomic_write

SERVICE_NAME = "silson-agent"
UNIT_NAME = f"{SERVICE_NAME}.service"
DEFAULT_USER = "silson-agent"
UNIT_DIR = Path("/etc/systemd/system")
WANTED_BY = "multi-user.target"
SYSTEMD_RUNTIME = Path("/run/systemd/system")
UNIT_MODE = 0o644  # systemd and admins read units; nothing secret inside
START_WAIT_S = 30.0
SYSTEMCTL_TIMEOUT_S = 120.0
CONFIG_MARK = "# silson-agent-config: "  # the unit records its config (the package's postinst reads it)
OK, UNCHANGED, SKIPPED = "ok", "unchanged", "skipped"

# One template, in code so the frozen build has it; installer/systemd/silson-agent.service.example
# is this template rendered for the packaged layout (a golden file checked by the tests).
UNIT_TEMPLATE = """\
# silson-agent.service — written by `silson-agent service install`; do not edit by hand:
# change agent.toml and run `silson-agent service install` again (it rewrites this file).
{config_mark}{config_comment}
[Unit]
Description=silson-agent (실손보험 청구 전산화 edge agent)
After=network-online.target remote-fs.target
Wants=network-online.target
# Never start without its configuration (the package may be installed before provisioning).
ConditionPathExists={config}

[Service]
Type=exec
User={user}
Group={group}
ExecStart={exec_start}
# `systemctl reload`: new TLS certificate and signing key, config change audited (no restart).
ExecReload=/bin/kill -HUP $MAINPID
WorkingDirectory={workdir}
Restart=on-failure
RestartSec=5s
# SIGTERM to the main process only: it finishes the file in hand, stops its ingest workers and
# closes the store (cli.md §3 `run`); what is left after TimeoutStopSec gets SIGKILL.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStartSec=90s
TimeoutStopSec=60s
# security.md §10: dedicated user, umask 077, no core dumps, read-only system.
UMask=0077
LimitCORE=0
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet={capabilities}
AmbientCapabilities={capabilities}
# data_dir, log_dir, tls/ and keys/ (certificate renewal, signing-key rotation), the watch
# folders ("-": a share that is not mounted does not stop the agent; it reports the folder).
ReadWritePaths={read_write_paths}

[Install]
WantedBy={wanted_by}
"""

# Directories the unit hides from the service (PrivateTmp=yes, ProtectHome=yes): an installation
# or watch folder below them would be invisible to the daemon, so install refuses them.
HIDDEN_BY_HARDENING = {
    Path("/tmp"): "PrivateTmp=yes",
    Path("/var/tmp"): "PrivateTmp=yes",
    Path("/home"): "ProtectHome=yes",
    Path("/root"): "ProtectHome=yes",
    Path("/run/user"): "ProtectHome=yes",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one action did: ``ok`` (changed something), ``unchanged``, or ``skipped`` (with why)."""

    name: str
    status: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Systemd:
    """Where the unit lives and whether a running systemd may be asked (tests inject the last two)."""

    root: Path | None = None  # staging root: files only, never systemctl, never users or chown
    systemctl: str = "systemctl"
    runtime_dir: Path = SYSTEMD_RUNTIME

    @property
    def live(self) -> bool:
        return self.root is None

    def path(self, inside: Path) -> Path:
        """``inside`` (an absolute path of the target system) as a path on this machine."""
        return inside if self.root is None else self.root / inside.relative_to("/")

    @property
    def unit_path(self) -> Path:
        return self.path(UNIT_DIR / UNIT_NAME)

    @property
    def wants_link(self) -> Path:
        return self.path(UNIT_DIR / f"{WANTED_BY}.wants" / UNIT_NAME)

    def running(self) -> bool:
        """A systemd we may talk to: booted with systemd (its runtime folder exists), systemctl found.

        A staging root never talks to the live systemd; only a runtime folder other than the real one
        (tests pair a staging root with a fake systemctl) counts there."""
        if not self.live and self.runtime_dir == SYSTEMD_RUNTIME:
            return False
        return self.runtime_dir.is_dir() and shutil.which(self.systemctl) is not None

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.systemctl, *args],
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"systemctl {' '.join(args)} failed ({type(exc).__name__})") from None

    def must(self, *args: str) -> None:
        done = self.ctl(*args)
        if done.returncode != 0:
            why = _one_line(done.stderr or done.stdout) or f"exit {done.returncode}"
            raise UnavailableError(f"systemctl {' '.join(args)} failed: {why}")

    def query(self, verb: str) -> str:
        """``is-active`` / ``is-enabled`` answer word (``active``, ``inactive``, ``enabled`` …)."""
        return (self.ctl(verb, UNIT_NAME).stdout.strip().splitlines() or ["unknown"])[0]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def no_systemd_message(systemd: Systemd, what: str) -> str:
    if not systemd.live:
        return f"cannot {what} in a staging root ({systemd.root}): there is no running system there"
    return (
        f"cannot {what}: systemd is not running on this machine ({systemd.runtime_dir} is absent); "
        "run the agent under your own supervisor with `silson-agent run --config <agent.toml>`"
    )


# -- the unit ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UnitSpec:
    exec_start: tuple[str, ...]
    config: Path
    user: str
    group: str
    workdir: Path
    read_write_paths: tuple[str, ...]  # already prefixed with "-" where a missing path is allowed
    capabilities: tuple[str, ...] = ()


def executable_command() -> tuple[str, ...]:
    """The frozen build runs itself; from source it is ``python -m agent``."""
    if getattr(sys, "frozen", False):
        return (str(Path(sys.executable).absolute()),)
    return (str(Path(sys.executable).absolute()), "-m", "agent")


def _check_path_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ConfigError("a path for the service unit contains a control character; rename it")
    return value


def _quote_exec(arg: str) -> str:
    """One ExecStart= argument: ``%`` specifiers and ``$`` variables escaped, quoted when needed."""
    arg = _check_path_text(arg).replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r'[\s"\'\\;]', arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_path(path: str, *, optional: bool = False) -> str:
    text = _check_path_text(path).replace("%", "%%")
    if re.search(r'[\s"\'\\]', text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return ("-" if optional else "") + text


def _plain_path(path: str) -> str:
    """A setting that takes the rest of the line as one path (no quotes): only ``%`` is special."""
    text = _check_path_text(path)
    if text != text.strip():
        raise ConfigError(f"the path {text!r} starts or ends with white space; rename it for the service")
    return text.replace("%", "%%")


def render_unit(spec: UnitSpec) -> str:
    config = str(spec.config)
    return UNIT_TEMPLATE.format(
        config_mark=CONFIG_MARK,
        config_comment=_check_path_text(config),
        config=_plain_path(config),
        user=spec.user,
        group=spec.group,
        exec_start=" ".join(_quote_exec(a) for a in spec.exec_start),
        workdir=_plain_path(str(spec.workdir)),
        capabilities=" ".join(spec.capabilities),
        read_write_paths=" ".join(spec.read_write_paths),
        wanted_by=WANTED_BY,
    )


def _dedupe_nested(paths: Iterable[Path]) -> list[Path]:
    """Order-preserving; a path inside an earlier one is dropped (the parent already covers it)."""
    kept: list[Path] = []
    for path in paths:
        if any(path == k or k in path.parents for k in kept):
            continue
        kept = [k for k in kept if path not in k.parents]
        kept.append(path)
    return kept


def writable_paths(config: Config) -> tuple[list[Path], list[Path]]:
    """(paths the daemon writes that must exist, watch folders that may be missing)."""
    required = [
        config.data_dir,
        config.log_dir,
        Path(config.api.server_cert).parent,
        Path(config.api.server_key).parent,
        config.keys_dir,
        Path(config.backup.dir),
    ]
    required = _dedupe_nested(p.absolute() for p in required)
    watches = [w.path.absolute() for w in config.watch]
    optional = [w for w in _dedupe_nested(watches) if not any(w == r or r in w.parents for r in required)]
    return required, optional


def _inside(root: Path | None, path: Path) -> Path:
    """A path on this machine as the target system will see it (strip the staging root)."""
    if root is not None:
        with contextlib.suppress(ValueError):
            return Path("/") / path.relative_to(root)
    return path


def unit_spec(
    config: Config,
    *,
    user: str,
    group: str,
    executable: tuple[str, ...] | None = None,
    root: Path | None = None,
) -> UnitSpec:
    if config.source is None:
        raise ConfigError("service install needs an agent.toml (give --config PATH)")
    exe = executable or executable_command()
    exe = (str(_inside(root, Path(exe[0]))), *exe[1:])
    config_path = _inside(root, config.source.absolute())
    required, optional = writable_paths(config)
    rw = [_quote_path(str(_inside(root, p))) for p in required]
    rw += [_quote_path(str(_inside(root, p)), optional=True) for p in optional]
    caps: tuple[str, ...] = ()
    ports = [parse_listen(config.api.listen)[1], parse_listen(config.admin.listen)[1]]
    if any(0 < port < 1024 for port in ports):
        caps = ("CAP_NET_BIND_SERVICE",)  # the only privilege ever granted: a port below 1024
    return UnitSpec(
        exec_start=(*exe, "run", "--config", str(config_path)),
        config=config_path,
        user=user,
        group=group,
        workdir=_inside(root, config.base_dir.absolute()),
        read_write_paths=tuple(rw),
        capabilities=caps,
    )


def hardening_conflicts(config: Config, executable: tuple[str, ...], root: Path | None = None) -> list[str]:
    """Paths the unit's sandbox would hide from the daemon (each a human sentence), judged as the
    target system sees them (below a staging root: without the root)."""
    required, optional = writable_paths(config)
    named = [("the installation folder", config.base_dir.absolute())]
    named += [("writable path", p) for p in required]
    named += [("watch folder", p) for p in optional]
    named.append(("the executable", Path(executable[0])))
    named = [(what, _inside(root, path)) for what, path in named]
    problems: list[str] = []
    reported: list[Path] = []
    for what, path in named:
        if any(path == r or r in path.parents for r in reported):
            continue  # inside a folder already named
        for hidden, setting in HIDDEN_BY_HARDENING.items():
            if path == hidden or hidden in path.parents:
                problems.append(f"{what} {path} is below {hidden}, which {setting} hides from the service")
                reported.append(path)
    return problems


# -- the service user ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int | None  # None: not on this machine (a staging root)
    gid: int | None
    group: str


def lookup_user(name: str) -> ServiceUser | None:
    try:
        import grp
        import pwd
    except ImportError:  # Windows
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return ServiceUser(name, entry.pw_uid, entry.pw_gid, group)


def check_user_name(name: str) -> str:
    if name == "root" or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name):
        raise UsageError(
            f"--user {name!r}: give an unprivileged account name (lower-case; never root — "
            "the daemon must not run as root, security.md §10)"
        )
    user = lookup_user(name)
    if user is not None and user.uid == 0:
        raise UsageError(f"--user {name}: that account has uid 0; the daemon must not run as root")
    return name


def ensure_user(name: str, *, useradd: str = "useradd") -> tuple[ServiceUser, bool]:
    """The system account ``name`` (created when missing: no home, no login shell, as the package's
    postinst makes it); True when created."""
    user = lookup_user(name)
    if user is not None:
        return user, False
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
    command = [useradd, "--system", "--user-group", "--no-create-home"]
    command += ["--home-dir", "/nonexistent", "--shell", shell, name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnavailableError(f"cannot create the service user {name}: {type(exc).__name__}") from None
    user = lookup_user(name)
    if done.returncode != 0 or user is None:
        why = _one_line(done.stderr) or f"useradd exit {done.returncode}"
        raise UnavailableError(f"cannot create the service user {name}: {why}")
    return user, True


def installation_paths(config: Config) -> list[Path]:
    """The trees handed over to the service user (watch folders elsewhere are the EMR's)."""
    paths = [
        config.base_dir,
        config.data_dir,
        config.log_dir,
        config.keys_dir,
        Path(config.api.server_cert).parent,
        Path(config.api.server_key).parent,
        Path(config.backup.dir),
    ]
    return _dedupe_nested(p.absolute() for p in paths)


def hand_over(paths: Iterable[Path], uid: int, gid: int) -> int:
    """``chown`` every file and folder below ``paths`` not yet owned by uid:gid (symbolic links are
    changed themselves, never followed); returns how many were changed."""
    changed = 0

    def fix(path: Path) -> None:
        nonlocal changed
        st = os.lstat(path)
        if st.st_uid != uid or st.st_gid != gid:
            os.chown(path, uid, gid, follow_symlinks=False)
            changed += 1

    for top in paths:
        if not top.exists():
            continue
        fix(top)
        if top.is_symlink() or not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                fix(Path(folder) / name)
    return changed


# -- install / uninstall --------------------------------------------------------------------------------------
@dataclasses.dataclass
class InstallReport:
    unit_path: Path
    unit_text: str
    outcomes: list[Outcome]
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "unit_path": str(self.unit_path),
            "actions": [o.as_json() for o in self.outcomes],
            "warnings": list(self.warnings),
            "changed": any(o.status == OK for o in self.outcomes),
        }


def install(
    config: Config,
    *,
    user: str | None = None,
    systemd: Systemd | None = None,
    enable: bool = True,
    dry_run: bool = False,
    executable: tuple[str, ...] | None = None,
) -> InstallReport:
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from agent.ops import winservice

        return winservice.install(config, dry_run=dry_run, enable=enable)
    systemd = systemd or Systemd()
    name = check_user_name(user or DEFAULT_USER)
    exe = executable or executable_command()
    outcomes: list[Outcome] = []
    warnings: list[str] = []
    conflicts = hardening_conflicts(config, exe, systemd.root)
    if systemd.live and not dry_run:
        if conflicts:
            raise ConfigError(
                "the service sandbox would hide paths the agent needs: "
                + "; ".join(conflicts)
                + " — move the installation (e.g. to /opt/silson-agent) or the folder"
            )
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise ConfigError(
                f"service install needs root: it creates the service user and writes {systemd.unit_path} "
                "(run it with sudo)"
            )
    warnings += conflicts

    # 1. the user
    known = lookup_user(name)
    if dry_run or not systemd.live:
        account = known or ServiceUser(name, None, None, name)
        why = "dry run" if dry_run else "staging root: the package's postinst creates it on the target"
        status = UNCHANGED if known else SKIPPED
        outcomes.append(Outcome("user", status, f"{name} exists" if known else f"{name} not created ({why})"))
    else:
        account, created = ensure_user(name)
        outcomes.append(
            Outcome("user", OK if created else UNCHANGED, f"{name} {'created' if created else 'exists'}")
        )

    # 2. the installation belongs to the service user (key files must be owned by the daemon's user)
    if dry_run or not systemd.live or account.uid is None or account.gid is None:
        outcomes.append(Outcome("ownership", SKIPPED, "dry run" if dry_run else "staging root"))
    else:
        changed = hand_over(installation_paths(config), account.uid, account.gid)
        outcomes.append(
            Outcome(
                "ownership",
                OK if changed else UNCHANGED,
                f"{changed} path(s) handed over to {name}" if changed else f"owned by {name}",
            )
        )

    # 3. the unit
    text = render_unit(unit_spec(config, user=name, group=account.group, executable=exe, root=systemd.root))
    unit_path = systemd.unit_path
    try:
        current = unit_path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        current = None
    written = current != text
    if dry_run:
        outcomes.append(
            Outcome("unit", SKIPPED, f"dry run: {unit_path} would be {'written' if written else 'unchanged'}")
        )
    elif written:
        make_dirs(unit_path.parent)
        atomic_write(unit_path, text.encode("utf-8"), UNIT_MODE)
        outcomes.append(Outcome("unit", OK, f"{'updated' if current is not None else 'written'} {unit_path}"))
    else:
        outcomes.append(Outcome("unit", UNCHANGED, f"{unit_path} is up to date"))

    # 4. enabled at boot
    if dry_run:
        outcomes.append(Outcome("enable", SKIPPED, "dry run"))
    elif systemd.running():
        if written:
            systemd.must("daemon-reload")
        if not enable:
            outcomes.append(Outcome("enable", SKIPPED, "--no-enable"))
        elif systemd.query("is-enabled") == "enabled":
            outcomes.append(Outcome("enable", UNCHANGED, "enabled"))
        else:
            systemd.must("enable", UNIT_NAME)
            outcomes.append(Outcome("enable", OK, "enabled (systemctl enable)"))
        if written and current is not None and systemd.query("is-active") == "active":
            warnings.append("the running service still uses the previous unit: restart it to apply")
    elif not enable:
        outcomes.append(Outcome("enable", SKIPPED, "--no-enable"))
    else:
        outcomes.append(_enable_by_link(systemd))
    return InstallReport(unit_path, text, outcomes, warnings)


def make_dirs(path: Path) -> None:
    """System folders are 0755 whatever the process umask (077) says (a staging root becomes /)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o755)
        os.chmod(folder, 0o755)


def _enable_by_link(systemd: Systemd) -> Outcome:
    """What ``systemctl enable`` does for ``WantedBy=multi-user.target``, without a running systemd."""
    link = systemd.wants_link
    target = str(UNIT_DIR / UNIT_NAME)
    if link.is_symlink() and os.readlink(link) == target:
        return Outcome("enable", UNCHANGED, f"enabled ({link})")
    make_dirs(link.parent)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
    return Outcome("enable", OK, f"enabled by link {link} (systemd is not running here)")


def uninstall(*, systemd: Systemd | None = None) -> list[Outcome]:
    """Stop, disable and remove the unit. The user, the installation and its data stay."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from agent.ops import winservice

        return winservice.uninstall()
    systemd = systemd or Systemd()
    unit, link = systemd.unit_path, systemd.wants_link
    if not unit.exists() and not link.is_symlink():
        return [Outcome("unit", UNCHANGED, f"not installed ({unit} absent)")]
    outcomes = []
    if systemd.running():
        if systemd.query("is-active") in ("active", "activating", "reloading"):
            systemd.must("stop", UNIT_NAME)
            outcomes.append(Outcome("stop", OK, "stopped"))
        systemd.ctl("disable", UNIT_NAME)
        outcomes.append(Outcome("enable", OK, "disabled"))
    if link.is_symlink():
        link.unlink()
        if not systemd.running():
            outcomes.append(Outcome("enable", OK, f"removed {link}"))
    if unit.exists():
        unit.unlink()
        outcomes.append(Outcome("unit", OK, f"removed {unit}"))
    if systemd.running():
        systemd.must("daemon-reload")
        systemd.ctl("reset-failed", UNIT_NAME)
    return outcomes


# -- start / stop / status ------------------------------------------------------------------------------------
def _require_running_systemd(systemd: Systemd, what: str) -> None:
    if not systemd.running():
        raise UnavailableError(no_systemd_message(systemd, what))
    if not systemd.unit_path.exists():
        raise ConfigError(
            f"the service is not installed ({systemd.unit_path} is absent): run `silson-agent service install`"
        )


def start(
    config: Config | None,
    *,
    systemd: Systemd | None = None,
    wait_s: float = START_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Start the unit and wait until the daemon says it runs (its state file) or the unit fails."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from agent.ops import winservice

        return winservice.start()
    systemd = systemd or Systemd()
    _require_running_systemd(systemd, "start the service")
    if systemd.query("is-active") == "active":
        return Outcome("start", UNCHANGED, f"already running{_daemon_note(config)}")
    systemd.must("start", UNIT_NAME)
    deadline = time.monotonic() + wait_s
    while True:
        state = systemd.query("is-active")
        if state in ("failed", "inactive"):
            raise UnavailableError(
                f"the service did not start (systemd says {state}); see `journalctl -u {UNIT_NAME}`"
            )
        if state == "active" and (config is None or daemon_state(config)["running"]):
            return Outcome("start", OK, f"started{_daemon_note(config)}")
        if time.monotonic() >= deadline:
            return Outcome("start", OK, f"started; not ready after {wait_s:.0f} s (systemd says {state})")
        sleep(0.5)


def stop(*, systemd: Systemd | None = None) -> Outcome:
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from agent.ops import winservice

        return winservice.stop()
    systemd = systemd or Systemd()
    if not systemd.running():
        raise UnavailableError(no_systemd_message(systemd, "stop the service"))
    if not systemd.unit_path.exists() or systemd.query("is-active") in ("inactive", "failed", "unknown"):
        return Outcome("stop", UNCHANGED, "not running")
    systemd.must("stop", UNIT_NAME)  # blocks until the daemon has stopped (or TimeoutStopSec)
    return Outcome("stop", OK, "stopped")


def daemon_state(config: Config) -> dict[str, Any]:
    from agent.ops.daemon import is_running, read_state

    state = read_state(config)
    running = is_running(state)
    return {
        "running": running,
        "pid": int(state.get("pid", 0)) if running and state else None,
        "api": ((state or {}).get("api") or {}).get("listen") if running else None,
    }


def _daemon_note(config: Config | None) -> str:
    if config is None:
        return ""
    daemon = daemon_state(config)
    if not daemon["running"]:
        return ""
    return f" (pid {daemon['pid']}, api {daemon['api']})" if daemon["api"] else f" (pid {daemon['pid']})"


def recorded_config(unit_text: str) -> str | None:
    for line in unit_text.splitlines():
        if line.startswith(CONFIG_MARK):
            return line[len(CONFIG_MARK) :].strip() or None
    return None


def status(
    config: Config | None, *, systemd: Systemd | None = None, user: str | None = None
) -> dict[str, Any]:
    """Installed?, unit path, enabled?, active?, and the daemon's own view (its state file)."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from agent.ops import winservice

        return winservice.status(config)
    systemd = systemd or Systemd()
    unit = systemd.unit_path
    text: str | None
    try:
        text = unit.read_text(encoding="utf-8")
    except OSError:
        text = None
    running = systemd.running()
    doc: dict[str, Any] = {
        "manager": "systemd",
        "service": UNIT_NAME,
        "unit_path": str(unit),
        "installed": text is not None,
        "systemd_running": running,
        "enabled": None,
        "active": None,
        "unit_config": recorded_config(text) if text else None,
        "unit_current": None,
        "config": str(config.source) if config is not None and config.source else None,
        "daemon": daemon_state(config) if config is not None else None,
    }
    if running:
        doc["enabled"] = systemd.query("is-enabled") == "enabled"
        doc["active"] = systemd.query("is-active")
    elif text is not None or systemd.wants_link.is_symlink():
        doc["enabled"] = systemd.wants_link.is_symlink()
    if text is not None and config is not None and config.source is not None:
        with contextlib.suppress(Exception):  # a stale-unit hint must never break status
            name = user or _unit_value(text, "User") or DEFAULT_USER
            group = _unit_value(text, "Group") or name
            exe = _unit_exec(text)
            expected = render_unit(
                unit_spec(config, user=name, group=group, executable=exe, root=systemd.root)
            )
            doc["unit_current"] = expected == text
    return doc


def _unit_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    return None


def _unit_exec(text: str) -> tuple[str, ...] | None:
    """The executable part of the installed ExecStart (everything before `` run --config``)."""
    import shlex

    line = _unit_value(text, "ExecStart")
    if not line:
        return None
    words = shlex.split(line.replace("%%", "%").replace("$$", "$"))
    if "run" not in words:
        return None
    exe = tuple(words[: words.index("run")])
    return exe if exe else None


__all__ = [
    "DEFAULT_USER",
    "InstallReport",
    "Outcome",
    "ServiceUser",
    "Systemd",
    "UNIT_NAME",
    "UnitSpec",
    "daemon_state",
    "ensure_user",
    "executable_command",
    "hand_over",
    "hardening_conflicts",
    "install",
    "installation_paths",
    "lookup_user",
    "make_dirs",
    "no_systemd_message",
    "render_unit",
    "start",
    "status",
    "stop",
    "uninstall",
    "unit_spec",
]
