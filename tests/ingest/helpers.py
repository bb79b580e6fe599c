"""Test helpers for ingest: a real installation (keys, config, store) with chosen watch settings,
and synthetic export documents derived from the spec examples (no real personal data)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from agent.config import Config, load_config

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "spec" / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")


def make_installation(
    root: Path,
    *,
    watch: dict[str, Any] | None = None,
    api_listen: str = "127.0.0.1:0",
    admin_listen: str = "127.0.0.1:0",
) -> Path:
    """``init --dev-certs`` into ``root`` and rewrite the [[watch]] table; returns agent.toml."""
    from agent.commands.init import write_installation

    write_installation(
        root, code="99000001", kind="clinic", dev_certs=True, listen=api_listen, admin=admin_listen
    )
    settings = {
        "path": "inbox",
        "profile": "standard",
        "polling": False,
        "scan_interval": "1s",
        "settle": "1s",
        "sentinel": "off",
        "source_mode": "move",
    }
    settings.update(watch or {})
    lines = ["[[watch]]"]
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    toml = (root / "agent.toml").read_text(encoding="utf-8")
    toml = re.sub(r"\[\[watch\]\]\n(?:[a-z_]+ = .*\n)+", "\n".join(lines) + "\n", toml, count=1)
    (root / "agent.toml").write_text(toml, encoding="utf-8")
    return root / "agent.toml"


def config_for(toml: Path) -> Config:
    return load_config(toml, {})


def example(name: str) -> dict[str, Any]:
    doc = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    for key in AGENT_FIELDS:
        doc.pop(key, None)
    return doc


def receipt(n: int, version: int = 1) -> dict[str, Any]:
    """A valid receipt with a unique document_no per ``n`` (synthetic data only)."""
    doc = copy.deepcopy(_RECEIPT)
    doc["document_no"] = f"202503-{n:06d}"
    doc["version"] = version
    if version > 1:
        doc["revision_reason"] = "correction"
    return doc


_RECEIPT = example("receipt")


def json_bytes(docs: list[dict[str, Any]] | dict[str, Any]) -> bytes:
    return json.dumps(docs, ensure_ascii=False).encode("utf-8")


def jsonl_bytes(docs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
