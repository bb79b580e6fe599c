"""security.md §5, §6, §11, §12 — S-20 (key file permissions), S-22 (swapped ciphertexts), S-23 (purge),
S-35 (KEK rotation under load) — against real agent processes and the CLI."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import sqlite3
import threading
import time
from typing import Any

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]


# =============================================================================================
# S-20 key file checks
# =============================================================================================
@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(tmp_path_factory.mktemp("perm") / "inst")
    yield a
    a.close()


def _run_expect_4(a: S.AgentProcess, name: str) -> None:
    a.stderr_lines.clear()
    a.start(expect_ready=False)
    deadline = time.monotonic() + 40
    while a.proc.poll() is None and time.monotonic() < deadline:  # type: ignore[union-attr]
        if any(line.startswith("ready:") for line in a.stderr_lines):
            a.stop()
            raise AssertionError(f"the agent started despite {name}")
        time.sleep(0.1)
    if a.proc.poll() is None:  # type: ignore[union-attr]
        a.kill()
        raise AssertionError("run neither exited nor became ready")
    rc = a.wait_exit(10)
    err = "\n".join(a.stderr_lines)
    assert rc == 4, (rc, err)
    assert name in err, err
    assert not any(line.startswith("ready:") for line in a.stderr_lines)


def _doctor_fails(a: S.AgentProcess, name: str) -> None:
    r = a.cli("doctor")
    out = r.stdout + r.stderr
    assert r.returncode == 5, out
    lines = [line for line in out.splitlines() if name in line]
    assert any("FAIL" in line for line in lines) or re.search(
        rf"FAIL[^\n]*\n?[^\n]*{re.escape(name)}", out
    ), out


@pytest.mark.parametrize(
    "rel,mode",
    [
        ("keys/kek-1.key", 0o644),
        ("keys/blind-index.key", 0o644),
        ("keys/signing.key", 0o644),
        ("keys/kek-1.key", 0o640),
        ("keys/signing.key", 0o604),
    ],
)
def test_s20_loose_key_mode_refuses_start_naming_the_file(install, rel: str, mode: int) -> None:
    path = install.root / rel
    os.chmod(path, mode)
    try:
        _run_expect_4(install, path.name)
        _doctor_fails(install, path.name)
    finally:
        os.chmod(path, 0o600)


def test_s20_doctor_fails_for_loose_tls_key(install) -> None:
    path = install.root / "tls" / "server.key"
    os.chmod(path, 0o644)
    try:
        _doctor_fails(install, path.name)
    finally:
        os.chmod(path, 0o600)


def test_s20_loose_tls_key_refuses_start(install) -> None:
    path = install.root / "tls" / "server.key"
    os.chmod(path, 0o644)
    try:
        _run_expect_4(install, path.name)
    finally:
        os.chmod(path, 0o600)


def test_s20_key_owned_by_another_user_refuses_start(install) -> None:
    path = install.root / "keys" / "blind-index.key"
    os.chown(path, 65534, 65534)
    try:
        _run_expect_4(install, path.name)
        _doctor_fails(install, path.name)
    finally:
        os.chown(path, os.geteuid(), os.getegid())


def test_s20_symlinked_key_refuses_start(install) -> None:
    path = install.root / "keys" / "signing.key"
    real = install.root / "signing-real.key"
    os.replace(path, real)
    os.symlink(real, path)
    try:
        _run_expect_4(install, path.name)
        _doctor_fails(install, path.name)
    finally:
        path.unlink()
        os.replace(real, path)


def test_s20_sane_installation_starts(install) -> None:
    install.start()
    assert install.health().status_code == 200
    assert install.stop() == 0


# =============================================================================================
# S-22 swapped ciphertexts
# =============================================================================================
@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory):
    """A's itemised statement and B's prescription get each other's sealed columns (agent stopped)."""
    a = S.AgentProcess(
        tmp_path_factory.mktemp("swap") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    claim_b, res_b = a.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN))
    bad_b = next(d["id"] for d in res_b["documents"] if d["type"] == "prescription")
    claim_a, res_a = a.search_ok()
    bad_a = next(d["id"] for d in res_a["documents"] if d["type"] == "receipt_detail")
    clean_a = next(d["id"] for d in res_a["documents"] if d["type"] == "prescription")
    assert a.stop() == 0
    sealed = ["kek_id", "wrap_nonce", "wrapped_dek", "nonce", "ciphertext"]
    conn = sqlite3.connect(a.data / "store.db")
    try:
        cols = ", ".join(sealed)
        r1 = conn.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (bad_a,)).fetchone()
        r2 = conn.execute(f"SELECT {cols} FROM versions WHERE doc_id = ?", (bad_b,)).fetchone()
        assert r1 and r2
        sets = ", ".join(f"{c} = ?" for c in sealed)
        conn.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*r2, bad_a))
        conn.execute(f"UPDATE versions SET {sets} WHERE doc_id = ?", (*r1, bad_b))
        conn.commit()
    finally:
        conn.close()
    a.start()
    a.swapped = {
        "claim_a": claim_a,
        "claim_b": claim_b,
        "bad_a": bad_a,
        "bad_b": bad_b,  # type: ignore[attr-defined]
        "clean_a": clean_a,
    }
    yield a
    a.close()


