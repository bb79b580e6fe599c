"""Fixtures shared by the ops tests: the relay simulator (real TLS on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ops.relaysim_server import RelaySimulator


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[RelaySimulator]:
    simulator = RelaySimulator(tmp_path / "sim")
    simulator.start()
    yield simulator
    simulator.stop()
