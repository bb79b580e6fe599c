"""Enrollment against the relay simulator (relay-api.md §10, C-35, S-33; cli.md §3 ``enroll``).

Real TLS on 127.0.0.1, certificates made at test time, real files and SQLite. Every failure case
checks that no key, certificate or state is left behind and that the token is nowhere.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from agent import pki
from agent.config import load_config
from agent.errors import ConfigError, UnavailableError
from agent.keys import SIGNING_FILE, check_key_file, load_signing_key
from agent.ops.enroll import (
    RELAY_IDS_KEY,
    STATE_KEY,
    endpoint_for,
    enroll,
    enrollment_proof,
    read_token,
)
from agent.ops.relaysim_server import RelaySimulator
from agent.signing import kid_of, verify_es256
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inst(tmp_path: Path, sim: RelaySimulator) -> Path:
    """A fresh ``init`` (no dev certs) holding the simulator's pinned bundle; returns agent.toml."""
    return sim.prepare_installation(tmp_path / "inst")


def _kv(root: Path, key: str) -> str | None:
    db = root / "data" / "store.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def _audit(root: Path) -> list[dict]:
    db = root / "data" / "audit.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT record FROM records ORDER BY seq")]
    finally:
        conn.close()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _assert_token_nowhere(root: Path, token: str, *texts: str) -> None:
    needle = token.encode()
    for path in root.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
            assert token not in path.name
    for text in texts:
        assert token not in text


def _assert_nothing_installed(root: Path, before: dict[str, bytes]) -> None:
    tls = root / "tls"
    for name in ("server.crt", "server.key", "relay-ca.crt"):
        assert (tls / name).exists() == (f"tls/{name}" in before), name
    after = _files(root)
    for name, data in before.items():  # existing files untouched
        if name.startswith(("tls/", "keys/", "agent.toml")):
            assert after.get(name) == data, name
    new_keys = [n for n in after if n.startswith(("keys/", "tls/")) and n not in before]
    assert new_keys == []
    assert _kv(root, RELAY_IDS_KEY) is None
    assert _kv(root, STATE_KEY) is None
    staging = root / "data" / "tmp"
    assert not staging.exists() or list(staging.iterdir()) == []


