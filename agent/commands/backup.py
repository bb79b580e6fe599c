"""``backup --out FILE [--reason TEXT]`` and ``backup verify FILE`` (cli.md §3, security.md §4).

``backup`` takes an online snapshot of the store (and the audit log) while the daemon may be
running and writes it encrypted; its admin audit record is written first, so an unwritable audit
log aborts the command with exit 5 before anything is copied. ``backup verify`` authenticates
every chunk and runs ``integrity_check`` on the databases inside without restoring (exit 6 on
tampering or corruption).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.errors import ExitStatus, UsageError

USAGE = "usage: silson-agent backup --out FILE [--reason TEXT] | silson-agent backup verify FILE"


def resolve(env: Environment, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else Path(env.cwd) / path


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    verify_args = list(getattr(args, "verify_args", []) or [])
    if verify_args:
        if len(verify_args) != 2 or verify_args[0] != "verify" or args.out:
            raise UsageError(USAGE)
        return _verify(config, resolve(env, verify_args[1]), env)
    if not args.out:
        raise UsageError(USAGE)
    from agent.adminctx import audit_admin
    from agent.store import Store

    out = resolve(env, args.out)
    # Fail closed: the audit record comes first (security.md §7.3).
    audit_admin(config, "backup", reason=args.reason, environ=env.environ)
    store = Store.open(config)
    try:
        info = store.backup(out)
    finally:
        store.close()
    env.err(
        f"backup written: {out} ({info['chunks']} chunks, store generation {info['generation']}, "
        f"key {info['kek_id']})"
    )
    return int(ExitStatus.OK)


def _verify(config: object, path: Path, env: Environment) -> int:
    from agent.keys import load_keyring
    from agent.store.backup import verify_backup

    if not path.is_file():
        raise UsageError(f"backup verify: {path} is not a file")
    keyring = load_keyring(config.keys_dir)  # type: ignore[attr-defined]
    info = verify_backup(path, keyring, config.data_dir / "tmp")  # type: ignore[attr-defined]
    members = ", ".join(m["name"] for m in info["members"])
    env.err(f"backup OK: {path} ({members}; every chunk authenticated, integrity_check ok)")
    return int(ExitStatus.OK)
