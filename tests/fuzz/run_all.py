"""Run every atheris harness for a bounded number of iterations (``make fuzz``).

Each harness runs in its own process (``atheris.Fuzz()`` ends its process), seeded with a small
corpus made from the spec examples and the shipped profile samples, from the repository root so
``tests.fuzz`` imports. Exit status is non-zero when any harness found a crash.

    python -m tests.fuzz.run_all [--runs N] [--only json,xml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = (
    "json",
    "jsonl",
    "xml",
    "csv",
    "vendor_csv",
    "vendor_xml",
    "vendor_json",
    "relay_request",
    "profile",
    "config",
    "bundle",
    "backup",
)
# Inputs whose valid seeds are larger than the default -max_len (a backup of a small store).
MIN_MAX_LEN = {"backup": 200_000}
EXAMPLES = ROOT / "tests" / "formats" / "examples"
SAMPLES = ROOT / "config" / "profiles" / "samples"
PROFILES = ROOT / "config" / "profiles"
EXAMPLE_CONFIG = ROOT / "config" / "agent.example.toml"

# Valid relay request bodies (relay-api.md §5, §6; synthetic patient).
_ENVELOPE = {
    "request_id": "0b7f8a52-3c1e-4b8e-9f6a-2d4c5e6f7a8b",
    "sent_at": "2026-01-05T03:00:00Z",
    "relay_id": "silson24-relay-01",
    "claim": {"claim_no": "CLM-2026-000001", "consent_id": "CNS-000001"},
}
RELAY_BODIES = (
    {
        **_ENVELOPE,
        "patient": {"name": "홍길동", "rrn": "900101-1234568"},
        "period": {"from": "2025-01-01", "to": "2025-12-31"},
        "document_types": ["receipt", "prescription"],
    },
    {**_ENVELOPE, "document_ids": ["doc_01HZY3J7Q2W9X4V5T6S7R8P9N0"], "format": "fhir"},
)


BUNDLE_TOML = b"""format = 1

[installation]
dir = "/opt/silson-agent"
institution_code = "12345678"
institution_type = "clinic"

[relay]
url = "https://relay.invalid"

[enrollment]
token_file = "enrollment-token"

[[watch]]
path = "inbox"
"""


def bundle_seeds() -> list[bytes]:
    """A valid bundle's members (docs/provisioning.md) as .tar.gz and as .zip."""
    import io
    import tarfile
    import zipfile

    from agent.pki import cert_pem, make_ca

    members = {
        "provision.toml": BUNDLE_TOML,
        "enrollment-token": b"synthetic-token-0000\n",
        "relay-server-ca.crt": cert_pem(make_ca("Synthetic Relay CA")[1]),
    }
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    zip_buffer = io.BytesIO()
    with zipfile.ZipFile(zip_buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return [tar_buffer.getvalue(), zip_buffer.getvalue()]


def seed_corpus(harness: str, directory: Path) -> None:
    """A few valid inputs so the fuzzer starts inside the interesting part of the format."""
    sys.path.insert(0, str(ROOT))
    from agent.formats import write_export  # local: keep `--help` fast

    docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]
    for doc in docs:
        for name in ("source", "received_at", "content_hash", "validation"):
            doc.pop(name, None)
    seeds: list[bytes] = []
    if harness in ("json", "jsonl", "xml"):
        seeds = [write_export(docs[:1], format=harness), write_export(docs, format=harness)]
    elif harness == "csv":
        seeds = [write_export([doc], format="csv") for doc in docs]
    elif harness == "vendor_csv":
        seeds = [p.read_bytes() for p in SAMPLES.glob("*.csv")]
    elif harness == "vendor_xml":
        seeds = [p.read_bytes() for p in SAMPLES.glob("*.xml")]
    elif harness == "vendor_json":
        seeds = [p.read_bytes() for p in SAMPLES.glob("*.json")]
    elif harness == "relay_request":
        seeds = [json.dumps(body, ensure_ascii=False).encode("utf-8") for body in RELAY_BODIES]
    elif harness == "profile":
        seeds = [p.read_bytes() for p in sorted(PROFILES.glob("*.toml"))]
    elif harness == "config":
        seeds = [EXAMPLE_CONFIG.read_bytes()]
    elif harness == "bundle":
        seeds = bundle_seeds()
    elif harness == "backup":
        from tests.fuzz.harness_common import BackupBench

        seeds = [BackupBench.shared().seed.read_bytes()]
    for i, seed in enumerate(seeds):
        (directory / f"seed{i}").write_bytes(seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", "20000")))
    parser.add_argument("--only", default="", help="comma-separated harness names")
    parser.add_argument("--max-len", type=int, default=4096)
    args = parser.parse_args(argv)
    selected = [h for h in HARNESSES if not args.only or h in args.only.split(",")]
    failed: list[str] = []
    for harness in selected:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            corpus = Path(tmp) / "corpus"
            corpus.mkdir()
            seed_corpus(harness, corpus)
            command = [
                sys.executable,
                str(Path(__file__).parent / f"fuzz_{harness}.py"),
                f"-runs={args.runs}",
                f"-max_len={max(args.max_len, MIN_MAX_LEN.get(harness, 0))}",
                "-rss_limit_mb=2048",
                f"-artifact_prefix={tmp}/",
                str(corpus),
            ]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            print(f"== fuzz {harness}: {args.runs} runs", flush=True)
            code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
            if code != 0:
                failed.append(harness)
                for artifact in Path(tmp).glob("crash-*"):
                    keep = ROOT / f"fuzz-{harness}-{artifact.name}"
                    keep.write_bytes(artifact.read_bytes())
                    print(f"   crash input kept as {keep.name}", flush=True)
    if failed:
        print("fuzzing found crashes in: " + ", ".join(failed), file=sys.stderr)
        return 1
    print("fuzzing: no crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
