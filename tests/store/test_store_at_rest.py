"""Data at rest: no plaintext PHI anywhere under data_dir, tampering detected, S-10 tracing, modes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.errors import IntegrityError
from agent.store import Store
from tests.store.storehelp import commit_docs, file_of, make_doc, open_store, rrn_for

NAMES = ["홍길동", "김철수", "이영희", "박보검", "최수지"]


def _phi_patterns(rrns: list[str], names: list[str]) -> list[bytes]:
    pats: list[bytes] = []
    for r in rrns:
        pats += [
            r.encode(),
            f"{r[:6]}-{r[6:]}".encode(),
            f"{r[:7]}******".encode(),
            f"{r[:6]}-{r[6]}******".encode(),
        ]
    for n in names:
        pats += [n.encode("utf-8"), n.encode("cp949")]
    pats.append(b"CANARY-4E1F")
    return pats


def _scan(root: Path, patterns: list[bytes]) -> list[tuple[str, bytes]]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [(path.name, p) for p in patterns if p in data]
    return hits


def test_no_plaintext_rrn_name_or_content_anywhere_in_data_dir(config, tmp_path: Path) -> None:
    rrns = [rrn_for(i) for i in range(len(NAMES))]
    docs = [make_doc(i, rrn=rrns[i], name=NAMES[i], marker="CANARY-4E1F") for i in range(len(NAMES))]
    docs.append(make_doc(9, rrn="8505051000001", masked=True, name=NAMES[0], marker="CANARY-4E1F"))
    rrns.append("8505051000001")
    raw = file_of(docs)
    patterns = _phi_patterns(rrns, NAMES)
    # Control: the same scan finds every pattern in plaintext exports (UTF-8 JSON, a CP949 copy,
    # and a text export with hyphenated and masked forms), so a 0-hit result below means something.
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "a.json").write_bytes(raw)
    (exports / "b.txt").write_bytes(json.dumps(docs, ensure_ascii=False).encode("cp949"))
    (exports / "c.txt").write_text(
        " ".join(f"{r[:6]}-{r[6:]} {r[:6]}-{r[6]}****** {r[:7]}****** {r}" for r in rrns), encoding="utf-8"
    )
    assert {p for _, p in _scan(exports, patterns)} == set(patterns)

    store = open_store(config)
    try:
        commit_docs(store, docs, path="/inbox/홍길동_영수증.json", name="홍길동_영수증.json")
        store.quarantine_add(raw, {"rules": ["R-010"]}, "김철수.json")
        store.search(rrn=rrns[0], name=NAMES[0], period_from="2025-01-01", period_to="2025-12-31")
        store.backup(config.data_dir / "backups" / "b1.bak")
        # Before the WAL is checkpointed: the -wal holds recent pages; they must be ciphertext too.
        assert Path(str(store.db.path) + "-wal").exists()
        assert _scan(config.data_dir, patterns) == []
    finally:
        store.close()
    assert _scan(config.data_dir, patterns) == []
    names_in_dir = [p.name for p in config.data_dir.rglob("*")]
    assert not any(n in name for n in NAMES for name in names_in_dir)


def test_sql_text_and_bound_parameters_never_carry_the_rrn(config) -> None:
    """S-10: the traced (expanded) statements of a search hold only the HMAC blind index."""
    traced: list[str] = []
    store = open_store(config, trace=traced.append)
    try:
        commit_docs(store, [make_doc(0, rrn="9001011000001", name="홍길동")])
        traced.clear()
        hits = store.search(
            rrn="900101-1000001", name="홍길동", period_from="2025-01-01", period_to="2025-12-31"
        ).hits
        assert len(hits) == 1
    finally:
        store.close()
    import hashlib
    import hmac

    key = (config.keys_dir / "blind-index.key").read_bytes()
    expected = hmac.new(key, b"rrn:v1:9001011000001", hashlib.sha256).hexdigest()
    joined = "\n".join(traced)
    assert expected in joined  # the looked-up value is the HMAC, bound as a parameter
    for needle in ("9001011000001", "900101-1000001", "900101", "홍길동"):
        assert needle not in joined


@pytest.mark.parametrize("column", ["ciphertext", "wrapped_dek", "nonce", "wrap_nonce"])
@pytest.mark.parametrize("where", [0, -1, "mid"])
def test_flipping_any_byte_of_a_stored_record_is_an_integrity_error_naming_the_row(
    store: Store, column: str, where: int | str
) -> None:
    doc_id = commit_docs(store, [make_doc(0)]).doc_ids[0]
    raw = sqlite3.connect(store.db.path)
    blob = bytearray(raw.execute(f"SELECT {column} FROM versions WHERE doc_id = ?", (doc_id,)).fetchone()[0])
    pos = len(blob) // 2 if where == "mid" else int(where)
    blob[pos] ^= 0x01
    raw.execute(f"UPDATE versions SET {column} = ? WHERE doc_id = ?", (bytes(blob), doc_id))
    raw.commit()
    raw.close()
    with pytest.raises(IntegrityError) as info:
        store.get_current(doc_id)
    assert doc_id in str(info.value) and "version 1" in str(info.value)
    report = store.verify()
    assert not report.ok and any(doc_id in e for e in report.errors)


def test_a_ciphertext_rewritten_as_text_is_an_integrity_error_not_a_crash(store: Store) -> None:
    doc_id = commit_docs(store, [make_doc(0)]).doc_ids[0]
    raw = sqlite3.connect(store.db.path)
    raw.execute("UPDATE versions SET ciphertext = CAST(hex(ciphertext) AS TEXT) WHERE doc_id = ?", (doc_id,))
    raw.commit()
    raw.close()
    report = store.verify()
    assert not report.ok and any(doc_id in e and "wrong type" in e for e in report.errors)


def test_swapping_two_rows_ciphertexts_is_detected(store: Store) -> None:
    a, b = commit_docs(store, [make_doc(0), make_doc(1)]).doc_ids
    raw = sqlite3.connect(store.db.path)
    cols = "kek_id, wrap_nonce, wrapped_dek, nonce, ciphertext"
    ra = raw.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (a,)).fetchone()
    rb = raw.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (b,)).fetchone()
    sets = "kek_id = ?, wrap_nonce = ?, wrapped_dek = ?, nonce = ?, ciphertext = ?"
    raw.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*rb, a))
    raw.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*ra, b))
    raw.commit()
    raw.close()
    for doc_id in (a, b):
        with pytest.raises(IntegrityError):
            store.get_current(doc_id)


def test_swapped_subject_rows_fail_search_instead_of_matching(store: Store) -> None:
    a, b = commit_docs(store, [make_doc(0, name="갑"), make_doc(1, name="을")]).doc_ids
    raw = sqlite3.connect(store.db.path)
    ct_a = raw.execute("SELECT subject_ciphertext FROM versions WHERE doc_id = ?", (a,)).fetchone()[0]
    ct_b = raw.execute("SELECT subject_ciphertext FROM versions WHERE doc_id = ?", (b,)).fetchone()[0]
    raw.execute("UPDATE versions SET subject_ciphertext = ? WHERE doc_id = ?", (ct_b, a))
    raw.execute("UPDATE versions SET subject_ciphertext = ? WHERE doc_id = ?", (ct_a, b))
    raw.commit()
    raw.close()
    with pytest.raises(IntegrityError):
        store.search(rrn=rrn_for(0), name="을", period_from="2025-01-01", period_to="2025-12-31")


def test_files_are_0600_and_dirs_0700(config) -> None:
    old = os.umask(0o022)  # even under a loose umask
    try:
        store = open_store(config)
        commit_docs(store, [make_doc(0)])
        store.backup(config.data_dir / "backups" / "b.bak")
        for path in config.data_dir.rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path.name, oct(mode))
        store.close()
    finally:
        os.umask(old)
