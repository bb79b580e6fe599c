"""Shared fixtures: an initialised installation in a temp dir, and the in-process CLI runner."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import Environment, main

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
EXAMPLES_DIR = SPEC_DIR / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(
    *argv: str, stdin: str = "", cwd: Path | None = None, environ: dict[str, str] | None = None
) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
        environ=dict(os.environ if environ is None else environ),
        cwd=str(cwd or Path.cwd()),
    )
    code = main(list(argv), env)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def load_example(name: str, *, strip_agent_fields: bool = True) -> dict:
    doc = json.loads((EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    if strip_agent_fields:
        for key in AGENT_FIELDS:
            doc.pop(key, None)
    return doc


@pytest.fixture
def installation(tmp_path: Path) -> Path:
    """``init --dev-certs`` into a fresh folder; returns the folder (agent.toml inside)."""
    from agent.commands.init import write_installation

    root = tmp_path / "inst"
    write_installation(
        root, code="99000001", kind="clinic", dev_certs=True, listen="127.0.0.1:0", admin="127.0.0.1:0"
    )
    return root


@pytest.fixture
def sim(tmp_path: Path):
    """The relay simulator (real TLS on 127.0.0.1), for enrollment, heartbeat and provisioning tests."""
    from agent.ops.relaysim_server import RelaySimulator

    simulator = RelaySimulator(tmp_path / "sim")
    simulator.start()
    yield simulator
    simulator.stop()
