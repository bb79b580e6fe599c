"""``purge [--dry-run]``: delete documents past retention (security.md §11, S-23).

The ids to delete are selected first, the ``system.purge`` audit record listing them (counts and
ids, no personal data) is written durably, and only then are exactly those documents deleted —
so an unwritable audit log aborts with exit 5 before anything is deleted (S-18).
"""

from __future__ import annotations

import argparse
import json

from agent.cli import Environment
from agent.clock import SystemClock
from agent.commands._common import config_from_args
from agent.errors import ExitStatus

PURGE_ACTION = "system.purge"


def run(args: argparse.Namespace, env: Environment) -> int:
    from agent.store import Store

    config = config_from_args(args, env)
    now = SystemClock().now()
    store = Store.open(config)
    try:
        planned = store.purge(now, dry_run=True)
        if args.dry_run:
            env.out(json.dumps({"dry_run": True, "counts": planned.counts, "document_ids": planned.doc_ids}))
            return int(ExitStatus.OK)
        _audit(config, env, planned.counts, planned.doc_ids)
        result = store.purge(now, only=planned.doc_ids)
    finally:
        store.close()
    env.out(json.dumps({"dry_run": False, "counts": result.counts, "document_ids": result.doc_ids}))
    return int(ExitStatus.OK)


def _audit(config: object, env: Environment, counts: dict[str, int], doc_ids: list[str]) -> None:
    from agent.adminctx import admin_actor, admin_source
    from agent.audit import AuditLog

    log = AuditLog.open(config)  # type: ignore[arg-type]
    try:
        log.append(
            {
                "actor": admin_actor(env.environ),
                "source": admin_source(),
                "action": PURGE_ACTION,
                "result": "success",
                "document_ids": doc_ids,
                "counts": counts,
            }
        )
    finally:
        log.close()
