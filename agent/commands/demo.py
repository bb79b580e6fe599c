"""``demo``: ``init --dev-certs`` into ./demo/ (if absent), synthetic exports into its inbox, run the
agent, and print a ready-to-paste command that queries it over mutual TLS (cli.md §3).

Everything is synthetic and bound to loopback. Ctrl-C stops the agent cleanly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

from agent.cli import Environment
from agent.commands.init import write_installation
from agent.config import load_config
from agent.errors import ExitStatus
from agent.fsutil import atomic_write
from agent.ops.demoquery import PATIENT_FILE

DEMO_LISTEN = "127.0.0.1:8443"
DEMO_ADMIN = "127.0.0.1:8780"


def _pick_patient(docs: list[dict]) -> dict:
    """One synthetic patient with a receipt, and a period covering their documents."""
    for doc in docs:
        if doc["document_type"] == "receipt" and doc.get("patient", {}).get("rrn"):
            rrn, name = doc["patient"]["rrn"], doc["patient"]["name"]
            mine = [d for d in docs if d.get("patient", {}).get("rrn") == rrn]
            dates = sorted(d["issued_on"] for d in mine) + sorted(
                d["care_period"]["start"] for d in mine if d.get("care_period")
            )
            start = dt.date.fromisoformat(min(dates)) - dt.timedelta(days=1)
            end = dt.date.fromisoformat(max(dates)) + dt.timedelta(days=1)
            return {
                "name": name,
                "rrn": f"{rrn[:6]}-{rrn[6:]}",
                "from": start.isoformat(),
                "to": end.isoformat(),
            }
    raise RuntimeError("synthetic corpus holds no receipt")


def prepare(root: Path, count: int, env: Environment) -> None:
    if not (root / "agent.toml").exists():
        write_installation(
            root, code="99000001", kind="clinic", dev_certs=True, listen=DEMO_LISTEN, admin=DEMO_ADMIN
        )
        env.err(f"demo: initialised {root} (dev certificates, keys 0600)")
    if not (root / PATIENT_FILE).exists():
        from agent.synth import write_corpus

        write_corpus(root / "inbox", count, seed=1, manifest=False)
        patient = _pick_patient(_corpus_documents(root / "inbox"))
        atomic_write(root / PATIENT_FILE, json.dumps(patient, ensure_ascii=False).encode("utf-8"))
        env.err(f"demo: wrote {count} synthetic documents into {root / 'inbox'}")


def _corpus_documents(folder: Path) -> list[dict]:
    from agent.formats import read_export

    docs: list[dict] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            docs.extend(r.document for r in read_export(path.read_bytes(), file_name=path.name).records)
    return docs


def run(args: argparse.Namespace, env: Environment) -> int:
    root = Path(args.dir)
    if not root.is_absolute():
        root = Path(env.cwd) / root
    prepare(root, args.count, env)
    python = shlex.quote(sys.executable)
    env.err("")
    env.err("Query the agent as the relay would (search + fetch over mTLS, signatures verified):")
    env.err(f"  {python} -m agent.ops.demoquery --dir {shlex.quote(str(root))}")
    env.err("or just its health over mTLS with curl:")
    env.err(
        f"  curl --cacert {root}/tls/dev-ca.crt --cert {root}/tls/relay-client.crt "
        f"--key {root}/tls/relay-client.key https://localhost:8443/v1/health"
    )
    env.err(
        f"Status: {python} -m agent status --config {root}/agent.toml   Metrics: http://{DEMO_ADMIN}/metrics"
    )
    env.err("")
    if args.no_run:
        return ExitStatus.OK
    from agent.ops.daemon import run_daemon

    return run_daemon(load_config(root / "agent.toml"), stderr=env.stderr, debug=bool(args.debug))
