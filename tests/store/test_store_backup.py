"""Encrypted online backups: consistency during ingest, tamper/truncation detection, restore rules."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from agent.errors import IntegrityError, UnavailableError
from agent.keys import load_keyring
from agent.store.backup import read_header, restore_backup, verify_backup
from tests.store.storehelp import commit_docs, make_config, make_doc, open_store


def test_backup_taken_during_ingest_restores_to_a_consistent_store(config, tmp_path: Path) -> None:
    store = open_store(config)
    committed_before: list[int] = []
    done: list[int] = []
    stop = threading.Event()

    def ingest() -> None:
        b = 0
        while not stop.is_set() and b < 400:
            commit_docs(store, [make_doc(b * 20 + k) for k in range(20)], path=f"/b{b}", archive=False)
            done.append(b)
            b += 1

    for b in range(5):  # some batches strictly before the backup
        commit_docs(store, [make_doc(100000 + b * 20 + k) for k in range(20)], path=f"/pre{b}", archive=False)
        committed_before.append(b)
    worker = threading.Thread(target=ingest)
    worker.start()
    while len(done) < 3:
        pass
    before_backup = set(done)
    out = tmp_path / "live.bak"
    store.backup(out)
    stop.set()
    worker.join()
    store.close()
    assert (
        verify_backup(out, load_keyring(config.keys_dir), config.data_dir / "tmp")["members"][0]["name"]
        == "store.db"
    )

    other = make_config(tmp_path / "restored")
    # Same keys: the backup needs the KEK (never inside the backup).
    for f in config.keys_dir.iterdir():
        (other.keys_dir / f.name).write_bytes(f.read_bytes())
    restore_backup(out, other.data_dir, load_keyring(other.keys_dir))
    restored = open_store(other)
    try:
        assert restored.verify(full=True).ok
        nos = {
            n
            for (n,) in sqlite3.connect(other.data_dir / "store.db").execute(
                "SELECT document_no FROM documents"
            )
        }
        batches = {int(n[1:]) // 20 for n in nos if int(n[1:]) < 100000}
        assert before_backup <= batches  # everything committed before the backup began
        for b in batches:  # and no torn batch
            assert {f"T{b * 20 + k:08d}" for k in range(20)} <= nos
        assert len(nos) == 20 * (len(batches) + len(committed_before))
    finally:
        restored.close()


@pytest.fixture
def backup_file(config, tmp_path: Path) -> Path:
    store = open_store(config)
    commit_docs(store, [make_doc(i) for i in range(30)])
    out = tmp_path / "b.bak"
    store.backup(out)
    store.close()
    return out


def test_every_single_byte_change_is_detected(config, backup_file: Path) -> None:
    keyring = load_keyring(config.keys_dir)
    data = backup_file.read_bytes()
    assert verify_backup(backup_file, keyring, config.data_dir / "tmp")["generation"] >= 1
    header_len = 12 + int.from_bytes(data[8:12], "big")
    for pos in (0, 9, 20, header_len - 2, header_len + 1, header_len + 10, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        backup_file.write_bytes(bytes(bad))
        with pytest.raises(IntegrityError):
            verify_backup(backup_file, keyring, config.data_dir / "tmp")
    assert list((config.data_dir / "tmp").iterdir()) == []  # temp copies removed on failure


def test_truncation_and_trailing_garbage_are_detected(config, backup_file: Path) -> None:
    keyring = load_keyring(config.keys_dir)
    data = backup_file.read_bytes()
    for bad in (data[:-1], data[:-100], data[: len(data) // 2], data + b"\x00\x00\x00\x01" + b"x" * 13):
        backup_file.write_bytes(bad)
        with pytest.raises(IntegrityError):
            verify_backup(backup_file, keyring, config.data_dir / "tmp")


@pytest.mark.parametrize(
    "header",
    [b"[1]", b'"x"', b"null", b'{"format": 1, "members": 5}', None],
    ids=["list", "string", "null", "members-not-a-list", "kek-id-a-path"],
)
def test_a_header_of_the_wrong_shape_is_an_integrity_error(config, backup_file: Path, header) -> None:
    # Was an AttributeError (exit 1) for a JSON header that is not an object.
    import json

    from agent.store.backup import MAGIC

    data = backup_file.read_bytes()
    if header is None:  # a well-formed header whose kek_id names a path outside keys/
        n = int.from_bytes(data[8:12], "big")
        fields = json.loads(data[12 : 12 + n])
        fields["kek_id"] = "../../kek-1"
        header = json.dumps(fields).encode()
    backup_file.write_bytes(MAGIC + len(header).to_bytes(4, "big") + header)
    with pytest.raises(IntegrityError, match="header is corrupt"):
        verify_backup(backup_file, load_keyring(config.keys_dir), config.data_dir / "tmp")


def test_backup_holds_no_key_and_names_its_kek(config, backup_file: Path) -> None:
    data = backup_file.read_bytes()
    for f in config.keys_dir.iterdir():
        if f.name.startswith("kek") or f.name == "blind-index.key":
            assert f.read_bytes() not in data
    assert read_header(backup_file)["kek_id"] == "kek-1"


def test_restore_refuses_a_newer_store_unless_forced(config, backup_file: Path) -> None:
    store = open_store(config)
    commit_docs(store, [make_doc(999)], path="/newer")
    store.close()
    keyring = load_keyring(config.keys_dir)
    with pytest.raises(UnavailableError):
        restore_backup(backup_file, config.data_dir, keyring)
    info = restore_backup(backup_file, config.data_dir, keyring, force=True)
    assert info["restored"] == ["store.db"]
    store = open_store(config)
    try:
        assert store.find_doc_id("99000001", "receipt_detail", "T00000999") is None
        assert store.counts()["documents"]["versions_total"] == 30 and store.verify().ok
    finally:
        store.close()


def test_restore_keeps_the_request_ids_seen_since_the_backup(config, backup_file: Path) -> None:
    # relay-api.md §4: the replay memory is persisted so nothing reopens the window; relay traffic
    # does not make the store "newer", so a plain restore must carry the ids seen since.
    store = open_store(config)
    store.close()
    conn = sqlite3.connect(config.data_dir / "store.db")
    with conn:
        conn.execute("INSERT INTO replay (request_id, first_seen) VALUES ('after-backup', 1e9)")
    conn.close()
    info = restore_backup(backup_file, config.data_dir, load_keyring(config.keys_dir))
    assert info["restored"][0] == "store.db"
    conn = sqlite3.connect(config.data_dir / "store.db")
    try:
        assert conn.execute("SELECT first_seen FROM replay WHERE request_id = 'after-backup'").fetchone() == (
            1e9,
        )
    finally:
        conn.close()
