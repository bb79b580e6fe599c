"""``audit verify|subject|report`` (cli.md §3, security.md §7).

- ``verify [--expect-head SEQ:HASH]``: exit 0 when intact, 6 naming the first bad ``seq`` and the
  kind of failure on stderr.
- ``subject --rrn -``: the RRN is read from standard input only (never from the command line),
  turned into its blind index with the installation's key, and the matching records are printed
  as JSON lines. The RRN itself is printed nowhere. The lookup is an audited admin action.
- ``report --month YYYY-MM [--json | --csv]``: the monthly review; recorded as
  ``admin.audit.report`` and followed by an anchor. Exit 6 (after printing) when the chain check
  inside the report failed.

PHI-revealing output is printed only after its audit record is durably written (fail closed,
exit 5 otherwise).
"""

from __future__ import annotations

import argparse
import json
import re

from agent.adminctx import audit_admin
from agent.audit import AuditLog, parse_expect_head
from agent.audit.report import MONTH_RE, render_csv, render_text
from agent.cli import Environment
from agent.commands._common import config_from_args, print_json
from agent.errors import ExitStatus, IntegrityError, UsageError
from agent.keys import load_keyring

_RRN_RE = re.compile(r"^[0-9]{6}-?[0-9]{7}\Z")


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.action == "verify":
        return _verify(args, env)
    if args.action == "subject":
        return _subject(args, env)
    if args.action == "report":
        return _report(args, env)
    raise UsageError(f"silson-agent audit: unknown action {args.action}")


def _verify(args: argparse.Namespace, env: Environment) -> int:
    expect = None
    if args.expect_head:
        try:
            expect = parse_expect_head(args.expect_head)
        except ValueError as exc:
            raise UsageError(f"silson-agent audit verify: {exc}") from None
    config = config_from_args(args, env)
    with AuditLog.open(config) as log:
        result = log.verify(expect)
    if not result.ok:
        where = f"first bad seq {result.first_bad_seq}" if result.first_bad_seq is not None else "anchor file"
        raise IntegrityError(f"audit chain broken: {where} ({result.kind}): {result.message}")
    env.out(f"audit chain intact: {result.records} records verified, head {result.head[0]}:{result.head[1]}")
    return int(ExitStatus.OK)


def _subject(args: argparse.Namespace, env: Environment) -> int:
    if args.rrn != "-":
        # Never accept the number itself: command lines show up in process lists and shell history.
        raise UsageError("silson-agent audit subject: use --rrn - and type the number on standard input")
    config = config_from_args(args, env)
    line = env.stdin.readline().strip()
    if not _RRN_RE.match(line):
        raise UsageError(
            "silson-agent audit subject: standard input is not a 13-digit resident "
            "registration number (YYMMDD-NNNNNNN)"
        )
    subject_ref = load_keyring(config.keys_dir).rrn_index(line.replace("-", ""))
    del line  # keep the number's lifetime as short as Python allows
    with AuditLog.open(config) as log:
        records = log.subject_records(subject_ref)
        audit_admin(
            config,
            "audit.subject",
            log=log,
            environ=env.environ,
            extra={"subject_ref": subject_ref, "result_count": len(records)},
        )
    env.err(f"{len(records)} audit records for subject_ref {subject_ref}")
    for record in records:
        env.stdout.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    env.stdout.flush()
    return int(ExitStatus.OK)


def _report(args: argparse.Namespace, env: Environment) -> int:
    if not MONTH_RE.match(args.month):
        raise UsageError("silson-agent audit report: --month must be YYYY-MM")
    if args.json and args.csv:
        raise UsageError("silson-agent audit report: give --json or --csv, not both")
    config = config_from_args(args, env)
    with AuditLog.open(config) as log:
        report = log.report(args.month)
        # The review is itself an audit event (§7.5), written before anything is shown.
        audit_admin(
            config,
            "audit.report",
            log=log,
            environ=env.environ,
            extra={
                "month": args.month,
                "report_records": report["records"],
                "chain_ok": report["chain"]["ok"],
            },
        )
        try:
            log.write_anchor()  # §7.3: an anchor after each audit report
        except OSError as exc:
            env.err(f"warning: could not append the audit anchor ({type(exc).__name__})")
    if args.json:
        print_json(env, report)
    elif args.csv:
        env.stdout.write(render_csv(report))
        env.stdout.flush()
    else:
        env.stdout.write(render_text(report))
        env.stdout.flush()
    chain = report["chain"]
    if not chain["ok"]:
        env.err(f"error: audit chain broken: first bad seq {chain['first_bad_seq']} ({chain['kind']})")
        return int(ExitStatus.INTEGRITY)
    return int(ExitStatus.OK)
