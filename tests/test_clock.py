"""``agent.clock``: the RFC 3339 helpers every module uses for times from and to the outside."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import parse_utc, utc_iso


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T05:00:00Z", dt.datetime(2026, 11, 24, 5, tzinfo=dt.UTC)),
        ("2026-11-24T14:00:00+09:00", dt.datetime(2026, 11, 24, 5, tzinfo=dt.UTC)),
        ("2026-11-24T05:00:00.250Z", dt.datetime(2026, 11, 24, 5, 0, 0, 250_000, tzinfo=dt.UTC)),
        ("2026-11-24T05:00:00", None),  # no offset: not a point in time
        ("0001-01-01T00:00:00+14:00", None),  # before year 1 in UTC
        ("9999-12-31T23:59:59-14:00", None),  # after year 9999 in UTC
        ("2026-02-30T00:00:00Z", None),
        ("soon", None),
        ("", None),
        (1700000000, None),
        (None, None),
    ],
)
def test_parse_utc(text, expected) -> None:
    assert parse_utc(text) == expected


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_utc_iso_round_trips_through_parse_utc(moment: dt.datetime) -> None:
    assert parse_utc(utc_iso(moment)) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@given(st.text(max_size=40))
def test_parse_utc_never_raises(text: str) -> None:
    result = parse_utc(text)
    assert result is None or result.tzinfo is dt.UTC
