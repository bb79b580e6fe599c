"""``schema [DOCUMENT_TYPE]``: print the JSON Schema (draft 2020-12) of the standard format."""

from __future__ import annotations

import argparse
import json

from agent.cli import Environment
from agent.errors import ExitStatus, UsageError

DOCUMENT_TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")


def run(args: argparse.Namespace, env: Environment) -> int:
    from agent.documents.schema import json_schema

    if args.document_type and args.document_type not in DOCUMENT_TYPES:
        raise UsageError(f"unknown document type; choose one of {', '.join(DOCUMENT_TYPES)}")
    env.stdout.write(json.dumps(json_schema(args.document_type), ensure_ascii=False, indent=2) + "\n")
    return ExitStatus.OK
