"""Who is running an admin command, for its audit record (security.md §7.2, S-39).

``audit_admin(config, "backup", reason=...)`` writes one admin record with
``actor = {"kind": "admin", "os_user", "uid", "host"}`` and ``source = {"local": true, "tty"}``.
Under sudo the invoking user is the real one (``SUDO_USER``/``SUDO_UID``), not root: the
safeguards standard wants actions attributed to a person's account. Admin commands call it
*before* doing their work and let ``AuditUnavailableError`` (exit 5) abort them (fail closed).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from typing import Any

from agent.audit.chain import COMPUTED
from agent.audit.log import AuditLog
from agent.config import Config

ADMIN_PREFIX = "admin."
# Members an admin event may not set through ``extra``: they say who/what and are fixed here.
_FIXED = set(COMPUTED) | {"actor", "source", "action"}


def admin_actor(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"kind": "admin", "os_user", "uid", "host"}`` of the person running this process.

    The account comes from the real uid, not from ``$USER`` (which anyone can set); ``SUDO_USER``
    is believed only when running as root, which is when sudo sets it.
    """
    environ = os.environ if environ is None else environ
    uid: int | None = os.getuid() if hasattr(os, "getuid") else None
    sudo_user = environ.get("SUDO_USER")
    if sudo_user and hasattr(os, "geteuid") and os.geteuid() == 0:
        sudo_uid = environ.get("SUDO_UID", "")
        return {
            "kind": "admin",
            "os_user": sudo_user,
            "uid": int(sudo_uid) if sudo_uid.isdigit() else uid,
            "host": socket.gethostname(),
        }
    return {"kind": "admin", "os_user": _account_name(uid), "uid": uid, "host": socket.gethostname()}


def _account_name(uid: int | None) -> str:
    if uid is not None:
        try:
            import pwd

            return pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError):  # no passwd entry (containers): the number will do
            return str(uid)
    try:
        return getpass.getuser()  # Windows: the logon name
    except (OSError, KeyError):
        return "unknown"


def admin_source() -> dict[str, Any]:
    """``{"local": true, "tty": "/dev/pts/3" | null}`` — the terminal the command came from."""
    tty = None
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                tty = os.ttyname(fd)
                break
        except (OSError, AttributeError):  # Windows has no ttyname
            continue
    return {"local": True, "tty": tty}


def audit_admin(
    config: Config,
    action: str,
    *,
    reason: str | None = None,
    result: str = "success",
    extra: Mapping[str, Any] | None = None,
    log: AuditLog | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Durably write one admin record and return it; raises ``AuditUnavailableError`` (exit 5).

    ``action`` gets the ``admin.`` prefix when it lacks it (``"backup"`` → ``"admin.backup"``).
    ``extra`` adds members (e.g. ``document_ids``, ``subject_ref``, counts); it cannot override
    the actor, source, action or the chain members. Pass ``log`` to reuse an open ``AuditLog``.
    """
    if not action.startswith(ADMIN_PREFIX):
        action = ADMIN_PREFIX + action
    event: dict[str, Any] = {
        "actor": admin_actor(environ),
        "source": admin_source(),
        "action": action,
        "result": result,
        "reason": reason,
    }
    for key, value in (extra or {}).items():
        if key in _FIXED:
            raise ValueError(f"audit_admin: extra may not set {key!r}")
        event[key] = value
    own = log is None
    audit = log or AuditLog.open(config)
    try:
        return audit.append(event)
    finally:
        if own:
            audit.close()
