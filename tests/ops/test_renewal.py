"""Certificate renewal through the relay simulator (relay-api.md §10 "Certificate renewal", C-38).

A server certificate with 29 days left is renewed; a real ``RelayServer`` then hands the new
certificate to new connections (``reload_tls``) while a connection opened before keeps working.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.api.server import RelayServer
from agent.audit import AuditLog
from agent.clock import SystemClock
from agent.config import Config, load_config
from agent.errors import UnavailableError
from agent.keys import check_key_file, load_keyring
from agent.ops.enroll import STATE_KEY, enroll, renew_if_due
from agent.ops.relaysim_server import RelaySimulator
from agent.store import Store


class Installed:
    def __init__(self, root: Path, sim: RelaySimulator) -> None:
        toml = sim.prepare_installation(root, listen="127.0.0.1:0")
        enroll(load_config(toml), token=sim.issue_token(), sleep=lambda s: None)
        self.root = root
        self.sim = sim
        self.config: Config = load_config(toml)
        self.keyring = load_keyring(self.config.keys_dir, require_signing=True)
        self.store = Store.open(self.config, keyring=self.keyring)
        self.agent_id = json.loads(self.store.kv_get(STATE_KEY))["agent_id"]

    @property
    def cert_path(self) -> Path:
        return Path(self.config.api.server_cert)

    @property
    def key_path(self) -> Path:
        return Path(self.config.api.server_key)

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.cert_path.read_bytes())[0]

    def set_days_left(self, days: float) -> None:
        """Replace the installed certificate by one for the same key with ``days`` left."""
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=300)
        pem = self.sim.issue_agent_certificate(
            key.public_key(),
            cn="99000001",
            host="127.0.0.1",
            days=300 + days,
            not_before=start,
            agent_id=self.agent_id,
        )
        self.cert_path.write_text(pem)

    def renew(self) -> bool:
        return renew_if_due(self.config, self.store, self.keyring, SystemClock())

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def inst(tmp_path: Path, sim: RelaySimulator) -> Iterator[Installed]:
    installed = Installed(tmp_path / "inst", sim)
    yield installed
    installed.close()


def test_certificate_with_29_days_left_is_renewed(inst: Installed, sim: RelaySimulator):
    inst.set_days_left(29)
    old_leaf, old_key = inst.leaf(), inst.key_path.read_bytes()
    assert inst.renew() is True
    assert len(sim.renewals) == 1 and set(sim.renewals[0]) == {"sent_at", "server_csr_pem"}
    new_leaf = inst.leaf()
    assert new_leaf.serial_number != old_leaf.serial_number
    assert inst.key_path.read_bytes() != old_key  # a new key with every renewal (security.md §5)
    key = serialization.load_pem_private_key(inst.key_path.read_bytes(), password=None)
    assert new_leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert new_leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    check_key_file(inst.key_path)
    assert stat.S_IMODE(inst.key_path.stat().st_mode) == 0o600
    assert list((inst.root / "data" / "tmp").iterdir()) == []
    assert json.loads(inst.store.kv_get(STATE_KEY))["renewed_at"]
    # The renewed certificate authenticates the agent to the relay (mTLS) at once.
    assert inst.renew() is False


def test_certificate_with_31_days_left_is_not_renewed(inst: Installed, sim: RelaySimulator):
    inst.set_days_left(31)
    before = inst.cert_path.read_bytes()
    assert inst.renew() is False
    assert sim.renewals == [] and inst.cert_path.read_bytes() == before


def test_exactly_30_days_left_is_due(inst: Installed, sim: RelaySimulator):
    inst.set_days_left(30)
    assert inst.renew() is True


@pytest.mark.parametrize("mode", ["wrong_key", "bad_chain", "short_validity", "wrong_san"])
def test_bad_renewal_answer_installs_nothing(inst: Installed, sim: RelaySimulator, mode: str):
    inst.set_days_left(29)
    cert, key = inst.cert_path.read_bytes(), inst.key_path.read_bytes()
    sim.renewal_mode = mode
    with pytest.raises(UnavailableError, match="nothing was installed"):
        inst.renew()
    assert inst.cert_path.read_bytes() == cert and inst.key_path.read_bytes() == key
    assert list((inst.root / "data" / "tmp").iterdir()) == []


def test_refused_or_unreachable_renewal_raises_and_keeps_the_certificate(
    inst: Installed, sim: RelaySimulator
):
    inst.set_days_left(29)
    cert = inst.cert_path.read_bytes()
    sim.renewal_status = 401
    with pytest.raises(UnavailableError, match="HTTP 401"):
        inst.renew()
    sim.stop()
    with pytest.raises(UnavailableError, match="unreachable"):
        inst.renew()
    assert inst.cert_path.read_bytes() == cert


def test_not_enrolled_is_not_due(tmp_path: Path, sim: RelaySimulator):
    toml = sim.prepare_installation(tmp_path / "fresh")
    config = load_config(toml)
    keyring = load_keyring(config.keys_dir)
    with Store.open(config, keyring=keyring) as store:
        assert renew_if_due(config, store, keyring, SystemClock()) is False
    assert sim.renewals == []


# -- C-38 with the real listener -------------------------------------------------------------------------
def _client_context(sim: RelaySimulator, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(sim.server_ca_path))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _health(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/v1/health")
    response = conn.getresponse()
    response.read()
    return response.status


def test_new_connections_see_the_new_certificate_while_an_old_one_keeps_working(
    tmp_path: Path, inst: Installed, sim: RelaySimulator
):
    inst.set_days_left(29)
    old_der = inst.leaf().public_bytes(serialization.Encoding.DER)
    audit = AuditLog.open(inst.config, signer=inst.keyring.signer)
    server = RelayServer(inst.config, store=inst.store, audit=audit, keyring=inst.keyring)
    server.start()
    client_cert, client_key = tmp_path / "relay.crt", tmp_path / "relay.key"
    sim.issue_relay_client_cert(client_cert, client_key)
    ctx = _client_context(sim, client_cert, client_key)
    host, port = server.address
    old = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        assert _health(old) == 200
        assert old.sock.getpeercert(binary_form=True) == old_der

        assert inst.renew() is True
        server.reload_tls()
        new_der = inst.leaf().public_bytes(serialization.Encoding.DER)
        assert new_der != old_der

        seen = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fresh = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
            try:
                assert _health(fresh) == 200
                seen = fresh.sock.getpeercert(binary_form=True)
            finally:
                fresh.close()
            if seen == new_der:
                break
            time.sleep(0.05)
        assert seen == new_der

        # The connection opened before the renewal keeps working on its original certificate.
        assert _health(old) == 200
        assert old.sock.getpeercert(binary_form=True) == old_der
    finally:
        old.close()
        server.stop()
        audit.close()
