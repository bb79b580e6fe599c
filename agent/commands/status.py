"""``status [--json]``: state of a running or stopped agent (cli.md §3, §3.1).

A running daemon is asked for its live status on its admin listener (loopback; the same document
as ``/status``), so pending files and jobs are as of now. Otherwise — stopped, or not answering
within a short timeout — counts come from the store (right even while the daemon is stopped) and
``running``, pending files, jobs and addresses from the daemon's state file (refreshed every few
seconds), trusted only while its pid is alive.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

from agent.cli import Environment
from agent.commands._common import config_from_args, print_json
from agent.ops.daemon import attention_lines, is_running, read_state, status_document

LIVE_TIMEOUT_S = 3.0


def _open_store(config: Any) -> Any:
    if not (config.data_dir / "store.db").exists():
        return None  # never create a store just to report on it
    from agent.keys import load_keyring
    from agent.store.store import Store

    return Store.open(config, keyring=load_keyring(config.keys_dir))


def _open_audit(config: Any) -> Any:
    if not (config.data_dir / "audit.db").exists():
        return None  # never create an audit log just to report on it
    from agent.audit import AuditLog

    return AuditLog.open(config)


def _live(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The running daemon's own status document, None when it cannot be had right now."""
    if not is_running(state):
        return None
    listen = ((state or {}).get("admin") or {}).get("listen")
    if not listen:
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"http://{listen}/status", timeout=LIVE_TIMEOUT_S) as response:
            doc = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("running") is True else None


def run(args: argparse.Namespace, env: Environment) -> int:
    config = config_from_args(args, env)
    state = read_state(config)
    doc = _live(state)
    if doc is None:
        store = _open_store(config)
        audit = _open_audit(config)
        try:
            doc = status_document(config, store, state, audit=audit)
        finally:
            if store is not None:
                store.close()
            if audit is not None:
                audit.close()
    if getattr(args, "json", False):
        print_json(env, doc)
        return 0
    ing, docs = doc["ingest"], doc["documents"]
    lines = [
        f"silson-agent {doc['agent_version']} — {'running' if doc['running'] else 'stopped'}"
        + (f" (pid {doc['pid']}, up {doc['uptime_s']} s)" if doc["running"] else ""),
        f"institution {doc['institution_code']}",
        f"documents: {docs['current_active']} active, {docs['current_cancelled']} cancelled, "
        f"{docs['versions_total']} versions",
        f"files: {ing['files_accepted']} accepted, {ing['files_duplicate']} duplicate, "
        f"{ing['files_quarantined']} quarantined, {ing['files_pending']} pending, "
        f"{ing['files_deferred']} deferred; records {ing['records_committed']}; "
        f"last commit {ing['last_commit_at'] or '-'}",
    ]
    for i, w in enumerate(doc["watch"]):
        lines.append(
            f"watch[{i}] {w['path']}: {'reachable' if w['reachable'] else 'UNREACHABLE'}, "
            f"{w['pending']} pending, observer {w['observer']}"
        )
    lines.append(
        f"api {doc['api']['listen']}; server certificate expires in "
        f"{doc['api']['server_cert_expires_in_days']} days"
    )
    lines.append(f"disk free in data_dir: {doc['disk']['data_dir_free_bytes']} bytes")
    for job in doc["jobs"]:
        lines.append(f"job {job['name']}: next {job['next_run_at'] or '-'}, last {job['last_result'] or '-'}")
    lines.extend(attention_lines(doc))
    env.out("\n".join(lines))
    return 0
