"""Opening and reading one candidate file safely (security.md §9 "Paths", exports.md §1).

Every component is opened relative to the watch folder with ``O_NOFOLLOW`` (a directory or file
swapped for a symlink between scan and open cannot redirect us), a symlink is followed only after
checking that its resolved target stays inside the folder, and the content is read from one file
descriptor whose size and mtime are compared before and after the read: a file that changed while
we read it is abandoned without any effect (exports.md §1, "still growing").
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # never block on a FIFO somebody dropped in the folder
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class Gone(Exception):
    """The file vanished (or is no longer a regular file) before it could be read."""


class Unreachable(Exception):
    """The watch folder itself is not there (share away): defer, never treat as empty."""


class Changed(Exception):
    """Size or mtime changed while reading: abandon, retry later."""


class Escapes(Exception):
    """A symlink leads outside the watch folder: ignore, never open its target."""


class TooLarge(Exception):
    def __init__(self, size: int, mtime_ns: int) -> None:
        super().__init__("file larger than max_file_size")
        self.size = size
        self.mtime_ns = mtime_ns


@dataclasses.dataclass(frozen=True)
class FileBytes:
    data: bytes
    size: int
    mtime_ns: int


def _resolve_inside(root: Path, relpath: str) -> str:
    """The real relative path of ``relpath`` if it (through symlinks) stays inside ``root``."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, relpath))
    try:
        inside = os.path.commonpath([real_root, target]) == real_root and target != real_root
    except ValueError:
        inside = False
    if not inside:
        raise Escapes()
    return os.path.relpath(target, real_root)


def _open_relative(root: Path, relpath: str) -> int:
    """Open ``relpath`` under ``root`` component by component, never following a symlink."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise Unreachable() from exc
    try:
        parts = [p for p in relpath.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise Gone()
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                raise Gone() from exc
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def open_candidate(root: Path, relpath: str) -> int:
    """A read-only fd of a regular file inside the folder (symlinks resolved and confined)."""
    if os.name == "nt" or not hasattr(os, "supports_dir_fd") or os.open not in os.supports_dir_fd:
        # Windows has no O_NOFOLLOW/dir_fd: resolve and confine instead (reparse points included).
        rel = _resolve_inside(root, relpath)
        try:
            return os.open(os.path.join(root, rel), os.O_RDONLY | _BINARY)
        except FileNotFoundError as exc:
            raise Gone() from exc
        except PermissionError as exc:  # a sharing violation: still being written
            raise Changed() from exc
    try:
        return _open_relative(root, relpath)
    except OSError as exc:
        if exc.errno == errno.ELOOP or exc.errno == errno.EMLINK:
            # The final component is a symlink: follow it only if it stays inside the folder, and
            # then open the *resolved* path, again without following anything.
            rel = _resolve_inside(root, relpath)
            try:
                return _open_relative(root, rel.replace(os.sep, "/"))
            except OSError as exc2:
                raise Gone() from exc2
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if not os.path.isdir(root):
                raise Unreachable() from exc
            raise Gone() from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EBUSY, errno.ETXTBSY):
            raise Changed() from exc  # locked / not readable yet: "not ready", not an error
        raise


def read_candidate(
    root: Path, relpath: str, *, max_size: int, expect: tuple[int, int] | None = None
) -> FileBytes:
    """Read the whole file, or raise ``TooLarge`` (decided from fstat, nothing read), ``Changed``…

    ``expect`` = (size, mtime_ns) seen by the scan: a file that differs from what settled is not
    the file that settled, so it is abandoned to be looked at again.
    """
    fd = open_candidate(root, relpath)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Gone()
        if before.st_size > max_size:
            raise TooLarge(before.st_size, before.st_mtime_ns)
        if expect is not None and (before.st_size, before.st_mtime_ns) != expect:
            raise Changed()
        chunks = []
        remaining = max_size + 1  # one byte more than allowed tells us the file grew past the cap
        while remaining > 0:
            chunk = os.read(fd, min(1 << 20, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (
        len(data) != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        raise Changed()
    return FileBytes(data, before.st_size, before.st_mtime_ns)


def stat_candidate(root: Path, relpath: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file now, None if it is gone."""
    try:
        st = os.stat(os.path.join(root, relpath))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
