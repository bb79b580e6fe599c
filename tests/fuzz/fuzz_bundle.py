"""atheris harness: a provisioning bundle (.tar.gz or .zip bytes) is read or refused with a
ConfigError naming it — never another exception (tar/zip/gzip/TOML errors included).

Run: `python tests/fuzz/fuzz_bundle.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import check_bundle

WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))  # one file, rewritten for every input


def test_one_input(data: bytes) -> None:
    check_bundle(data, WORKDIR)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
