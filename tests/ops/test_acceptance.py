"""``acceptance``: the 검수 self-test over the real ingest path and the real TLS port (cli.md §3, S-37).

Each test runs the command in-process against a throw-away installation with real sockets, real
certificates and a real daemon (in-process, or ``python -m agent run`` as a subprocess). All data
is synthetic.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import pki
from agent.commands.init import write_installation
from agent.config import load_config
from agent.ops.acceptance import STEPS, build_selftest_set, fhir_structure_problem
from tests.conftest import run_cli
from tests.ingest.daemon_helpers import DaemonProcess

SELFTEST_NO = re.compile(r"^ACPT-")


def _install(tmp_path: Path) -> Path:
    root = tmp_path / "inst"
    write_installation(
        root, code="99000001", kind="clinic", dev_certs=True, listen="127.0.0.1:0", admin="127.0.0.1:0"
    )
    return root


def _audit_records(root: Path) -> list[dict]:
    from agent.audit.log import AuditLog

    config = load_config(root / "agent.toml")
    with AuditLog.open(config) as audit:
        assert audit.verify().ok
        import datetime as dt

        return list(
            audit.records_between(
                dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
            )
        )


def _stored(root: Path) -> tuple[list[str], dict]:
    """(document numbers of every stored document, status counts), read from the store."""
    from agent.store.store import Store

    with Store.open(load_config(root / "agent.toml")) as store:
        numbers = [store.get_current(doc_id).document["document_no"] for doc_id in store.doc_ids()]
        return numbers, store.counts()


def _commit_clinic_documents(root: Path) -> list[dict]:
    import datetime as dt
    import hashlib

    from agent.formats import write_export
    from agent.pipeline import validate_export
    from agent.store.models import FileFingerprint
    from agent.store.store import Store
    from agent.synth import generate_documents

    docs = generate_documents(2, seed=7)
    data = write_export(docs, format="json")
    checked = validate_export(data, file_name="export-1.json", received_at=dt.datetime.now(dt.UTC))
    assert checked.ok
    sha = hashlib.sha256(data).hexdigest()
    with Store.open(load_config(root / "agent.toml")) as store:
        outcome = store.commit_file(
            FileFingerprint(str(root / "inbox" / "export-1.json"), len(data), 1, sha),
            checked.records,
            archive=data,
            file_meta={"file_name": "export-1.json"},
        )
    assert outcome.outcome == "accepted"
    return docs


def _assert_no_selftest_trace(root: Path, records: list[dict]) -> None:
    from agent.store.store import Store

    ids = next(r for r in records if r["action"] == "admin.acceptance" and r.get("phase") == "end")[
        "document_ids"
    ]
    assert len(ids) == 4
    with Store.open(load_config(root / "agent.toml")) as store:
        assert all(store.get_current(doc_id) is None for doc_id in ids)
        assert not any(
            SELFTEST_NO.match(store.get_current(d).document["document_no"]) for d in store.doc_ids()
        )
        assert store.quarantine_list() == []
    assert not any((root / "inbox").iterdir())
    assert not any((root / "data" / "tmp").iterdir())


def test_dev_installation_without_daemon_passes_and_removes_its_documents(tmp_path: Path) -> None:
    root = _install(tmp_path)
    clinic_docs = _commit_clinic_documents(root)  # the clinic's own documents must survive the clean-up
    last_commit_before = _stored(root)[1]["ingest"]["last_commit_at"]

    result = run_cli("acceptance", "--json", "--config", str(root / "agent.toml"))

    assert result.code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert set(report) == {"ok", "checks", "duration_s"}
    assert report["ok"] is True and isinstance(report["duration_s"], float)
    assert [c["name"] for c in report["checks"]] == list(STEPS)
    assert all(c["status"] == "PASS" and set(c) == {"name", "status", "detail"} for c in report["checks"])
    by_name = {c["name"]: c["detail"] for c in report["checks"]}
    assert by_name["daemon"].startswith("not running: started in this process")
    assert "via the public port" in by_name["search"]
    assert "fhir.resources" in by_name["fhir validity"]
    # Plain progress lines on a non-terminal stderr (cli.md §1).
    assert f"acceptance: [1/{len(STEPS)}] PASS config and keys" in result.stderr

    numbers, counts = _stored(root)
    assert sorted(numbers) == sorted(d["document_no"] for d in clinic_docs)  # only the clinic's own documents
    assert counts["ingest"]["files_accepted"] == 1 and counts["documents"]["versions_total"] == 2
    assert counts["ingest"]["last_commit_at"] == last_commit_before

    records = _audit_records(root)
    selftest = [r for r in records if r["actor"]["kind"] == "selftest"]
    assert {r["action"] for r in selftest} == {"admin.acceptance", "documents.search", "documents.fetch"}
    assert [r["phase"] for r in selftest if r["action"] == "admin.acceptance"] == ["start", "end"]
    assert not [
        r for r in records if r["action"].startswith("documents.") and r["actor"]["kind"] != "selftest"
    ]
    _assert_no_selftest_trace(root, records)
    # The self-test's synthetic patient never reaches the logs in clear (only the audit's blind index).
    assert "가상검수".encode() not in (root / "logs" / "agent.log").read_bytes()


def test_running_daemon_is_used_and_keeps_running(tmp_path: Path) -> None:
    root = _install(tmp_path)
    toml = root / "agent.toml"
    with DaemonProcess(toml) as daemon:
        daemon.start()
        result = run_cli("acceptance", "--config", str(toml))
        assert result.code == 0, result.stdout + result.stderr
        assert f"PASS  daemon: running daemon used (pid {daemon.proc.pid}," in result.stdout
        assert result.stdout.rstrip().splitlines()[-1].startswith("acceptance passed")
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
    numbers, counts = _stored(root)
    assert numbers == [] and counts["ingest"]["files_accepted"] == 0
    records = _audit_records(root)
    acceptance = [r for r in records if r["action"] == "admin.acceptance"]
    assert [r["actor"]["kind"] for r in acceptance] == ["selftest", "selftest"]
    assert acceptance[-1]["result"] == "success"
    # S-37: the running daemon's API records the run's requests as self-test ones too (the run
    # registered its claim number in the store), and nothing else as self-test.
    documents = [r for r in records if r["action"].startswith("documents.")]
    assert {r["action"] for r in documents} == {"documents.search", "documents.fetch"}
    assert {r["actor"]["kind"] for r in documents} == {"selftest"}
    _assert_no_selftest_trace(root, records)
    from agent.config import load_config
    from agent.store import Store

    with Store.open(load_config(toml)) as store:  # the registration is gone with the run
        assert not store.db.write(
            lambda c: c.execute("SELECT key FROM kv WHERE key LIKE 'selftest_claim:%'").fetchall()
        )


def test_installation_without_relay_client_certificate_uses_a_temporary_listener(tmp_path: Path) -> None:
    root = _install(tmp_path)
    tls = root / "tls"
    for name in ("relay-client.crt", "relay-client.key", "dev-ca.crt"):
        (tls / name).unlink()
    # As after enrollment: a leaf-only server certificate from a CA not on disk, no loopback name.
    ca_key, ca = pki.make_ca("enrolled agents CA")
    key, cert = pki.make_cert(ca_key, ca, "99000001", dns=["clinic.example"], server=True, client=True)
    pki.write_certs(tls / "server.crt", cert)
    pki.write_key(tls / "server.key", key)
    client_ca_before = (tls / "relay-ca.crt").read_bytes()

    result = run_cli("acceptance", "--json", "--config", str(root / "agent.toml"))

    assert result.code == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert all(c["status"] == "PASS" for c in checks.values())
    assert "temporary loopback listener" in checks["search"]["detail"]
    assert "a client without a certificate is refused" in checks["public port handshake"]["detail"]
    assert (tls / "relay-ca.crt").read_bytes() == client_ca_before  # the public port never trusts the test CA
    records = _audit_records(root)
    relay = [r for r in records if r["action"].startswith("documents.")]
    assert relay and all(r["actor"]["kind"] == "selftest" for r in relay)
    assert all(r["actor"]["cert_subject"].startswith("CN=silson-agent-selftest-") for r in relay)
    _assert_no_selftest_trace(root, records)


def test_api_port_held_by_another_process_is_a_fail_and_exit_5(tmp_path: Path) -> None:
    root = _install(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(holder.stdout.readline())
        toml = root / "agent.toml"
        toml.write_text(toml.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1))
        assert load_config(toml).api.listen == f"127.0.0.1:{port}"
        result = run_cli("acceptance", "--config", str(toml))
    finally:
        holder.kill()
        holder.wait(10)
    assert result.code == 5
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert fails and fails[0].startswith("FAIL  daemon: port in use") and str(port) in fails[0]
    assert result.stdout.rstrip().splitlines()[-1].startswith("acceptance FAILED")
    assert _stored(root)[0] == []
    end = [r for r in _audit_records(root) if r["action"] == "admin.acceptance"][-1]
    assert (
        end["actor"]["kind"] == "selftest" and end["result"] == "error" and end["failed_checks"] == ["daemon"]
    )


# -- pieces ------------------------------------------------------------------------------------------------
def test_selftest_set_is_four_linked_valid_documents_of_one_synthetic_patient() -> None:
    import datetime as dt

    from agent.documents.validate import validate_document

    taken = {"first": True}

    def is_taken(ykiho: str, doc_type: str, number: str) -> bool:  # the first prescription number is taken
        if taken.pop("first", False):
            return True
        return False

    selftest = build_selftest_set("0123456789", taken=is_taken)
    docs = {d["document_type"]: d for d in selftest.documents}
    assert set(docs) == {"receipt", "receipt_detail", "prescription", "pharmacy_receipt"}
    assert docs["receipt"]["document_no"] == docs["receipt_detail"]["receipt_no"] == "ACPT-0123456789"
    assert docs["pharmacy_receipt"]["prescription_issue_no"] == docs["prescription"]["document_no"]
    assert re.fullmatch(r"[0-9]{8}-9[0-9]{4}", docs["prescription"]["document_no"])
    assert {d["patient"]["rrn"] for d in selftest.documents} == {selftest.rrn}
    assert selftest.rrn[7:9] == "99" and selftest.name.startswith("가상검수")
    now = dt.datetime.now(dt.UTC)
    assert all(validate_document(d, received_at=now).ok for d in selftest.documents)


def test_fhir_structure_check_names_the_broken_invariant() -> None:
    good = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {
                "fullUrl": "urn:uuid:a",
                "resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:b"}},
            },
            {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Patient"}},
        ],
    }
    assert fhir_structure_problem(good) is None
    dangling = json.loads(json.dumps(good))
    dangling["entry"][0]["resource"]["subject"]["reference"] = "urn:uuid:c"
    assert fhir_structure_problem(dangling) == "a reference does not resolve inside the Bundle"
    reordered = dict(good, entry=list(reversed(good["entry"])))
    assert fhir_structure_problem(reordered) == "the Composition is not the first entry"
    assert fhir_structure_problem(dict(good, type="collection")) == "Bundle.type is not document"


@pytest.mark.parametrize("tty", [True, False])
def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(tty: bool) -> None:
    from agent.commands.acceptance import PlainProgress, RichProgress, make_progress
    from agent.ops.acceptance import Check

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    progress = make_progress(stream)
    assert isinstance(progress, RichProgress if tty else PlainProgress)
    progress.step("ingest")
    progress.tick("waiting for ingest (5 s)")
    progress.done(Check("ingest", "FAIL", "not committed"))
    progress.close()
    assert "FAIL ingest" in stream.getvalue()
