"""Periodic tasks: a function queued once per period, by whichever worker gets there first.

A periodic task is a row of ``pgbg.periodic`` (this module owns that table and its SQL).
Its ``next_run_at`` is the next period. Every worker looks for due rows; the one that locks
a row (``FOR UPDATE SKIP LOCKED``) queues the task and moves ``next_run_at`` on in the same
transaction, so each period is queued exactly once however many workers race — and the
task table's unique index on ``(periodic, period)`` would refuse a second one anyway.

Periods missed while no worker ran are not replayed one by one: the latest one is queued,
once, and its log says since when periods were missed. The clock is the database's, unless
a worker is given another (``Worker(clock=…)``, for tests and simulations).
"""

from __future__ import annotations

import logging
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgbg import api, db, notify, queries, storable
from pgbg.exceptions import EnqueueFailed, InvalidOption, PeriodicNotFound

logger = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MAX_EVERY = api.MAX_DELAY  # a period longer than a century is not a period


# -- schedules -------------------------------------------------------------------------

@dataclass(frozen=True)
class Every:
    """Periods every ``seconds``, counted from the Unix epoch (so ``every=3600`` falls on
    the hour, whichever worker computes it)."""

    seconds: float

    def latest(self, at: datetime) -> datetime:
        """The last period starting at or before ``at``."""
        step = round(self.seconds * 1_000_000)
        elapsed = (at - EPOCH) // _MICROSECOND
        return EPOCH + (elapsed // step * step) * _MICROSECOND

    def next_after(self, at: datetime) -> datetime:
        return self.latest(at) + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Cron:
    """Periods where a cron expression matches (5 fields; a sixth is seconds), in a zone."""

    expression: str
    timezone: str = "UTC"

    def latest(self, at: datetime) -> datetime:
        from croniter import croniter

        # +1µs: croniter's get_prev is strictly before its start, and a match counts here
        start = at.astimezone(zoneinfo.ZoneInfo(self.timezone)) + _MICROSECOND
        return croniter(self.expression, start).get_prev(datetime).astimezone(UTC)

    def next_after(self, at: datetime) -> datetime:
        from croniter import croniter

        start = at.astimezone(zoneinfo.ZoneInfo(self.timezone))
        return croniter(self.expression, start).get_next(datetime).astimezone(UTC)


def schedule(cron: str | None = None, every: float | timedelta | None = None,
             timezone: str = "UTC") -> Every | Cron:
    """A validated schedule; ``InvalidOption`` saying what is wrong otherwise."""
    if (cron is None) == (every is None):
        raise InvalidOption("give a periodic task cron= or every=, exactly one")
    try:  # stored either way, so checked either way
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidOption(f"unknown time zone {timezone!r} (e.g. 'Europe/Paris')") from None
    if every is not None:
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 1 <= seconds <= MAX_EVERY:
            raise InvalidOption(f"every must be at least 1 second and at most {MAX_EVERY:.0f} "
                                f"(a century), not {api._short(every)}")
        return Every(float(seconds))
    from croniter import croniter

    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise InvalidOption(f"{cron!r} is not a cron expression (e.g. '*/15 * * * *')")
    return Cron(cron, timezone)


# -- declaring -------------------------------------------------------------------------

@dataclass(frozen=True)
class PeriodicTask:
    """One row of ``pgbg.periodic``."""

    name: str
    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    task_type: str
    cron: str | None
    every: float | None
    timezone: str
    enabled: bool
    next_run_at: datetime
    last_period: datetime | None
    last_task_id: uuid.UUID | None
    priority: int = 0
    num_proc: int = 0
    num_of_task_type: dict[str, int] | None = None
    max_attempts: int = 1
    timeout: float | None = None
    retry_on: list[str] | None = None
    retry_backoff: float | None = None
    skip_if_running: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def schedule(self) -> str:
        return self.cron if self.cron is not None else f"every {self.every:g}s"


UPSERT = """
INSERT INTO pgbg.periodic AS p (name, func, args, kwargs, task_type, priority, num_proc,
        num_of_task_type, max_attempts, timeout, retry_on, retry_backoff, skip_if_running,
        cron, every, timezone, enabled, next_run_at)
VALUES (%(name)s, %(func)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(task_type)s, %(priority)s,
        %(num_proc)s, %(num_of_task_type)s::jsonb, %(max_attempts)s, %(timeout)s,
        %(retry_on)s::text[], %(retry_backoff)s, %(skip_if_running)s, %(cron)s, %(every)s,
        %(timezone)s, %(enabled)s, %(next_run_at)s::timestamptz)
ON CONFLICT (name) DO UPDATE SET
    func = excluded.func, args = excluded.args, kwargs = excluded.kwargs,
    task_type = excluded.task_type, priority = excluded.priority,
    num_proc = excluded.num_proc, num_of_task_type = excluded.num_of_task_type,
    max_attempts = excluded.max_attempts, timeout = excluded.timeout,
    retry_on = excluded.retry_on, retry_backoff = excluded.retry_backoff,
    skip_if_running = excluded.skip_if_running, enabled = excluded.enabled,
    cron = excluded.cron, every = excluded.every, timezone = excluded.timezone,
    -- declared again with the same schedule (every deploy, say): keep its place
    next_run_at = CASE WHEN (p.cron, p.every, p.timezone)
                            IS NOT DISTINCT FROM (excluded.cron, excluded.every, excluded.timezone)
                       THEN p.next_run_at ELSE excluded.next_run_at END,
    updated_at = now()
RETURNING next_run_at, last_period, last_task_id, pg_notify('""" + notify.PERIODIC + """', name)
"""


def add_periodic(name: str, func: Callable[..., Any] | str, args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, *, cron: str | None = None,
                 every: float | timedelta | None = None, timezone: str = "UTC",
                 task_type: str | None = None, priority: int = 0, num_proc: int = 0,
                 num_of_task_type: Mapping[str, int] | None = None, max_attempts: int = 1,
                 timeout: float | None = None,
                 retry_on: Sequence[type[BaseException] | str] | None = None,
                 retry_backoff: float | None = None, skip_if_running: bool = False,
                 enabled: bool = True, connection: Any = None) -> PeriodicTask:
    """Queue ``func(*args, **kwargs)`` once per period, from now on; or update the periodic
    task called ``name`` (declaring it again with the same schedule keeps its next period).

    ``cron``: a cron expression (``"0 3 * * *"``; a sixth field is seconds) read in
    ``timezone``; or ``every``: seconds (or a timedelta), periods counted from the Unix
    epoch. ``skip_if_running``: no new task while the last one is queued or running (the
    period is skipped). The other options are ``enqueue``'s; ``task_type`` defaults to
    ``name``. With ``connection=``, the change joins the caller's transaction.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidOption(f"a periodic task needs a non-empty name, not {name!r}")
    storable.check_text(name, "name")
    when = schedule(cron, every, timezone)
    if not isinstance(skip_if_running, bool) or not isinstance(enabled, bool):
        raise InvalidOption("skip_if_running and enabled must be True or False")
    params: dict[str, Any] = {
        **api._options(func, name if task_type is None else task_type, priority, num_proc,
                       num_of_task_type, max_attempts, timeout),
        **api._retry(retry_on, retry_backoff),
        "name": name, "args": api._json_args(args), "kwargs": api._json_kwargs(kwargs),
        "skip_if_running": skip_if_running, "enabled": enabled,
        "cron": when.expression if isinstance(when, Cron) else None,
        "every": when.seconds if isinstance(when, Every) else None, "timezone": timezone,
    }
    if connection is None:
        with (db.shared_connection() as conn, api.database_errors(EnqueueFailed),
              conn.transaction()):
            next_run_at, last_period, last_task_id, _ = _upsert(
                lambda sql, p: conn.execute(sql, p).fetchall(), params, when)
    else:
        execute = api.executor(connection)
        with api.database_errors(EnqueueFailed):
            next_run_at, last_period, last_task_id, _ = _upsert(execute, params, when)
    return PeriodicTask(**{**params, "args": list(args), "kwargs": dict(kwargs or {}),
                           "num_of_task_type": dict(num_of_task_type or {}),
                           "next_run_at": next_run_at, "last_period": last_period,
                           "last_task_id": last_task_id})


def _upsert(execute: queries.Executor, params: dict[str, Any],
            when: Every | Cron) -> Sequence[Any]:
    now = execute("SELECT clock_timestamp()", {})[0][0]
    row: Sequence[Any] = execute(UPSERT, {**params, "next_run_at": when.next_after(now)})[0]
    return row


def remove_periodic(name: str) -> None:
    """Stop queueing the periodic task ``name`` (its tasks so far are left alone)."""
    with db.shared_connection() as conn:
        if not conn.execute("DELETE FROM pgbg.periodic WHERE name = %s RETURNING 1",
                            (name,)).fetchall():
            raise PeriodicNotFound(f"no periodic task named {name!r}")


def list_periodic() -> list[PeriodicTask]:
    """Every periodic task, the next due first."""
    with db.shared_connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM pgbg.periodic ORDER BY next_run_at, name").fetchall()
    return [PeriodicTask(**row) for row in rows]


def get_periodic(name: str) -> PeriodicTask:
    with db.shared_connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM pgbg.periodic WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise PeriodicNotFound(f"no periodic task named {name!r}")
    return PeriodicTask(**row)


# -- queueing what is due (the workers' side) --------------------------------------------

@dataclass(frozen=True)
class Tick:
    """What one look at the periodic tasks did."""

    now: datetime  # the clock it used
    queued: list[tuple[str, datetime, uuid.UUID]]  # (name, period, task id)
    skipped: list[tuple[str, datetime]]  # (name, period): its last task still live
    next_due: datetime | None  # the earliest next period of any enabled periodic task


ENQUEUE = """
WITH inserted AS (
    INSERT INTO pgbg.task (id, task_type, func, args, kwargs, priority, num_proc,
                           num_of_task_type, max_attempts, timeout, retry_on, retry_backoff,
                           unique_key, periodic, period)
    SELECT %(id)s, task_type, func, args, kwargs, priority, num_proc, num_of_task_type,
           max_attempts, timeout, retry_on, retry_backoff,
           CASE WHEN skip_if_running THEN 'pgbg.periodic:' || name END, name, %(period)s
      FROM pgbg.periodic WHERE name = %(name)s
    ON CONFLICT DO NOTHING
    RETURNING id
), notified AS (
    SELECT pg_notify('""" + notify.QUEUED + """', '') FROM inserted
)
UPDATE pgbg.periodic
   SET next_run_at = %(next_run_at)s, last_period = %(period)s,
       last_task_id = (SELECT id FROM inserted)
 WHERE name = %(name)s
RETURNING last_task_id, (SELECT count(*) FROM notified)
"""


def enqueue_due(conn: psycopg.Connection[Any], now: datetime | None = None) -> Tick:
    """Queue the task of every periodic task due at ``now`` (default: the database clock)
    that no other worker is queueing at this moment, and move each on to its next period.
    One transaction: a worker that dies half-way leaves every row as it was."""
    queued, skipped = [], []
    with conn.transaction():
        if now is None:
            now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        due = conn.execute(
            """SELECT name, cron, every, timezone, next_run_at FROM pgbg.periodic
                WHERE enabled AND next_run_at <= %s
                ORDER BY next_run_at FOR UPDATE SKIP LOCKED""", (now,)).fetchall()
        for name, cron, every, timezone, next_run_at in due:
            try:
                when = schedule(cron, every, timezone)
            except InvalidOption as exc:  # a row written by hand: stop, say why
                conn.execute("UPDATE pgbg.periodic SET enabled = false WHERE name = %s", (name,))
                logger.error("periodic task disabled", extra={
                    "periodic": name, "error": str(exc)})
                continue
            period = max(when.latest(now), next_run_at)
            task_id = uuid.uuid4()
            row = conn.execute(ENQUEUE, {"id": task_id, "name": name, "period": period,
                                         "next_run_at": when.next_after(now)}).fetchone()
            if row is None or row[0] is None:
                skipped.append((name, period))
                continue
            queued.append((name, period, task_id))
            if period > next_run_at:
                queries.task_log_insert(conn, task_id, "warning",
                                        f"periods from {next_run_at.isoformat()} were missed "
                                        f"(no worker ran); queued once, for {period.isoformat()}")
        next_due = conn.execute(
            "SELECT min(next_run_at) FROM pgbg.periodic WHERE enabled").fetchone()
    return Tick(now, queued, skipped, next_due[0] if next_due else None)
