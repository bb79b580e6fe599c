"""``check [--profile P] FILE...``: validate export files offline; nothing is stored (cli.md §3).

Prints each problem as ``FILE:RECORD: R-NNN path: message`` (``-`` for file-level problems);
exit 0 when every file is valid (warnings allowed), 3 otherwise. Time-relative rules use the
time of the check as ``received_at``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from agent.cli import Environment
from agent.commands._common import load_named_profile, optional_config, print_json
from agent.documents.problems import problem
from agent.errors import ExitStatus
from agent.pipeline import FileCheck, validate_export

DEFAULT_MAX_FILE_SIZE = 64 * 1024 * 1024


def check_path(
    path: Path, *, profile: object, now: dt.datetime, max_size: int, default_valid_days: int
) -> FileCheck:
    size = path.stat().st_size
    if size > max_size:  # decided from stat, never read (exports.md §1)
        return FileCheck(path.name, "", size, None, None, [problem("R-001", "")], [])
    return validate_export(
        path.read_bytes(),
        file_name=path.name,
        received_at=now,
        profile=profile,
        default_valid_days=default_valid_days,
        version_warnings=True,
    )


def run(args: argparse.Namespace, env: Environment) -> int:
    config = optional_config(args, env)
    profile = load_named_profile(args.profile, config, cwd=env.cwd)
    max_size = config.watch[0].max_file_size if config else DEFAULT_MAX_FILE_SIZE
    valid_days = config.validation.default_valid_days if config else 3
    now = dt.datetime.now(dt.UTC)
    reports = []
    all_ok = True
    missing = False  # a FILE that is not a file is a bad argument (exit 2), the others still checked
    for name in args.files:
        path = Path(name)
        if not path.is_absolute():
            path = Path(env.cwd) / path
        if not path.is_file():
            env.err(f"{name}: no such file")
            reports.append(
                {
                    "file": name,
                    "ok": False,
                    "records": 0,
                    "problems": [{"record": None, "rule": None, "path": "", "message": "no such file"}],
                }
            )
            all_ok = False
            missing = True
            continue
        result = check_path(path, profile=profile, now=now, max_size=max_size, default_valid_days=valid_days)
        all_ok &= result.ok
        problems = result.problems
        reports.append(
            {
                "file": name,
                "ok": result.ok,
                "records": len(result.records),
                "format": result.format,
                "encoding": result.encoding,
                "problems": [
                    {
                        "record": p.record,
                        "rule": p.rule,
                        "path": p.path,
                        "message": p.message,
                        "severity": "error" if p.is_error else "warning",
                    }
                    for p in problems
                ],
            }
        )
        if not args.json:
            for p in problems:
                record = "-" if p.record is None else str(p.record)
                where = f"{p.path}: " if p.path else ""
                env.out(f"{name}:{record}: {p.rule} {where}{p.message}")
    if args.json:
        print_json(env, {"ok": all_ok, "files": reports})
    else:
        bad = sum(1 for r in reports if not r["ok"])
        env.err(f"{len(reports)} file(s) checked, {bad} invalid")
    if missing:
        return ExitStatus.USAGE
    return ExitStatus.OK if all_ok else ExitStatus.INVALID_INPUT
