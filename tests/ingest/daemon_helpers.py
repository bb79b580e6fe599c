"""Running the real daemon as a subprocess (``python -m agent run``) for end-to-end ingest tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _proc_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, …), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def alive(process: tuple[int, bytes]) -> bool:
    """The very process (not a zombie, not a later one with the same pid) still exists."""
    stat = _proc_stat(process[0])
    return stat is not None and stat[19] == process[1] and stat[0] != b"Z"


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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.toml)],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            cwd=str(self.toml.parent),
            env=env,
        )
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

    def descendants(self) -> list[tuple[int, bytes]]:
        """(pid, start time) of every process below the daemon (look-ahead fork server and
        workers), Linux; the start time tells a process from a later one that reuses its pid."""
        assert self.proc is not None
        children: dict[int, list[tuple[int, bytes]]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
                children.setdefault(int(stat[1]), []).append((int(entry), stat[19]))
        found, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child[0])
        return found

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
