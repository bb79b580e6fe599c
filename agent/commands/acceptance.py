"""``acceptance [--json]``: the 검수 self-test (cli.md §3); exit 0 when every check passes, 5 otherwise.

The work is in ``agent.ops.acceptance``; this module draws the progress (a rich bar on a terminal,
plain lines when stderr is not one, cli.md §1) and prints the report: one line per check on
stdout, or with ``--json`` one JSON document ``{"ok", "checks": [{"name", "status", "detail"}],
"duration_s"}`` and nothing else on stdout.
"""

from __future__ import annotations

import argparse
from typing import IO, Any

from agent.cli import Environment
from agent.commands._common import config_from_args, print_json
from agent.errors import ExitStatus
from agent.ops.acceptance import PASS, STEPS, Check, run_acceptance


class PlainProgress:
    """One line per finished check, plus a line now and then while waiting (not a terminal)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0

    def _line(self, text: str) -> None:
        print(f"acceptance: {text}", file=self.stream, flush=True)

    def step(self, name: str) -> None:
        pass

    def done(self, check: Check) -> None:
        self.count += 1
        self._line(f"[{self.count}/{len(STEPS)}] {check.status} {check.name}")

    def tick(self, message: str) -> None:
        self._line(message)

    def close(self) -> None:
        pass


class RichProgress:
    """A progress bar on the terminal; the step being run is its description."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("acceptance: {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=len(STEPS))
        self.bar.start()

    def step(self, name: str) -> None:
        self.bar.update(self.task, description=name)

    def done(self, check: Check) -> None:
        self.bar.advance(self.task)
        if check.status != PASS:
            self.bar.console.print(f"acceptance: {check.status} {check.name}")

    def tick(self, message: str) -> None:
        self.bar.update(self.task, description=message)

    def close(self) -> None:
        self.bar.stop()


def make_progress(stream: IO[str]) -> Any:
    if getattr(stream, "isatty", lambda: False)():
        try:
            return RichProgress(stream)
        except ImportError:
            pass
    return PlainProgress(stream)


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    progress = make_progress(env.stderr)
    try:
        report = run_acceptance(config, progress=progress)
    finally:
        progress.close()
    if args.json:
        print_json(env, report.as_json())
    else:
        for check in report.checks:
            env.out(f"{check.status:4}  {check.name}: {check.detail}")
        failed = [c for c in report.checks if c.status != PASS]
        if failed:
            env.out(
                f"acceptance FAILED ({len(failed)} of {len(report.checks)} checks) in {report.duration_s:.1f} s"
            )
        else:
            env.out(f"acceptance passed ({len(report.checks)} checks) in {report.duration_s:.1f} s")
    return ExitStatus.OK if report.ok else ExitStatus.UNAVAILABLE
