"""``provision BUNDLE`` (cli.md §3, §2; docs/provisioning.md): unattended first boot, idempotent.

Real files, a real relay simulator over TLS on 127.0.0.1 (relay-api.md §10), the real acceptance
self-test. The service unit goes into a staging root (``--service-root``) because this machine
has no running systemd. Every run checks that the enrollment token is nowhere: not in any file,
not in the output, not in the result document.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from agent import pki
from agent.errors import AgentError, ConfigError
from agent.ops.provision import RESULT_FILE, Secret, read_bundle, run_as
from agent.ops.relaysim_server import RelaySimulator
from tests.conftest import run_cli

CODE = "12345678"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(inst: Path, sim: RelaySimulator, *, port: int, token_line: str, extra: str = "") -> str:
    return f"""format = 1

[installation]
dir = "{inst}"
institution_code = "{CODE}"
institution_type = "clinic"
api_listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"

[relay]
url = "{sim.base_url}"

[enrollment]
{token_line}

[[watch]]
path = "inbox"
settle = "1s"
{extra}"""


def make_bundle(
    where: Path,
    sim: RelaySimulator,
    inst: Path,
    *,
    token: str | None,
    port: int | None = None,
    ca: bytes | None = None,
    extra: str = "",
) -> Path:
    """A folder bundle: provision.toml + relay-server-ca.crt + the token in its own file."""
    where.mkdir(parents=True)
    line = 'token_file = "enrollment-token"' if token else ""
    (where / "provision.toml").write_text(
        _toml(inst, sim, port=port or _free_port(), token_line=line, extra=extra), encoding="utf-8"
    )
    if token:
        (where / "enrollment-token").write_text(token + "\n")
    (where / "relay-server-ca.crt").write_bytes(ca if ca is not None else sim.server_ca_path.read_bytes())
    return where


def _snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


def _assert_token_nowhere(token: str, roots: list[Path], *texts: str) -> None:
    needle = token.encode()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    for text in texts:
        assert token not in text


def _statuses(doc: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in doc["steps"]}


# -- the whole first boot, then a second run ----------------------------------------------------------------
def test_provision_enrolls_installs_the_unit_passes_acceptance_and_a_second_run_changes_nothing(
    sim: RelaySimulator, tmp_path: Path
):
    inst, stage = tmp_path / "srv" / "silson", tmp_path / "stage"
    token = sim.issue_token(institution_code=CODE)
    bundle = make_bundle(tmp_path / "bundle", sim, inst, token=token)

    first = run_cli("provision", str(bundle), "--json", "--service-root", str(stage))

    assert first.code == 0, first.stdout + first.stderr
    doc = json.loads(first.stdout)
    assert _statuses(doc) == {
        "service_user": "skipped",  # no live system service here: it belongs to whoever runs provision
        "directory": "ok",
        "init": "ok",
        "relay_ca": "ok",
        "enroll": "ok",
        "service_install": "ok",
        "service_start": "skipped",
        "acceptance": "ok",
    }
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["institution_code"] == CODE
    assert doc["agent_id"] in sim.agents and len(sim.enrollments) == 1
    assert sim.enrollments[0]["endpoint"]["host"] == "127.0.0.1"
    # the installation: config from the bundle, pinned CA, enrolled certificate, keys 0600
    assert (inst / "tls" / "server.crt").exists() and (inst / "tls" / "relay-ca.crt").exists()
    assert (inst / "tls" / "relay-server-ca.crt").read_bytes() == sim.server_ca_path.read_bytes()
    assert 'url = "' + sim.base_url + '"' in (inst / "agent.toml").read_text()
    for key in (inst / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the unit, with the hardening, pointing at this installation
    unit = (stage / "etc/systemd/system/silson-agent.service").read_text()
    assert f"run --config {inst / 'agent.toml'}" in unit and "LimitCORE=0" in unit
    # the result file: 0600, the same document, no token
    result_file = inst / RESULT_FILE
    assert stat.S_IMODE(result_file.stat().st_mode) == 0o600
    saved = json.loads(result_file.read_text())
    assert _statuses(saved) == _statuses(doc) and saved["agent_id"] == doc["agent_id"]
    assert saved["result_written"] is True
    _assert_token_nowhere(token, [inst, stage], first.stdout, first.stderr)
    # security.md §7.1: provision is an audited admin action — one record, steps by status only.
    conn = sqlite3.connect(inst / "data" / "audit.db")
    try:
        records = [json.loads(r[0]) for r in conn.execute("SELECT record FROM records ORDER BY seq")]
    finally:
        conn.close()
    provisions = [r for r in records if r["action"] == "admin.provision"]
    assert len(provisions) == 1 and provisions[0]["result"] == "success"
    assert provisions[0]["steps"]["enroll"] == "ok" and provisions[0]["actor"]["kind"] == "admin"

    # A second run on the provisioned machine: every step unchanged/skipped, no file rewritten.
    before = _snapshot(inst, stage)
    second = run_cli("provision", str(bundle), "--json", "--service-root", str(stage))
    assert second.code == 0, second.stdout + second.stderr
    again = json.loads(second.stdout)
    assert set(_statuses(again).values()) <= {"unchanged", "skipped"}, again["steps"]
    assert _statuses(again)["enroll"] == "unchanged" and _statuses(again)["acceptance"] == "skipped"
    assert again["changed"] is False and again["result_written"] is False
    assert _snapshot(inst, stage) == before
    assert len(sim.enrollments) == 1  # the relay was not asked again
    _assert_token_nowhere(token, [inst, stage], second.stdout, second.stderr)


def test_human_output_and_no_systemd_skip_from_a_tar_gz_bundle_with_a_top_folder(
    sim: RelaySimulator, tmp_path: Path
):
    inst = tmp_path / "inst"
    token = sim.issue_token(institution_code=CODE)
    folder = make_bundle(tmp_path / "site-12345678", sim, inst, token=token)
    archive = tmp_path / "site.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="site-12345678")

    result = run_cli("provision", str(archive))

    assert result.code == 0, result.stdout + result.stderr
    assert "provisioned" in result.stdout.splitlines()[-1]
    if not Path("/run/systemd/system").is_dir():
        assert "skipped    service_install: no systemd" in result.stdout
    assert f"result file {inst / RESULT_FILE} written" in result.stderr
    _assert_token_nowhere(token, [inst], result.stdout, result.stderr)


def test_zip_and_folder_bundles_read_the_same(sim: RelaySimulator, tmp_path: Path):
    inst = tmp_path / "inst"
    folder = make_bundle(tmp_path / "b", sim, inst, token="ENR-TEST-TOKEN-0001")
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    a, b = read_bundle(folder), read_bundle(archive)
    assert (a.config_text, a.relay_server_ca, a.install_dir) == (
        b.config_text,
        b.relay_server_ca,
        b.install_dir,
    )
    assert a.token is not None and a.token.reveal() == "ENR-TEST-TOKEN-0001"
    assert "ENR-TEST" not in repr(a) and "ENR-TEST" not in str(a.token) and isinstance(a.token, Secret)


# -- exit codes ---------------------------------------------------------------------------------------------
def test_missing_bundle_is_exit_4_naming_the_file(tmp_path: Path):
    missing = tmp_path / "nowhere.tar.gz"
    result = run_cli("provision", str(missing), "--json")
    assert result.code == 4, result.stderr
    assert str(missing) in result.stderr
    doc = json.loads(result.stdout)
    assert doc["steps"][0] == {"name": "bundle", "status": "failed", "reason": doc["steps"][0]["reason"]}
    assert str(missing) in doc["steps"][0]["reason"] and doc["result_file"] is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_bundle_is_exit_4(sim: RelaySimulator, tmp_path: Path):
    bundle = make_bundle(tmp_path / "b", sim, tmp_path / "inst", token="ENR-X")
    (bundle / "provision.toml").chmod(0)
    result = run_cli("provision", str(bundle))
    assert result.code == 4 and "permission denied" in result.stderr


def test_garbage_archive_is_exit_4(tmp_path: Path):
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(b"not a tar file at all" * 10)
    result = run_cli("provision", str(archive))
    assert result.code == 4 and "not a readable archive" in result.stderr and str(archive) in result.stderr


def test_damaged_zip_is_exit_4_not_a_traceback(sim: RelaySimulator, tmp_path: Path):
    # Found by the bundle fuzz harness: a central directory offset past its real place makes
    # zipfile seek before the file start (OSError EINVAL) — a damaged archive like any other.
    folder = make_bundle(tmp_path / "b", sim, tmp_path / "inst", token="ENR-TEST-TOKEN-0002")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.iterdir()):
            z.write(path, path.name)
    data = bytearray(archive.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    offset = int.from_bytes(data[end + 16 : end + 20], "little")
    data[end + 16 : end + 20] = (offset + 100_000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    result = run_cli("provision", str(archive))
    assert result.code == 4, result.stderr
    assert "cannot be read from the archive" in result.stderr and str(archive) in result.stderr
    assert "Traceback" not in result.stderr


BAD_CONTENT = {
    "unknown key": ("", "[extra]\nx = 1\n", "unknown key extra"),
    "unknown installation key": ('dir = "', 'colour = "red"\ndir = "', "unknown key installation.colour"),
    "bad institution code": (
        f'institution_code = "{CODE}"',
        'institution_code = "123"',
        "agent.institution_code",
    ),
    "relay not https": ("url = ", 'url = "http://relay.example"\n#', "relay.url must start with https://"),
    "bad watch option": ('settle = "1s"', 'settle = "soon"', "watch[0].settle"),
    "unknown watch key": ('settle = "1s"', "colour = 1", "unknown key watch[0].colour"),
    "relative dir": ('dir = "', 'dir = "relative/', "installation.dir must be an absolute path"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_bad_bundle_content_is_exit_4_and_creates_nothing(sim: RelaySimulator, tmp_path: Path, case: str):
    inst = tmp_path / "inst"
    bundle = make_bundle(tmp_path / "b", sim, inst, token="ENR-SECRET-TOKEN-42")
    old, new, message = BAD_CONTENT[case]
    toml = bundle / "provision.toml"
    text = toml.read_text()
    toml.write_text(text.replace(old, new, 1) if old else text + new)
    result = run_cli("provision", str(bundle))
    assert result.code == 4, (result.code, result.stderr)
    assert message in result.stderr and "provision" in result.stderr
    assert not inst.exists()
    assert "ENR-SECRET-TOKEN-42" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "member,content,message",
    [
        ("relay-server-ca.crt", None, "relay-server-ca.crt): missing"),
        ("relay-server-ca.crt", b"not a certificate", "not PEM certificates"),
        ("enrollment-token", b"two words\n", "not in the expected form"),
        ("enrollment-token", None, "named by enrollment.token_file"),
    ],
)
def test_bad_bundle_members_are_exit_4(sim: RelaySimulator, tmp_path: Path, member, content, message):
    bundle = make_bundle(tmp_path / "b", sim, tmp_path / "inst", token="ENR-OK")
    if content is None:
        (bundle / member).unlink()
    else:
        (bundle / member).write_bytes(content)
    result = run_cli("provision", str(bundle))
    assert result.code == 4, result.stderr
    assert message in result.stderr
    assert "two words" not in result.stderr  # a bad token is never repeated


def test_relay_refusing_the_token_is_exit_5_token_nowhere_result_records_it(
    sim: RelaySimulator, tmp_path: Path
):
    inst = tmp_path / "inst"
    token = sim.issue_token(institution_code=CODE)
    sim.enrollment_status = 401
    bundle = make_bundle(tmp_path / "b", sim, inst, token=token)
    out = tmp_path / "reports" / "result.json"
    result = run_cli("provision", str(bundle), "--result", str(out), "--no-service")
    assert result.code == 5, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    steps = _statuses(doc)
    assert steps["enroll"] == "failed" and "HTTP 401" in doc["steps"][4]["reason"]
    assert steps["service_install"] == steps["acceptance"] == "skipped"
    assert doc["exit_code"] == 5 and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not (inst / "tls" / "server.crt").exists()
    _assert_token_nowhere(token, [inst, out.parent], result.stdout, result.stderr)


def test_relay_not_matching_the_pinned_ca_is_exit_5(sim: RelaySimulator, tmp_path: Path):
    _, other = pki.make_ca("some other relay CA")
    token = sim.issue_token(institution_code=CODE)
    bundle = make_bundle(tmp_path / "b", sim, tmp_path / "inst", token=token, ca=pki.cert_pem(other))
    result = run_cli("provision", str(bundle), "--no-service")
    assert result.code == 5, result.stderr
    assert "could not be verified against the pinned CA bundle" in result.stderr
    assert sim.enrollments == []


def test_installation_of_another_institution_is_refused_exit_4(sim: RelaySimulator, tmp_path: Path):
    inst = tmp_path / "inst"
    assert run_cli("init", "--dir", str(inst), "--institution-code", "99999999").code == 0
    before = _snapshot(inst)
    bundle = make_bundle(tmp_path / "b", sim, inst, token=sim.issue_token(institution_code=CODE))
    result = run_cli("provision", str(bundle), "--no-service")
    assert result.code == 4, result.stderr
    assert "institution 99999999" in result.stderr and CODE in result.stderr
    assert _snapshot(inst) == before and sim.enrollments == []


def test_not_enrolled_and_no_token_in_the_bundle_is_exit_4(sim: RelaySimulator, tmp_path: Path):
    bundle = make_bundle(tmp_path / "b", sim, tmp_path / "inst", token=None)
    result = run_cli("provision", str(bundle), "--no-service")
    assert result.code == 4, result.stderr
    assert "no enrollment token" in result.stderr


def test_acceptance_fail_is_exit_5(sim: RelaySimulator, tmp_path: Path):
    port = _free_port()
    bundle = make_bundle(
        tmp_path / "b", sim, tmp_path / "inst", token=sim.issue_token(institution_code=CODE), port=port
    )
    with socket.socket() as holder:  # another process holds api.listen: acceptance FAILs (cli.md §3)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_cli("provision", str(bundle), "--no-service", "--json")
    assert result.code == 5, result.stderr
    doc = json.loads(result.stdout)
    assert _statuses(doc)["enroll"] == "ok" and _statuses(doc)["acceptance"] == "failed"
    assert "port in use" in doc["steps"][-1]["reason"]


def test_a_run_after_a_failed_acceptance_runs_acceptance_again_and_then_passes(
    sim: RelaySimulator, tmp_path: Path
):
    port = _free_port()
    inst = tmp_path / "inst"
    bundle = make_bundle(tmp_path / "b", sim, inst, token=sim.issue_token(institution_code=CODE), port=port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert run_cli("provision", str(bundle), "--no-service").code == 5
    result = run_cli("provision", str(bundle), "--no-service", "--json")
    assert result.code == 0, result.stdout + result.stderr
    steps = _statuses(json.loads(result.stdout))
    assert steps["enroll"] == "unchanged" and steps["acceptance"] == "ok"


def test_a_changed_bundle_leaves_the_existing_config_and_says_which_keys_differ(
    sim: RelaySimulator, tmp_path: Path
):
    inst = tmp_path / "inst"
    bundle = make_bundle(tmp_path / "b", sim, inst, token=sim.issue_token(institution_code=CODE))
    assert run_cli("provision", str(bundle), "--no-service").code == 0
    toml = bundle / "provision.toml"
    toml.write_text(toml.read_text().replace('settle = "1s"', 'settle = "5s"'))
    config_before = (inst / "agent.toml").read_bytes()
    result = run_cli("provision", str(bundle), "--no-service", "--json")
    assert result.code == 0, result.stderr
    init = next(s for s in json.loads(result.stdout)["steps"] if s["name"] == "init")
    assert init["status"] == "skipped" and "watch" in init["reason"]
    assert (inst / "agent.toml").read_bytes() == config_before


# -- running as the service user --------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can become another user")
def test_run_as_the_service_user_runs_in_a_child_with_its_uid_and_carries_errors(tmp_path: Path):
    from agent.ops.service import lookup_user

    nobody = lookup_user("nobody")
    if nobody is None:
        pytest.skip("no 'nobody' account here")
    shared = Path(tempfile.mkdtemp(prefix="silson-run-as-", dir="/tmp"))  # pytest's folders are 0700
    shared.chmod(0o777)
    target = shared / "made-by-child"

    def child() -> list[int]:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        return [os.getuid(), os.getgid(), os.geteuid()]

    def refuse() -> None:
        raise ConfigError("refused in the child")

    try:
        assert run_as(nobody, child) == [nobody.uid, nobody.gid, nobody.uid]
        assert target.stat().st_uid == nobody.uid and os.geteuid() == 0  # the parent stays root
        with pytest.raises(AgentError, match="refused in the child") as info:
            run_as(nobody, refuse)
        assert int(info.value.exit_status) == 4
    finally:
        shutil.rmtree(shared)


def test_provision_result_document_never_holds_the_token_even_when_given_inline(
    sim: RelaySimulator, tmp_path: Path
):
    inst = tmp_path / "inst"
    token = sim.issue_token(institution_code=CODE)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "provision.toml").write_text(
        _toml(inst, sim, port=_free_port(), token_line=f'token = "{token}"'), encoding="utf-8"
    )
    shutil.copy(sim.server_ca_path, bundle / "relay-server-ca.crt")
    buffer = io.StringIO()
    result = run_cli("provision", str(bundle), "--no-service", "--json", "--debug")
    buffer.write(result.stdout + result.stderr)
    assert result.code == 0, result.stderr
    _assert_token_nowhere(token, [inst], buffer.getvalue())
