"""A relay API server as a separate process (for SIGKILL/restart tests).

``python -m tests.api.serve_agent ROOT`` opens the installation made by ``start_agent`` in ROOT
(certificates in ROOT/tls, keys, data) and prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.api.server import RelayServer
from agent.audit import AuditLog
from agent.keys import load_keyring
from agent.store import Store
from tests.api.conftest import Certs, make_config


def main(root: Path) -> None:
    tls = root / "tls"
    certs = Certs(
        tls,
        tls / "relay-ca.crt",
        tls / "server-ca.crt",
        tls / "server.crt",
        tls / "server.key",
        tls / "client.crt",
        tls / "client.key",
        None,
        None,
        None,
    )
    config = make_config(root, certs, limits={"rate_per_s": 0, "health_rate_per_s": 0})
    keyring = load_keyring(config.keys_dir, require_signing=True)
    store = Store.open(config, keyring=keyring)
    audit = AuditLog.open(config, signer=keyring.signer)
    server = RelayServer(config, store=store, audit=audit, keyring=keyring)
    server.start()
    print(f"PORT {server.address[1]}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
