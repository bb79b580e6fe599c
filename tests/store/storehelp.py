"""Synthetic data and installation helpers for the store tests (all data invented).

Documents come from the spec examples (agent fields stripped) with varied document_no, RRN and
name; the RRNs use the fixture pattern ``YYMMDD-1000NNN`` and the names are made-up Hangul names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from agent.config import Config, build_config
from agent.documents.canonical import canonical_form, content_hash
from agent.keys import generate_keys, load_keyring
from agent.store import FileFingerprint, Store, StoreRecord

SPEC_EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "spec" / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
SURNAMES = "김이박최정강조윤장임"
GIVEN = ["민준", "서연", "도윤", "하은", "지호", "수아", "예준", "지유", "시우", "서윤"]

_EXAMPLES: dict[str, dict[str, Any]] = {}


def example(doc_type: str) -> dict[str, Any]:
    if doc_type not in _EXAMPLES:
        doc = json.loads((SPEC_EXAMPLES / f"{doc_type}.json").read_text(encoding="utf-8"))
        for key in AGENT_FIELDS:
            doc.pop(key, None)
        _EXAMPLES[doc_type] = doc
    return copy.deepcopy(_EXAMPLES[doc_type])


def rrn_for(i: int) -> str:
    """A synthetic 13-digit RRN, unique per i (birth dates in 1990, serials 1000000+)."""
    month, day = 1 + (i // 28) % 12, 1 + i % 28
    return f"90{month:02d}{day:02d}" + f"{1000000 + i % 1000000:07d}"


def name_for(i: int) -> str:
    return SURNAMES[i % 10] + GIVEN[(i // 10) % 10] + ("" if i < 100 else "ABCDEFGHIJ"[(i // 100) % 10])


def make_doc(
    i: int,
    *,
    doc_type: str | None = None,
    rrn: str | None = None,
    name: str | None = None,
    version: int = 1,
    status: str = "active",
    document_no: str | None = None,
    issued_on: str | None = None,
    masked: bool = False,
    marker: str | None = None,
) -> dict[str, Any]:
    doc_type = doc_type or TYPES[i % 4]
    doc = example(doc_type)
    doc["document_no"] = document_no or f"T{i:08d}"
    doc["version"] = version
    doc["status"] = status
    patient = doc["patient"]
    patient["name"] = name if name is not None else name_for(i)
    rrn = rrn or rrn_for(i)
    patient.pop("rrn", None)
    patient.pop("rrn_masked", None)
    if masked:
        patient["rrn_masked"] = rrn[:7] + "******"
    else:
        patient["rrn"] = rrn
    if issued_on:
        doc["issued_on"] = issued_on
        if isinstance(doc.get("care_period"), dict):
            doc["care_period"] = {"start": issued_on, "end": issued_on}
        doc.pop("issued_at", None)
    if status == "cancelled":
        doc["cancel_reason"] = "환불"
    if marker:
        doc.setdefault("institution", {})["address"] = marker
    return doc


def record(doc: dict[str, Any], index: int = 0) -> StoreRecord:
    canon = canonical_form(doc)
    return StoreRecord(index, canon, content_hash(canon))


def fingerprint(data: bytes, path: str = "/inbox/export.json", mtime_ns: int = 1) -> FileFingerprint:
    return FileFingerprint(path, len(data), mtime_ns, hashlib.sha256(data).hexdigest())


def file_of(docs: list[dict[str, Any]]) -> bytes:
    return json.dumps(docs, ensure_ascii=False).encode("utf-8")


def commit_docs(
    store: Store,
    docs: list[dict[str, Any]],
    *,
    path: str = "/inbox/export.json",
    archive: bool = True,
    name: str = "export.json",
):
    data = file_of(docs)
    return store.commit_file(
        fingerprint(data, path),
        [record(d, k) for k, d in enumerate(docs)],
        archive=data if archive else None,
        file_meta={"file_name": name, "profile": "standard", "format": "json", "encoding": "utf-8"},
    )


def make_config(root: Path, **sections: dict[str, Any]) -> Config:
    """A config rooted at ``root`` with fresh keys in ``root/keys``."""
    root.mkdir(parents=True, exist_ok=True)
    config = build_config(dict(sections), None, root)
    if not (config.keys_dir / "kek-1.key").exists():
        old = os.umask(0o077)
        try:
            generate_keys(config.keys_dir)
        finally:
            os.umask(old)
    return config


def open_store(config: Config, **kwargs: Any) -> Store:
    return Store.open(config, keyring=load_keyring(config.keys_dir), **kwargs)
