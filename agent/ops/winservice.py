"""The agent as a Windows service (pywin32), imported only on Windows (cli.md §3 ``service``).

The service manager starts ``silson-agent.exe service dispatch --config <agent.toml>`` (the frozen
build) or ``python.exe -m agent service dispatch --config …``: ``dispatch`` hands the process to
the service control dispatcher at once (PITFALLS: a frozen service that does not call it itself
fails with "error 1053: did not respond in time"; ``win32timezone`` is a hidden import of the build).
The service runs the same ``Daemon`` composition as ``run`` and stops it on a stop request or at
shutdown. It runs as the virtual service account ``NT SERVICE\\silson-agent`` (security.md §10),
never LocalSystem. This module cannot be exercised on Linux; it is type-checked there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import servicemanager  # type: ignore[import-not-found]
import win32service  # type: ignore[import-not-found]
import win32serviceutil  # type: ignore[import-not-found]

from agent.config import Config, load_config
from agent.errors import ConfigError, UnavailableError
from agent.ops.service import OK, SKIPPED, UNCHANGED, InstallReport, Outcome, daemon_state, executable_command

SERVICE_NAME = "silson-agent"
DISPLAY_NAME = "silson-agent (실손보험 청구 전산화 edge agent)"
ACCOUNT = rf"NT SERVICE\{SERVICE_NAME}"


class AgentService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = "Validates EMR exports, stores them encrypted and answers the relay over mTLS."
    config_path: str | None = None  # set by ``dispatch`` before the dispatcher starts

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.daemon: Any = None

    def SvcStop(self) -> None:  # noqa: N802 (pywin32 API)
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        if self.daemon is not None:
            self.daemon.request_stop()

    SvcShutdown = SvcStop  # noqa: N815 (pywin32 API)

    def SvcDoRun(self) -> None:  # noqa: N802 (pywin32 API)
        from agent.ops.daemon import Daemon

        config = load_config(self.config_path)
        self.daemon = Daemon(config)
        self.daemon.start()
        self.ReportServiceStatus(win32service.SERVICE_RUNNING)
        try:
            self.daemon.wait()
        finally:
            self.daemon.stop()


def dispatch(config_path: str | None) -> int:
    """Called by ``service dispatch`` when the service manager starts the process."""
    AgentService.config_path = config_path
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(AgentService)
    servicemanager.StartServiceCtrlDispatcher()
    return 0


def _installed() -> bool:
    try:
        win32serviceutil.QueryServiceStatus(SERVICE_NAME)
    except Exception:
        return False
    return True


def install(config: Config, *, dry_run: bool = False, enable: bool = True) -> InstallReport:
    if config.source is None:
        raise ConfigError("service install needs an agent.toml (give --config PATH)")
    exe = executable_command()
    args = " ".join([*exe[1:], "service", "dispatch", "--config", f'"{config.source}"'])
    where = Path(f"HKLM/SYSTEM/CurrentControlSet/Services/{SERVICE_NAME}")
    if dry_run:
        return InstallReport(where, f'"{exe[0]}" {args}', [Outcome("service", SKIPPED, "dry run")], [])
    if _installed():
        win32serviceutil.ChangeServiceConfig(
            None, SERVICE_NAME, exeName=exe[0], exeArgs=args, userName=ACCOUNT, displayName=DISPLAY_NAME
        )
        outcome = Outcome("service", UNCHANGED, f"{SERVICE_NAME} registered (configuration refreshed)")
    else:
        win32serviceutil.InstallService(
            None,
            SERVICE_NAME,
            DISPLAY_NAME,
            startType=win32service.SERVICE_AUTO_START if enable else win32service.SERVICE_DEMAND_START,
            exeName=exe[0],
            exeArgs=args,
            userName=ACCOUNT,
            description=AgentService._svc_description_,
        )
        outcome = Outcome("service", OK, f"{SERVICE_NAME} registered")
    return InstallReport(where, f'"{exe[0]}" {args}', [outcome], [])


def uninstall() -> list[Outcome]:
    if not _installed():
        return [Outcome("service", UNCHANGED, "not installed")]
    stop()
    win32serviceutil.RemoveService(SERVICE_NAME)
    return [Outcome("service", OK, "removed")]


def _state() -> int | None:
    try:
        return int(win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1])
    except Exception:
        return None


def start() -> Outcome:
    state = _state()
    if state is None:
        raise ConfigError("the service is not installed: run `silson-agent service install`")
    if state == win32service.SERVICE_RUNNING:
        return Outcome("start", UNCHANGED, "already running")
    try:
        win32serviceutil.StartService(SERVICE_NAME)
        win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_RUNNING, 60)
    except Exception as exc:
        raise UnavailableError(
            f"the service did not start ({type(exc).__name__}); see the event log"
        ) from None
    return Outcome("start", OK, "started")


def stop() -> Outcome:
    state = _state()
    if state is None or state == win32service.SERVICE_STOPPED:
        return Outcome("stop", UNCHANGED, "not running")
    try:
        win32serviceutil.StopService(SERVICE_NAME)
        win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_STOPPED, 90)
    except Exception as exc:
        raise UnavailableError(f"the service did not stop ({type(exc).__name__})") from None
    return Outcome("stop", OK, "stopped")


def status(config: Config | None) -> dict[str, Any]:
    state = _state()
    return {
        "manager": "windows",
        "service": SERVICE_NAME,
        "unit_path": None,
        "installed": state is not None,
        "enabled": None,
        "active": None
        if state is None
        else ("active" if state == win32service.SERVICE_RUNNING else "inactive"),
        "config": str(config.source) if config is not None and config.source else None,
        "daemon": daemon_state(config) if config is not None else None,
        "platform": sys.platform,
    }
