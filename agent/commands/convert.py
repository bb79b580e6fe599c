"""``convert [--profile P] FILE [--to standard|fhir]``: print the standard (or FHIR) form.

For EMR vendors building their export: shows exactly what the agent would store (or serve as
FHIR). Invalid input prints its problems like ``check`` and exits 3; nothing is printed on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from agent.cli import Environment
from agent.commands._common import load_named_profile, optional_config
from agent.commands.check import DEFAULT_MAX_FILE_SIZE, check_path
from agent.errors import ExitStatus, UsageError


def _doc_id_for(doc: dict) -> str:
    """A stable, non-personal placeholder id for offline FHIR rendering (no store assigns one)."""
    import hashlib

    key = f"{doc['institution']['ykiho']}|{doc['document_type']}|{doc['document_no']}".encode()
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    num = int.from_bytes(hashlib.sha256(key).digest()[:17], "big")
    return "doc_" + "".join(alphabet[(num >> (5 * i)) & 31] for i in range(26))


def run(args: argparse.Namespace, env: Environment) -> int:
    config = optional_config(args, env)
    profile = load_named_profile(args.profile, config, cwd=env.cwd)
    path = Path(args.file)
    if not path.is_absolute():
        path = Path(env.cwd) / path
    if not path.is_file():
        raise UsageError(f"{args.file}: no such file")
    now = dt.datetime.now(dt.UTC)
    result = check_path(
        path,
        profile=profile,
        now=now,
        max_size=config.watch[0].max_file_size if config else DEFAULT_MAX_FILE_SIZE,
        default_valid_days=config.validation.default_valid_days if config else 3,
    )
    if not result.ok:
        for p in result.problems:
            record = "-" if p.record is None else str(p.record)
            env.err(f"{args.file}:{record}: {p.rule} {p.path + ': ' if p.path else ''}{p.message}")
        return ExitStatus.INVALID_INPUT
    docs = [r.document for r in result.records if r.document is not None]
    if args.to == "fhir":
        from agent.documents.fhir import bundle_bytes, render_bundle

        base = config.api.fhir_base if config else "https://silson-agent.invalid/fhir"
        bundles = [render_bundle(d, doc_id=_doc_id_for(d), fhir_base=base) for d in docs]
        # bundle_bytes writes fractional FHIR decimals exactly (never as binary floats)
        env.stdout.write(
            bundle_bytes(bundles[0] if len(bundles) == 1 else bundles, indent=2).decode("utf-8") + "\n"
        )
        return ExitStatus.OK
    value = docs[0] if len(docs) == 1 else docs
    env.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return ExitStatus.OK
