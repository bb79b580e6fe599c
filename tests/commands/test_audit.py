"""``audit verify|subject|report`` through the in-process CLI (cli.md §3; security.md S-17, S-19, S-28).

A 1,000-record chain is built once per test module with the real ``AuditLog.append`` (each record
fsync'd) and an anchor at its head; each test tampers with its own copy.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from agent.adminctx import audit_admin
from agent.audit import AuditLog
from agent.clock import FakeClock
from agent.keys import load_keyring
from tests.audit.audithelp import Tamper, copy_install, load, relay_event, write_installation
from tests.conftest import run_cli

RRN = "900101-1000001"  # synthetic fixture number (security.md)


@pytest.fixture(scope="module")
def chain_1000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chain") / "inst"
    config = load(write_installation(root))
    clock = FakeClock()
    with AuditLog.open(config, clock=clock) as log:
        for i in range(1000):
            log.append(relay_event(i, action="documents.search" if i % 2 else "documents.fetch"))
            clock.advance(7)
        log.write_anchor()
    return root


@pytest.fixture
def inst(chain_1000: Path, tmp_path: Path) -> Path:
    copy_install(chain_1000, tmp_path / "inst")
    return tmp_path / "inst"


def verify(inst: Path, *extra: str):
    return run_cli("audit", "verify", "--config", str(inst / "agent.toml"), *extra)


def first_bad_seq(stderr: str) -> int:
    match = re.search(r"first bad seq (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def test_intact_chain_of_1000_records_verifies_with_exit_0(inst: Path) -> None:
    result = verify(inst)
    assert result.code == 0, result.stderr
    assert "1000 records" in result.stdout


def test_one_changed_character_exits_6_naming_that_seq(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    tamper.set_text(437, tamper.text(437).replace("test-relay-01", "test-relay-02"))
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 437
    assert "modified" in result.stderr


def test_deleted_middle_record_exits_6_naming_the_missing_seq(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    tamper.delete(500)
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 500
    assert "missing" in result.stderr


def test_swapped_records_exit_6_naming_the_first_displaced_seq(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    tamper.swap(300, 700)
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 300
    assert "reordered" in result.stderr


def test_records_deleted_from_the_end_behind_an_anchor_exit_6(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    tamper.delete(*range(991, 1001))
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 991
    assert "truncated" in result.stderr


def test_forged_record_inserted_in_the_middle_exits_6(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    forged = tamper.insert_forged_after(600)
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == forged["seq"] == 601
    assert "inserted" in result.stderr


def test_forged_record_appended_with_a_wrong_link_exits_6(inst: Path) -> None:
    tamper = Tamper(inst / "data" / "audit.db")
    forged = tamper.record(1000)
    forged.update({"seq": 1001, "prev_hash": "1" * 64})
    from agent.audit.chain import canonical_text, record_hash

    forged["hash"] = record_hash(forged)
    tamper.conn.execute(
        "INSERT INTO records (seq, ts_utc, action, subject_ref, record) VALUES (?, ?, ?, ?, ?)",
        (1001, forged["ts_utc"], forged["action"], forged["subject_ref"], canonical_text(forged)),
    )
    tamper.close()
    result = verify(inst)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 1001


def test_expect_head_matching_the_head_exits_0(inst: Path) -> None:
    seq, digest = AuditLog.open(load(inst / "agent.toml")).head()
    assert verify(inst, "--expect-head", f"{seq}:{digest}").code == 0
    assert (
        verify(
            inst, "--expect-head", f"{seq - 10}:{Tamper(inst / 'data' / 'audit.db').record(seq - 10)['hash']}"
        ).code
        == 0
    )


def test_expect_head_not_reached_exits_6(inst: Path) -> None:
    result = verify(inst, "--expect-head", "1005:" + "ab" * 32)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 1001
    assert "expect_head" in result.stderr


def test_expect_head_with_another_hash_exits_6(inst: Path) -> None:
    result = verify(inst, "--expect-head", "999:" + "ab" * 32)
    assert result.code == 6
    assert first_bad_seq(result.stderr) == 999


def test_expect_head_malformed_is_a_usage_error(inst: Path) -> None:
    assert verify(inst, "--expect-head", "nonsense").code == 2


def test_report_lists_actions_off_hours_mismatches_admin_actions_and_appears_in_the_log(
    tmp_path: Path,
) -> None:
    config_path = write_installation(tmp_path / "inst")
    config = load(config_path)
    # 2025-11-03 05:12 UTC = 14:12 KST (office hours); 13:30 UTC = 22:30 KST (off hours).
    clock = FakeClock()
    with AuditLog.open(config, clock=clock) as log:
        log.append(relay_event(1, action="documents.search", result_count=2, withheld_count=0))
        log.append(relay_event(2))
        clock.advance(8 * 3600 + 18 * 60)
        log.append(
            relay_event(
                3, action="documents.search", reason="name_mismatch", result_count=0, withheld_count=1
            )
        )
        log.append(
            relay_event(4, result="denied", status=403, problem_type="claim-not-bound", document_ids=[])
        )
        log.count_rate_limited("f" * 64, n=5)
        audit_admin(
            config,
            "backup",
            reason='=HYPERLINK("x")',
            log=log,
            environ={"SUDO_USER": "clinic-it", "SUDO_UID": "1000"},
        )

    result = run_cli("audit", "report", "--month", "2025-11", "--json", "--config", str(config_path))
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["by_action"] == {"admin.backup": 1, "documents.fetch": 2, "documents.search": 2}
    assert {"action": "documents.fetch", "result": "denied", "count": 1} in report["by_action_result"]
    assert [r["seq"] for r in report["off_hours"]["requests"]] == [3, 4]
    assert [e["seq"] for e in report["name_mismatch"]["events"]] == [3]
    assert report["denied_by_problem_type"] == {"claim-not-bound": 1}
    assert report["rate_limited"]["total"] == 5
    assert [a["action"] for a in report["admin_actions"]["actions"]] == ["admin.backup"]
    assert report["admin_actions"]["actions"][0]["os_user"] == "clinic-it"
    assert report["reason_review"][0]["flag"] == "confirm reason"
    assert report["chain"]["ok"] is True and report["head"]["seq"] == 5
    assert RRN not in result.stdout

    with AuditLog.open(config) as log:
        last = log.last_record("admin.audit.report")
        assert last is not None and last["month"] == "2025-11" and last["seq"] == 6
        assert log.verify().ok
    anchors = (tmp_path / "inst" / "data" / "audit-anchors.jsonl").read_text().splitlines()
    assert json.loads(anchors[-1])["seq"] == 6  # an anchor follows each report


def test_report_csv_is_formula_safe(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst")
    config = load(config_path)
    with AuditLog.open(config, clock=FakeClock()) as log:
        audit_admin(config, "quarantine.show", reason='=HYPERLINK("x")', log=log)
    result = run_cli("audit", "report", "--month", "2025-11", "--csv", "--config", str(config_path))
    assert result.code == 0, result.stderr
    cells = [cell for row in csv.reader(io.StringIO(result.stdout)) for cell in row]
    assert '\'=HYPERLINK("x")' in cells
    assert '=HYPERLINK("x")' not in cells


def test_report_rejects_a_bad_month_and_both_formats(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst", keys=False)
    assert run_cli("audit", "report", "--month", "2025-13", "--config", str(config_path)).code == 2
    assert (
        run_cli("audit", "report", "--month", "2025-11", "--json", "--csv", "--config", str(config_path)).code
        == 2
    )


def test_report_is_refused_with_exit_5_when_its_record_cannot_be_written(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst", keys=False)
    config = load(config_path)
    with AuditLog.open(config) as log:
        log.append(relay_event(1))
    (tmp_path / "inst" / "data" / "audit.db").chmod(0o400)
    result = run_cli("audit", "report", "--month", "2025-11", "--json", "--config", str(config_path))
    assert result.code == 5
    assert result.stdout == ""  # nothing revealed without its audit record


def test_subject_reads_the_rrn_from_stdin_and_lists_only_that_subjects_records(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst")
    config = load(config_path)
    ref = load_keyring(config.keys_dir).rrn_index(RRN.replace("-", ""))
    with AuditLog.open(config) as log:
        log.append(relay_event(1, action="documents.search", subject=ref))
        log.append(relay_event(2, subject="c" * 64))
        log.append(relay_event(3, subject=ref))
    result = run_cli("audit", "subject", "--rrn", "-", "--config", str(config_path), stdin=RRN + "\n")
    assert result.code == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in listed] == [1, 3]
    assert RRN not in result.stdout + result.stderr
    assert RRN.replace("-", "") not in result.stdout + result.stderr
    with AuditLog.open(config) as log:
        last = log.last_record("admin.audit.subject")
        assert last is not None and last["subject_ref"] == ref and last["actor"]["kind"] == "admin"


def test_subject_refuses_the_number_on_the_command_line(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst")
    result = run_cli("audit", "subject", "--rrn", RRN, "--config", str(config_path))
    assert result.code == 2
    assert RRN not in result.stderr


def test_subject_rejects_malformed_stdin_without_echoing_it(tmp_path: Path) -> None:
    config_path = write_installation(tmp_path / "inst")
    result = run_cli("audit", "subject", "--rrn", "-", "--config", str(config_path), stdin="90010-12345\n")
    assert result.code == 2
    assert "90010-12345" not in result.stderr