def _is_integrity_500(a: S.AgentProcess, body: dict[str, Any]) -> None:
    r = a.fetch(body)
    assert r.status_code == 500, r.text
    b = r.json()
    assert b["type"] == S.PROBLEM_PREFIX + "internal-error" and b["title"] == "Internal error"
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "content_base64" not in r.text and "documents" not in b
    for phi in S.phi_strings():
        assert phi not in r.text
    rec = a.audit_for(body["request_id"])
    assert len(rec) == 1
    assert rec[0]["result"] == "error" and rec[0]["reason"] == "integrity" and rec[0]["status"] == 500


@pytest.mark.parametrize("fmt", ["standard", "fhir"])
def test_s22_fetch_of_either_swapped_document_is_500_integrity(tampered, fmt: str) -> None:
    t = tampered.swapped
    _is_integrity_500(tampered, S.fetch_body(t["claim_a"], [t["bad_a"]], fmt=fmt))
    _is_integrity_500(tampered, S.fetch_body(t["claim_b"], [t["bad_b"]], fmt=fmt))


def test_s22_nothing_released_with_a_good_document_in_the_request(tampered) -> None:
    t = tampered.swapped
    _is_integrity_500(tampered, S.fetch_body(t["claim_a"], [t["clean_a"], t["bad_a"]]))


def test_s22_untouched_documents_still_served(tampered) -> None:
    t = tampered.swapped
    r = tampered.fetch(S.fetch_body(t["claim_a"], [t["clean_a"]]))
    assert r.status_code == 200


def test_s22_store_verify_exits_6(tampered) -> None:
    r = tampered.cli("store", "verify")
    assert r.returncode == 6, r.stdout + r.stderr
    t = tampered.swapped
    out = r.stdout + r.stderr
    assert t["bad_a"] in out or t["bad_b"] in out, out
    for phi in S.phi_strings():
        assert phi not in out


