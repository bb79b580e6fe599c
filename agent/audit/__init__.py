"""Hash-chained access log (접속기록, security.md §7): its own SQLite DB, anchors, verify, report.

- ``chain``: pure record building and chain verification (hash rules of §7.3).
- ``log``: ``AuditLog`` — the durable, fail-closed store in ``data_dir/audit.db``.
- ``anchors``: signed heads in ``data_dir/audit-anchors.jsonl``, kept apart from the DB.
- ``report``: the monthly review of §7.5; ``csvsafe``: formula-safe CSV (§9).
- ``config_change``: ``record_config_hash`` for S-39.
"""

from agent.audit.chain import ZERO_HASH, VerifyResult, canonical_text, parse_expect_head, record_hash
from agent.audit.config_change import record_config_hash
from agent.audit.log import DB_FILE, AuditLog

__all__ = [
    "DB_FILE",
    "ZERO_HASH",
    "AuditLog",
    "VerifyResult",
    "canonical_text",
    "parse_expect_head",
    "record_config_hash",
    "record_hash",
]
