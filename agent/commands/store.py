"""``store verify``: PRAGMA integrity_check plus decrypt-and-verify of every record (cli.md §3).

Exit 0 when intact; exit 6 on any failure, naming the row (document id and version, or entry id)
— never its content.
"""

from __future__ import annotations

import argparse
import sqlite3

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.errors import ExitStatus, IntegrityError, UsageError


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.action != "verify":
        raise UsageError("usage: silson-agent store verify")
    from agent.store import Store

    config = config_from_args(args, env)
    try:
        store = Store.open(config)
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"integrity error: the store database cannot be opened ({exc})") from None
    try:
        report = store.verify(full=True)
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"integrity error: the store database is corrupt ({exc})") from None
    finally:
        store.close()
    if not report.ok:
        for line in report.errors:
            env.err(line)
        env.err(
            f"store verify: FAILED ({len(report.errors)} problem(s), {report.records_checked} records ok)"
        )
        return int(ExitStatus.INTEGRITY)
    env.err(f"store verify: OK (integrity_check ok, {report.records_checked} records decrypted and verified)")
    return int(ExitStatus.OK)
