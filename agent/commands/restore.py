"""``restore FILE [--force] [--reason TEXT]``: put a backup's store back (cli.md §3).

Run it with the daemon stopped. The backup is fully authenticated and checked before anything is
replaced; a store newer than the backup (higher generation) is kept unless ``--force``. The audit
record is written first (fail closed, exit 5); the live ``audit.db`` is never overwritten because
the chain is append-only and newer than any backup of it.
"""

from __future__ import annotations

import argparse

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.commands.backup import resolve
from agent.errors import ExitStatus, UsageError


def run(args: argparse.Namespace, env: Environment) -> int:
    from agent.adminctx import audit_admin
    from agent.keys import load_keyring
    from agent.store.backup import restore_backup

    config = config_from_args(args, env)
    path = resolve(env, args.file)
    if not path.is_file():
        raise UsageError(f"restore: {path} is not a file")
    keyring = load_keyring(config.keys_dir)
    audit_admin(config, "restore", reason=args.reason, environ=env.environ)
    info = restore_backup(path, config.data_dir, keyring, force=bool(args.force))
    env.err(
        f"restored {', '.join(info['restored']) or 'nothing'} from backup {info['backup_id']} "
        f"(generation {info['generation']})"
    )
    return int(ExitStatus.OK)
