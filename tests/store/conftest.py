"""Fixtures for the store tests: a fresh installation (config + keys) and an open store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.config import Config
from agent.store import Store
from tests.store.storehelp import make_config, open_store


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "inst")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(config: Config, clock: FakeClock) -> Iterator[Store]:
    s = open_store(config, clock=clock)
    yield s
    s.close()
