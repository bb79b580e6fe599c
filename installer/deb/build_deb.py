"""``make deb``: a Debian package of the one-folder PyInstaller build (``make dist``).

Layout of the package::

    /usr/lib/silson-agent/            the one-folder build (silson-agent + _internal/)
    /usr/bin/silson-agent             -> ../lib/silson-agent/silson-agent
    /usr/share/doc/silson-agent/      copyright, the example unit (installer/systemd)
    DEBIAN/control postinst prerm postrm   from installer/deb/

No configuration, no unit and no data are shipped: the unit is written by ``service install``
(called by ``provision``, and by postinst for an existing configuration), so it always matches the
installation it runs. Built with ``dpkg-deb --build --root-owner-group`` (no fakeroot needed).

Usage: ``python installer/deb/build_deb.py [--dist DIR] [--out DIR] [--version V]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCRIPTS = ("postinst", "prerm", "postrm")


def agent_version() -> str:
    text = (ROOT / "agent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("cannot find __version__ in agent/__init__.py")
    return match.group(1)


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def glibc_floor() -> str:
    """The build host's glibc: the PyInstaller bootloader and libpython need at least that."""
    version = _run("dpkg-query", "-W", "-f=${Version}", "libc6")
    return version.split("-", 1)[0]


def _normalise_modes(tree: Path) -> None:
    """0755 folders and executables, 0644 everything else, whatever the build's umask was."""
    for folder, _dirs, files in os.walk(tree):
        os.chmod(folder, 0o755)
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)


def build(dist: Path, out: Path, version: str, *, work: Path = ROOT / "build" / "deb") -> Path:
    exe = dist / "silson-agent"
    if not exe.is_file():
        raise SystemExit(f"{exe} is missing: run `make dist` first")
    arch = _run("dpkg", "--print-architecture")
    stage = work / f"silson-agent_{version}_{arch}"
    if stage.exists():
        shutil.rmtree(stage)
    lib = stage / "usr" / "lib" / "silson-agent"
    shutil.copytree(dist, lib, symlinks=True)
    (stage / "usr" / "bin").mkdir(parents=True)
    os.symlink("../lib/silson-agent/silson-agent", stage / "usr" / "bin" / "silson-agent")
    doc = stage / "usr" / "share" / "doc" / "silson-agent"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "silson-agent\nLicense: Proprietary. Bundled third-party components keep their own licences;\n"
        "see usr/lib/silson-agent/_internal/*.dist-info.\n",
        encoding="utf-8",
    )
    shutil.copy(
        ROOT / "installer" / "systemd" / "silson-agent.service.example", doc / "silson-agent.service.example"
    )
    debian = stage / "DEBIAN"
    debian.mkdir()
    size_kib = (
        sum(p.stat().st_size for p in stage.rglob("*") if p.is_file() and not p.is_symlink()) // 1024 + 1
    )
    control = (HERE / "control.in").read_text(encoding="utf-8")
    control = (
        control.replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@DEPENDS@", f"libc6 (>= {glibc_floor()}), passwd")
        .replace("@INSTALLED_SIZE@", str(size_kib))
    )
    (debian / "control").write_text(control, encoding="utf-8")
    for name in SCRIPTS:
        shutil.copy(HERE / name, debian / name)
    _normalise_modes(stage)
    for name in SCRIPTS:
        os.chmod(debian / name, 0o755)
    out.mkdir(parents=True, exist_ok=True)
    package = out / f"silson-agent_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", "-Zxz", str(stage), str(package)], check=True
    )
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist" / "silson-agent")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    os.umask(0o022)  # a package's files are world-readable; its maintainer scripts executable
    package = build(args.dist, args.out, args.version or agent_version())
    print(_run("dpkg-deb", "--info", str(package)))
    print(f"built {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
