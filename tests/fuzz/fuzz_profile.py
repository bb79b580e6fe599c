"""atheris harness: a vendor profile (TOML, exports.md §3) loads or is refused with a ProfileError.

Run: `python tests/fuzz/fuzz_profile.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import check_profile


def test_one_input(data: bytes) -> None:
    check_profile(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
