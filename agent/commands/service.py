"""``service install|uninstall|start|stop|status``: the agent as a system service (cli.md §3).

The work is in ``agent.ops.service`` (systemd) and ``agent.ops.winservice`` (Windows). This module
reads the options, prints one line per action on stdout (or one JSON document with ``--json``)
and maps the outcome to exit codes: 0 done or already so; 4 no usable config / not installed /
not root / a path the sandbox would hide; 5 systemd is not running here (``start``, ``stop``,
``status``) or systemctl failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli import Environment
from agent.commands._common import config_from_args, optional_config, print_json
from agent.errors import ExitStatus, UsageError
from agent.ops import service


def _systemd(args: argparse.Namespace, env: Environment) -> service.Systemd:
    root = getattr(args, "root", None)
    if not root:
        return service.Systemd()
    path = Path(root)
    return service.Systemd(root=path if path.is_absolute() else Path(env.cwd) / path)


def _print_outcomes(env: Environment, outcomes: list[service.Outcome]) -> None:
    for outcome in outcomes:
        env.out(f"{outcome.name}: {outcome.status} — {outcome.detail}")


def run(args: argparse.Namespace, env: Environment) -> int:
    action = args.action
    if action == "dispatch":
        return _dispatch(args)
    systemd = _systemd(args, env)
    if action == "install":
        return _install(args, env, systemd)
    if action == "uninstall":
        outcomes = service.uninstall(systemd=systemd)
        if args.json:
            print_json(env, {"actions": [o.as_json() for o in outcomes]})
        else:
            _print_outcomes(env, outcomes)
        return ExitStatus.OK
    if action in ("start", "stop"):
        config = optional_config(args, env)
        outcome = (
            service.start(config, systemd=systemd) if action == "start" else service.stop(systemd=systemd)
        )
        if args.json:
            print_json(env, {"actions": [outcome.as_json()]})
        else:
            _print_outcomes(env, [outcome])
        return ExitStatus.OK
    return _status(args, env, systemd)


def _install(args: argparse.Namespace, env: Environment, systemd: service.Systemd) -> int:
    config = config_from_args(args, env)
    report = service.install(
        config,
        user=args.user,
        systemd=systemd,
        enable=not args.no_enable,
        dry_run=args.dry_run,
    )
    if args.json:
        doc: dict[str, Any] = report.as_json()
        if args.dry_run:
            doc["unit_text"] = report.unit_text
        print_json(env, doc)
    else:
        if args.dry_run:
            env.stdout.write(report.unit_text)
            env.stdout.flush()
        else:
            _print_outcomes(env, report.outcomes)
    for warning in report.warnings:
        env.err(f"warning: {warning}")
    if not args.dry_run and systemd.live and not systemd.running():
        env.err("note: systemd is not running here; the unit takes effect at the next boot with systemd")
    if not args.dry_run and systemd.live:
        env.err(
            f"note: the agent's files now belong to {args.user or service.DEFAULT_USER}; run admin commands "
            f"as that user, e.g. `sudo -u {args.user or service.DEFAULT_USER} silson-agent status "
            f"--config {config.source}`"
        )
    return ExitStatus.OK


def _status(args: argparse.Namespace, env: Environment, systemd: service.Systemd) -> int:
    config = optional_config(args, env)
    doc = service.status(config, systemd=systemd, user=args.user)
    if args.json:
        print_json(env, doc)
    else:

        def yes(value: Any) -> str:
            return "unknown" if value is None else ("yes" if value else "no")

        env.out(f"service: {doc['service']} ({doc['manager']})")
        env.out(f"unit: {doc['unit_path']} ({'installed' if doc['installed'] else 'not installed'})")
        if doc.get("unit_current") is False:
            env.out("unit up to date: no (run `silson-agent service install` to refresh it)")
        env.out(f"enabled: {yes(doc['enabled'])}")
        env.out(f"active: {doc['active'] or 'unknown'}")
        daemon = doc.get("daemon")
        if daemon is None:
            env.out("daemon: unknown (no agent.toml found; give --config PATH)")
        elif daemon["running"]:
            env.out(f"daemon: running (pid {daemon['pid']})")
        else:
            env.out("daemon: not running")
    if doc["manager"] == "systemd" and systemd.live and not doc["systemd_running"]:
        env.err(f"error: {service.no_systemd_message(systemd, 'ask systemd about the service')}")
        return ExitStatus.UNAVAILABLE
    return ExitStatus.OK


def _dispatch(args: argparse.Namespace) -> int:
    if sys.platform != "win32":
        raise UsageError("service dispatch is started by the Windows service manager, not by hand")
    from agent.ops import winservice  # pragma: no cover - Windows only

    return winservice.dispatch(getattr(args, "config", None))  # pragma: no cover
