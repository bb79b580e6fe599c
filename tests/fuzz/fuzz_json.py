"""atheris harness: the standard .json reader never raises on arbitrary bytes.

Run: `python tests/fuzz/fuzz_json.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import check_read


def test_one_input(data: bytes) -> None:
    check_read(data, "fuzz.json")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