# =============================================================================================
# S-23 purge
# =============================================================================================
@pytest.fixture(scope="module")
def purgeable(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(
        tmp_path_factory.mktemp("purge") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    today = dt.datetime.now(S.KST).date()
    old = (today - dt.timedelta(days=1096)).isoformat()  # 3 y (1,095 d) + 1 d
    edge = (today - dt.timedelta(days=1095)).isoformat()  # exactly 3 y: kept
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    S.write_export(
        a.inbox, "old.json", [S.make_doc("receipt", "OLD-1096", name=S.B_NAME, rrn=S.B_RRN, issued_on=old)]
    )
    S.write_export(
        a.inbox, "edge.json", [S.make_doc("receipt", "EDGE-1095", name=S.B_NAME, rrn=S.B_RRN, issued_on=edge)]
    )
    a.start()
    a.wait_ingest(len(docs) + 2)
    a.dates = (old, edge)  # type: ignore[attr-defined]
    yield a
    a.close()


def test_s23_purge_removes_document_past_retention(purgeable) -> None:
    old, edge = purgeable.dates
    period = (old, edge)
    claim, res = purgeable.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN), period=period)
    by_no = {d["document_no"]: d["id"] for d in res["documents"]}
    assert set(by_no) == {"OLD-1096", "EDGE-1095"}
    old_id = by_no["OLD-1096"]
    conn = sqlite3.connect(f"file:{purgeable.data / 'store.db'}?mode=ro", uri=True)
    try:
        blobs = [
            bytes(b) for (b,) in conn.execute("SELECT ciphertext FROM versions WHERE doc_id = ?", (old_id,))
        ]
        blobs += [
            bytes(b) for (b,) in conn.execute("SELECT wrapped_dek FROM versions WHERE doc_id = ?", (old_id,))
        ]
    finally:
        conn.close()
    assert blobs and all(len(b) >= 16 for b in blobs)
    n = len(purgeable.audit_records())
    r = purgeable.cli("purge")
    assert r.returncode == 0, r.stderr
    # no longer searchable, not fetchable (B5), row gone
    _, res2 = purgeable.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN), period=period)
    assert [d["document_no"] for d in res2["documents"]] == ["EDGE-1095"]
    f = purgeable.fetch(S.fetch_body(claim, [old_id]))
    assert f.status_code == 404 and f.json()["type"] == S.PROBLEM_PREFIX + "document-not-found"
    conn = sqlite3.connect(f"file:{purgeable.data / 'store.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM documents WHERE doc_id = ?", (old_id,)).fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM versions WHERE doc_id = ?", (old_id,)).fetchone()[0] == 0
    finally:
        conn.close()
    # one system.purge record listing the id
    recs = [x for x in purgeable.audit_records()[n:] if x.get("action") == "system.purge"]
    assert len(recs) == 1, purgeable.audit_records()[n:]
    assert old_id in recs[0]["document_ids"]
    assert not S.has_float(recs[0])
    text = json.dumps(recs[0], ensure_ascii=False)
    for phi in S.phi_strings():
        assert phi not in text
    # byte-wise scan of data_dir: none of the ciphertext recorded before the purge
    time.sleep(0.5)
    chunks = []
    for b in blobs:
        chunks += [b[:16], b[len(b) // 2 : len(b) // 2 + 16], b[-16:]]
    for p in purgeable.data.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for c in chunks:
                assert c not in data, p


def test_s23_purge_dry_run_deletes_nothing(purgeable) -> None:
    old, edge = purgeable.dates
    r = purgeable.cli("purge", "--dry-run")
    assert r.returncode == 0
    _, res = purgeable.search_ok(name=S.B_NAME, rrn=S.hyph(S.B_RRN), period=(old, edge))
    assert "EDGE-1095" in {d["document_no"] for d in res["documents"]}


# =============================================================================================
# S-35 KEK rotation while fetching
# =============================================================================================
@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(
        tmp_path_factory.mktemp("rotate") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    S.write_export(a.inbox, "bulk.jsonl", S.bulk_documents(300), jsonl=True)
    a.start()
    a.wait_ingest(len(docs) + 300)
    yield a
    a.close()


def _kek_ids(a: S.AgentProcess) -> dict[str, set[str]]:
    conn = sqlite3.connect(f"file:{a.data / 'store.db'}?mode=ro", uri=True, timeout=10)
    out: dict[str, set[str]] = {}
    try:
        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            if "kek_id" in cols:
                out[t] = {
                    r[0] for r in conn.execute(f"SELECT DISTINCT kek_id FROM {t} WHERE kek_id IS NOT NULL")
                }
    finally:
        conn.close()
    return out


def test_s35_keys_rotate_during_fetch_loop(rotating) -> None:
    a = rotating
    claim, res = a.search_ok(period=("2025-01-01", "2025-12-31"))
    ids = [d["id"] for d in res["documents"]]
    gclaim, gres = a.search_ok(name=S.G_NAME, rrn=S.hyph(S.G_RRN), period=("2020-01-01", "2020-12-31"))
    gids = [d["id"] for d in gres["documents"]][:100]
    before = _kek_ids(a)
    old_keks = set().union(*before.values())
    assert old_keks
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def loop() -> None:
        i = 0
        while not stop.is_set():
            use_claim, use = (claim, ids) if i % 2 else (gclaim, gids)
            r = a.fetch(S.fetch_body(use_claim, use))
            results.append((r.status_code, r.text[:200] if r.status_code != 200 else ""))
            i += 1

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        n = len(a.audit_records())
        r = a.cli("keys", "rotate", timeout=120)
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert results and all(code == 200 for code, _ in results), [x for x in results if x[0] != 200][:3]
    after = _kek_ids(a)
    new_keks = set().union(*after.values())
    assert len(new_keks) == 1 and not (new_keks & old_keks), (before, after)
    actions = [x.get("action", "") for x in a.audit_records()[n:]]
    assert any("rotate" in x for x in actions), actions
    assert any("retire" in x for x in actions), actions
    # the old KEK file is gone (retired) or, if kept, removing it changes nothing
    for kek in old_keks:
        p = a.root / "keys" / f"{kek}.key"
        if p.exists():
            p.unlink()
    # every document readable: by the running agent, after a restart, and per `store verify`
    for use_claim, use in ((claim, ids), (gclaim, gids)):
        assert a.fetch(S.fetch_body(use_claim, use)).status_code == 200
    assert a.stop() == 0
    a.start()
    for use_claim, use in ((claim, ids), (gclaim, gids)):
        r = a.fetch(S.fetch_body(use_claim, use))
        assert r.status_code == 200
        for d in r.json()["documents"]:
            base64.b64decode(d["content_base64"])
    v = a.cli("store", "verify", timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    # a document ingested after the rotation is wrapped under the new KEK
    before_n = a.status()["ingest"]["records_committed"]
    S.write_export(
        a.inbox,
        "after.json",
        [S.make_doc("receipt", "AFTER-ROT-1", name=S.H_NAME, rrn=S.H_RRN, issued_on="2025-05-01")],
    )
    a.wait_ingest(before_n + 1)
    assert set().union(*_kek_ids(a).values()) == new_keks
