"""``keys rotate`` / ``keys rotate-signing`` / ``keys public`` (cli.md §3, security.md §5).

- ``rotate``: a new KEK becomes current at once, every data key is re-wrapped online (reads and
  writes keep working; a running daemon picks up the new KEK file at its next write), then old
  KEKs used by no record and no backup in ``backup.dir`` are retired (file overwritten, removed).
  Rotation and retirement are audited; the rotation record is written before any work.
- ``rotate-signing``: a new signing key is registered with the relay first (relay-api.md §10,
  ``agent.ops.enroll.announce_signing_key``; skipped when not enrolled), and only after its
  ``201`` replaces ``keys/signing.key``; the old private key is kept as
  ``keys/signing-<kid16>.retired.key`` (removed after 30 days by the scheduled job) and its
  public key as ``keys/signing-<kid16>.pub.pem`` so older signatures stay verifiable.
- ``public``: prints the signing public key (PEM) and its ``kid``.
"""

from __future__ import annotations

import argparse

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.errors import ConfigError, ExitStatus, UsageError


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    if args.action == "rotate":
        return _rotate(config, env)
    if args.action == "rotate-signing":
        return _rotate_signing(config, env)
    if args.action == "public":
        return _public(config, env)
    raise UsageError("usage: silson-agent keys rotate | rotate-signing | public")


def _rotate(config: object, env: Environment) -> int:
    from agent.adminctx import audit_admin
    from agent.audit import AuditLog
    from agent.store import Store

    log = AuditLog.open(config)  # type: ignore[arg-type]
    try:
        audit_admin(config, "keys.rotate", log=log, environ=env.environ)  # type: ignore[arg-type]
        store = Store.open(config)  # type: ignore[arg-type]
        try:
            result = store.rotate_kek(
                retire=False, progress=lambda done, total: env.err(f"re-wrapped {done}/{total} data keys")
            )
            unused = [
                k for k in store.keyring.keks if k != result.new_kek_id and store.kek_usage().get(k, 0) == 0
            ]
            if unused:
                # Audited before the key files are destroyed (crypto-shredding is irreversible).
                audit_admin(
                    config,  # type: ignore[arg-type]
                    "keys.retire",
                    log=log,
                    environ=env.environ,  # type: ignore[arg-type]
                    extra={"kek_ids": sorted(unused)},
                )
            retired, kept = store.retire_unused_keks()
        finally:
            store.close()
    finally:
        log.close()
    env.err(
        f"new key-encryption key {result.new_kek_id} is current; {result.rewrapped} data keys re-wrapped; "
        f"retired: {', '.join(retired) or 'none'}; kept (still used by a backup): {', '.join(kept) or 'none'}"
    )
    return int(ExitStatus.OK)


def _rotate_signing(config: object, env: Environment) -> int:
    from agent.adminctx import audit_admin
    from agent.ops.enroll import rotate_signing_key
    from agent.store import Store

    def audit(old_kid: str, new_kid: str) -> None:
        audit_admin(
            config,  # type: ignore[arg-type]
            "keys.rotate_signing",
            environ=env.environ,
            extra={"old_kid": old_kid, "new_kid": new_kid},
        )

    store = Store.open(config)  # type: ignore[arg-type]
    try:
        old_kid, new_kid, announced = rotate_signing_key(config, store, before=audit)  # type: ignore[arg-type]
    finally:
        store.close()
    env.out(f"kid: {new_kid}")
    env.err(
        f"new signing key {new_kid} is current; previous {old_kid} kept for verification; "
        + (
            "registered with the relay"
            if announced
            else "not enrolled: the relay learns the key at enrollment"
        )
        + "; a running agent takes it up within seconds (or at once on SIGHUP)"
    )
    return int(ExitStatus.OK)


def _public(config: object, env: Environment) -> int:
    from agent.keys import SIGNING_FILE, load_signing_key
    from agent.signing import kid_of, public_pem

    path = config.keys_dir / SIGNING_FILE  # type: ignore[attr-defined]
    if not path.exists():
        raise ConfigError(f"signing key {path} is missing; run `silson-agent init`")
    public = load_signing_key(path).public_key()
    env.stdout.write(public_pem(public))
    env.out(f"kid: {kid_of(public)}")
    return int(ExitStatus.OK)
