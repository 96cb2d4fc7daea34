"""Schedules of periodic tasks: which period a moment belongs to, and the next one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgbg.exceptions import InvalidOption
from pgbg.periodic import Cron, Every, schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_every_counts_periods_from_the_epoch() -> None:
    hourly = schedule(every=3600)
    assert hourly == Every(3600.0)
    assert hourly.latest(at("2026-01-01T12:34:56+00:00")) == at("2026-01-01T12:00:00+00:00")
    assert hourly.next_after(at("2026-01-01T12:34:56+00:00")) == at("2026-01-01T13:00:00+00:00")
    # a period boundary belongs to the period it starts; the next one is strictly after
    assert hourly.latest(at("2026-01-01T12:00:00+00:00")) == at("2026-01-01T12:00:00+00:00")
    assert hourly.next_after(at("2026-01-01T12:00:00+00:00")) == at("2026-01-01T13:00:00+00:00")
    assert schedule(every=timedelta(minutes=15)) == Every(900.0)


def test_every_handles_fractions_of_a_second_exactly() -> None:
    every = Every(1.5)
    start = at("2026-01-01T00:00:00+00:00")
    periods = [every.latest(start + timedelta(seconds=s / 10)) for s in range(0, 60)]
    assert sorted(set(periods)) == [start + timedelta(seconds=1.5 * k) for k in range(4)]


def test_cron_in_utc_and_on_the_boundary() -> None:
    cron = schedule(cron="*/15 * * * *")
    assert cron == Cron("*/15 * * * *", "UTC")
    assert cron.latest(at("2026-01-01T12:14:59.999+00:00")) == at("2026-01-01T12:00:00+00:00")
    assert cron.latest(at("2026-01-01T12:15:00+00:00")) == at("2026-01-01T12:15:00+00:00")
    assert cron.next_after(at("2026-01-01T12:15:00+00:00")) == at("2026-01-01T12:30:00+00:00")
    assert cron.next_after(at("2026-01-01T12:14:59.5+00:00")) == at("2026-01-01T12:15:00+00:00")


def test_cron_reads_its_time_zone() -> None:
    daily = schedule(cron="0 3 * * *", timezone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC in summer
    assert daily.next_after(at("2026-01-10T00:00:00+00:00")) == at("2026-01-10T02:00:00+00:00")
    assert daily.next_after(at("2026-07-10T00:00:00+00:00")) == at("2026-07-10T01:00:00+00:00")


def test_cron_with_seconds_as_a_sixth_field() -> None:
    cron = schedule(cron="* * * * * */10")
    assert cron.next_after(at("2026-01-01T00:00:05+00:00")) == at("2026-01-01T00:00:10+00:00")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one"),
    ({"cron": "* * * * *", "every": 60}, "exactly one"),
    ({"cron": "every minute"}, "not a cron expression"),
    ({"cron": "61 * * * *"}, "not a cron expression"),
    ({"every": 0.5}, "at least 1 second"),
    ({"every": True}, "at least 1 second"),
    ({"every": float("inf")}, "at least 1 second"),
    ({"every": "60"}, "at least 1 second"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"every": 60, "timezone": "Mars/Olympus"}, "unknown time zone"),
])
def test_bad_schedules_are_refused_with_the_reason(kwargs: dict[str, object],
                                                   message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        schedule(**kwargs)  # type: ignore[arg-type]
