"""Running the real daemon as a subprocess (``python -m agent run``) for end-to-end ingest tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess:
    def __init__(self, toml: Path) -> None:
        self.toml = toml
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = toml.parent / "daemon.stderr"

    def start(self, *, wait_ready: bool = True, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        self._err = open(self.stderr_path, "ab")  # noqa: SIM115 (kept open for the process life)
        self._offset = self.stderr_path.stat().st_size
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.toml)],
                                     stdout=subprocess.DEVNULL, stderr=self._err, cwd=str(self.toml.parent),
                                     env=env)
        if wait_ready:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.ready_line():
                    return
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}: {self.new_stderr()}")
                time.sleep(0.05)
            raise AssertionError("daemon not ready in time: " + self.new_stderr())

    def new_stderr(self) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def ready_line(self) -> str | None:
        for line in self.new_stderr().splitlines():
            if line.startswith("ready: "):
                return line
        return None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._err.close()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._err.close()
        return code

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
