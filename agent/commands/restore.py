"""``restore FILE [--force] [--reason TEXT]``: put a backup's store back (cli.md §3).

Run it with the daemon stopped. The backup is fully authenticated and checked before anything is
replaced; a store newer than the backup (higher generation) is kept unless ``--force``. The
backup's audit chain comes back when the live one lacks it (``restore_backup``); the audit record
is written to the chain in place before the store is replaced (fail closed, exit 5).
"""

from __future__ import annotations

import argparse
import contextlib

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.commands.backup import resolve
from agent.errors import AgentError, ExitStatus, UnavailableError, UsageError


def run(args: argparse.Namespace, env: Environment) -> int:
    from agent.adminctx import audit_admin
    from agent.keys import load_keyring
    from agent.ops.daemon import lock_installation
    from agent.store.backup import restore_backup

    config = config_from_args(args, env)
    path = resolve(env, args.file)
    if not path.is_file():
        raise UsageError(f"restore: {path} is not a file")
    keyring = load_keyring(config.keys_dir)
    # Never under a running daemon (it would keep writing to the replaced file), and no daemon
    # may start while the files are swapped: the daemon's own lock, held for the restore.
    lock = lock_installation(
        config,
        busy="the agent is running on this installation; stop it first "
        "(`silson-agent service stop`), then restore",
    )
    try:
        info = restore_backup(
            path,
            config.data_dir,
            keyring,
            force=bool(args.force),
            # Written once the audit chain is in place (the backup's, when the data folder was
            # lost) and before the store is replaced: no record, no restore (exit 5).
            before_store=lambda: audit_admin(config, "restore", reason=args.reason, environ=env.environ),
        )
    except UnavailableError:  # refused (a newer store): the attempt is recorded too
        with contextlib.suppress(AgentError):
            audit_admin(config, "restore", reason=args.reason, result="failure", environ=env.environ)
        raise
    finally:
        lock.close()
    env.err(
        f"restored {', '.join(info['restored']) or 'nothing'} from backup {info['backup_id']} "
        f"(generation {info['generation']})"
    )
    if info["audit_set_aside"]:
        env.err(
            f"the audit log found here was another chain than the backup's; it is kept as "
            f"{config.data_dir / info['audit_set_aside']}"
        )
    return int(ExitStatus.OK)
