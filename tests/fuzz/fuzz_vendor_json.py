"""atheris harness: reading through the shipped profile `vendor_c_json` never raises on arbitrary bytes,
read as one JSON text (``.json``) and as JSON Lines (``.jsonl``).

Run: `python tests/fuzz/fuzz_vendor_json.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import agent.formats.vendor  # noqa: F401  (imported lazily by read_export; instrument it too)
    from agent.formats import load_profile, shipped_profiles_dir
    from tests.fuzz.harness_common import check_read

PROFILE = load_profile("vendor_c_json", [shipped_profiles_dir()])


def test_one_input(data: bytes) -> None:
    check_read(data, "fuzz.json", PROFILE)
    check_read(data, "fuzz.jsonl", PROFILE)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
