"""Child process for the SIGKILL test: commits 10,000 documents in batches of 50, one file each.

Each batch is one ``commit_file`` (one transaction); the ledger row of batch ``b`` (sha256 of
``"batch-b"``) is the marker that it committed. Restarting continues with the first missing batch.
Usage: ``python -m tests.store.crash_child ROOT``; prints ``ready`` once the store is open.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from agent.store import FileFingerprint
from tests.store.storehelp import make_config, make_doc, open_store, record

BATCHES = 200
PER_BATCH = 50


def batch_sha(b: int) -> str:
    return hashlib.sha256(f"batch-{b}".encode()).hexdigest()


def main(root: Path) -> None:
    store = open_store(make_config(root))
    print("ready", flush=True)
    for b in range(BATCHES):
        sha = batch_sha(b)
        if store.file_known(sha):
            continue
        records = [record(make_doc(b * PER_BATCH + k), k) for k in range(PER_BATCH)]
        store.commit_file(FileFingerprint(f"/inbox/{b}.json", 1, 1, sha), records, archive=b"x" * 512)
    print("done", flush=True)
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
