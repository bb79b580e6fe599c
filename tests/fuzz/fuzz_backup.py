"""atheris harness: `backup verify` of arbitrary bytes is a summary or an integrity error
(exit 6), never another exception, and leaves no decrypted temp copy behind.

Run: `python tests/fuzz/fuzz_backup.py -runs=10000` (or all harnesses: `make fuzz`).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz.harness_common import BackupBench, check_backup

BENCH = BackupBench.shared()  # the keys run_all made the seed with (FUZZ_BACKUP_BENCH)


def test_one_input(data: bytes) -> None:
    check_backup(data, BENCH)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
