"""Heartbeat to the relay (relay-api.md §11): one background thread, never in the serving path.

Schedule: the first beat within 30 s of ``start()`` (by default after 2–20 s, so that even a beat
taking the full 10 s timeout has reached the relay by then), then every ``relay.heartbeat_interval``
±10 % jitter. The relay may suggest another period through ``next_interval_s``; it is honoured only
within 60–3,600 s, otherwise the configured one is used. After a failed beat (network error,
timeout, non-2xx) the next attempt comes after 30 s × 2^(n−1) (n = consecutive failures), capped at
15 min, then ±20 % jitter; a success returns to the normal schedule.

The body has exactly the members of §11 (``MEMBERS``), no personal data; values come from the
``status_provider`` (the ``status --json`` document, or a flat dict with the member names) with
local fallbacks. From the response only ``server_time`` (clock skew: > 60 s warning, > 300 s error)
and ``next_interval_s`` are used; every other member is ignored — a heartbeat response can never
change configuration, keys or code. ``state()`` is what ``status`` and ``doctor`` show.

A failing heartbeat never raises out of the thread and never touches serving or ingest. For tests,
``first_delay``, ``interval``, ``rng`` (anything with ``uniform(a, b)``) and ``wait`` (called with
each delay; returns True to stop) are injectable, and ``beat_once()`` / ``next_delay()`` can be
driven directly; ``delays`` records every delay the thread waited for.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import API_REVISION, __version__
from agent.clock import Clock, SystemClock, parse_utc, utc_iso
from agent.config import Config
from agent.ops.enroll import RelayResponse, enrollment_state, relay_post

log = logging.getLogger("agent.heartbeat")

MEMBERS = (
    "agent_id",
    "institution_code",
    "sent_at",
    "agent_version",
    "api_revision",
    "status",
    "uptime_s",
    "queue_depth",
    "quarantined_total",
    "last_ingest_at",
    "last_relay_request_at",
    "disk_free_bytes",
    "cert_expiry_days",
    "signing_key_id",
    "audit_head",
    "audit_review_overdue",
)
FIRST_BEAT_RANGE = (2.0, 20.0)  # seconds after start; + at most 10 s of request = within 30 s
SUGGESTED_RANGE = (60, 3600)  # next_interval_s honoured only within this range
BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 900.0
NORMAL_JITTER = 0.10
BACKOFF_JITTER = 0.20
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 10.0
SKEW_WARNING_S = 60
SKEW_ERROR_S = 300
ZERO_HASH = "0" * 64


def backoff_base(failures: int) -> float:
    """30 s × 2^(n−1) for n consecutive failures, capped at 15 min (before jitter)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_BASE_S * 2 ** min(failures - 1, 32), BACKOFF_CAP_S)


