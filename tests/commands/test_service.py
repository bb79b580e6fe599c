"""``service install|uninstall|start|stop|status`` (cli.md §3, security.md §10).

The unit is written into a staging root (``--root``) so nothing here needs root or a running
systemd; ``systemd-analyze verify`` checks it when that binary exists. The systemctl command
sequence is driven against a fake ``systemctl`` (a shell script recording its arguments) because
this machine has no running systemd; the live refusals (no systemd → exit 5, sandbox-hidden
paths → exit 4) run against the real machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import build_config, load_config
from agent.errors import ConfigError, UnavailableError
from agent.ops import service
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "installer" / "systemd" / "silson-agent.service.example"
HARDENING = (
    "User=silson-agent",
    "Group=silson-agent",
    "Restart=on-failure",
    "KillSignal=SIGTERM",
    "TimeoutStopSec=60s",
    "UMask=0077",
    "LimitCORE=0",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "CapabilityBoundingSet=",
    "WantedBy=multi-user.target",
)
SYSTEMD_LIVE = Path("/run/systemd/system").is_dir()


def _unit(stage: Path) -> Path:
    return stage / "etc" / "systemd" / "system" / "silson-agent.service"


def _link(stage: Path) -> Path:
    return stage / "etc" / "systemd" / "system" / "multi-user.target.wants" / "silson-agent.service"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _install(installation: Path, stage: Path, *extra: str):
    return run_cli(
        "service", "install", "--config", str(installation / "agent.toml"), "--root", str(stage), *extra
    )


def test_install_writes_a_hardened_unit_running_the_agent_with_its_config(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    result = _install(installation, stage)
    assert result.code == 0, result.stderr
    unit = _unit(stage)
    text = unit.read_text(encoding="utf-8")
    lines = _lines(text)
    for directive in HARDENING:
        assert directive in lines, directive
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    toml = str((installation / "agent.toml").resolve())
    assert exec_start == f"ExecStart={sys.executable} -m agent run --config {toml}"
    rw = next(line for line in lines if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()
    assert rw == [
        str(installation / "data"),
        str(installation / "logs"),
        str(installation / "tls"),
        str(installation / "keys"),
        f"-{installation / 'inbox'}",
    ]
    assert f"ConditionPathExists={toml}" in lines  # never starts without its configuration
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert os.readlink(_link(stage)) == "/etc/systemd/system/silson-agent.service"
    assert "unit: ok" in result.stdout and "enable: ok" in result.stdout
    # the staging root touched nothing of this machine: no user made, nothing handed over
    assert "user: skipped" in result.stdout and "ownership: skipped" in result.stdout
    assert all(p.stat().st_uid == os.getuid() for p in installation.rglob("*"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_generated_unit_passes_systemd_analyze_verify(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    assert _install(installation, stage).code == 0
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_unit(stage))], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys and bad values: it only warns, so stderr must be empty.
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_paths_with_spaces_percent_and_dollar_are_quoted_for_systemd(tmp_path: Path):
    from agent.commands.init import write_installation

    odd = tmp_path / "clinic 50% $HOME"
    write_installation(
        odd, code="99000001", kind="clinic", dev_certs=True, listen="127.0.0.1:0", admin="127.0.0.1:0"
    )
    stage = tmp_path / "stage"
    assert _install(odd, stage).code == 0
    text = _unit(stage).read_text(encoding="utf-8")
    assert '"' + str(odd / "data").replace("%", "%%") + '"' in text
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_unit(stage))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # what systemd will execute: the config path comes back exactly
    exe = service._unit_exec(text)
    assert exe == (sys.executable, "-m", "agent")
    assert service.recorded_config(text) == str((odd / "agent.toml").resolve())
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(exec_line.split("=", 1)[1].replace("%%", "%").replace("$$", "$"))
    assert words[-2:] == ["--config", str((odd / "agent.toml").resolve())]


def test_second_install_is_unchanged_and_rewrites_nothing(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    assert _install(installation, stage).code == 0
    before = _unit(stage).stat()
    again = _install(installation, stage, "--json")
    assert again.code == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["changed"] is False
    assert {a["name"]: a["status"] for a in doc["actions"]}["unit"] == "unchanged"
    assert {a["name"]: a["status"] for a in doc["actions"]}["enable"] == "unchanged"
    after = _unit(stage).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_new_watch_folder_updates_the_unit_and_status_sees_a_stale_unit(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    assert _install(installation, stage).code == 0
    share = tmp_path / "share"
    toml = installation / "agent.toml"
    toml.write_text(toml.read_text() + f'\n[[watch]]\npath = "{share}"\npolling = true\n')
    stale = run_cli("service", "status", "--json", "--config", str(toml), "--root", str(stage))
    assert stale.code == 0 and json.loads(stale.stdout)["unit_current"] is False
    result = _install(installation, stage)
    assert result.code == 0 and "unit: ok — updated" in result.stdout
    assert f" -{share}" in _unit(stage).read_text()
    fresh = run_cli("service", "status", "--json", "--config", str(toml), "--root", str(stage))
    assert json.loads(fresh.stdout)["unit_current"] is True


def test_status_json_reports_unit_enablement_and_the_daemons_own_state(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    toml = str(installation / "agent.toml")
    before = run_cli("service", "status", "--json", "--config", toml, "--root", str(stage))
    assert before.code == 0, before.stderr
    doc = json.loads(before.stdout)
    assert doc["installed"] is False and doc["enabled"] is None and doc["daemon"]["running"] is False
    assert _install(installation, stage).code == 0
    # the daemon's state file says it runs (this process stands in for it: its pid is alive)
    state = installation / "data" / "agent.state.json"
    state.write_text(json.dumps({"pid": os.getpid(), "running": True, "api": {"listen": "127.0.0.1:9"}}))
    after = json.loads(run_cli("service", "status", "--json", "--config", toml, "--root", str(stage)).stdout)
    assert after["installed"] is True and after["enabled"] is True and after["unit_current"] is True
    assert after["unit_path"] == str(_unit(stage)) and after["unit_config"] == str(Path(toml).resolve())
    assert after["daemon"] == {"running": True, "pid": os.getpid(), "api": "127.0.0.1:9"}
    assert after["active"] is None and after["systemd_running"] is False
    human = run_cli("service", "status", "--config", toml, "--root", str(stage))
    assert f"daemon: running (pid {os.getpid()})" in human.stdout and "enabled: yes" in human.stdout


def test_uninstall_removes_unit_and_link_and_a_second_uninstall_is_a_no_op(
    installation: Path, tmp_path: Path
):
    stage = tmp_path / "stage"
    assert _install(installation, stage).code == 0
    result = run_cli("service", "uninstall", "--root", str(stage))
    assert result.code == 0, result.stderr
    assert not _unit(stage).exists() and not _link(stage).is_symlink()
    assert (installation / "agent.toml").exists() and (installation / "keys").is_dir()  # data stays
    again = run_cli("service", "uninstall", "--root", str(stage))
    assert again.code == 0 and "unchanged — not installed" in again.stdout


def test_dry_run_prints_the_unit_and_writes_nothing(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    result = _install(installation, stage, "--dry-run")
    assert result.code == 0, result.stderr
    assert "ProtectSystem=strict" in result.stdout and "[Install]" in result.stdout
    assert not stage.exists()


def test_no_enable_leaves_the_unit_disabled(installation: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    assert _install(installation, stage, "--no-enable").code == 0
    assert _unit(stage).exists() and not _link(stage).is_symlink()


@pytest.mark.parametrize("user", ["root", "Bad User"])
def test_root_or_a_malformed_account_is_refused_as_a_usage_error(
    installation: Path, tmp_path: Path, user: str
):
    result = _install(installation, tmp_path / "stage", "--user", user)
    assert result.code == 2, result.stderr
    assert "never root" in result.stderr and not (tmp_path / "stage").exists()


def test_a_port_below_1024_grants_only_net_bind_service(installation: Path, tmp_path: Path):
    toml = installation / "agent.toml"
    toml.write_text(toml.read_text().replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:443"', 1))
    stage = tmp_path / "stage"
    assert _install(installation, stage).code == 0
    lines = _lines(_unit(stage).read_text())
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in lines
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines


@pytest.mark.skipif(SYSTEMD_LIVE, reason="this machine runs systemd; the no-systemd answers cannot be seen")
@pytest.mark.parametrize("action", ["start", "stop", "status"])
def test_without_systemd_start_stop_status_say_so_and_exit_5(installation: Path, action: str):
    result = run_cli("service", action, "--config", str(installation / "agent.toml"))
    assert result.code == 5, (result.code, result.stderr)
    assert "systemd is not running on this machine" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_live_install_refuses_folders_the_sandbox_would_hide(installation: Path):
    # pytest's folders are under /tmp, which PrivateTmp=yes replaces for the service.
    assert Path("/tmp") in installation.parents
    result = run_cli("service", "install", "--config", str(installation / "agent.toml"))
    assert result.code == 4, result.stderr
    assert "PrivateTmp=yes" in result.stderr and "/opt/silson-agent" in result.stderr


def test_golden_example_is_the_template_rendered_for_the_packaged_layout():
    from agent.ops.provision import render_config

    text = render_config(
        code="12345678",
        kind="clinic",
        relay_url="https://relay.example",
        api_listen="0.0.0.0:8443",
        admin_listen="127.0.0.1:8780",
        watch=[{"path": "inbox"}, {"path": "/srv/emr-export", "polling": True}],
    )
    config = build_config(
        tomllib.loads(text), Path("/opt/silson-agent/agent.toml"), Path("/opt/silson-agent")
    )
    spec = service.unit_spec(
        config, user="silson-agent", group="silson-agent", executable=("/usr/lib/silson-agent/silson-agent",)
    )
    assert service.render_unit(spec) == EXAMPLE.read_text(encoding="utf-8")
    assert service.hardening_conflicts(config, spec.exec_start) == []


def test_windows_service_module_is_never_imported_on_linux(installation: Path, tmp_path: Path):
    import py_compile

    assert _install(installation, tmp_path / "stage").code == 0
    assert "agent.ops.winservice" not in sys.modules
    py_compile.compile(str(ROOT / "agent" / "ops" / "winservice.py"), doraise=True)


# -- the systemctl conversation, against a fake systemctl ------------------------------------------------------
FAKE_SYSTEMCTL = """#!/bin/sh
# records its arguments; answers is-active/is-enabled from files next to it
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
case "$1" in
  is-active) cat "$dir/active" 2>/dev/null || echo inactive ;;
  is-enabled) cat "$dir/enabled" 2>/dev/null || echo disabled ;;
  enable) echo enabled > "$dir/enabled" ;;
  disable) echo disabled > "$dir/enabled" ;;
  start) cat "$dir/on-start" > "$dir/active" 2>/dev/null || echo active > "$dir/active" ;;
  stop) echo inactive > "$dir/active" ;;
