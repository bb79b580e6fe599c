"""``run``: the daemon in the foreground until SIGTERM/SIGINT (cli.md §3); see agent/ops/daemon.py."""

from __future__ import annotations

import argparse

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.ops.daemon import run_daemon


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    return run_daemon(config, stderr=env.stderr, debug=bool(getattr(args, "debug", False)))