# -- success --------------------------------------------------------------------------------------------
def test_enroll_installs_certificate_client_ca_relay_ids_and_keys_and_audits(sim: RelaySimulator, inst: Path):
    root = inst.parent
    signing_before = (root / "keys" / SIGNING_FILE).read_bytes()
    token = sim.issue_token(institution_code="99000001")
    result = run_cli("enroll", "--config", str(inst), "--token", token)
    assert result.code == 0, result.stderr
    agent_id = result.stdout.split("agent_id: ")[1].strip()
    assert agent_id in sim.agents

    tls = root / "tls"
    chain = x509.load_pem_x509_certificates((tls / "server.crt").read_bytes())
    key = serialization.load_pem_private_key((tls / "server.key").read_bytes(), password=None)
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()
    assert chain[0].subject.rfc4514_string() == "CN=99000001"
    # The installed chain verifies against the relay root for the endpoint host.
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([sim.root]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    verifier.verify(chain[0], chain[1:])
    # Two bundles kept apart: api.client_ca = the relay-client issuer only; relay.server_ca = relay root.
    assert x509.load_pem_x509_certificates((tls / "relay-ca.crt").read_bytes()) == [sim.client_ca]
    assert x509.load_pem_x509_certificates((tls / "relay-server-ca.crt").read_bytes()) == [sim.root]
    # Keys: 0600, regular, owned; the signing key of init was registered (not replaced).
    for path in (tls / "server.key", root / "keys" / SIGNING_FILE):
        check_key_file(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Certificates too (security.md §10: every file the agent creates is 0600).
    for name in ("server.crt", "relay-ca.crt", "relay-server-ca.crt"):
        assert stat.S_IMODE((tls / name).stat().st_mode) == 0o600, name
    assert (root / "keys" / SIGNING_FILE).read_bytes() == signing_before
    kid = kid_of(load_signing_key(root / "keys" / SIGNING_FILE).public_key())
    # State: relay ids where the relay API reads them, and the agent state.
    assert json.loads(_kv(root, RELAY_IDS_KEY)) == ["silson24-relay-01", "silson24-relay-02"]
    state = json.loads(_kv(root, STATE_KEY))
    assert state["agent_id"] == agent_id
    assert state["heartbeat_url"] == f"{sim.base_url}/v1/agents/{agent_id}/heartbeats"
    assert state["heartbeat_interval_s"] == 300 and state["signing_key_id"] == kid
    assert state["endpoint"] == {"host": "127.0.0.1", "port": 8443}
    # The request the relay saw: proof over the §10 message, CSR for the endpoint host.
    body = sim.enrollments[0]
    assert body["endpoint"] == {"host": "127.0.0.1", "port": 8443}
    public = serialization.load_pem_public_key(body["signing_public_key_pem"].encode())
    message = f"silson-agent-enroll-v1\n99000001\n{token}\n{kid}".encode()
    assert verify_es256(public, message, body["signing_key_proof"])
    csr = x509.load_pem_x509_csr(body["server_csr_pem"].encode())
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == "CN=99000001"
    # Audit: admin.enroll, actor = the local OS user.
    records = [r for r in _audit(root) if r["action"] == "admin.enroll"]
    assert len(records) == 1
    record = records[0]
    assert record["result"] == "success" and record["actor"]["kind"] == "admin"
    assert record["actor"]["uid"] == os.getuid() and record["agent_id"] == agent_id
    assert record["relay_ids"] == ["silson24-relay-01", "silson24-relay-02"]
    # S-33: the token is in no file (store, audit, logs, state) and was not printed.
    _assert_token_nowhere(root, token, result.stdout, result.stderr)
    assert (root / "data" / "tmp").exists() and list((root / "data" / "tmp").iterdir()) == []


def test_token_dash_reads_standard_input(sim: RelaySimulator, inst: Path):
    token = sim.issue_token()
    result = run_cli("enroll", "--config", str(inst), "--token", "-", stdin=token + "\n")
    assert result.code == 0, result.stderr
    assert sim.enrollments[0]["enrollment_token"] == token
    _assert_token_nowhere(inst.parent, token, result.stdout, result.stderr)


def test_relay_option_overrides_config_url(sim: RelaySimulator, tmp_path: Path):
    toml = sim.prepare_installation(tmp_path / "other")
    toml.write_text(toml.read_text().replace(f'url = "{sim.base_url}"', 'url = ""'))
    token = sim.issue_token()
    result = run_cli("enroll", "--config", str(toml), "--relay", sim.base_url, "--token", token)
    assert result.code == 0, result.stderr
    assert "relay.url is empty" in result.stderr
    assert json.loads(_kv(toml.parent, STATE_KEY))["relay_url"] == sim.base_url


def test_missing_signing_key_is_created_registered_and_0600(sim: RelaySimulator, inst: Path):
    root = inst.parent
    (root / "keys" / SIGNING_FILE).unlink()
    result = run_cli("enroll", "--config", str(inst), "--token", sim.issue_token())
    assert result.code == 0, result.stderr
    path = root / "keys" / SIGNING_FILE
    check_key_file(path)
    kid = kid_of(load_signing_key(path).public_key())
    assert json.loads(_kv(root, STATE_KEY))["signing_key_id"] == kid
    assert sim.agents[json.loads(_kv(root, STATE_KEY))["agent_id"]]["kids"] == [kid]


def test_token_never_visible_in_process_list_with_stdin(sim: RelaySimulator, inst: Path):
    """S-33: ``--token -`` keeps the token out of the command line of the running process."""
    token = sim.issue_token()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "enroll", "--config", str(inst), "--token", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    if cmdline.exists():
        assert token.encode() not in cmdline.read_bytes()
    out, err = proc.communicate(token.encode() + b"\n", timeout=60)
    assert proc.returncode == 0, err.decode()
    assert token.encode() not in out + err
    _assert_token_nowhere(inst.parent, token)


# -- refusals: exit 5, nothing left behind ---------------------------------------------------------------
@pytest.mark.parametrize("case", ["unknown", "expired", "used"])
def test_401_token_leaves_nothing_and_exits_5(sim: RelaySimulator, inst: Path, case: str):
    root = inst.parent
    before = _files(root)
    token = {
        "unknown": "ENR-AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG",
        "expired": sim.issue_token(expired=True),
        "used": sim.issue_token(used=True),
    }[case]
    result = run_cli("enroll", "--config", str(inst), "--token", token)
    assert result.code == 5
    assert "token" in result.stderr and "401" in result.stderr
    _assert_nothing_installed(root, before)
    _assert_token_nowhere(root, token, result.stdout, result.stderr)
    records = [r for r in _audit(root) if r["action"] == "admin.enroll"]
    assert [r["result"] for r in records] == ["denied"]


@pytest.mark.parametrize(
    "mode, words",
    [
        ("wrong_key", "not for the key"),
        ("bad_chain", "does not chain"),
        ("client_ca_has_issuer", "client CA bundle contains the issuer"),
        ("short_validity", "less than 30 more days"),
        ("wrong_san", "subject alternative names"),
        ("wrong_kid", "signing key id"),
    ],
)
def test_bad_answer_is_refused_and_nothing_installed(sim: RelaySimulator, inst: Path, mode: str, words: str):
    root = inst.parent
    before = _files(root)
    sim.enrollment_mode = mode
    token = sim.issue_token()
    result = run_cli("enroll", "--config", str(inst), "--token", token)
    assert result.code == 5, result.stderr
    assert words in result.stderr and "nothing was installed" in result.stderr
    _assert_nothing_installed(root, before)
    _assert_token_nowhere(root, token, result.stdout, result.stderr)


@pytest.mark.parametrize("status, words", [(400, "invalid"), (422, "invalid"), (409, "already enrolled")])
def test_relay_refusal_in_plain_words(sim: RelaySimulator, inst: Path, status: int, words: str):
    root = inst.parent
    before = _files(root)
    sim.enrollment_status = status
    result = run_cli("enroll", "--config", str(inst), "--token", sim.issue_token())
    assert result.code == 5
    assert words in result.stderr and f"HTTP {status}" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_installed(root, before)


def test_existing_certificates_untouched_by_a_failed_enrollment(sim: RelaySimulator, inst: Path):
    root = inst.parent
    pki.make_dev_certs(root / "tls-dev")
    for name in ("server.crt", "server.key", "relay-ca.crt"):
        (root / "tls" / name).write_bytes((root / "tls-dev" / name).read_bytes())
        os.chmod(root / "tls" / name, 0o600)
    before = _files(root)
    sim.enrollment_mode = "bad_chain"
    result = run_cli("enroll", "--config", str(inst), "--token", sim.issue_token())
    assert result.code == 5
    _assert_nothing_installed(root, before)


def test_install_failure_rolls_back_every_file(
    sim: RelaySimulator, inst: Path, monkeypatch: pytest.MonkeyPatch
):
    root = inst.parent
    before = _files(root)
    from agent.store import Store

    def broken(self, key, value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Store, "kv_set", broken)
    config = load_config(inst)
    with pytest.raises(UnavailableError, match="could not be installed"):
        enroll(config, token=sim.issue_token(), sleep=lambda s: None)
    _assert_nothing_installed(root, before)
    assert [r["result"] for r in _audit(root) if r["action"] == "admin.enroll"] == ["success", "error"]


# -- network: retries, pinning ------------------------------------------------------------------------
def test_5xx_then_success_retries_with_the_same_body(sim: RelaySimulator, inst: Path):
    sim.fail_next = 2
    slept: list[float] = []
    result = enroll(load_config(inst), token=sim.issue_token(), sleep=slept.append)
    assert slept == [2.0, 4.0]
    assert len(sim.enrollments) == 3
    assert sim.enrollments[0] == sim.enrollments[1] == sim.enrollments[2]
    assert result.agent_id in sim.agents


def test_relay_failing_four_times_is_exit_5_after_2_4_8_seconds(sim: RelaySimulator, inst: Path):
    root = inst.parent
    before = _files(root)
    sim.fail_next = 10
    slept: list[float] = []
    with pytest.raises(UnavailableError, match="unreachable or failing") as info:
        enroll(load_config(inst), token=sim.issue_token(), sleep=slept.append)
    assert info.value.exit_status == 5
    assert slept == [2.0, 4.0, 8.0] and len(sim.enrollments) == 4
    _assert_nothing_installed(root, before)


def test_unreachable_relay_is_exit_5(sim: RelaySimulator, inst: Path):
    root = inst.parent
    before = _files(root)
    token = sim.issue_token()
    sim.stop()
    slept: list[float] = []
    with pytest.raises(UnavailableError) as info:
        enroll(load_config(inst), token=token, sleep=slept.append)
    assert slept == [2.0, 4.0, 8.0]
    assert token not in str(info.value)
    _assert_nothing_installed(root, before)


def test_relay_not_matching_the_pinned_bundle_is_refused_without_retry(sim: RelaySimulator, inst: Path):
    root = inst.parent
    _, other = pki.make_ca("someone else's CA")
    pki.write_certs(root / "tls" / "relay-server-ca.crt", other)
    before = _files(root)
    slept: list[float] = []
    with pytest.raises(UnavailableError, match="pinned CA bundle"):
        enroll(load_config(inst), token=sim.issue_token(), sleep=slept.append)
    assert slept == [] and sim.enrollments == []
    _assert_nothing_installed(root, before)


def test_missing_pinned_bundle_is_a_configuration_error(sim: RelaySimulator, inst: Path):
    (inst.parent / "tls" / "relay-server-ca.crt").unlink()
    result = run_cli("enroll", "--config", str(inst), "--token", sim.issue_token())
    assert result.code == 4
    assert "relay-server-ca.crt" in result.stderr and sim.enrollments == []


def test_without_relay_url_or_token_is_a_usage_error(sim: RelaySimulator, inst: Path):
    inst.write_text(inst.read_text().replace(f'url = "{sim.base_url}"', 'url = ""'))
    assert run_cli("enroll", "--config", str(inst), "--token", sim.issue_token()).code == 2
    assert (
        run_cli("enroll", "--config", str(inst), "--relay", sim.base_url, "--token", "-", stdin="\n").code
        == 2
    )
    assert (
        run_cli(
            "enroll",
            "--config",
            str(inst),
            "--relay",
            "http://insecure.invalid",
            "--token",
            sim.issue_token(),
        ).code
        == 2
    )
    assert sim.enrollments == []


# -- pieces ------------------------------------------------------------------------------------------
def test_proof_is_es256_over_the_section_10_message():
    key = pki.new_key()
    kid = kid_of(key.public_key())
    proof = enrollment_proof(key, "12345678", "ENR-7Q4K-M2XD-9PLA-W3ZT-C8VB-H5RN", kid)
    assert len(proof) == 86
    message = f"silson-agent-enroll-v1\n12345678\nENR-7Q4K-M2XD-9PLA-W3ZT-C8VB-H5RN\n{kid}".encode()
    assert verify_es256(key.public_key(), message, proof)


def test_endpoint_from_listen_address_or_hostname(tmp_path: Path, sim: RelaySimulator):
    toml = sim.prepare_installation(tmp_path / "e", listen="0.0.0.0:9443")
    config = load_config(toml)
    assert endpoint_for(config, hostname="gw.example-clinic.kr").as_json() == {
        "host": "gw.example-clinic.kr",
        "port": 9443,
    }
    assert endpoint_for(config, "10.0.0.5").as_json() == {"host": "10.0.0.5", "port": 9443}
    assert endpoint_for(config, "GW.example.kr:8443").as_json() == {"host": "gw.example.kr", "port": 8443}
    assert endpoint_for(config, "[::1]:8443").as_json() == {"host": "::1", "port": 8443}


def test_read_token_never_echoes_a_bad_token():
    import io

    with pytest.raises(Exception) as info:
        read_token("has space inside", io.StringIO())
    assert "has space" not in str(info.value)
    assert read_token("-", io.StringIO("ENR-AAAA-BBBB\n")) == "ENR-AAAA-BBBB"


def test_config_error_for_bad_key_permissions_before_contacting_relay(sim: RelaySimulator, inst: Path):
    os.chmod(inst.parent / "keys" / "kek-1.key", 0o644)
    with pytest.raises(ConfigError):
        enroll(load_config(inst), token=sim.issue_token(), sleep=lambda s: None)
    assert sim.enrollments == []


def test_certificate_validity_checked_against_the_clock(sim: RelaySimulator, inst: Path):
    """A local clock far ahead makes a fresh certificate look short-lived: refused, nothing installed."""
    from agent.clock import FakeClock

    root = inst.parent
    before = _files(root)
    clock = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=340))
    with pytest.raises(UnavailableError, match="30 more days"):
        enroll(load_config(inst), token=sim.issue_token(), clock=clock, sleep=lambda s: None)
    _assert_nothing_installed(root, before)


def test_doctor_confirms_the_chain_of_the_enrolled_certificate(tmp_path: Path, sim: RelaySimulator) -> None:
    # cli.md §3 doctor "certificates (chain, …)": the relay's certificate chains to a CA the
    # installation holds after enrollment.
    from agent.ops.doctor import check_certificates

    toml = sim.prepare_installation(tmp_path / "inst", listen="127.0.0.1:0")
    enroll(load_config(toml), token=sim.issue_token(), sleep=lambda s: None)
    checks = {c.name: c for c in check_certificates(load_config(toml))}
    assert checks["server certificate chain"].status == "OK", checks["server certificate chain"]
