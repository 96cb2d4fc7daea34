"""Operating the queue: listing, retrying, purging, statistics, diagnostics.

The ``pgbg`` CLI is a thin layer over these functions; they are public so an application
can build its own admin pages on them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from pgbg import db, queries
from pgbg.api import Result, task_id
from pgbg.exceptions import InvalidOption, InvalidTaskState, TaskNotFound
from pgbg.models import TERMINAL_STATUSES, BackgroundTask, TaskStatus

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"`` (or a plain number of seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise InvalidOption(f"{text!r} is not a duration like 90s, 15m, 12h, 7d or 2w")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _statuses(statuses: list[str] | None) -> list[str] | None:
    if not statuses:
        return None
    known = {s.value for s in TaskStatus}
    for status in statuses:
        if status not in known:
            raise InvalidOption(f"unknown status {status!r}; one of {', '.join(sorted(known))}")
    return statuses


def list_tasks(status: list[str] | None = None, task_type: str | None = None,
               since: timedelta | None = None, limit: int = 50) -> list[BackgroundTask]:
    """Tasks, newest first, filtered by status, exact type and how recently queued."""
    if limit < 1:
        raise InvalidOption(f"limit must be positive, not {limit}")
    with db.shared_connection() as conn:
        return queries.task_list(conn, _statuses(status), task_type,
                                 since.total_seconds() if since else None, limit)


@dataclass(frozen=True)
class LogLine:
    at: datetime
    level: str
    message: str


def get_task_log(task: object) -> list[LogLine]:
    tid = task_id(task)
    with db.shared_connection() as conn:
        return [LogLine(*row) for row in queries.task_log_list(conn, tid)]


def get_task_links(task: object) -> list[tuple[str, str]]:
    tid = task_id(task)
    with db.shared_connection() as conn:
        return queries.task_link_list(conn, tid)


@dataclass(frozen=True)
class WorkerInfo:
    id: Any
    hostname: str
    pid: int
    concurrency: int
    running: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float  # seconds since the last heartbeat, by the database clock


def list_workers() -> list[WorkerInfo]:
    with db.shared_connection() as conn:
        return [WorkerInfo(**row) for row in queries.worker_list(conn)]


def retry_task(task: object) -> Result:
    """Queue a failed, terminated or cancelled task again, as a new attempt of the same row.

    ``InvalidTaskState`` while its process has not exited yet (a task that recorded its own
    failure), or while another live task holds its unique_key."""
    tid = task_id(task)
    with db.shared_connection() as conn:
        return requeue(conn, tid)


def requeue(conn: psycopg.Connection[Any], tid: uuid.UUID) -> Result:
    """``retry_task`` on ``conn`` (an autocommit psycopg connection of the caller's)."""
    try:
        outcome = queries.task_requeue(conn, tid, "queued again by retry_task")
    except psycopg.errors.CheckViolation as exc:  # only rows from before migration 0014
        raise InvalidTaskState(f"task {tid} cannot be queued again: its num_of_task_type "
                               "is longer than 2048 bytes (migration 0014)") from exc
    if outcome is None:
        raise TaskNotFound(f"no task with id {tid}")
    previous, why_not = outcome
    if previous not in (TaskStatus.FAILED, TaskStatus.TERMINATED, TaskStatus.CANCELLED):
        raise InvalidTaskState(f"task {tid} is {previous.value}; only failed, terminated or "
                               "cancelled tasks can be retried")
    if why_not is not None:
        raise InvalidTaskState(f"task {tid} ({previous.value}) cannot be queued again now: "
                               f"{why_not}")
    return Result(tid)


def purge_tasks(older_than: timedelta, status: list[str] | None = None,
                batch_size: int = 1000) -> int:
    """Delete finished tasks that finished more than ``older_than`` ago, in batches (each
    its own short transaction, so workers are never held up); return how many."""
    statuses = _statuses(status) or [s.value for s in TERMINAL_STATUSES]
    live = [s for s in statuses if not TaskStatus(s).is_terminal]
    if live:
        raise InvalidOption(f"only finished tasks can be purged, not {', '.join(live)}")
    if older_than.total_seconds() < 0:
        raise InvalidOption("older_than must not be negative")
    total = 0
    with db.shared_connection() as conn:
        while deleted := queries.task_purge_batch(conn, older_than.total_seconds(), statuses,
                                                  batch_size):
            total += deleted
    return total


def task_stats(window: timedelta = timedelta(hours=24)) -> list[dict[str, Any]]:
    """Per type: queued and running now; finished in ``window`` by outcome; p50/p95 wait
    and run times (seconds) of the tasks in the window."""
    with db.shared_connection() as conn:
        return queries.task_stats(conn, window.total_seconds())


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: str
    hint: str


def _expected_indexes() -> set[str]:
    from pgbg.schema import metadata

    return {index.name for table in metadata.tables.values() for index in table.indexes
            if index.name}


def doctor(lease: float = 30.0, *, max_transaction_age: float = 300.0) -> list[Check]:
    """What degrades a PostgreSQL queue, each reading with a plain-language hint."""
    with db.shared_connection() as conn:
        return doctor_checks(conn, lease, max_transaction_age=max_transaction_age)


def doctor_checks(conn: psycopg.Connection[Any], lease: float = 30.0, *,
                  max_transaction_age: float = 300.0) -> list[Check]:
    """``doctor`` on ``conn`` (an autocommit psycopg connection of the caller's)."""
    r = queries.doctor_readings(conn, lease)
    dead, live = r["dead_tuples"] or 0, r["live_tuples"] or 0
    oldest = r["oldest_transaction"]
    missing = sorted(_expected_indexes() - set(r["indexes"] or []))
    last_vacuum = r["last_vacuum"]
    return [
        Check("dead tuples in pgbg.task", dead <= max(1000, live),
              f"{dead} dead, {live} live; last vacuum {last_vacuum or 'never'}",
              "autovacuum is falling behind: look for long transactions, or lower "
              "autovacuum_vacuum_scale_factor for pgbg.task"),
        Check("oldest open transaction", oldest is None or oldest < max_transaction_age,
              "none" if oldest is None else f"{oldest:.0f}s",
              "a long transaction stops vacuum from cleaning finished tasks; "
              "find it in pg_stat_activity and end it"),
        Check("NOTIFY queue usage", r["notify_queue_usage"] < 0.5,
              f"{r['notify_queue_usage']:.1%}",
              "a session that LISTENs but never reads holds the queue; "
              "when it fills, NOTIFY (and so enqueue) fails"),
        Check("workers with lapsed heartbeats", r["lapsed_workers"] == 0,
              str(r["lapsed_workers"]),
              "these workers stopped heartbeating; a live worker recovers their tasks"),
        Check("tasks stuck in running", r["stuck_running"] == 0, str(r["stuck_running"]),
              "their worker is gone; start a worker (it recovers them) or retry them"),
        Check("pgbg indexes", not missing, ", ".join(missing) or "all present",
              "run `pgbg migrate`; without these claiming scans the whole table"),
        _versions_check(r["worker_connections"] or []),
    ]


def worker_versions(connections: list[str]) -> dict[str, int]:
    """Live workers by pgbg version, from their connections' application names
    ("pgbg worker ID vX"; a worker older than this check shows no version)."""
    versions: dict[str, str] = {}
    for name in connections:
        parts = name.split()
        if len(parts) >= 3:
            version = parts[3][1:] if len(parts) > 3 and parts[3].startswith("v") else None
            versions[parts[2]] = version or versions.get(parts[2]) or "unknown (older)"
    counts: dict[str, int] = {}
    for version in versions.values():
        counts[version] = counts.get(version, 0) + 1
    return counts


def _versions_check(connections: list[str]) -> Check:
    counts = worker_versions(connections)
    reading = ", ".join(f"{v}: {n} worker{'s' * (n != 1)}" for v, n in sorted(counts.items()))
    return Check("worker versions", len(counts) <= 1, reading or "no workers connected",
                 "workers of different pgbg versions are running: finish the upgrade "
                 "(migrate first, then restart every worker)")
