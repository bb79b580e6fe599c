"""``doctor [--json]``: OK/WARN/FAIL per check with a fix; exit 0 without FAIL, 5 otherwise."""

from __future__ import annotations

import argparse

from agent.cli import Environment
from agent.commands._common import config_from_args, print_json
from agent.errors import ExitStatus
from agent.ops.doctor import FAIL, run_checks


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    checks = run_checks(config)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print_json(env, {"ok": not failed, "checks": [c.as_json() for c in checks]})
    else:
        for c in checks:
            line = f"{c.status:4}  {c.name}"
            if c.detail:
                line += f": {c.detail}"
            env.out(line)
            if c.fix and c.status != "OK":
                env.out(f"      fix: {c.fix}")
    return ExitStatus.UNAVAILABLE if failed else ExitStatus.OK
