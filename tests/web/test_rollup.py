"""The overview's day, an hour at a time (pgbg/web/rollup.py): the same figures as one
read of the whole day, each complete hour read once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest

from pgbg.web import data, rollup


def _finish(conn: psycopg.Connection[Any], hours_ago: float, n: int, status: str = "succeeded",
            task_type: str = "t") -> None:
    conn.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, attempt, queued_at, started_at,
                                  finished_at)
           SELECT gen_random_uuid(), %(type)s, 'json:dumps', %(status)s, 1,
                  now() - make_interval(secs => %(ago)s * 3600 + 3 + i),
                  now() - make_interval(secs => %(ago)s * 3600 + 1 + i),
                  now() - make_interval(secs => %(ago)s * 3600 + i)
             FROM generate_series(0, %(n)s - 1) i""",
        {"type": task_type, "status": status, "ago": hours_ago, "n": n})


def test_the_day_by_hours_matches_one_read_of_the_day(conn: psycopg.Connection[Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for hours_ago, n in ((0, 3), (1.5, 5), (7.2, 2), (22.5, 4), (30, 9)):
        _finish(conn, hours_ago, n)
    _finish(conn, 3.1, 2, "failed", task_type="other")
    day = rollup.DayRollup()
    reads: list[tuple[datetime, datetime]] = []
    real = data.hour_figures

    def counted(c: psycopg.Connection[Any], start: datetime, end: datetime) -> Any:
        reads.append((start, end))
        return real(c, start, end)

    monkeypatch.setattr(data, "hour_figures", counted)
    by_type, buckets = day.figures(conn)
    whole = data.series(conn, 86400, 3600)
    assert [(b.start, b.finished, b.failed) for b in buckets] == [
        (b.start, b.finished, b.failed) for b in whole]
    assert len(buckets) == 24 and sum(b.finished for b in buckets) == 3 + 5 + 2 + 2 + 4 + 0
    hour = data.this_hour(conn)
    if not any(b.finished for b in buckets[-1:]):  # the current hour turned meanwhile
        pytest.skip("the hour turned during the test")
    assert by_type == {"t": {"succeeded": 3 + 5 + 2 + 4}, "other": {"failed": 2}}
    assert len(reads) == 2  # the 23 complete hours, then the current one
    reads.clear()
    _finish(conn, 0, 4)  # more in the current hour: read again; the kept hours are not
    by_type, buckets = day.figures(conn)
    assert reads == [(hour, hour + rollup.HOUR)]
    assert buckets[-1].finished == 3 + 4 and by_type["t"]["succeeded"] == 3 + 5 + 2 + 4 + 4
