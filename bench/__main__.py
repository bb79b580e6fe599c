"""``make bench``: run every benchmark and write ``docs/performance.md``.

Each benchmark measures our code next to a baseline run in the same process/run on the same
machine, and reports ratios: absolute times on a shared 2-core machine are noisy, ratios much less.
``python -m bench validate store`` runs a subset.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = ["validate", "store", "ingest", "api"]
OUT = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    report = [
        "# Performance",
        "",
        f"Measured by `make bench` on {dt.date.today().isoformat()}: {platform.platform()}, "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}. Every figure is next to a "
        "baseline measured in the same run; ratios matter more than absolute numbers here.",
        "",
    ]
    failed = False
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        start = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            module.run(report)
        except Exception:  # one broken benchmark must not hide the others' figures
            failed = True
            report += [
                f"## {name}",
                "",
                "Benchmark failed:",
                "",
                "```",
                traceback.format_exc(limit=3),
                "```",
                "",
            ]
        print(f"bench: {name} done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    OUT.write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
