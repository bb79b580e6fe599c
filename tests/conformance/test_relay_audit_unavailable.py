"""Fail closed on an unwritable audit log — relay-api.md §5, §6.4, §8 step 12, C-08 (503), C-28, C-34;
security.md S-18 — real agent process; the audit database is made read-only under it.

Two ways (the tests run as root, for whom mode bits do not stop the kernel): ``chmod 0400`` on
``audit.db`` ("its file made read-only", C-28) and ``chattr +i`` on ``audit.db`` and its WAL (the
kernel refuses every write, root included)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]

OLD_NO = "OLD-000001"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(
        tmp_path_factory.mktemp("auditdown") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    docs = S.main_documents()
    old = (dt.datetime.now(S.KST).date() - dt.timedelta(days=3 * 365 + 2)).isoformat()
    docs.append(S.make_doc("receipt", OLD_NO, name=S.B_NAME, rrn=S.B_RRN, issued_on=old))
    S.write_export(a.inbox, "corpus.json", docs)
    a.start()
    a.wait_ingest(len(docs))
    a.old_issued_on = old  # type: ignore[attr-defined]
    yield a
    a.close()


def _chattr(flag: str, *paths: os.PathLike[str]) -> bool:
    if not shutil.which("chattr"):
        return False
    existing = [str(p) for p in paths if os.path.exists(p)]
    return subprocess.run(["chattr", flag, *existing], capture_output=True).returncode == 0


@contextlib.contextmanager
def unwritable(agent: S.AgentProcess, how: str) -> Iterator[None]:
    db = agent.data / "audit.db"
    wal = agent.data / "audit.db-wal"
    if how == "chmod":
        os.chmod(db, 0o400)
        try:
            yield
        finally:
            os.chmod(db, 0o600)
    else:
        if not _chattr("+i", db, wal):
            pytest.skip("chattr +i not supported on this file system")
        try:
            yield
        finally:
            _chattr("-i", db, wal)


def _is_503(r, *, doc_data: list[str]) -> None:
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == S.PROBLEM_PREFIX + "audit-unavailable", body
    assert body["title"] == "Audit log unavailable" and body["status"] == 503
    assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers
    assert r.headers.get("Cache-Control") == "no-store"
    for item in doc_data:
        assert item not in r.text, item
    assert "content_base64" not in r.text and "documents" not in body


@pytest.mark.parametrize("how", ["chmod", "chattr"])
def test_c28_search_and_fetch_fail_closed_and_recover_without_restart(agent, how: str) -> None:
    claim, res = agent.search_ok()
    ids = [d["id"] for d in res["documents"]]
    doc_data = ids + [d["document_no"] for d in res["documents"]] + S.phi_strings() + ["64500", "12300"]
    n_before = len(agent.audit_records())
    with unwritable(agent, how):
        _is_503(agent.fetch(S.fetch_body(claim, ids)), doc_data=doc_data)
        _is_503(agent.fetch(S.fetch_body(claim, ids, fmt="fhir")), doc_data=doc_data)
        _is_503(agent.search(S.search_body(claim=claim)), doc_data=doc_data)
        _is_503(agent.search(S.search_body()), doc_data=doc_data)
        # requests that would otherwise be rejected are 503 too (§8)
        bad = S.search_body()
        bad["x"] = 1
        _is_503(agent.search(bad), doc_data=doc_data)
        _is_503(
            agent.request(
                "POST", "/v1/documents/search", data=b"[]", headers={"Content-Type": "application/json"}
            ),
            doc_data=doc_data,
        )
        _is_503(agent.fetch(S.fetch_body(S.new_claim(), ids)), doc_data=doc_data)
        _is_503(agent.search(S.search_body(sent_at=S.utc_z(offset_s=-1000))), doc_data=doc_data)
        # C-08 / S-18: health reports it
        h = agent.health()
        assert h.status_code == 503
        hb = h.json()
        assert hb["status"] == "unavailable" and hb["audit_log"] == "unavailable"
        assert not h.headers["Content-Type"].startswith("application/problem+json")
        # the routing layer is not affected
        assert agent.request("GET", "/metrics").status_code == 404
    # nothing was recorded meanwhile, and it works again without a restart
    h = agent.health()
    assert h.status_code == 200 and h.json()["audit_log"] == "ok" and h.json()["status"] == "ok"
    r = agent.fetch(S.fetch_body(claim, ids))
    assert r.status_code == 200 and r.json()["count"] == len(ids)
    assert len(agent.audit_records()) >= n_before + 1
    # the chain is intact after the outage
    v = agent.cli("audit", "verify")
    assert v.returncode == 0, v.stdout + v.stderr


def test_c08_health_503_carries_retry_after(agent) -> None:
    """§7.2: "429 and 503 from the application always carry Retry-After"."""
    with unwritable(agent, "chmod"):
        h = agent.health()
        assert h.status_code == 503
        assert re.fullmatch(r"[1-9][0-9]*", h.headers.get("Retry-After", "")), dict(h.headers)


def test_c28_wrong_method_on_document_route_is_503_too(agent) -> None:
    """§8: every request to search/fetch that reaches step 3 is audited, so with the audit log down
    a 405 on a document route becomes 503 (the project's decisions.md #16 says 405 there is audited)."""
    with unwritable(agent, "chmod"):
        r = agent.request("PUT", "/v1/documents/search", data=b"{}")
        assert r.status_code == 503 and r.json()["type"] == S.PROBLEM_PREFIX + "audit-unavailable"


def test_c28_unknown_route_and_health_not_audited_so_unchanged(agent) -> None:
    with unwritable(agent, "chmod"):
        r = agent.request("GET", "/v1/documents/doc_01JBX4Q7M2T9K3V8N5R6W1Y0ZC")
        assert r.status_code == 404


def _store_has(agent: S.AgentProcess, document_no: str) -> bool:
    conn = sqlite3.connect(f"file:{agent.data / 'store.db'}?mode=ro", uri=True, timeout=10)
    try:
        return (
            conn.execute("SELECT COUNT(*) FROM documents WHERE document_no = ?", (document_no,)).fetchone()[0]
            > 0
        )
    finally:
        conn.close()


def test_s18_admin_purge_exits_5_and_deletes_nothing_while_audit_is_unwritable(agent) -> None:
    assert _store_has(agent, OLD_NO)
    with unwritable(agent, "chmod"):
        r = agent.cli("purge")
        assert r.returncode == 5, (r.returncode, r.stdout, r.stderr)
    assert _store_has(agent, OLD_NO)
    _, res = agent.search_ok(
        name=S.B_NAME, rrn=S.hyph(S.B_RRN), period=(agent.old_issued_on, agent.old_issued_on)
    )
    assert [d["document_no"] for d in res["documents"]] == [OLD_NO]


def test_storage_unwritable_is_503_storage_unavailable(agent) -> None:
    """§7.1 storage-unavailable: the replay/binding tables cannot be written."""
    store = agent.data / "store.db"
    wal = agent.data / "store.db-wal"
    if not _chattr("+i", store, wal):
        pytest.skip("chattr +i not supported")
    try:
        r = agent.search(S.search_body())
        assert r.status_code == 503, r.text
        assert r.json()["type"] == S.PROBLEM_PREFIX + "storage-unavailable"
        assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", ""))
        assert "documents" not in r.json()
    finally:
        _chattr("-i", store, wal)
    time.sleep(0.2)
    assert agent.search(S.search_body()).status_code == 200


def test_health_reports_storage_unavailable_when_store_cannot_be_written(agent) -> None:
    store = agent.data / "store.db"
    wal = agent.data / "store.db-wal"
    if not _chattr("+i", store, wal):
        pytest.skip("chattr +i not supported")
    try:
        assert agent.search(S.search_body()).status_code == 503
        h = agent.health()
        assert h.status_code == 503, h.text
        assert h.json()["status"] == "unavailable" and h.json()["storage"] == "unavailable"
    finally:
        _chattr("-i", store, wal)
