"""``provision BUNDLE [--json] [--result FILE]``: unattended first boot (cli.md §3; docs/provisioning.md).

The work is in ``agent.ops.provision``. This module prints one line per step on stderr as it
finishes, then the summary on stdout (or, with ``--json``, the result document and nothing else
on stdout). Exit codes (cli.md §2): 0 every step ok/unchanged/skipped; 4 a missing, unreadable or
bad bundle, or an installation of another institution; 5 the relay unreachable or refusing, or
acceptance FAIL; the exit code of the first failed step otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli import Environment
from agent.commands._common import print_json
from agent.ops.provision import Step, provision
from agent.ops.service import Systemd


def _absolute(path: str, env: Environment) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(env.cwd) / p


def run(args: argparse.Namespace, env: Environment) -> int:
    def report(step: Step) -> None:
        env.err(f"provision: {step.name}: {step.status} — {step.reason}")

    result = provision(
        _absolute(args.bundle, env),
        result_path=_absolute(args.result, env) if args.result else None,
        user=args.user,
        no_service=args.no_service,
        service_root=_absolute(args.service_root, env) if args.service_root else None,
        systemd=Systemd(),
        environ=env.environ,
        report=report,
    )
    if args.json:
        print_json(env, result.as_json())
    else:
        for step in result.steps:
            env.out(f"{step.status:9}  {step.name}: {step.reason}")
        verdict = "provisioned" if result.ok else f"provisioning FAILED (exit {result.exit_code})"
        if result.ok and not result.changed:
            verdict = "already provisioned: nothing changed"
        env.out(verdict)
    if result.result_file is not None:
        written = "written" if result.result_written else "left as it was (nothing changed)"
        env.err(f"provision: result file {result.result_file} {written}")
    elif not result.ok:
        env.err("provision: no result file (the bundle names the installation folder; use --result FILE)")
    return result.exit_code
