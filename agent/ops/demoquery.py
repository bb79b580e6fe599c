"""``python -m agent.ops.demoquery --dir demo``: play the relay against the demo agent.

Searches for one synthetic patient of the demo corpus, fetches every listed document in the
standard and FHIR forms over mutual TLS with the dev relay-client certificate, verifies each
signature with the agent's published key, and prints a summary. Only synthetic data is involved.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.api.relaysim import RelayClient, verify_document
from agent.config import load_config, parse_listen

PATIENT_FILE = "demo-patient.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.ops.demoquery")
    parser.add_argument("--dir", default="demo")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    config = load_config(root / "agent.toml")
    patient = json.loads((root / PATIENT_FILE).read_text(encoding="utf-8"))
    _, port = parse_listen(config.api.listen)
    tls = root / "tls"
    signing_key = serialization.load_pem_private_key(
        (root / "keys" / "signing.key").read_bytes(), password=None
    )
    assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
    signing_pub = signing_key.public_key()
    claim_no, consent_id = f"DEMO-{uuid.uuid4().hex[:12]}", "DEMO-CONSENT-1"
    with RelayClient(
        f"https://localhost:{port}", tls / "relay-client.crt", tls / "relay-client.key", tls / "dev-ca.crt"
    ) as client:
        health = client.health()
        print(f"GET /v1/health -> {health.status_code} {health.json().get('status')}")
        found = client.search(
            name=patient["name"],
            rrn=patient["rrn"],
            period_from=patient["from"],
            period_to=patient["to"],
            claim_no=claim_no,
            consent_id=consent_id,
        )
        body = found.json()
        print(f"POST /v1/documents/search -> {found.status_code}, {body.get('count')} document(s)")
        ids = [d["id"] for d in body.get("documents", [])]
        for d in body.get("documents", []):
            print(f"  {d['id']}  {d['type']:<17} {d['document_no']:<16} v{d['version']}  {d['issued_on']}")
        if not ids:
            return 1
        for fmt in ("standard", "fhir"):
            fetched = client.fetch(document_ids=ids, format=fmt, claim_no=claim_no, consent_id=consent_id)
            docs = fetched.json().get("documents", [])
            verified = sum(1 for entry in docs if verify_document(entry, signing_pub) is not None)
            print(
                f"POST /v1/documents/fetch format={fmt} -> {fetched.status_code}, "
                f"{verified}/{len(docs)} signature(s) verified (ES256, kid {docs[0]['signature']['kid'][:12]}…)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
