"""atheris harness: agent.toml (cli.md §5) loads or is refused with a ConfigError (exit 4).

Run: `python tests/fuzz/fuzz_config.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import check_config

BASE = Path(tempfile.mkdtemp(prefix="fuzz-config-"))  # relative paths resolve here; nothing is written


def test_one_input(data: bytes) -> None:
    check_config(data, BASE)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
