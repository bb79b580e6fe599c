"""Structured JSON-lines logging into ``log_dir`` (security.md §8).

One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` plus any ``extra`` fields the caller
passed (file ids, counts, durations — never document values or original file names). Files are
0640 in a 0750 directory so an operator group can read them (security.md §10 exempts logs from the
0600/0700 rule), rotated by size (10 × 20 MiB) and rotated files older than 90 days are removed at
start.

Exceptions are the dangerous part: their messages and ``repr`` of arguments may carry personal data
(a ``UnicodeDecodeError`` holds the raw bytes, a ``KeyError`` the key). ``ScrubExceptionFilter``
replaces them with class, module and line only — also with ``--debug``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

LOG_FILE = "agent.log"
MAX_BYTES = 20 * 1024 * 1024
BACKUP_COUNT = 10
KEEP_DAYS = 90
FILE_MODE = 0o640
DIR_MODE = 0o750

# Attributes every LogRecord has; anything else came in through ``extra=`` and is emitted as a field.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "exc_summary"}


def exception_summary(exc_info: Any) -> dict[str, Any] | None:
    """Class, module and line of an exception — never its message or arguments."""
    if not exc_info or exc_info is True:
        return None
    exc_type, _exc, tb = exc_info
    if exc_type is None:
        return None
    frames = traceback.extract_tb(tb) if tb is not None else []
    last = frames[-1] if frames else None
    return {
        "class": exc_type.__name__,
        "module": (Path(last.filename).stem if last else exc_type.__module__),
        "line": last.lineno if last else None,
    }


class ScrubExceptionFilter(logging.Filter):
    """Drop exception messages, ``repr`` of arguments and stack text from every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.exc_summary = exception_summary(record.exc_info)
            record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        # A third-party logger may format an exception into its args ("%s" % exc): keep only the
        # types of such arguments, never their text.
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if any(isinstance(a, BaseException) for a in args):
                record.msg = f"{record.msg} (arguments withheld)" if isinstance(record.msg, str) else "log"
                record.args = None
                record.exc_summary = {
                    "class": next(type(a).__name__ for a in args if isinstance(a, BaseException))
                }
        return True


class JsonLinesFormatter(logging.Formatter):
    """One compact JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging nor leak the args
            message = str(record.msg)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        summary = getattr(record, "exc_summary", None)
        if summary:
            entry["exception"] = summary
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


class ModeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Size-rotating handler whose files are 0640 whatever the process umask (077) says."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.chmod(self.baseFilename, FILE_MODE)  # umask 077 would leave 0600
        except OSError:
            pass
        return os.fdopen(fd, self.mode.replace("b", "") or "a", encoding=self.encoding, errors=self.errors)


class _HumanStderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        try:
            return record.getMessage()
        except Exception:
            return str(record.msg)


def _prune_old(log_dir: Path) -> None:
    cutoff = time.time() - KEEP_DAYS * 86400
    for entry in log_dir.glob(LOG_FILE + ".*"):
        try:
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
        except OSError:
            pass


def setup_logging(
    log_dir: Path,
    *,
    debug: bool = False,
    stderr_level: int = logging.WARNING,
    max_bytes: int = MAX_BYTES,
    backup_count: int = BACKUP_COUNT,
) -> logging.Handler:
    """Install the JSON-lines file handler (and a terse stderr handler) on the root logger."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    try:
        os.chmod(log_dir, DIR_MODE)
    except OSError:
        pass
    _prune_old(log_dir)
    scrub = ScrubExceptionFilter()
    handler = ModeRotatingFileHandler(
        log_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
    )
    handler.setFormatter(JsonLinesFormatter())
    handler.addFilter(scrub)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_silson", False):
            root.removeHandler(old)
            old.close()
    handler._silson = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if debug else stderr_level)
    console.setFormatter(_HumanStderrFormatter())
    console.addFilter(scrub)
    console._silson = True  # type: ignore[attr-defined]
    root.addHandler(console)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Chatty libraries: their INFO lines add nothing an operator needs.
    for name in ("apscheduler", "watchdog", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
