"""CLI: backup / backup verify / restore / store verify / purge / keys (cli.md §3, S-22, S-23, S-35, S-36)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from agent.config import load_config
from agent.signing import kid_of
from agent.store import Store
from tests.store.storehelp import commit_docs, make_doc


@pytest.fixture
def inst(installation: Path) -> Path:
    config = load_config(installation / "agent.toml")
    store = Store.open(config)
    try:
        commit_docs(store, [make_doc(i) for i in range(6)])
        old = (dt.date.today() - dt.timedelta(days=3 * 365 + 1)).isoformat()
        commit_docs(store, [make_doc(100, issued_on=old)], path="/old")
    finally:
        store.close()
    return installation


def _cfg(inst: Path) -> list[str]:
    return ["--config", str(inst / "agent.toml")]


def _audit_actions(inst: Path) -> list[dict]:
    conn = sqlite3.connect(inst / "data" / "audit.db")
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT record FROM records ORDER BY seq")]
    finally:
        conn.close()


def test_backup_then_verify_ok_and_one_byte_change_exits_6(cli, inst: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.bak"
    r = cli("backup", *_cfg(inst), "--out", str(out), "--reason", "nightly check")
    assert r.code == 0, r.stderr
    assert cli("backup", *_cfg(inst), "verify", str(out)).code == 0
    assert any(a["action"] == "admin.backup" and a["reason"] == "nightly check" for a in _audit_actions(inst))
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    r = cli("backup", *_cfg(inst), "verify", str(out))
    assert r.code == 6 and "chunk" in r.stderr


def test_store_verify_ok_then_swapped_ciphertexts_exit_6_naming_the_row(cli, inst: Path) -> None:
    assert cli("store", "verify", *_cfg(inst)).code == 0
    conn = sqlite3.connect(inst / "data" / "store.db")
    (a, ca), (b, cb) = conn.execute("SELECT doc_id, ciphertext FROM versions LIMIT 2").fetchall()
    conn.execute("UPDATE versions SET ciphertext = ? WHERE doc_id = ?", (cb, a))
    conn.execute("UPDATE versions SET ciphertext = ? WHERE doc_id = ?", (ca, b))
    conn.commit()
    conn.close()
    r = cli("store", "verify", *_cfg(inst))
    assert r.code == 6 and a in r.stderr and b in r.stderr


def test_purge_dry_run_then_purge_with_system_purge_audit_record(cli, inst: Path) -> None:
    config = load_config(inst / "agent.toml")
    store = Store.open(config)
    old_id = store.find_doc_id("99000001", "receipt", "T00000100")
    store.close()
    dry = cli("purge", *_cfg(inst), "--dry-run")
    assert dry.code == 0 and json.loads(dry.stdout)["document_ids"] == [old_id]
    r = cli("purge", *_cfg(inst))
    assert r.code == 0 and json.loads(r.stdout)["counts"]["documents"] == 1
    store = Store.open(config)
    try:
        assert store.get_current(old_id) is None and store.counts()["documents"]["current_active"] == 6
    finally:
        store.close()
    [record] = [a for a in _audit_actions(inst) if a["action"] == "system.purge"]
    assert record["document_ids"] == [old_id]


def test_keys_rotate_rewraps_everything_and_retires_the_old_kek(cli, inst: Path) -> None:
    r = cli("keys", "rotate", *_cfg(inst))
    assert r.code == 0, r.stderr
    assert not (inst / "keys" / "kek-1.key").exists() and (inst / "keys" / "kek-2.key").exists()
    actions = [a["action"] for a in _audit_actions(inst)]
    assert "admin.keys.rotate" in actions and "admin.keys.retire" in actions
    assert cli("store", "verify", *_cfg(inst)).code == 0
    # security.md §5: "Progress appears in status".
    keys = json.loads(cli("status", "--json", *_cfg(inst)).stdout)["keys"]
    assert keys["current_kek"] == "kek-2"
    rotation = keys["rotation"]
    assert rotation["kek_id"] == "kek-2" and rotation["complete"] is True
    assert rotation["done"] == rotation["total"] > 0


def test_status_shows_a_key_rotation_under_way(cli, inst: Path) -> None:
    before = json.loads(cli("status", "--json", *_cfg(inst)).stdout)["keys"]
    assert before == {"current_kek": "kek-1", "rotation": None}
    conn = sqlite3.connect(inst / "data" / "store.db")  # as a rotation writes it after each batch
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES "
            '(\'rotation\', \'{"kek_id": "kek-2", "done": 500, "total": 1344}\')'
        )
    conn.close()
    result = cli("status", *_cfg(inst))
    assert "key rotation to kek-2 under way: 500 of 1344 data keys re-wrapped" in result.stdout


def test_keys_public_prints_pem_and_kid(cli, inst: Path) -> None:
    from agent.keys import load_signing_key

    r = cli("keys", "public", *_cfg(inst))
    assert r.code == 0 and r.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    kid = kid_of(load_signing_key(inst / "keys" / "signing.key").public_key())
    assert r.stdout.strip().endswith(f"kid: {kid}")
    assert "PRIVATE" not in r.stdout


def test_keys_rotate_signing_keeps_the_old_public_key(cli, inst: Path) -> None:
    before = cli("keys", "public", *_cfg(inst)).stdout
    r = cli("keys", "rotate-signing", *_cfg(inst))
    assert r.code == 0
    after = cli("keys", "public", *_cfg(inst)).stdout
    assert after != before and list((inst / "keys").glob("signing-*.pub.pem"))


def test_restore_refuses_newer_store_then_force(cli, inst: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.bak"
    assert cli("backup", *_cfg(inst), "--out", str(out)).code == 0
    store = Store.open(load_config(inst / "agent.toml"))
    commit_docs(store, [make_doc(500)], path="/later")
    store.close()
    assert cli("restore", *_cfg(inst), str(out)).code == 5
    assert cli("restore", *_cfg(inst), str(out), "--force", "--reason", "test").code == 0
    assert cli("store", "verify", *_cfg(inst)).code == 0
    actions = [(r["action"], r["result"]) for r in _audit_actions(inst)]
    assert actions[-2:] == [("admin.restore", "failure"), ("admin.restore", "success")]


def _chain(inst: Path) -> list[str]:
    return [f"{r['seq']}:{r['action']}" for r in _audit_actions(inst)]


def test_restore_after_the_data_folder_is_lost_brings_back_the_audit_chain(
    cli, inst: Path, tmp_path: Path
) -> None:
    # cli.md §3: the backup holds "the store and audit log"; security.md §3 (art. 8): access
    # records are protected from loss. The backup's chain comes back and the restore is appended.
    out = tmp_path / "b.bak"
    assert cli("audit", "report", "--month", dt.date.today().strftime("%Y-%m"), *_cfg(inst)).code == 0
    assert cli("backup", *_cfg(inst), "--out", str(out)).code == 0
    before = _chain(inst)
    import shutil

    shutil.rmtree(inst / "data")
    result = cli("restore", *_cfg(inst), str(out), "--reason", "disk replaced")
    assert result.code == 0, result.stderr
    assert "store.db, audit.db" in result.stderr
    after = _chain(inst)
    assert after[: len(before)] == before and after[len(before)].endswith(":admin.restore")
    assert cli("audit", "verify", *_cfg(inst)).code == 0
    assert cli("store", "verify", *_cfg(inst)).code == 0


def test_restore_over_a_chain_started_after_the_loss_keeps_both(cli, inst: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.bak"
    assert cli("backup", *_cfg(inst), "--out", str(out)).code == 0
    before = _chain(inst)
    (inst / "data" / "audit.db").unlink()
    assert cli("audit", "report", "--month", "2026-01", *_cfg(inst)).code == 0  # a new chain begins
    other = _chain(inst)
    assert other[0].startswith("1:")
    result = cli("restore", *_cfg(inst), str(out), "--force")
    assert result.code == 0, result.stderr
    aside = sorted((inst / "data").glob("audit.db.replaced-*"))
    assert len(aside) == 1 and str(aside[0]) in result.stderr
    assert oct(aside[0].stat().st_mode & 0o777) == "0o600"
    after = _chain(inst)
    assert after[: len(before)] == before and after[-1].endswith(":admin.restore")
    conn = sqlite3.connect(aside[0])
    try:
        kept = [f"{s}:{json.loads(r)['action']}" for s, r in conn.execute("SELECT seq, record FROM records")]
    finally:
        conn.close()
    assert kept == other  # the other chain is kept whole, not deleted
    assert cli("audit", "verify", *_cfg(inst)).code == 0


def test_restore_keeps_a_live_chain_that_continues_the_backups(cli, inst: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.bak"
    assert cli("backup", *_cfg(inst), "--out", str(out)).code == 0
    assert cli("audit", "report", "--month", "2026-01", *_cfg(inst)).code == 0  # appended after it
    live = _chain(inst)
    result = cli("restore", *_cfg(inst), str(out), "--force")
    assert result.code == 0 and "restored store.db from" in result.stderr
    assert _chain(inst)[: len(live)] == live and _chain(inst)[-1].endswith(":admin.restore")
    assert not list((inst / "data").glob("audit.db.replaced-*"))


def test_restore_refuses_while_the_agent_runs(cli, inst: Path, tmp_path: Path) -> None:
    # The daemon holds data_dir/agent.lock for its lifetime; replacing store.db under it would
    # lose every write it makes afterwards.
    from agent.ops.daemon import lock_installation

    out = tmp_path / "b.bak"
    assert cli("backup", *_cfg(inst), "--out", str(out)).code == 0
    before = (inst / "data" / "store.db").stat().st_ino
    held = lock_installation(load_config(inst / "agent.toml"), busy="the test holds it")
    try:
        result = cli("restore", *_cfg(inst), str(out), "--force")
    finally:
        held.close()
    assert result.code == 5 and "stop it first" in result.stderr and "Traceback" not in result.stderr
    assert (inst / "data" / "store.db").stat().st_ino == before  # untouched
    assert cli("restore", *_cfg(inst), str(out), "--force").code == 0  # once it is stopped
