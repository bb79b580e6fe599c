"""One error hierarchy for the whole agent, each error carrying its CLI exit status (cli.md §2).

Errors raised for a user's mistake carry a message for humans and never personal data; the CLI
prints the message without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    INVALID_INPUT = 3
    CONFIG = 4
    UNAVAILABLE = 5
    INTEGRITY = 6
    INTERRUPTED = 130


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    exit_status: ExitStatus = ExitStatus.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AgentError):
    exit_status = ExitStatus.USAGE


class InvalidInputError(AgentError):
    exit_status = ExitStatus.INVALID_INPUT


class ConfigError(AgentError):
    """Unknown key, wrong type, missing file, bad permission (exit 4)."""

    exit_status = ExitStatus.CONFIG


class UnavailableError(AgentError):
    """A dependency is unavailable or a check failed (exit 5)."""

    exit_status = ExitStatus.UNAVAILABLE


class DiskFullError(UnavailableError):
    """ENOSPC while writing: the operation left no partial state."""


class AuditUnavailableError(UnavailableError):
    """The audit record could not be durably written: fail closed."""


class IntegrityError(AgentError):
    """Tampering or corruption detected (exit 6). Never carries plaintext."""

    exit_status = ExitStatus.INTEGRITY
