"""``synth --out DIR [--count N] [--seed S] [--format F] [--encoding E] [--invalid-rate R]`` (cli.md §3).

Writes a deterministic synthetic corpus (`agent.synth`) into DIR, and the expected ingest outcome of
every file into a manifest beside DIR (``DIR.manifest.json``, or ``--manifest PATH``) — never into
DIR, which is often a watch folder (decision 17). Progress: a rich progress bar when stderr is a terminal,
plain lines at every 10 % otherwise (cli.md §1). Needs no config: it touches nothing but DIR.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli import Environment
from agent.errors import ExitStatus, UsageError
from agent.synth import write_corpus
from agent.synth.corpus import FILE_PREFIX, manifest_path


def _resolve(env: Environment, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else Path(env.cwd) / path


def _check_args(args: argparse.Namespace, out: Path) -> None:
    if args.count < 0:
        raise UsageError("synth: --count must be ≥ 0")
    if not 0.0 <= args.invalid_rate <= 1.0:
        raise UsageError("synth: --invalid-rate must be between 0 and 1")
    if out.exists() and not out.is_dir():
        raise UsageError(f"synth: --out {out} is not a directory")
    if out.is_dir() and any(p.name.startswith(FILE_PREFIX) for p in out.iterdir()):
        # Mixing two corpora would make the manifest lie about the folder's content.
        raise UsageError(f"synth: {out} already holds a synthetic corpus; use an empty directory")


def _plain_progress(env: Environment) -> Callable[[int, int], None]:
    """One line per 10 % step: periodic without reading the clock."""
    last = [-1]

    def report(done: int, total: int) -> None:
        step = 10 * done // total if total else 10
        if step != last[0]:
            last[0] = step
            env.err(f"synth: {done}/{total} records ({10 * step} %)")

    return report


def run(args: argparse.Namespace, env: Environment) -> int:
    out = _resolve(env, args.out)
    _check_args(args, out)
    manifest_to = _resolve(env, args.manifest) if args.manifest else manifest_path(out)
    if manifest_to.is_dir():
        raise UsageError(f"synth: --manifest {manifest_to} is a directory")
    options: dict[str, Any] = {
        "format": args.format,
        "encoding": args.encoding,
        "invalid_rate": args.invalid_rate,
        "manifest": manifest_to,
    }
    isatty = getattr(env.stderr, "isatty", None)
    if callable(isatty) and isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(file=env.stderr), transient=True) as bar:
            task = bar.add_task("records", total=args.count)
            manifest = write_corpus(out, args.count, args.seed, **options,
                                    progress=lambda done, total: bar.update(task, completed=done))  # fmt: skip
    else:
        manifest = write_corpus(out, args.count, args.seed, **options, progress=_plain_progress(env))
    s = manifest["summary"]
    env.err(
        f"synth: wrote {len(manifest['files'])} files ({args.count} records) to {out}: "
        f"{s['accepted']} accepted, {s['superseded']} superseded, {s['duplicate']} duplicate, "
        f"{s['quarantined']} quarantined expected; manifest {manifest_to}"
    )
    return int(ExitStatus.OK)
