"""``quarantine list [--json] | show ID [--reason TEXT] | retry ID|--all | drop ID`` (cli.md §3).

``show`` prints the decrypted content to the local admin only and is audited with the stated
reason (security.md §7.1–7.2); ``retry`` and ``drop`` are audited too. Every audit record is
written *before* the action, so an unwritable audit log stops the action (exit 5, fail closed).
Lists show ids, times, rule ids and record indexes — never the original file name.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli import Environment
from agent.commands._common import config_from_args, load_named_profile, print_json
from agent.errors import ExitStatus, UsageError


def _audit(
    config: Any, action: str, *, reason: str | None = None, extra: dict[str, Any] | None = None
) -> None:
    from agent.adminctx import audit_admin

    audit_admin(config, f"quarantine.{action}", reason=reason, extra=extra)


def _current_profile(config: Any) -> Any:
    """The folder's profile read from disk at the time of the retry — after the operator fixed it
    (a running daemon reloads a changed profile file by itself for the files still to come)."""
    loaded: dict[int, Any] = {}

    def profile_for(watch_index: int) -> Any:
        if watch_index not in loaded:
            loaded[watch_index] = load_named_profile(config.watch[watch_index].profile, config)
        return loaded[watch_index]

    return profile_for


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    from agent.ingest.quarantine import entry_json, retry_entry
    from agent.keys import load_keyring
    from agent.store.store import Store

    store = Store.open(config, keyring=load_keyring(config.keys_dir))
    try:
        action = args.action
        if action == "list":
            entries = [entry_json(e) for e in store.quarantine_list()]
            if getattr(args, "json", False):
                print_json(env, entries)
            else:
                if not entries:
                    env.out("quarantine is empty")
                for e in entries:
                    env.out(
                        f"{e['id']}  {e['created_at']}  file {e['file_id'] or '-'}  "
                        f"rules {','.join(e['rules']) or '-'}  records {e['records'][:10]}"
                    )
            return ExitStatus.OK
        if action == "show":
            item = store.quarantine_get(args.id)
            if item is None:
                raise UsageError(f"no quarantine entry {args.id}")
            _audit(config, "show", reason=args.reason, extra={"quarantine_id": args.id})
            e = entry_json(item.entry)
            env.err(
                f"entry {e['id']} ({e['created_at']}), file {e['file_id'] or '-'}: rules "
                f"{', '.join(e['rules'])}"
            )
            for p in e["problems"]:
                env.err(f"  record {p.get('record')}: {p.get('rule')} {p.get('path')} {p.get('message')}")
            env.err(f"original name: {item.original_name}")  # local admin only (security.md §8)
            if item.content is not None:
                env.stdout.flush()
                out = getattr(env.stdout, "buffer", None)
                if out is not None:
                    out.write(item.content)
                    out.flush()
                else:
                    env.stdout.write(item.content.decode("utf-8", "replace"))
                    env.stdout.flush()
            else:
                env.err("(no content: the file was too large to read and stays in its folder)")
            return ExitStatus.OK
        if action == "retry":
            if args.all == bool(args.id):
                raise UsageError("quarantine retry: give an ID or --all")
            ids = [e.qid for e in store.quarantine_list()] if args.all else [args.id]
            if not args.all and store.quarantine_get(args.id) is None:
                raise UsageError(f"no quarantine entry {args.id}")
            _audit(config, "retry", extra={"quarantine_ids": ids})
            failed = 0
            profile_for = _current_profile(config)
            for qid in ids:
                result = retry_entry(config, store, qid, profile_for=profile_for)
                rules = ",".join(sorted({p.rule for p in result.problems}))
                env.err(
                    f"{qid}: {result.outcome}"
                    + (f" ({result.versions_stored} records)" if result.versions_stored else "")
                    + (f" — {rules}" if rules else "")
                )
                failed += result.outcome in ("quarantined", "missing")
            return ExitStatus.INVALID_INPUT if failed else ExitStatus.OK
        if action == "drop":
            if store.quarantine_get(args.id) is None:
                raise UsageError(f"no quarantine entry {args.id}")
            _audit(config, "drop", extra={"quarantine_id": args.id})
            store.quarantine_remove(args.id)
            env.err(f"{args.id}: dropped")
            return ExitStatus.OK
        raise UsageError(f"unknown quarantine action {action}")
    finally:
        store.close()
        sys.stdout.flush()
