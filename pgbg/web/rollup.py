"""The overview's last 24 hours, an hour at a time.

A complete hour's figures never change (a task's ``finished_at`` is the database clock at
its end, so nothing finishes in an hour already past), so each is read once per process
and kept; only the current hour is read at each request, and the 23 before it when the
process starts (``warm``, in the background) or as each hour closes. Behind 1,000,000
finished tasks the overview then reads some thousands of rows, not the day's 100,000s.
A purge does not lower a kept hour's counts: they say what finished then.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg

from pgbg.web import data

HOURS = 24  # the current one and the 23 before it
HOUR = timedelta(hours=1)
Figures = tuple[dict[str, dict[str, int]], list[data.Bucket]]


class DayRollup:
    """The kept hours of one process, shared by its request threads."""

    def __init__(self) -> None:
        self._buckets: dict[datetime, data.Bucket] = {}
        self._counts: dict[datetime, dict[str, dict[str, int]]] = {}
        self._kept: set[datetime] = set()  # complete hours read (an empty one too)
        self._lock = threading.Lock()

    def figures(self, conn: psycopg.Connection[Any]) -> Figures:
        """Counts by type and status over the 24 hours, and one bucket per hour, oldest
        first (an hour with nothing finished as zero)."""
        now = data.this_hour(conn)
        hours = [now - HOUR * back for back in range(HOURS - 1, -1, -1)]
        with self._lock:
            missing = [hour for hour in hours[:-1] if hour not in self._kept]
        if missing:  # read outside the lock: another thread may read them too, harmlessly
            buckets, counts = data.hour_figures(conn, missing[0], missing[-1] + HOUR)
            with self._lock:
                self._buckets.update(buckets)
                self._counts.update(counts)
                self._kept.update(missing)
                for old in [h for h in self._kept if h < hours[0]]:
                    self._kept.discard(old)
                    self._buckets.pop(old, None)
                    self._counts.pop(old, None)
        current_buckets, current_counts = data.hour_figures(conn, now, now + HOUR)
        with self._lock:
            buckets = {**self._buckets, **current_buckets}
            counts = {**self._counts, **current_counts}
        by_type: dict[str, dict[str, int]] = {}
        for hour in hours:
            for task_type, statuses in counts.get(hour, {}).items():
                row = by_type.setdefault(task_type, {})
                for status, n in statuses.items():
                    row[status] = row.get(status, 0) + n
        return by_type, [buckets.get(hour) or data.Bucket(hour, 0, 0, None, None, None, None)
                         for hour in hours]
