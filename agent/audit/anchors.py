"""Audit anchors: the chain head, signed, appended to a file kept apart from the audit database.

File: ``data_dir/audit-anchors.jsonl`` (0600), one JSON object per line::

    {"seq": 1042, "hash": "<64 hex>", "time": "2025-11-03T05:12:05.231Z",
     "kid": "<64 hex>", "public_key": "-----BEGIN PUBLIC KEY-----...", "sig": "<ES256 r||s b64url>"}

``sig`` is ES256 over the UTF-8 canonical JSON (sorted keys, no spaces) of ``{seq, hash, time,
kid}``. The public key travels with the line so anchors made with a signing key that has since
been rotated stay verifiable (security.md §5); when the verifier holds the current signing key
and the ``kid`` matches, that key is used instead of the embedded one. Without a signing key the
anchor is written unsigned (``kid``/``sig`` null): it still pins the head against truncation.

Why a separate file: someone who rewrites the audit database must also rewrite this file, and the
heartbeat's ``audit_head`` (the outside witness) catches even that (security.md §7.3).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.audit.chain import AnchorRef, canonical_text
from agent.clock import utc_iso
from agent.fsutil import fsync_dir
from agent.signing import Signer, kid_of, public_pem, verify_es256

ANCHOR_FILE = "audit-anchors.jsonl"


def signed_part(seq: int, digest: str, time: str, kid: str | None) -> bytes:
    return canonical_text({"seq": seq, "hash": digest, "time": time, "kid": kid}).encode("utf-8")


def append_anchor(
    path: Path, seq: int, digest: str, now: dt.datetime, signer: Signer | None
) -> dict[str, Any]:
    """Append one anchor line and fsync it (and the directory when the file is new)."""
    time = utc_iso(now)
    kid = signer.kid if signer else None
    line: dict[str, Any] = {
        "seq": seq,
        "hash": digest,
        "time": time,
        "kid": kid,
        "public_key": public_pem(signer.public_key) if signer else None,
        "sig": signer.sign(signed_part(seq, digest, time, kid)) if signer else None,
    }
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # One write() of the whole line: O_APPEND keeps concurrent writers from interleaving.
        os.write(fd, (canonical_text(line) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return line


@dataclasses.dataclass(frozen=True)
class AnchorFile:
    """What was read: usable anchors, and the 1-based numbers of malformed lines."""

    anchors: list[AnchorRef]
    bad_lines: list[int]


def read_anchors(path: Path, trusted: ec.EllipticCurvePublicKey | None = None) -> AnchorFile:
    """Read and signature-check every anchor line (a torn last line from a crash is ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AnchorFile([], [])
    lines = data.split(b"\n")
    torn_tail = not data.endswith(b"\n")
    anchors: list[AnchorRef] = []
    bad: list[int] = []
    trusted_kid = kid_of(trusted) if trusted is not None else None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        entry = _parse_line(raw)
        if entry is None:
            if not (torn_tail and number == len(lines)):
                bad.append(number)
            continue
        anchors.append(AnchorRef(entry["seq"], entry["hash"], _signature_ok(entry, trusted, trusted_kid)))
    return AnchorFile(anchors, bad)


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    seq, digest, time = entry.get("seq"), entry.get("hash"), entry.get("time")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    if not isinstance(digest, str) or len(digest) != 64 or not isinstance(time, str):
        return None
    return entry


def _signature_ok(
    entry: dict[str, Any], trusted: ec.EllipticCurvePublicKey | None, trusted_kid: str | None
) -> bool | None:
    sig, kid = entry.get("sig"), entry.get("kid")
    if sig is None and kid is None:
        return None  # written without a signing key
    if not isinstance(sig, str) or not isinstance(kid, str):
        return False
    key: ec.EllipticCurvePublicKey | None = trusted if kid == trusted_kid else None
    if key is None:
        try:
            loaded = serialization.load_pem_public_key(str(entry.get("public_key", "")).encode("ascii"))
        except (ValueError, UnicodeEncodeError, TypeError):
            return False
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or kid_of(loaded) != kid:
            return False
        key = loaded
    return verify_es256(key, signed_part(entry["seq"], entry["hash"], entry["time"], kid), sig)
