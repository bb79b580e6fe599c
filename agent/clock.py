"""Time as a dependency: ``SystemClock`` in production, ``FakeClock`` in tests.

Rules that depend on time (replay window, claim-binding life, retention, R-034) take a clock so
tests can move time without sleeping.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Protocol

KST = dt.timezone(dt.timedelta(hours=9), "KST")


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2025, 11, 3, 5, 12, tzinfo=dt.UTC)
        self._mono = 1000.0

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds


def utc_iso(moment: dt.datetime, millis: bool = True) -> str:
    """RFC 3339 UTC with ``Z`` (``2025-11-03T05:12:00.481Z``)."""
    m = moment.astimezone(dt.UTC)  # f-string fields: several times cheaper than strftime (hot path)
    head = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    return f"{head}.{m.microsecond // 1000:03d}Z" if millis else f"{head}Z"


def parse_utc(text: Any) -> dt.datetime | None:
    """An RFC 3339 time with an offset (``Z`` allowed) from outside — a relay answer — in UTC, or
    ``None`` when it is not a string, malformed, without offset, or beyond the calendar in UTC
    (year 1 at +14:00)."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(dt.UTC) if moment.tzinfo else None
    except (ValueError, OverflowError):
        return None


def kst_iso(moment: dt.datetime) -> str:
    """RFC 3339 in Asia/Seoul (+09:00) with milliseconds."""
    m = moment.astimezone(KST)
    head = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    return f"{head}.{m.microsecond // 1000:03d}+09:00"
