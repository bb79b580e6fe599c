"""The command line (cli.md): argument parsing, exit codes, and dispatch to ``agent.commands``.

Every command is a function ``run(args, env) -> int`` in a module of ``agent/commands/``, imported
lazily so ``--version`` and ``check`` stay fast. Errors derived from ``AgentError`` are printed as
one line on stderr with their exit status; anything else is a bug (exit 1) and shows a traceback
only with ``--debug``. Nothing here prints personal data.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import IO, Any

from agent import __version__
from agent.errors import AgentError, ExitStatus, UsageError

BUG_REPORT = (
    "this is a bug in silson-agent; please report it to your silson-agent support contact (see README.md, "
    "'Reporting a bug') with the output of `silson-agent --version` and of the same command run with --debug"
)


@dataclasses.dataclass
class Environment:
    """What a command may touch of the outside world (injected so tests run the CLI in-process)."""

    stdin: IO[str] = dataclasses.field(default_factory=lambda: sys.stdin)
    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    environ: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    cwd: str = dataclasses.field(default_factory=os.getcwd)

    def err(self, message: str) -> None:
        print(message, file=self.stderr, flush=True)

    def out(self, message: str) -> None:
        print(message, file=self.stdout, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (exit 2) instead of calling ``sys.exit``."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Sub-commands repeat the options with SUPPRESS defaults, so `--config P <command>` and
    # `<command> --config P` both work (a sub-parser default would otherwise overwrite the first).
    default: object = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="agent.toml to use (default: lookup order of cli.md §1)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks and debug logging",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="silson-agent", description="실손보험 청구 전산화 edge agent")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        return p

    p = add("init", "create a ready-to-run installation")
    p.add_argument("--dir", required=True)
    p.add_argument("--institution-code")
    p.add_argument("--institution-type", choices=("hospital", "clinic", "pharmacy"))
    p.add_argument("--dev-certs", action="store_true")

    add("run", "run the daemon in the foreground")
    p = add("demo", "init + synthetic exports + run, printing a query command")
    p.add_argument("--dir", default="demo")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--no-run", action="store_true", help="prepare the demo but do not start the daemon")

    p = add("check", "validate export files offline")
    p.add_argument("--profile")
    p.add_argument("--json", action="store_true")
    p.add_argument("files", nargs="+", metavar="FILE")

    p = add("convert", "print the standard (or FHIR) form of an export file")
    p.add_argument("--profile")
    p.add_argument("--to", choices=("standard", "fhir"), default="standard")
    p.add_argument("file", metavar="FILE")

    p = add("schema", "print the JSON Schema of the standard format")
    p.add_argument("document_type", nargs="?")

    p = add("synth", "write synthetic export files")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("json", "jsonl", "csv", "xml"))
    p.add_argument("--encoding", choices=("utf-8", "cp949"))
    p.add_argument("--invalid-rate", type=float, default=0.0)
    p.add_argument("--manifest", help="where the manifest goes (default: DIR.manifest.json beside DIR)")

    for name, text in (
        ("status", "state of the agent"),
        ("doctor", "check the installation"),
        ("acceptance", "the 검수 self-test"),
    ):
        p = add(name, text)
        p.add_argument("--json", action="store_true")

    p = add("quarantine", "inspect and re-process quarantined files")
    qsub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    q = qsub.add_parser("list")
    _common(q)
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("show")
    _common(q)
    q.add_argument("id")
    q.add_argument("--reason")
    q = qsub.add_parser("retry")
    _common(q)
    q.add_argument("id", nargs="?")
    q.add_argument("--all", action="store_true")
    q = qsub.add_parser("drop")
    _common(q)
    q.add_argument("id")

    p = add("audit", "verify and report the access log")
    asub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    a = asub.add_parser("verify")
    _common(a)
    a.add_argument("--expect-head", metavar="SEQ:HASH")
    a = asub.add_parser("subject")
    _common(a)
    a.add_argument("--rrn", required=True, help="- reads the RRN from standard input")
    a = asub.add_parser("report")
    _common(a)
    a.add_argument("--month", required=True, metavar="YYYY-MM")
    a.add_argument("--json", action="store_true")
    a.add_argument("--csv", action="store_true")

    p = add("keys", "key management")
    ksub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    for name in ("rotate", "rotate-signing", "public"):
        _common(ksub.add_parser(name))

    p = add("backup", "online encrypted backup")
    p.add_argument("--out")
    p.add_argument("--reason")
    p.add_argument("verify_args", nargs="*", metavar="verify FILE")
    p = add("restore", "restore a backup")
    p.add_argument("file")
    p.add_argument("--force", action="store_true")
    p.add_argument("--reason")

    p = add("store", "store maintenance")
    ssub = p.add_subparsers(dest="action", parser_class=_Parser, required=True)
    _common(ssub.add_parser("verify"))

    p = add("purge", "delete documents past retention")
    p.add_argument("--dry-run", action="store_true")

    p = add("enroll", "one-time enrollment with the relay")
    p.add_argument("--relay")
    p.add_argument("--token", required=True)

    p = add("provision", "unattended first boot from a provisioning bundle (docs/provisioning.md)")
    p.add_argument("bundle", metavar="BUNDLE", help="a folder, .tar.gz/.tgz or .zip holding provision.toml")
    p.add_argument("--json", action="store_true", help="print the result document on stdout")
    p.add_argument(
        "--result", metavar="FILE", help="result file (default: <install dir>/provision-result.json)"
    )
    p.add_argument("--user", metavar="NAME", help="service user when run as root (default: silson-agent)")
    p.add_argument("--no-service", action="store_true", help="do not install or start the system service")
    p.add_argument(
        "--service-root", metavar="DIR", help="write the service unit into this staging root (never started)"
    )

    p = add("service", "register the agent as a system service (systemd unit / Windows service)")
    p.add_argument(
        "action",
        choices=("install", "uninstall", "start", "stop", "status", "dispatch"),
        metavar="{install,uninstall,start,stop,status}",  # dispatch: started by the Windows service manager
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--user", metavar="NAME", help="account the daemon runs as (default: silson-agent)")
    p.add_argument(
        "--root", metavar="DIR", help="staging root: write the unit below DIR, never touch the live system"
    )
    p.add_argument("--no-enable", action="store_true", help="install: do not enable the unit at boot")
    p.add_argument("--dry-run", action="store_true", help="install: print the unit, change nothing")
    return parser


# command name -> module in agent.commands (each exposes ``run(args, env) -> int``)
COMMANDS = {
    "init": "init",
    "run": "run",
    "demo": "demo",
    "check": "check",
    "convert": "convert",
    "schema": "schema",
    "synth": "synth",
    "status": "status",
    "doctor": "doctor",
    "acceptance": "acceptance",
    "quarantine": "quarantine",
    "audit": "audit",
    "keys": "keys",
    "backup": "backup",
    "restore": "restore",
    "store": "store",
    "purge": "purge",
    "enroll": "enroll",
    "provision": "provision",
    "service": "service",
}


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment()
    if os.name != "nt":
        os.umask(0o077)  # every file 0600, every folder 0700 (security.md §10); logs chmod themselves
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.version:
            env.out(f"silson-agent {__version__}")
            return ExitStatus.OK
        if not args.command:
            raise UsageError("silson-agent: a command is required (see --help)")
        module_name = f"agent.commands.{COMMANDS[args.command]}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            env.err(f"error: `{args.command}` is not available in this build of silson-agent {__version__}")
            return int(ExitStatus.INTERNAL)
        return int(module.run(args, env))
    except AgentError as exc:
        if debug:
            traceback.print_exc(file=env.stderr)
        env.err(f"error: {exc.message}")
        return int(exc.exit_status)
    except KeyboardInterrupt:
        env.err("interrupted")
        return int(ExitStatus.INTERRUPTED)
    except OSError as exc:  # the environment, not a bug: a path that cannot be used, a full disk …
        if debug:
            traceback.print_exc(file=env.stderr)
        where = f" {exc.filename}" if exc.filename else ""
        env.err(f"error: cannot use{where}: {exc.strerror or type(exc).__name__}")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return int(ExitStatus.CONFIG)  # "bad permission" (cli.md §2)
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EROFS):
            return int(ExitStatus.UNAVAILABLE)
        return int(ExitStatus.USAGE)  # a bad path argument
    except SystemExit as exc:  # argparse --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    except Exception as exc:  # a bug: never print the message (it may carry data), only where it is
        if debug:
            traceback.print_exc(file=env.stderr)
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
        env.err(f"internal error: {type(exc).__name__} at {where}; {BUG_REPORT}")
        return int(ExitStatus.INTERNAL)
