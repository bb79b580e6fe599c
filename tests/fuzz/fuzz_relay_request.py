"""atheris harness: a relay request body (search/fetch) is a JSON object or a 400, then valid or a 422 with
fixed (pointer, code) errors — never an exception, never a pointer that echoes the input.

Run: `python tests/fuzz/fuzz_relay_request.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import check_relay_request


def test_one_input(data: bytes) -> None:
    check_relay_request(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
