"""Durable file operations: atomic writes (temp, fsync, rename, fsync dir) and safe directories.

Every file the agent creates is 0600 and every directory 0700 (security.md §10); the rename is only
durable once the directory is fsynced, or a power failure may lose it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename/create/unlink in it survives power loss."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` atomically, refusing to replace an existing file (keys are never overwritten)."""
    if path.exists():
        raise FileExistsError(str(path))
    atomic_write(path, data, mode)
