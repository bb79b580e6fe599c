"""``make dist``: a one-folder PyInstaller build of the agent (PITFALLS: one-file builds unpack to
a temp folder on every start and leave ``_MEI…`` folders after a crash).

Output: ``dist/silson-agent/silson-agent`` plus its libraries; the shipped vendor profiles are
bundled as data and found through ``sys._MEIPASS``/``importlib.resources``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sep = ";" if os.name == "nt" else ":"
    entry = ROOT / "installer" / "entry.py"
    # option, value pairs on one line each
    # fmt: off
    cmd = [
        sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--onedir",
        "--name", "silson-agent",
        "--distpath", str(ROOT / "dist"), "--workpath", str(ROOT / "build"), "--specpath", str(ROOT / "build"),
        "--collect-submodules", "agent",
        "--add-data", f"{ROOT / 'config' / 'profiles'}{sep}config/profiles",
        "--hidden-import", "uvicorn.protocols.http.httptools_impl",
        "--hidden-import", "uvicorn.lifespan.off",
    ]
    # fmt: on
    if os.name == "nt":
        cmd += ["--hidden-import", "win32timezone"]  # pywin32 services need it (PITFALLS)
    cmd.append(str(entry))
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        exe = ROOT / "dist" / "silson-agent" / ("silson-agent.exe" if os.name == "nt" else "silson-agent")
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
        print(f"built {exe}: {out.stdout.strip()}", flush=True)
        rc = out.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
