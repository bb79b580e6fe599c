"""Composition of the running agent (``silson-agent run``, cli.md §3).

Start order (each step may refuse to start with the error's exit status):
umask 077 → logging → keys (permission check, exit 4) → store → audit log (+ config hash record)
→ ingest (observers + scanner + worker) → relay API server → admin listener (``/metrics``,
``/status``) → scheduler (rescan, purge, backup, certificate expiry) → state file → ``ready:`` line.

Stop (SIGTERM/SIGINT): ingest finishes the file in hand, the listeners and the scheduler stop,
the store is checkpointed and closed, the state file is marked stopped, exit 0.

Scheduled jobs (APScheduler, memory job store rebuilt at start, misfires run late once): ``rescan``,
``purge`` (daily at ``retention.purge_at``: ``purge_job``), ``backup`` (daily at ``backup.at``:
``backup_job``, keeping ``backup.keep``), ``cert_expiry``. The purge and backup jobs are module
functions over the store's own ``purge``/``backup`` and the open ``AuditLog``; their ``system.*``
audit record is written first, so an unwritable audit log stops them (fail closed).

``status_document`` builds the ``status --json`` document of cli.md §3.1 from the store (counts are
right while the daemon is stopped) plus the live parts the daemon writes into
``data_dir/agent.state.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from agent import __version__
from agent.clock import Clock, SystemClock, parse_utc, utc_iso
from agent.config import Config, parse_listen
from agent.errors import UnavailableError
from agent.fsutil import atomic_write, ensure_dir
from agent.metrics import JOB_RUNS, exposition

log = logging.getLogger("agent.daemon")

STATE_FILE = "agent.state.json"
LOCK_FILE = "agent.lock"  # held (flock) by the running daemon: one per installation
STATE_REFRESH = 2.0  # seconds between state-file refreshes (status of a running daemon)


# -- state file --------------------------------------------------------------------------------------
def state_path(config: Config) -> Path:
    return config.data_dir / STATE_FILE


def read_state(config: Config) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(config).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def lock_installation(config: Config, *, busy: str) -> IO[bytes]:
    """An exclusive lock on ``data_dir/agent.lock``: the running daemon holds it for its lifetime
    (the OS drops it on any exit, SIGKILL included, so it never goes stale), and a command that
    must not run beside the daemon (``restore``) holds it while it works. ``UnavailableError``
    (exit 5) with ``busy`` when it is held. Close the returned file to release it."""
    from agent.fsutil import ensure_dir

    path = ensure_dir(config.data_dir) / LOCK_FILE
    handle = open(path, "a+b")  # noqa: SIM115 - returned to the caller, who holds it
    try:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UnavailableError(f"{busy} (lock {path} is held)") from None
    return handle


def is_running(state: dict[str, Any] | None) -> bool:
    return bool(state and state.get("running") and pid_alive(int(state.get("pid", 0))))


def _fmt(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(iso: str | None) -> str | None:
    if not iso:
        return None
    return iso[:19] + "Z" if len(iso) >= 19 and iso[10] == "T" else iso


def cert_days_left(path: Path, now: dt.datetime) -> int | None:
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except Exception:
        return None
    return int((cert.not_valid_after_utc - now).total_seconds() // 86400)


def ingest_workers(environ: Any) -> int:
    """Look-ahead worker processes for a backfill (``agent.ingest.prefetch``): one per core, at
    most two (the committing thread needs a core too); none on a one-core machine.
    ``SILSON_INGEST_WORKERS`` overrides it (0 = everything in-process), for benchmarks."""
    override = str(environ.get("SILSON_INGEST_WORKERS", "")).strip()
    if override.isdigit():
        return min(int(override), 8)
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(2, cores)


# -- status ---------------------------------------------------------------------------------------------
def audit_review(audit: Any | None, now: dt.datetime) -> dict[str, Any]:
    """security.md §7.5: whether the monthly access-log review of the previous month is overdue
    (no ``audit report`` for it by the 10th); ``None`` when the audit log cannot be read."""
    from agent.audit.log import review_month

    overdue: bool | None = None
    if audit is not None:
        try:
            overdue = bool(audit.review_overdue(now))
        except Exception:  # noqa: BLE001 - status reports what it can
            overdue = None
    return {"review_overdue": overdue, "review_month": review_month(now)}


def status_document(
    config: Config,
    store: Any | None,
    state: dict[str, Any] | None,
    *,
    now: dt.datetime | None = None,
    audit: Any | None = None,
) -> dict[str, Any]:
    """The ``status --json`` members of cli.md §3.1 (and a few more)."""
    now = now or dt.datetime.now(dt.UTC)
    running = is_running(state)
    live = (state or {}).get("ingest") or {} if running else {}
    counts: dict[str, Any] = {
        "documents": {"current_active": 0, "current_cancelled": 0, "versions_total": 0},
        "ingest": {
            "files_accepted": 0,
            "files_duplicate": 0,
            "files_quarantined": 0,
            "records_committed": 0,
            "last_commit_at": None,
        },
    }
    if store is not None:
        counts = store.counts()
    ingest = dict(counts["ingest"])
    ingest["files_pending"] = int(live.get("files_pending", 0))  # stopped: filled in from the folders below
    ingest["files_deferred"] = int(live.get("files_deferred", 0))
    ingest["last_commit_at"] = _seconds(ingest.get("last_commit_at"))
    if store is not None:
        try:
            ingest["quarantine_entries"] = len(store.quarantine_list())
        except Exception:
            pass
    if live.get("backfill"):
        ingest["backfill"] = live["backfill"]
    ingest["paused"] = bool(live.get("paused", False))
    watch = []
    live_watch = live.get("watch") or []
    for i, w in enumerate(config.watch):
        entry = live_watch[i] if i < len(live_watch) else None
        if entry is None:
            reachable = os.path.isdir(w.path) and os.access(w.path, os.R_OK | os.X_OK)
            entry = {
                "path": w.configured_path or str(w.path),
                "reachable": reachable,
                "pending": _count_pending(w.path) if reachable else 0,
                "observer": "polling" if w.polling else "native",
            }
        watch.append(entry)
    if not running:  # what a stopped daemon would find waiting (cli.md §3.1 files_pending)
        ingest["files_pending"] = sum(int(w.get("pending") or 0) for w in watch)
    api_state = (state or {}).get("api") or {}
    server_cert = Path(config.api.server_cert)
    try:
        free = shutil.disk_usage(config.data_dir).free
    except OSError:
        free = None
    started = (state or {}).get("started_at") if running else None
    since = parse_utc(started)
    uptime = int((now - since).total_seconds()) if since is not None else None
    return {
        "agent_version": __version__,
        "running": running,
        "pid": (state or {}).get("pid") if running else None,
        "uptime_s": uptime,
        "institution_code": config.agent.institution_code,
        "documents": counts["documents"],
        "ingest": ingest,
        "watch": watch,
        "api": {
            "listen": (api_state.get("listen") if running else None) or config.api.listen,
            "last_request_at": api_state.get("last_request_at"),
            "server_cert_expires_in_days": cert_days_left(server_cert, now),
        },
        "admin": {
            "listen": ((state or {}).get("admin") or {}).get("listen") if running else config.admin.listen
        },
        "disk": {"data_dir_free_bytes": free},
        "jobs": (state or {}).get("jobs", []) if running else _static_jobs(config, (state or {}).get("jobs")),
        "relay": (state or {}).get("relay") if running else None,
        "audit": audit_review(audit, now),
        "keys": _key_status(store),
    }


def attention_lines(doc: dict[str, Any]) -> list[str]:
    """What needs the operator, for the text ``status`` and the status page: failing heartbeats and
    clock skew against the relay (relay-api.md §11, C-37), a key rotation still under way
    (security.md §5) and an overdue monthly access-log review (§7.5)."""
    lines = []
    relay = doc.get("relay") or {}
    if relay.get("enrolled") and relay.get("last_result") == "error":
        lines.append(
            f"WARNING: heartbeats to the relay fail ({relay.get('last_error') or 'error'}, "
            f"{int(relay.get('consecutive_failures') or 0)} in a row); serving and ingest go on"
        )
    level = relay.get("clock_skew")
    if level in ("warning", "error"):
        lines.append(f"{level.upper()}: {relay.get('clock_skew_message')}")
    rotation = (doc.get("keys") or {}).get("rotation")
    if rotation and not rotation.get("complete"):
        lines.append(
            f"key rotation to {rotation['kek_id']} under way: {rotation['done']} of "
            f"{rotation['total']} data keys re-wrapped"
        )
    review = doc.get("audit") or {}
    if review.get("review_overdue"):
        month = review.get("review_month")
        lines.append(
            f"WARNING: the monthly access-log review of {month} is overdue; "
            f"run `silson-agent audit report --month {month}`"
        )
    return lines


def _key_status(store: Any | None) -> dict[str, Any] | None:
    if store is None:
        return None
    try:
        return store.key_status()  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - status reports what it can
        return None


def _count_pending(path: Path) -> int:
    """Files a stopped daemon would look at (supported names only, no temp names)."""
    from agent.formats import supported_extension
    from agent.ingest.names import is_temp_name

    n = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if (
                    entry.is_file(follow_symlinks=False)
                    and not is_temp_name(entry.name)
                    and supported_extension(entry.name)
                ):
                    n += 1
    except OSError:
        return 0
    return n


def _static_jobs(config: Config, previous: Any = None) -> list[dict[str, Any]]:
    """The jobs of a stopped agent: nothing is due (``next_run_at`` null), and what the last run
    of the daemon left in its state file (``last_result``, …) is kept, so a job that failed
    before the stop still shows it."""
    last = {j.get("name"): j for j in previous if isinstance(j, dict)} if isinstance(previous, list) else {}
    return [
        {"last_result": None, **last.get(name, {}), "name": name, "next_run_at": None}
        for name in ("rescan", "purge", "backup", "cert_expiry", "cert_renewal", "hourly")
    ]


# -- admin listener -------------------------------------------------------------------------------------
class _AdminHandler(BaseHTTPRequestHandler):
    server_version = "silson-agent-admin"
    sys_version = ""
    daemon_ref: Daemon

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = exposition()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/status", "/status.json"):
            body = json.dumps(self.daemon_ref.status(), ensure_ascii=False).encode("utf-8")
            self._send(200, body, "application/json")
        elif path in ("/", "/status.html"):
            from agent.ops.statuspage import render_status_html

            body = render_status_html(self.daemon_ref.status()).encode("utf-8")
            self._send(200, body, "text/html; charset=utf-8")
        elif (
            path == "/openapi.json"
        ):  # the relay API's contract, to local admins only (never the public port)
            from agent.api.openapi import openapi_json

            doc = openapi_json()
            self._send(200, doc if isinstance(doc, bytes) else doc.encode("utf-8"), "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # access lines add nothing; keep logs lean
        return


class _AdminServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# -- scheduler jobs -----------------------------------------------------------------------------------
class _Jobs:
    """APScheduler 3.x jobs, each wrapped so a failure is counted and shown (PITFALLS.md)."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.scheduler: Any = None

    def wrap(self, name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            started = time.monotonic()
            try:
                fn()
                result = "ok"
            except Exception as exc:
                result = "error"
                log.error(
                    "scheduled job failed",
                    exc_info=True,
                    extra={"job": name, "error_class": type(exc).__name__},
                )
            JOB_RUNS.labels(name, result).inc()
            entry = self.results.setdefault(name, {"failures": 0})
            entry["last_result"] = result
            entry["last_run_at"] = utc_iso(dt.datetime.now(dt.UTC), millis=False)
            entry["duration_s"] = round(time.monotonic() - started, 3)
            if result != "ok":
                entry["failures"] = entry.get("failures", 0) + 1

        return run

    def snapshot(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.scheduler is None:
            return out
        for job in self.scheduler.get_jobs():
            info = self.results.get(job.id, {})
            nxt = getattr(job, "next_run_time", None)
            out.append(
                {
                    "name": job.id,
                    "next_run_at": utc_iso(nxt, millis=False) if nxt else None,
                    "last_result": info.get("last_result"),
                    "last_run_at": info.get("last_run_at"),
                    "failures": info.get("failures", 0),
                }
            )
        return out


# -- the scheduled jobs' work (module functions: the daemon schedules them, tests call them) -----------------
PURGE_ACTION = "system.purge"
BACKUP_ACTION = "system.backup"
KEK_RETIRE_ACTION = "system.keys.retire"
SIGNING_ROTATE_ACTION = "system.keys.rotate_signing"
SYSTEM_SOURCE = {"local": True, "tty": None}
BACKUP_NAME = re.compile(r"backup-(\d{8}T\d{6}Z)(?:-(\d+))?\.sab")


def system_event(action: str, **members: Any) -> dict[str, Any]:
    """An audit event done by the agent itself (scheduled jobs, start/stop): ``actor.kind = system``."""
    return {
        "actor": {"kind": "system"},
        "source": dict(SYSTEM_SOURCE),
        "action": action,
        "result": "success",
        **members,
    }


def _require_audit(audit: Any, what: str) -> Any:
    if audit is None:  # fail closed: these actions are only done with their audit record
        raise UnavailableError(f"the audit log is not available; the scheduled {what} did not run")
    return audit


def purge_job(store: Any, audit: Any, now: dt.datetime) -> Any:
    """The daily purge (security.md §11) with the store's own ``purge``: the documents past
    retention are selected, one ``system.purge`` record listing them is written durably, and only
    then exactly those are deleted — an unwritable audit log deletes nothing (S-18)."""
    audit = _require_audit(audit, "purge")
    planned = store.purge(now, dry_run=True)
    audit.append(system_event(PURGE_ACTION, document_ids=list(planned.doc_ids), counts=dict(planned.counts)))
    result = store.purge(now, only=planned.doc_ids)
    log.info("purge done", extra={"documents": len(result.doc_ids)})
    return result


def retire_signing_keys_job(keys_dir: Path, audit: Any, now: dt.datetime) -> list[str]:
    """Old signing private keys are removed 30 days after ``keys rotate-signing`` (security.md §5),
    audited first; their public keys stay. Returns the retired ``kid`` prefixes."""
    from agent.keys import RETIRED_SIGNING_RE, expired_retired_signing_keys, shred_file

    expired = expired_retired_signing_keys(Path(keys_dir), now.timestamp())
    if not expired:
        return []
    audit = _require_audit(audit, "signing key retirement")
    kids = [m.group(1) for p in expired if (m := RETIRED_SIGNING_RE.match(p.name))]
    audit.append(system_event(KEK_RETIRE_ACTION, signing_kid_prefixes=kids))
    for path in expired:
        shred_file(path)
    log.info("retired signing keys removed", extra={"count": len(expired)})
    return kids


def backup_job(config: Config, store: Any, audit: Any, now: dt.datetime) -> Path:
    """The nightly backup (security.md §11) with the store's own ``backup``, audited first; then the
    scheduled backups beyond ``backup.keep`` are removed (oldest first — only files named by this
    job, never a backup an operator wrote there), and key-encryption keys that neither the store
    nor any remaining backup uses are retired (crypto-shredding of expired backups), audited first."""
    audit = _require_audit(audit, "backup")
    backup_dir = ensure_dir(Path(config.backup.dir))
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = backup_dir / f"backup-{stamp}.sab"
    n = 0
    while out.exists():
        n += 1
        out = backup_dir / f"backup-{stamp}-{n}.sab"
    audit.append(system_event(BACKUP_ACTION, reason="scheduled", backup_file=out.name))
    info = store.backup(out)
    ours = []
    for entry in backup_dir.iterdir():
        match = BACKUP_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            ours.append(((match.group(1), int(match.group(2) or 0)), entry))
    ours.sort()
    removed = [entry for _, entry in ours[: max(0, len(ours) - int(config.backup.keep))]]
    for entry in removed:
        entry.unlink(missing_ok=True)
    if removed:
        _retire_unused_keks(store, audit)
    log.info("backup done", extra={"chunks": info.get("chunks"), "removed": len(removed)})
    return out


def _retire_unused_keks(store: Any, audit: Any) -> list[str]:
    in_backups = store.backup_kek_ids()
    usage = store.kek_usage()
    unused = sorted(
        k
        for k in store.keyring.keks
        if k != store.keyring.current_kek_id and not usage.get(k) and k not in in_backups
    )
    if not unused:
        return []
    # Audited before the key files are destroyed (crypto-shredding is irreversible).
    audit.append(system_event(KEK_RETIRE_ACTION, kek_ids=unused))
    retired, _kept = store.retire_unused_keks()
    return list(retired)


# -- the daemon --------------------------------------------------------------------------------------------
class Daemon:
    """The running agent. ``start()`` brings everything up; ``stop()`` brings it down cleanly."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        stderr: IO[str] | None = None,
        debug: bool = False,
        with_api: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stderr = stderr or sys.stderr
        self.debug = debug
        self.with_api = with_api
        self.store: Any = None
        self.audit: Any = None
        self.keyring: Any = None
        self.ingest: Any = None
        self.api: Any = None
        self.admin: _AdminServer | None = None
        self._admin_thread: threading.Thread | None = None
        self.jobs = _Jobs()
        self.started_at = self.clock.now()
        self._stop = threading.Event()
        # (inode, size, mtime) of the TLS pair and the signing key, for the file watch in wait().
        self._key_files: tuple[tuple[int, int, int] | None, ...] | None = None
        self.api_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.notes: list[str] = []
        self.heartbeat: Any = None
        self._lock_handle: IO[bytes] | None = None

    # -- start ---------------------------------------------------------------------------------------
    def _lock_installation(self) -> None:
        """One daemon per installation (``lock_installation``), held until the process ends."""
        self._lock_handle = lock_installation(
            self.config,
            busy="another silson-agent is already running on this installation; "
            "stop it first, or use `silson-agent status`",
        )

    def _unlock_installation(self) -> None:
        handle, self._lock_handle = self._lock_handle, None
        if handle is not None:
            handle.close()  # closing the file releases the lock

    def start(self) -> None:
        os.umask(0o077)  # every file 0600, every dir 0700 (security.md §10); logs chmod themselves
        from agent.ops.logging_setup import setup_logging

        setup_logging(self.config.log_dir, debug=self.debug)
        try:  # no core dumps: they would hold decrypted documents (security.md §10)
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ImportError, ValueError, OSError):
            pass
        self._lock_installation()
        from agent.keys import load_keyring

        self.keyring = load_keyring(self.config.keys_dir)
        self._sweep_tmp()
        from agent.store.store import Store

        self.store = Store.open(self.config, keyring=self.keyring, clock=self.clock)
        self._open_audit()
        self._start_ingest()
        if self.with_api:
            self._start_api()
        self._start_admin()
        self._start_scheduler()
        self._start_heartbeat()
        self.write_state(running=True)
        line = f"ready: api={_fmt(self.api_address) or 'off'} admin={_fmt(self.admin_address)}"
        log.info(line)
        print(line, file=self.stderr, flush=True)

    def _sweep_tmp(self) -> None:
        """Staging files of a previous run are swept at start (security.md §6.3)."""
        tmp = self.config.data_dir / "tmp"
        if tmp.is_dir():
            for entry in tmp.iterdir():
                try:
                    if entry.is_file() or entry.is_symlink():
                        entry.unlink()
                    elif entry.is_dir():
                        shutil.rmtree(entry)
                except OSError:
                    pass

    def _open_audit(self) -> None:
        try:
            from agent.audit.log import AuditLog
        except ImportError:
            self.notes.append("audit module absent")
            log.warning("audit module absent: running without an access log")
            return
        signer = None
        try:
            signer = self.keyring.signer
        except Exception:
            signer = None
        self.audit = AuditLog.open(self.config, signer=signer, clock=self.clock)
        self._audit_system("system.agent.start")
        self._record_config_hash()

    def _record_config_hash(self, *, reload: bool = False) -> None:
        """security.md §7.1: the config file is hashed at start and on reload (SIGHUP); a hash that
        differs from the last recorded one writes ``admin.config.changed``."""
        from agent.audit.config_change import record_config_hash

        if self.audit is None:
            return
        try:
            if record_config_hash(self.config, self.audit) is not None and reload:
                log.warning("config file changed; the running agent applies it after a restart")
        except Exception as exc:
            log.warning("config hash could not be recorded", extra={"error_class": type(exc).__name__})

    def _audit_system(self, action: str) -> None:
        """Agent start and stop are audited (security.md §7.1); an unwritable log is a warning here
        (requests fail closed on their own), never a reason not to start or stop."""
        if self.audit is None:
            return
        try:
            self.audit.append(system_event(action))
        except Exception:
            log.warning("audit record could not be written", extra={"action": action})

    def _start_heartbeat(self) -> None:
        from agent.ops.heartbeat import Heartbeat

        self.heartbeat = Heartbeat(
            self.config,
            store=self.store,
            audit=self.audit,
            keyring=self.keyring,
            clock=self.clock,
            status_provider=self.status,
        )
        self.heartbeat.start()  # no thread when relay.url is empty (offline installation)

    def reload_tls(self) -> None:
        """SIGHUP: load the renewed certificate/key without dropping the port or open connections,
        and the signing key as it is on disk (``keys rotate-signing``); re-hash the config file."""
        self._record_config_hash(reload=True)
        try:
            self.use_current_signing_key()
        except Exception as exc:
            log.error(
                "signing key reload failed; keeping the current key",
                extra={"error_class": type(exc).__name__},
            )
        if self.api is not None:
            try:
                self.api.reload_tls()
                log.info("tls reloaded")
            except Exception as exc:
                log.error(
                    "tls reload failed; keeping the current certificate",
                    extra={"error_class": type(exc).__name__},
                )

    def _profiles(self) -> list[Any]:
        from agent.commands._common import load_named_profile

        return [load_named_profile(w.profile, self.config) for w in self.config.watch]

    def _start_ingest(self) -> None:
        from agent.ingest.service import IngestService
        from agent.ingest.storeport import IngestStore

        self.ingest = IngestService(
            self.config,
            IngestStore(self.store),
            clock=self.clock,
            profiles=self._profiles(),
            progress_stream=self.stderr,
            workers=ingest_workers(os.environ),
        )
        self.ingest.start()

    def _ingest_status(self) -> str:
        if self.ingest is None:
            return "ok"
        if self.ingest.paused or any(not s.reachable for s in self.ingest.scanners):
            return "degraded"
        return "ok"

    def _start_api(self) -> None:
        try:
            from agent.api.server import RelayServer
        except ImportError:
            self.notes.append("api module absent")
            log.warning("api module absent: running ingest only")
            return
        self.api = RelayServer(
            self.config,
            store=self.store,
            audit=self.audit,
            keyring=self.keyring,
            clock=self.clock,
            ingest_status=self._ingest_status,
        )
        try:
            self.api.start()
        except OSError as exc:
            raise UnavailableError(
                f"cannot listen on api.listen {self.config.api.listen}: {exc.strerror or type(exc).__name__}"
            ) from None
        self.api_address = tuple(self.api.address)[:2]  # type: ignore[assignment]

    def _start_admin(self) -> None:
        host, port = parse_listen(self.config.admin.listen)
        handler = type("AdminHandler", (_AdminHandler,), {"daemon_ref": self})
        try:
            server = _AdminServer((host, port), handler)
        except OSError as exc:
            raise UnavailableError(
                f"cannot listen on admin.listen {self.config.admin.listen}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        self.admin = server
        self.admin_address = server.server_address[:2]  # type: ignore[assignment]
        self._admin_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="admin-http", daemon=True
        )
        self._admin_thread.start()

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        # Memory job store, rebuilt from config at every start (persistent stores pickle callables).
        scheduler = BackgroundScheduler(
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        interval = min((w.scan_interval for w in self.config.watch), default=30)
        scheduler.add_job(
            self.jobs.wrap("rescan", self._job_rescan), IntervalTrigger(seconds=interval), id="rescan"
        )
        ph, pm = (int(x) for x in self.config.retention.purge_at.split(":"))
        scheduler.add_job(
            self.jobs.wrap("purge", self._job_purge), CronTrigger(hour=ph, minute=pm), id="purge"
        )
        bh, bm = (int(x) for x in self.config.backup.at.split(":"))
        scheduler.add_job(
            self.jobs.wrap("backup", self._job_backup), CronTrigger(hour=bh, minute=bm), id="backup"
        )
        scheduler.add_job(
            self.jobs.wrap("cert_expiry", self._job_cert_expiry),
            IntervalTrigger(hours=12),
            id="cert_expiry",
            next_run_time=dt.datetime.now(dt.UTC),
        )
        scheduler.add_job(
            self.jobs.wrap("cert_renewal", self._job_cert_renewal),
            IntervalTrigger(hours=24),
            id="cert_renewal",
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
        )
        # Hourly: audit anchor (security.md §7.3), replay ids > 24 h and expired bindings (relay-api §4, B7).
        scheduler.add_job(
            self.jobs.wrap("hourly", self._job_hourly),
            IntervalTrigger(hours=1),
            id="hourly",
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
        )
        scheduler.start()
        self.jobs.scheduler = scheduler

    # -- jobs ----------------------------------------------------------------------------------------------
    def _job_rescan(self) -> None:
        if self.ingest is not None:
            self.ingest.rescan_all()

    def _job_purge(self) -> None:
        purge_job(self.store, self.audit, self.clock.now())
        if self.audit is not None:
            self.audit.prune(self.clock.now())  # audit records past retention.audit_keep (§7.4)
        retire_signing_keys_job(self.config.keys_dir, self.audit, self.clock.now())

    def _job_hourly(self) -> None:
        now = self.clock.now()
        self.store.replay_prune(now)
        self.store.binding_prune(now)
        if self.audit is not None:
            self.audit.write_anchor()

    def _job_cert_renewal(self) -> None:
        from agent.ops.enroll import enrollment_state, renew_if_due, rotate_signing_key, signing_rotation_due

        if renew_if_due(self.config, self.store, self.keyring, self.clock) and self.api is not None:
            self.api.reload_tls()
        if enrollment_state(self.store) is not None and signing_rotation_due(self.config, self.clock.now()):
            # Yearly signing-key rotation (relay-api.md §10), registered with the relay first.
            audit = _require_audit(self.audit, "signing key rotation")

            def record(old_kid: str, new_kid: str) -> None:
                audit.append(system_event(SIGNING_ROTATE_ACTION, old_kid=old_kid, new_kid=new_kid))

            rotate_signing_key(self.config, self.store, before=record, clock=self.clock)
            self.use_current_signing_key()

    def use_current_signing_key(self) -> None:
        """Sign documents and audit anchors with ``keys/signing.key`` as it is now on disk (after a
        rotation by the yearly job, or by ``keys rotate-signing``: SIGHUP, or seen by the file
        watch within seconds)."""
        from agent.keys import SIGNING_FILE, load_signing_key
        from agent.signing import Signer

        if self.keyring is None:
            return
        key = load_signing_key(self.config.keys_dir / SIGNING_FILE)
        self.keyring.signing_key = key
        signer = Signer(key)
        backend = getattr(self.api, "backend", None)
        if backend is not None and hasattr(backend, "set_signer"):
            backend.set_signer(signer)
        if self.audit is not None and hasattr(self.audit, "set_signer"):
            self.audit.set_signer(signer)

    def _job_backup(self) -> None:
        backup_job(self.config, self.store, self.audit, self.clock.now())

    def _job_cert_expiry(self) -> None:
        days = cert_days_left(Path(self.config.api.server_cert), self.clock.now())
        if days is not None and days < 30:
            log.warning("server certificate expires soon", extra={"days_left": days})

    # -- state / status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return status_document(
            self.config, self.store, self._state(running=True), now=self.clock.now(), audit=self.audit
        )

    def _state(self, *, running: bool) -> dict[str, Any]:
        snap = self.ingest.snapshot() if self.ingest is not None else {}
        last_request = None
        if self.api is not None:
            last_request = getattr(getattr(self.api, "app", None), "last_request_at", None)
            if isinstance(last_request, dt.datetime):
                last_request = utc_iso(last_request, millis=False)
        return {
            "pid": os.getpid(),
            "running": running,
            "started_at": utc_iso(self.started_at, millis=False),
            "updated_at": utc_iso(self.clock.now(), millis=False),
            "api": {"listen": _fmt(self.api_address), "last_request_at": last_request},
            "admin": {"listen": _fmt(self.admin_address)},
            "ingest": snap,
            "jobs": self.jobs.snapshot(),
            "notes": self.notes,
            "relay": self.heartbeat.state() if self.heartbeat is not None else None,
        }

    def write_state(self, *, running: bool) -> None:
        try:
            atomic_write(state_path(self.config), json.dumps(self._state(running=running)).encode("utf-8"))
        except Exception:  # a status refresh must never take the daemon down
            log.warning("state file could not be written", exc_info=True)

    # -- run / stop ----------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def wait(self) -> None:
        self._key_files = self._key_file_stats()
        while not self._stop.wait(STATE_REFRESH):
            self._reload_if_key_files_changed()
            self.write_state(running=True)

    def _key_file_stats(self) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, size, mtime) of the server certificate, its key and the signing key."""
        from agent.keys import SIGNING_FILE

        stats: list[tuple[int, int, int] | None] = []
        for path in (
            Path(self.config.api.server_cert),
            Path(self.config.api.server_key),
            self.config.keys_dir / SIGNING_FILE,
        ):
            try:
                st = path.stat()
                stats.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def _reload_if_key_files_changed(self) -> None:
        """The file watch of issue #6 (besides SIGHUP): a certificate installed by hand or a
        `keys rotate-signing` run by the CLI is taken up within seconds, without a restart. A
        half-written pair is no harm: ``reload_tls`` keeps the current one when the new one does
        not load, and the next change (the second file landing) triggers another attempt."""
        now = self._key_file_stats()
        if self._key_files is not None and now != self._key_files:
            log.info("certificate or signing key changed on disk; reloading")
            self.reload_tls()
        self._key_files = now

    def stop(self) -> None:
        """Finish the file in hand, stop listeners and jobs, close the store cleanly."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.jobs.scheduler is not None:
            try:
                self.jobs.scheduler.shutdown(wait=False)
            except Exception:
                pass
        if self.api is not None:
            try:
                self.api.stop()
            except Exception:
                log.warning("api stop failed", exc_info=True)
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()
        self.write_state(running=False)
        if self.store is not None:
            try:
                self.store.checkpoint()  # WAL TRUNCATE at clean shutdown (security.md §6.3)
            except Exception:
                log.warning("checkpoint at shutdown failed", exc_info=True)
            self.store.close()
        if self.audit is not None:
            self._audit_system("system.agent.stop")
            try:
                self.audit.write_anchor()  # an anchor at shutdown (security.md §7.3)
            except Exception:
                log.warning("audit anchor at shutdown failed", exc_info=True)
            try:
                self.audit.close()
            except Exception:
                pass
        self._unlock_installation()
        log.info("stopped")


def run_daemon(config: Config, *, stderr: IO[str] | None = None, debug: bool = False) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0 on a clean stop)."""
    daemon = Daemon(config, stderr=stderr, debug=debug)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, daemon.request_stop)
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None:  # certificate renewal by hand: reload TLS without a restart
        previous[hup] = signal.getsignal(hup)
        signal.signal(hup, lambda *_: daemon.reload_tls())
    try:
        try:
            daemon.start()
        except BaseException:
            daemon.stop()
            raise
        daemon.wait()
        daemon.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
