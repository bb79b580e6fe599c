"""Signing-key rotation with the relay (relay-api.md §10, security.md §5; cli.md ``keys rotate-signing``).

Real TLS against the relay simulator on 127.0.0.1; the endorsement is verified with
``cryptography`` directly, not with the agent's own helper.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.config import load_config
from agent.keys import SIGNING_FILE, load_signing_key
from agent.ops.daemon import retire_signing_keys_job
from agent.ops.enroll import STATE_KEY, enroll
from agent.ops.relaysim_server import RelaySimulator
from agent.signing import kid_of
from tests.conftest import run_cli


@pytest.fixture
def enrolled(tmp_path: Path, sim: RelaySimulator) -> Path:
    toml = sim.prepare_installation(tmp_path / "inst", listen="127.0.0.1:0")
    enroll(load_config(toml), token=sim.issue_token(), sleep=lambda s: None)
    return toml


def _verify(public: ec.EllipticCurvePublicKey, message: bytes, b64url: str) -> bool:
    raw = base64.urlsafe_b64decode(b64url + "=" * (-len(b64url) % 4))
    sig = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _agent_id(toml: Path) -> str:
    conn = sqlite3.connect(toml.parent / "data" / "store.db")
    try:
        return str(
            json.loads(conn.execute("SELECT value FROM kv WHERE key = ?", (STATE_KEY,)).fetchone()[0])[
                "agent_id"
            ]
        )
    finally:
        conn.close()


def test_rotation_is_registered_with_the_relay_before_the_new_key_is_installed(
    enrolled: Path, sim: RelaySimulator
):
    keys = enrolled.parent / "keys"
    old = load_signing_key(keys / SIGNING_FILE)
    old_kid = kid_of(old.public_key())
    r = run_cli("keys", "rotate-signing", "--config", str(enrolled))
    assert r.code == 0, r.stderr
    new = load_signing_key(keys / SIGNING_FILE)
    new_kid = kid_of(new.public_key())
    assert new_kid != old_kid and f"kid: {new_kid}" in r.stdout
    assert len(sim.signing_keys) == 1
    sent = sim.signing_keys[0]
    assert sent["kid"] == new_kid and sent["previous_kid"] == old_kid
    message = f"silson-agent-rotate-v1\n{_agent_id(enrolled)}\n{new_kid}".encode()
    assert _verify(old.public_key(), message, sent["previous_key_endorsement"])
    registered = serialization.load_pem_public_key(sent["signing_public_key_pem"].encode())
    assert isinstance(registered, ec.EllipticCurvePublicKey) and kid_of(registered) == new_kid
    assert _verify(registered, message, sent["signing_key_proof"])
    assert (keys / f"signing-{old_kid[:16]}.retired.key").exists()
    assert (keys / f"signing-{old_kid[:16]}.pub.pem").exists()
    assert "registered with the relay" in r.stderr
    # A second rotation chains from the key now current.
    assert run_cli("keys", "rotate-signing", "--config", str(enrolled)).code == 0
    assert sim.signing_keys[1]["previous_kid"] == new_kid


@pytest.mark.parametrize("how", ["refused", "unreachable"])
def test_relay_refusing_or_unreachable_leaves_the_current_key_in_use(
    enrolled: Path, sim: RelaySimulator, how: str
):
    keys = enrolled.parent / "keys"
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    if how == "refused":
        sim.fail_next, sim.fail_status = 1, 403
    else:
        sim.stop()
    r = run_cli("keys", "rotate-signing", "--config", str(enrolled))
    assert r.code == 5, r.stderr
    assert "current key stays in use" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before


def test_not_enrolled_rotates_locally(tmp_path: Path, sim: RelaySimulator):
    toml = sim.prepare_installation(tmp_path / "inst", listen="127.0.0.1:0")
    r = run_cli("keys", "rotate-signing", "--config", str(toml))
    assert r.code == 0, r.stderr
    assert "not enrolled" in r.stderr and sim.signing_keys == []


def test_retired_signing_private_keys_are_removed_after_30_days_public_keys_stay(tmp_path: Path):
    from agent.audit import AuditLog
    from tests.ingest.helpers import config_for, make_installation

    toml = make_installation(tmp_path / "inst")
    config = config_for(toml)
    keys = config.keys_dir
    old, recent = keys / "signing-0123456789abcdef.retired.key", keys / "signing-fedcba9876543210.retired.key"
    for path in (old, recent):
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nsynthetic\n-----END PRIVATE KEY-----\n")
        os.chmod(path, 0o600)
    pub = keys / "signing-0123456789abcdef.pub.pem"
    pub.write_text("public")
    now = time.time()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    os.utime(recent, (now - 29 * 86400, now - 29 * 86400))
    log = AuditLog.open(config)
    try:
        kids = retire_signing_keys_job(keys, log, dt.datetime.now(dt.UTC))
        assert kids == ["0123456789abcdef"]
        assert not old.exists() and recent.exists() and pub.exists()
        assert retire_signing_keys_job(keys, log, dt.datetime.now(dt.UTC)) == []
    finally:
        log.close()
    conn = sqlite3.connect(config.data_dir / "audit.db")
    try:
        records = [json.loads(r[0]) for r in conn.execute("SELECT record FROM records ORDER BY seq")]
    finally:
        conn.close()
    retire = [r for r in records if r.get("signing_kid_prefixes")]
    assert len(retire) == 1 and retire[0]["signing_kid_prefixes"] == ["0123456789abcdef"]


def test_running_daemon_switches_keys_on_sighup_and_rotates_yearly_by_itself(
    enrolled: Path, sim: RelaySimulator
):
    from agent.ops.daemon import Daemon

    daemon = Daemon(load_config(enrolled), stderr=open(os.devnull, "w"))  # noqa: SIM115
    try:
        daemon.start()
        first = daemon.api.backend.signing_kid()
        # `keys rotate-signing` by hand, then SIGHUP: the running agent signs with the new key.
        assert run_cli("keys", "rotate-signing", "--config", str(enrolled)).code == 0
        assert daemon.api.backend.signing_kid() == first  # not before the reload
        daemon.reload_tls()
        second = daemon.api.backend.signing_kid()
        assert second != first and second == sim.signing_keys[-1]["kid"]
        assert daemon.audit.signer().kid == second
        # A key younger than 365 days is left alone by the daily job …
        daemon._job_cert_renewal()
        assert len(sim.signing_keys) == 1
        # … one older is rotated with the relay, audited, and used at once.
        key_file = enrolled.parent / "keys" / SIGNING_FILE
        year_ago = time.time() - 366 * 86400
        os.utime(key_file, (year_ago, year_ago))
        daemon._job_cert_renewal()
        assert len(sim.signing_keys) == 2 and sim.signing_keys[1]["previous_kid"] == second
        third = daemon.api.backend.signing_kid()
        assert third == sim.signing_keys[1]["kid"] == kid_of(load_signing_key(key_file).public_key())
    finally:
        daemon.stop()
    conn = sqlite3.connect(enrolled.parent / "data" / "audit.db")
    try:
        actions = [
            json.loads(r[0])["action"] for r in conn.execute("SELECT record FROM records ORDER BY seq")
        ]
    finally:
        conn.close()
    assert "system.keys.rotate_signing" in actions and "admin.keys.rotate_signing" in actions


def test_running_daemon_takes_up_a_cli_rotated_signing_key_without_sighup(
    enrolled: Path, sim: RelaySimulator
):
    # Issue #6 point 1: reload "SIGHUP or file watch". The daemon's state loop watches the TLS pair
    # and the signing key: `keys rotate-signing` takes effect within seconds, no signal needed.
    import threading

    from agent.ops.daemon import STATE_REFRESH, Daemon

    daemon = Daemon(load_config(enrolled), stderr=open(os.devnull, "w"))  # noqa: SIM115
    loop = threading.Thread(target=daemon.wait, daemon=True)
    try:
        daemon.start()
        loop.start()
        first = daemon.api.backend.signing_kid()
        assert run_cli("keys", "rotate-signing", "--config", str(enrolled)).code == 0
        deadline = time.monotonic() + 5 * STATE_REFRESH
        while time.monotonic() < deadline and daemon.api.backend.signing_kid() == first:
            time.sleep(0.1)
        second = daemon.api.backend.signing_kid()
        assert second != first and second == sim.signing_keys[-1]["kid"]
        assert daemon.audit.signer().kid == second
    finally:
        daemon.request_stop()
        loop.join(10)
        daemon.stop()
