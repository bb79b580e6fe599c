"""security.md §7, §8, §12 — S-17 (chain verification after tampering), S-31 (no PHI in logs, debug),
S-32 (status/metrics), S-38 (metric labels), S-39 (config change record, quarantine show audited) —
against real agent processes and the CLI."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

try:
    from . import test_relay_support as S
except ImportError:  # tests/conformance is not a package
    import test_relay_support as S  # type: ignore[no-redef]


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [S.PY, "-m", "agent", *args, "--config", str(root / "agent.toml")],
        cwd=S.REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# =============================================================================================
# S-17 audit verify
# =============================================================================================
@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory):
    """An installation whose audit chain holds >= 1,000 records; the agent is stopped cleanly (anchor
    at shutdown). Each test tampers with its own copy of the installation."""
    base = tmp_path_factory.mktemp("chain")
    a = S.AgentProcess(base / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0})
    a.start()
    body = json.dumps({"request_id": "x"}).encode()  # 422: cheap, audited

    def worker(n: int) -> None:
        s = a.session()
        try:
            for _ in range(n):
                s.post(
                    a.base + "/v1/documents/search",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
        finally:
            s.close()

    import threading

    while len(a.audit_records()) < 1000:
        threads = [threading.Thread(target=worker, args=(260,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert a.stop() == 0
    yield a


def _copy(chain: S.AgentProcess, dest: Path) -> Path:
    shutil.copytree(chain.root, dest, symlinks=True)
    return dest


def _rows(root: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(root / "data" / "audit.db")
    try:
        return conn.execute("SELECT seq, record FROM records ORDER BY seq").fetchall()
    finally:
        conn.close()


def _tamper(root: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(root / "data" / "audit.db")
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def _verify_bad(root: Path, expected_seqs: set[int], *extra: str) -> None:
    r = _cli(root, "audit", "verify", *extra)
    out = r.stdout + r.stderr
    assert r.returncode == 6, (r.returncode, out)
    numbers = {int(n) for n in re.findall(r"\b\d+\b", out)}
    assert numbers & expected_seqs, (expected_seqs, out)


def _s17_intact_chain_verifies(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    rows = _rows(root)
    assert len(rows) >= 1000
    r = _cli(root, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    head = json.loads(rows[-1][1])
    r = _cli(root, "audit", "verify", "--expect-head", f"{head['seq']}:{head['hash']}")
    assert r.returncode == 0, r.stdout + r.stderr


def _s17a_one_changed_character(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    seq, rec = _rows(root)[499]
    changed = rec.replace('"status":422', '"status":423', 1)
    assert changed != rec
    _tamper(root, ("UPDATE records SET record = ? WHERE seq = ?", (changed, seq)))
    _verify_bad(root, {seq})


def _s17b_deleted_middle_record(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    seq, _ = _rows(root)[500]
    _tamper(root, ("DELETE FROM records WHERE seq = ?", (seq,)))
    _verify_bad(root, {seq, seq + 1})


def _s17c_swapped_records(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    rows = _rows(root)
    (s1, r1), (s2, r2) = rows[400], rows[401]
    _tamper(
        root,
        ("UPDATE records SET record = ? WHERE seq = ?", (r2, s1)),
        ("UPDATE records SET record = ? WHERE seq = ?", (r1, s2)),
    )
    _verify_bad(root, {s1, s2})


def _s17d_truncated_behind_an_anchor(chain, tmp_path: Path) -> None:
    """The anchor here comes from `audit report` (§7.3: "after each audit report")."""
    import datetime as dt

    root = _copy(chain, tmp_path / "c")
    month = dt.datetime.now(S.KST).strftime("%Y-%m")
    r = _cli(root, "audit", "report", "--month", month, "--json")
    assert r.returncode == 0, r.stderr
    rows = _rows(root)
    cut = rows[-5][0]
    _tamper(root, ("DELETE FROM records WHERE seq >= ?", (cut,)))
    _verify_bad(root, {cut, rows[-1][0], rows[-1][0] + 1, cut - 1})


def test_s17d_truncation_after_clean_shutdown_is_detected(tmp_path: Path) -> None:
    a = S.AgentProcess(tmp_path / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0})
    a.start()
    for _ in range(6):
        a.search(S.search_body())
    assert a.stop() == 0
    rows = _rows(a.root)
    cut = rows[-2][0]
    _tamper(a.root, ("DELETE FROM records WHERE seq >= ?", (cut,)))
    _verify_bad(a.root, {cut, rows[-1][0], rows[-1][0] + 1, cut - 1})


def test_agent_start_and_stop_are_audited(tmp_path: Path) -> None:
    a = S.AgentProcess(tmp_path / "inst")
    a.start()
    assert a.stop() == 0
    actions = [r.get("action", "") for r in a.audit_records()]
    assert any("start" in x for x in actions), actions
    assert any("stop" in x for x in actions), actions


def _s17e_inserted_forged_record(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    rows = _rows(root)
    k = rows[300][0]
    forged = json.loads(rows[300][1])
    forged["seq"] = k + 1
    forged["prev_hash"] = forged["hash"]
    forged["status"] = 200
    forged.pop("hash")
    forged["hash"] = hashlib.sha256(
        json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    stmts: list[tuple[str, tuple[Any, ...]]] = []
    for seq, _ in reversed(rows[301:]):  # shift every later row up by one
        stmts.append(("UPDATE records SET seq = seq + 1 WHERE seq = ?", (seq,)))
    stmts.append(
        (
            "INSERT INTO records (seq, ts_utc, action, subject_ref, record) VALUES (?, ?, ?, ?, ?)",
            (k + 1, forged.get("ts_utc"), forged.get("action"), forged.get("subject_ref"), text),
        )
    )
    _tamper(root, *stmts)
    _verify_bad(root, {k + 1, k + 2})


def _s17_expect_head_not_reached(chain, tmp_path: Path) -> None:
    root = _copy(chain, tmp_path / "c")
    head = json.loads(_rows(root)[-1][1])
    r = _cli(root, "audit", "verify", "--expect-head", f"{head['seq'] + 3}:{'ab' * 32}")
    assert r.returncode == 6, r.stdout + r.stderr
    r = _cli(root, "audit", "verify", "--expect-head", f"{head['seq']}:{'ab' * 32}")
    assert r.returncode == 6, r.stdout + r.stderr


def test_s17_chain_of_1000_records_and_every_kind_of_tampering(chain, tmp_path: Path) -> None:
    """S-17 (a)–(e) and --expect-head, each on its own copy of one 1,000-record installation (one test,
    so the chain is built once even under xdist)."""
    cases = [
        _s17_intact_chain_verifies,
        _s17a_one_changed_character,
        _s17b_deleted_middle_record,
        _s17c_swapped_records,
        _s17d_truncated_behind_an_anchor,
        _s17e_inserted_forged_record,
        _s17_expect_head_not_reached,
    ]
    failures = []
    for i, case in enumerate(cases):
        try:
            case(chain, tmp_path / f"case{i}")
        except AssertionError as exc:
            failures.append(f"{case.__name__}: {exc}")
    assert not failures, "\n".join(failures)


# =============================================================================================
# S-31 / S-32 / S-38 / S-39 — one agent at debug level with invalid exports
# =============================================================================================
@pytest.fixture(scope="module")
def debug_agent(tmp_path_factory: pytest.TempPathFactory):
    a = S.AgentProcess(
        tmp_path_factory.mktemp("dbg") / "inst", limits={"rate_per_s": 0, "health_rate_per_s": 0}
    )
    a.debug = True  # type: ignore[attr-defined]
    docs = S.main_documents()
    S.write_export(a.inbox, "corpus.json", docs)
    # invalid exports built from fixture data → quarantine (all-or-nothing)
    bad1 = S.make_doc("receipt", "BAD-000001", name=S.A_NAME, rrn=S.hyph(S.A_RRN))  # hyphenated rrn: R-032
    bad2 = S.make_doc("receipt", "BAD-000002", name=S.B_NAME * 40, rrn=S.B_RRN)  # name too long
    bad3 = S.make_doc("prescription", "BAD-000003", name=S.E_NAME, rrn="901301" + "1000001")
    bad3["total_charge"] = S.A_NAME
    S.write_export(a.inbox, "bad-1.json", [bad1])
    S.write_export(a.inbox, f"{S.A_NAME}_영수증.json", [bad2, bad3])
    (a.inbox / "broken.json").write_text(
        '{"patient": {"name": "' + S.B_NAME + '", "rrn": "' + S.B_RRN + '"', encoding="utf-8"
    )
    a.start_debug = True  # type: ignore[attr-defined]
    _start_debug(a)
    a.wait_ingest(len(docs))
    yield a
    a.close()


def _start_debug(a: S.AgentProcess) -> None:
    original = a.command

    def command() -> list[str]:
        return [*original(), "--debug"]

    a.command = command  # type: ignore[method-assign]
    a.start()


def _wait_quarantined(a: S.AgentProcess, n: int) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + 30
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = a.cli("quarantine", "list", "--json")
        if r.returncode == 0:
            data = json.loads(r.stdout)
            entries = data if isinstance(data, list) else data.get("entries", data.get("quarantine", []))
            if len(entries) >= n:
                return entries
        time.sleep(0.5)
    raise AssertionError(f"quarantine entries: {entries}")


def _bad_requests(a: S.AgentProcess) -> None:
    for rrn in (S.hyph(S.A_RRN), S.A_RRN):
        b = S.search_body(rrn=rrn)
        b["patient"]["name"] = S.A_NAME * 70
        a.search(b)
        b = S.search_body(rrn=rrn + "0")
        a.search(b)
        b = S.search_body(rrn=rrn)
        b[S.A_NAME] = rrn
        a.search(b)
        a.request(
            "POST",
            "/v1/documents/search",
            data=json.dumps(S.search_body(rrn=rrn)).encode() + rrn.encode(),
            headers={"Content-Type": "application/json"},
        )
        a.search(S.search_body("김철수", rrn))  # name mismatch
        a.search(S.search_body(rrn=rrn, sent_at=S.utc_z(offset_s=-5000)))
    claim, res = a.search_ok()
    a.fetch(S.fetch_body(claim, [d["id"] for d in res["documents"]]))
    a.fetch(S.fetch_body(claim, [d["id"] for d in res["documents"]], fmt="fhir"))


def test_s31_debug_log_has_no_fixture_phi_or_document_values(debug_agent) -> None:
    _wait_quarantined(debug_agent, 3)
    _bad_requests(debug_agent)
    text = debug_agent.log_text()
    assert text.strip(), "no log written"
    assert "DEBUG" in text.upper() or "debug" in text
    forbidden = S.phi_strings() + [
        "이몽룡",
        "성춘향",
        "김대표",
        "예시정500밀리그램",
        "재진진찰료",
        "00012345",
    ]
    for f in forbidden:
        assert f not in text, f
    # no document field value either: totals, document content markers
    assert "64500" not in text and "가정의학과" not in text


def test_s31_original_export_file_name_not_in_log_or_data_names(debug_agent) -> None:
    _wait_quarantined(debug_agent, 3)
    assert S.A_NAME not in debug_agent.log_text()
    for p in debug_agent.data.rglob("*"):
        assert S.A_NAME not in p.name


def test_s32_status_outputs_have_no_fixture_phi(debug_agent) -> None:
    _bad_requests(debug_agent)
    outputs = [
        debug_agent.cli("status", "--json").stdout,
        debug_agent.cli("status").stdout + debug_agent.cli("status").stderr,
    ]
    for path in ("/status", "/", "/metrics", "/status.json"):
        r = requests.get(debug_agent.admin_base + path, timeout=10)
        outputs.append(r.text)
    for out in outputs:
        for phi in S.phi_strings():
            assert phi not in out, phi


def test_s38_metric_labels_are_from_fixed_sets(debug_agent) -> None:
    _bad_requests(debug_agent)
    text = debug_agent.metrics()
    problems = set(S.PROBLEM_TABLE) | {S.PROBLEM_PREFIX + p for p in S.PROBLEM_TABLE}
    fixed = {
        "route": {
            "/v1/health",
            "/v1/documents/search",
            "/v1/documents/fetch",
            "other",
            "health",
            "search",
            "fetch",
        },
        "status_class": {"1xx", "2xx", "3xx", "4xx", "5xx"},
        "problem_type": problems,
        "document_type": {"receipt", "receipt_detail", "prescription", "pharmacy_receipt"},
    }
    seen = set()
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[line.index("{") : line.rindex("}") + 1]))
        for k, v in labels.items():
            seen.add(k)
            if k in fixed:
                assert v in fixed[k], (k, v)
            elif k in ("le", "quantile"):
                assert re.fullmatch(r"[0-9.e+-]+|\+Inf", v), (k, v)
            else:
                assert re.fullmatch(r"[a-z][a-z0-9_.-]{0,40}", v), (k, v)
            assert not re.search(r"doc_|CLM|CNS|[0-9a-f]{8}-[0-9a-f]{4}|[0-9]{6}", v), (k, v)
    assert {"route", "status_class"} <= seen, seen
    assert "silson_search_name_mismatch_total" in text


def test_s39_config_change_recorded_on_start(tmp_path: Path) -> None:
    a = S.AgentProcess(tmp_path / "inst")
    a.start()
    assert a.stop() == 0
    old = hashlib.sha256(a.config.read_bytes()).hexdigest()
    a.config.write_text(
        a.config.read_text(encoding="utf-8") + "\n# edited by the operator\n", encoding="utf-8"
    )
    new = hashlib.sha256(a.config.read_bytes()).hexdigest()
    n = len(a.audit_records())
    a.start()
    try:
        recs = [r for r in a.audit_records()[n:] if r.get("action") == "admin.config.changed"]
        assert len(recs) == 1, a.audit_records()[n:]
        text = json.dumps(recs[0])
        assert old in text and new in text
        assert re.search(r"owner", text) and re.search(r"mtime", text), text
    finally:
        a.stop()
    # unchanged file: no new record
    n = len(a.audit_records())
    a.start()
    try:
        assert not [r for r in a.audit_records()[n:] if r.get("action") == "admin.config.changed"]
    finally:
        a.close()


def test_s39_quarantine_show_writes_audit_record_naming_os_user(debug_agent) -> None:
    entries = _wait_quarantined(debug_agent, 1)
    qid = entries[0].get("id") or entries[0].get("qid")
    n = len(debug_agent.audit_records())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    reason = "patient request " + uuid.uuid4().hex[:6]
    r = _cli(debug_agent.root, "quarantine", "show", qid, "--reason", reason, env=env)
    assert r.returncode == 0, r.stderr
    recs = [x for x in debug_agent.audit_records()[n:] if "quarantine" in x.get("action", "")]
    assert len(recs) == 1, debug_agent.audit_records()[n:]
    rec = recs[0]
    assert rec["actor"]["kind"] == "admin"
    assert rec["actor"]["os_user"] == getpass.getuser()
    assert "uid" in rec["actor"] and "host" in rec["actor"]
    assert rec["source"].get("local") is True
    assert rec["reason"] == reason
    assert rec["request_id"] is None
    for phi in S.phi_strings():
        assert phi not in json.dumps(rec, ensure_ascii=False)


def test_s39_config_change_recorded_on_reload(tmp_path: Path) -> None:
    # security.md §7.1: the config file is hashed "at start and on reload" — SIGHUP is the reload.
    a = S.AgentProcess(tmp_path / "inst")
    a.start()
    try:
        old = hashlib.sha256(a.config.read_bytes()).hexdigest()
        a.config.write_text(a.config.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
        new = hashlib.sha256(a.config.read_bytes()).hexdigest()
        n = len(a.audit_records())
        assert a.proc is not None
        a.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        recs: list[dict] = []
        while time.monotonic() < deadline and not recs:
            recs = [r for r in a.audit_records()[n:] if r.get("action") == "admin.config.changed"]
            time.sleep(0.1)
        assert len(recs) == 1 and recs[0]["old_hash"] == old and recs[0]["new_hash"] == new
        assert a.proc.poll() is None  # still running
    finally:
        a.stop()