def suggested_interval(value: Any) -> int | None:
    """``next_interval_s`` when it is an integer within 60–3,600 s, else ``None`` (ignored)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if SUGGESTED_RANGE[0] <= value <= SUGGESTED_RANGE[1] else None


def skew_level(skew_s: float | None) -> str:
    """``unknown`` / ``ok`` / ``warning`` (> 60 s) / ``error`` (> 300 s: relay requests would be refused)."""
    if skew_s is None:
        return "unknown"
    skew = abs(skew_s)
    if skew > SKEW_ERROR_S:
        return "error"
    if skew > SKEW_WARNING_S:
        return "warning"
    return "ok"


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return None


def _timestamp(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return utc_iso(value, millis=False)
    if isinstance(value, str) and value:
        moment = parse_utc(value)
        return utc_iso(moment, millis=False) if moment else None
    return None


class Heartbeat:
    """The heartbeat thread. ``start()`` → bool (False when ``relay.url`` is empty), ``stop()``."""

    def __init__(
        self,
        config: Config,
        *,
        store: Any,
        audit: Any,
        keyring: Any,
        clock: Clock | None = None,
        status_provider: Callable[[], Mapping[str, Any]] | None = None,
        first_delay: float | None = None,
        interval: float | None = None,
        rng: Any = None,
        wait: Callable[[float], bool] | None = None,
        post: Callable[..., RelayResponse] = relay_post,
    ) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.keyring = keyring
        self.clock = clock or SystemClock()
        self.status_provider = status_provider or dict
        self._rng = rng or random.Random()
        self.first_delay = first_delay if first_delay is not None else self._rng.uniform(*FIRST_BEAT_RANGE)
        self.configured_interval = float(
            interval if interval is not None else config.relay.heartbeat_interval
        )
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._post = post
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started_mono = self.clock.monotonic()
        self.delays: collections.deque[float] = collections.deque(maxlen=256)
        # state shown by status/doctor
        self._interval = self.configured_interval
        self._failures = 0
        self._enrolled: bool | None = None
        self._agent_id: str | None = None
        self._last_attempt: dt.datetime | None = None
        self._last_success: dt.datetime | None = None
        self._last_result: str | None = None
        self._last_error: str | None = None
        self._next_at: dt.datetime | None = None
        self._next_delay: float | None = None
        self._server_time: str | None = None
        self._skew: int | None = None
        self.beats = 0  # attempts made (tests, metrics)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config.relay.url)

    def start(self) -> bool:
        if not self.enabled:
            log.info("heartbeat off: relay.url is empty")
            return False
        if self._thread is not None:
            return True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="relay-heartbeat", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        delay = self.first_delay
        while True:
            self._schedule(delay)
            if self._wait(delay) or self._stop.is_set():
                return
            try:
                self.beat_once()
                delay = self.next_delay()
            except Exception:  # belt and braces: nothing escapes the thread
                log.error("heartbeat loop error", exc_info=True)
                delay = self.configured_interval

    def _schedule(self, delay: float) -> None:
        with self._lock:
            self.delays.append(delay)
            self._next_delay = delay
            self._next_at = self.clock.now() + dt.timedelta(seconds=delay)

    # -- one beat ----------------------------------------------------------------------------------
    def next_delay(self) -> float:
        """The wait before the next attempt, after the last one (jitter included)."""
        with self._lock:
            if self._failures:
                base, jitter = backoff_base(self._failures), BACKOFF_JITTER
            else:
                base, jitter = self._interval, NORMAL_JITTER
        return float(base * self._rng.uniform(1 - jitter, 1 + jitter))

    def beat_once(self) -> bool:
        """Send one heartbeat; True on a 2xx. Never raises."""
        try:
            state = enrollment_state(self.store)
        except Exception as exc:
            return self._failed(type(exc).__name__)
        if not state or not state.get("agent_id") or not state.get("heartbeat_url"):
            with self._lock:
                self._enrolled = False
                self._last_result = "not_enrolled"
                self._failures = 0
            return False
        url = str(state["heartbeat_url"])
        with self._lock:
            self._enrolled = True
            self._agent_id = str(state["agent_id"])
        if urlsplit(url).scheme != "https":
            return self._failed("heartbeat_url_not_https")
        try:
            body = self.build_body(state)
            sent = self.clock.now()
            with self._lock:
                self._last_attempt = sent
                self.beats += 1
            response = self._post(
                url,
                body,
                verify=Path(self.config.relay.server_ca),
                cert=(Path(self.config.api.server_cert), Path(self.config.api.server_key)),
                connect_timeout=CONNECT_TIMEOUT,
                total_timeout=TOTAL_TIMEOUT,
            )
            received = self.clock.now()
        except Exception as exc:
            return self._failed(type(exc).__name__)
        if not 200 <= response.status < 300:
            return self._failed(f"http_{response.status}")
        self._succeeded(response.body, sent, received)
        return True

    def _failed(self, reason: str) -> bool:
        with self._lock:
            self._failures += 1
            self._last_result = "error"
            self._last_error = reason
            failures = self._failures
        log.warning(
            "heartbeat failed",
            extra={
                "error_class": reason,
                "consecutive_failures": failures,
                "retry_base_s": backoff_base(failures),
            },
        )
        return False

    def _succeeded(self, answer: Any, sent: dt.datetime, received: dt.datetime) -> None:
        answer = answer if isinstance(answer, dict) else {}
        # Only these two members are read; anything else (config, command, …) is ignored.
        suggested = suggested_interval(answer.get("next_interval_s"))
        server_time = parse_utc(answer.get("server_time"))
        skew = None
        if server_time is not None:
            local = sent + (received - sent) / 2
            skew = int(round((server_time - local).total_seconds()))
        with self._lock:
            previous_level = skew_level(self._skew)
            self._failures = 0
            self._last_result = "ok"
            self._last_error = None
            self._last_success = received
            self._interval = float(suggested) if suggested is not None else self.configured_interval
            if server_time is not None:
                self._server_time = utc_iso(server_time, millis=False)
                self._skew = skew
        level = skew_level(skew)
        if skew is not None and level != previous_level and level in ("warning", "error"):
            (log.error if level == "error" else log.warning)(
                "clock differs from the relay", extra={"clock_skew_s": skew, "level": level}
            )

    # -- body ----------------------------------------------------------------------------------------
    def build_body(self, state: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Exactly the §11 members, nothing else (no personal data can get in: every value is a
        count, a time, an id of the agent or a hash)."""
        if state is None:
            state = enrollment_state(self.store) or {}
        try:
            doc = dict(self.status_provider() or {})
        except Exception:
            log.warning("status provider failed; heartbeat sent with local values", exc_info=True)
            doc = {}
        ingest: Mapping[str, Any] = doc["ingest"] if isinstance(doc.get("ingest"), Mapping) else {}
        api: Mapping[str, Any] = doc["api"] if isinstance(doc.get("api"), Mapping) else {}
        disk: Mapping[str, Any] = doc["disk"] if isinstance(doc.get("disk"), Mapping) else {}
        now = self.clock.now()

        def pick(flat: str, nested: Any) -> Any:
            return doc[flat] if flat in doc else nested

        uptime = _int(pick("uptime_s", None))
        if uptime is None:
            uptime = int(self.clock.monotonic() - self._started_mono)
        quarantined = _int(pick("quarantined_total", ingest.get("files_quarantined")))
        queue = _int(
            pick("queue_depth", (ingest.get("files_pending") or 0) + (ingest.get("files_deferred") or 0))
        )
        disk_free = _int(pick("disk_free_bytes", disk.get("data_dir_free_bytes")))
        if disk_free is None:
            try:
                disk_free = shutil.disk_usage(self.config.data_dir).free
            except OSError:
                disk_free = None
        expiry = _int(pick("cert_expiry_days", api.get("server_cert_expires_in_days")))
        if expiry is None:
            expiry = self._cert_days_left(now)
        status = doc.get("status")
        if status not in ("ok", "degraded", "error"):
            watch = doc.get("watch") or []
            degraded = bool(ingest.get("paused")) or any(
                isinstance(w, Mapping) and w.get("reachable") is False for w in watch
            )
            status = "degraded" if degraded else "ok"
        seq, head_hash = 0, ZERO_HASH
        overdue = False
        if self.audit is not None:
            try:
                seq, head_hash = self.audit.head()
            except Exception:
                log.warning("audit head unavailable for the heartbeat", exc_info=True)
            try:
                overdue = bool(self.audit.review_overdue(now))
            except Exception:
                overdue = False
        kid = None
        try:
            kid = self.keyring.signer.kid if self.keyring is not None else None
        except Exception:
            kid = None
        body = {
            "agent_id": state.get("agent_id"),
            "institution_code": str(self.config.agent.institution_code),
            "sent_at": utc_iso(now, millis=False),
            "agent_version": __version__,
            "api_revision": API_REVISION,
            "status": status,
            "uptime_s": max(0, uptime),
            "queue_depth": queue or 0,
            "quarantined_total": quarantined or 0,
            "last_ingest_at": _timestamp(pick("last_ingest_at", ingest.get("last_commit_at"))),
            "last_relay_request_at": _timestamp(pick("last_relay_request_at", api.get("last_request_at"))),
            "disk_free_bytes": disk_free,
            "cert_expiry_days": expiry,
            "signing_key_id": kid or state.get("signing_key_id"),
            "audit_head": {"seq": int(seq), "hash": str(head_hash)},
            "audit_review_overdue": overdue,
        }
        assert tuple(body) == MEMBERS
        return body

    def _cert_days_left(self, now: dt.datetime) -> int | None:
        try:
            from cryptography import x509

            cert = x509.load_pem_x509_certificates(Path(self.config.api.server_cert).read_bytes())[0]
        except Exception:
            return None
        return int((cert.not_valid_after_utc - now).total_seconds() // 86400)

    # -- what status / doctor show -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            level = skew_level(self._skew)
            message = None
            if level == "warning":
                message = (
                    f"clock differs from the relay by {self._skew} s (more than {SKEW_WARNING_S} s); "
                    "check time synchronisation"
                )
            elif level == "error":
                message = (
                    f"clock differs from the relay by {self._skew} s (more than {SKEW_ERROR_S} s): "
                    "relay requests will be refused with clock-skew; fix time synchronisation"
                )
            return {
                "enabled": self.enabled,
                "running": self._thread is not None and self._thread.is_alive(),
                "enrolled": self._enrolled,
                "agent_id": self._agent_id,
                "interval_s": int(self._interval),
                "last_attempt_at": utc_iso(self._last_attempt, millis=False) if self._last_attempt else None,
                "last_success_at": utc_iso(self._last_success, millis=False) if self._last_success else None,
                "last_result": self._last_result,
                "last_error": self._last_error,
                "consecutive_failures": self._failures,
                "next_attempt_at": utc_iso(self._next_at, millis=False) if self._next_at else None,
                "next_delay_s": round(self._next_delay, 3) if self._next_delay is not None else None,
                "server_time": self._server_time,
                "clock_skew_s": self._skew,
                "clock_skew": level,
                "clock_skew_message": message,
            }


__all__ = ["MEMBERS", "Heartbeat", "backoff_base", "skew_level", "suggested_interval"]