esac
exit 0
"""


@pytest.fixture
def fake(tmp_path: Path) -> service.Systemd:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(0o755)
    runtime = tmp_path / "run-systemd-system"
    runtime.mkdir()
    return service.Systemd(root=tmp_path / "stage", systemctl=str(script), runtime_dir=runtime)


def _calls(fake: service.Systemd) -> list[str]:
    path = Path(fake.systemctl).parent / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_with_systemd_install_reloads_and_enables_once_then_is_unchanged(installation: Path, fake):
    config = load_config(installation / "agent.toml")
    first = service.install(config, systemd=fake)
    assert _calls(fake) == ["daemon-reload", "is-enabled silson-agent.service", "enable silson-agent.service"]
    assert {o.name: o.status for o in first.outcomes}["enable"] == "ok"
    assert not fake.wants_link.exists()  # systemctl made the link, not us
    second = service.install(config, systemd=fake)
    assert _calls(fake)[3:] == ["is-enabled silson-agent.service"]  # no reload, no enable
    assert {o.name: o.status for o in second.outcomes} == {
        "user": "skipped",
        "ownership": "skipped",
        "unit": "unchanged",
        "enable": "unchanged",
    }


def test_with_systemd_start_waits_for_the_daemon_and_stop_and_uninstall_follow(installation: Path, fake):
    config = load_config(installation / "agent.toml")
    with pytest.raises(ConfigError, match="not installed"):
        service.start(config, systemd=fake)
    service.install(config, systemd=fake)
    state = installation / "data" / "agent.state.json"
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the daemon comes up after the first wait
        naps.append(seconds)
        state.write_text(json.dumps({"pid": os.getpid(), "running": True}))

    outcome = service.start(config, systemd=fake, sleep=sleep)
    assert outcome.status == "ok" and f"pid {os.getpid()}" in outcome.detail and naps == [0.5]
    assert "start silson-agent.service" in _calls(fake)
    assert service.start(config, systemd=fake).status == "unchanged"
    assert service.status(config, systemd=fake)["active"] == "active"
    assert service.stop(systemd=fake).status == "ok"
    assert service.stop(systemd=fake).status == "unchanged"
    outcomes = service.uninstall(systemd=fake)
    assert [o.name for o in outcomes] == ["enable", "unit"]
    assert _calls(fake)[-3:] == [
        "disable silson-agent.service",
        "daemon-reload",
        "reset-failed silson-agent.service",
    ]
    assert not fake.unit_path.exists()


def test_with_systemd_a_unit_that_fails_to_start_is_exit_5_pointing_at_the_journal(installation: Path, fake):
    config = load_config(installation / "agent.toml")
    service.install(config, systemd=fake)
    (Path(fake.systemctl).parent / "on-start").write_text("failed\n")
    with pytest.raises(UnavailableError, match="journalctl -u silson-agent.service") as info:
        service.start(config, systemd=fake, sleep=lambda s: None)
    assert info.value.exit_status == 5


def test_a_staging_root_never_talks_to_the_live_systemd(tmp_path: Path):
    assert service.Systemd(root=tmp_path).running() is False


# -- the Debian package (installer/deb): static checks and a package of a stand-in build ---------------------
DEB = ROOT / "installer" / "deb"


def test_maintainer_scripts_are_valid_sh_and_never_start_the_service():
    for name in ("postinst", "prerm", "postrm"):
        script = DEB / name
        assert script.read_text().startswith("#!/bin/sh\n")
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr)
        text = script.read_text()
        assert "DPKG_ROOT" in text  # chrootless installs change only files below the root
        assert "systemctl start" not in text and "--now" not in text
    postinst = (DEB / "postinst").read_text()
    assert "useradd" in postinst and "--system" in postinst and "/usr/sbin/nologin" in postinst
    assert "try-restart" in postinst  # restarts a running service, never starts a stopped one
    assert "service install" in postinst and "service uninstall" in (DEB / "prerm").read_text()
    control = (DEB / "control.in").read_text()
    for field in (
        "Package: silson-agent",
        "Version: @VERSION@",
        "Architecture: @ARCH@",
        "Depends: @DEPENDS@",
    ):
        assert field in control


STAND_IN = """#!/bin/sh
# stands in for the PyInstaller build: records how the maintainer scripts call it
echo "$*" >> "$(dirname "$(readlink -f "$0")")/../../../calls"
"""


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed here")
def test_deb_of_a_stand_in_build_has_the_layout_and_its_scripts_work_in_a_throwaway_root(tmp_path: Path):
    sys.path.insert(0, str(DEB))
    try:
        import build_deb  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(DEB))
    dist = tmp_path / "dist" / "silson-agent"
    (dist / "_internal").mkdir(parents=True)
    (dist / "silson-agent").write_text(STAND_IN)
    (dist / "silson-agent").chmod(0o700)  # the builder normalises modes
    package = build_deb.build(dist, tmp_path / "out", "9.8.7", work=tmp_path / "work")
    info = subprocess.run(
        ["dpkg-deb", "--info", str(package)], capture_output=True, text=True, check=True
    ).stdout
    assert "Package: silson-agent" in info and "Version: 9.8.7" in info and "Depends: libc6 (>= " in info
    contents = subprocess.run(
        ["dpkg-deb", "--contents", str(package)], capture_output=True, text=True, check=True
    ).stdout
    assert "-rwxr-xr-x root/root" in next(
        line for line in contents.splitlines() if line.endswith("/usr/lib/silson-agent/silson-agent")
    )
    assert "./usr/bin/silson-agent -> ../lib/silson-agent/silson-agent" in contents
    assert "./usr/share/doc/silson-agent/silson-agent.service.example" in contents
    assert "etc/systemd" not in contents  # the unit is written by `service install`, never shipped
    if os.geteuid() != 0:
        return  # dpkg --root and useradd --prefix need root
    root = tmp_path / "target"
    for folder in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"):
        (root / folder).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:*::0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\n")
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", root / "etc/login.defs")
    host_passwd = Path("/etc/passwd").read_bytes()

    def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
        base = [
            "dpkg",
            f"--root={root}",
            "--force-script-chrootless",
            "--force-depends",
            f"--log={tmp_path / 'dpkg.log'}",
        ]
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)

    fresh = dpkg("-i", str(package))
    assert fresh.returncode == 0, fresh.stderr
    assert "no configuration yet" in fresh.stderr
    assert "silson-agent:x:" in (root / "etc/passwd").read_text()
    assert Path("/etc/passwd").read_bytes() == host_passwd  # the host's accounts are untouched
    calls = root / "calls"
    assert not calls.exists()  # nothing registered without a configuration
    (root / "etc/silson-agent").mkdir()
    (root / "etc/silson-agent/agent.toml").write_text("# stand-in\n")
    again = dpkg("-i", str(package))
    assert again.returncode == 0, again.stderr
    assert calls.read_text().splitlines() == [
        f"service install --root {root} --config {root}/etc/silson-agent/agent.toml"
    ]
    removed = dpkg("-r", "silson-agent")
    assert removed.returncode == 0, removed.stderr
    assert calls.read_text().splitlines()[-1] == f"service uninstall --root {root}"
    assert (root / "etc/silson-agent/agent.toml").exists()  # the installation stays
