"""Every SQL statement pgbg runs, noun-first, each taking a connection.

Statements that may run on a caller's connection (``task_insert``) pass JSON as text cast
to ``jsonb`` and ids as text cast to ``uuid``, so they work through psycopg 3 or through a
SQLAlchemy connection on any DBAPI driver.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgbg import db, notify, storable
from pgbg.models import BackgroundTask, QueuedTask, TaskStatus, session_zone


class Executor(Protocol):
    """Runs one statement on a connection (psycopg's or an adapter's), returns its rows."""

    def __call__(self, sql: str, params: Mapping[str, Any]) -> list[Any]: ...


class Statement(NamedTuple):
    """One statement of an ``Operation``. Parameters are named (``%(name)s``), ids and JSON
    passed as text and cast in SQL, so any driver runs it, sync or async.
    ``read_committed``: on pgbg's own connection, run at READ COMMITTED (``db.read_committed``);
    on a caller's connection the caller's transaction decides."""

    sql: str
    params: Mapping[str, Any]
    read_committed: bool = False


# An operation without I/O: it yields the statements to run, is sent each one's rows, and
# returns its answer. The sync API and the async one (pgbg/aio.py) drive the same ones.
T = TypeVar("T")
Operation = Generator[Statement, list[Any], T]


def drive(operation: Operation[T], execute: Callable[[Statement], list[Any]]) -> T:
    """Run ``operation`` to its end, each statement by ``execute``."""
    try:
        statement = next(operation)
        while True:
            statement = operation.send(execute(statement))
    except StopIteration as stop:
        return cast(T, stop.value)


def run(conn: psycopg.Connection[Any], operation: Operation[T]) -> T:
    """Run ``operation`` on a psycopg connection of pgbg's own."""
    def execute(statement: Statement) -> list[Any]:
        with db.read_committed(conn) if statement.read_committed else nullcontext():
            cur = conn.execute(statement.sql, statement.params)
            return cur.fetchall() if cur.description else []
    return drive(operation, execute)


def _task(row: Mapping[str, Any]) -> BackgroundTask:
    return BackgroundTask.from_row(row)  # columns a newer migration added are ignored


# -- tasks: enqueue ------------------------------------------------------------------

UNIQUE_LIVE = ("unique_key IS NOT NULL AND (status = 'queued' OR "
               "(status = 'running' AND unique_running))")
# A task of ``t`` cannot go back to the queue: another live task holds its unique_key (it
# ran with unique_while_running=False and a successor was queued meanwhile).
KEY_TAKEN = """(t.unique_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM pgbg.task o WHERE o.unique_key = t.unique_key AND o.id <> t.id
       AND (o.status = 'queued' OR (o.status = 'running' AND o.unique_running))))"""
SUPERSEDED = "a newer task with the same unique_key is queued: this one is not queued again"


def _back_to_queue(candidates: str) -> str:
    """CTEs ``candidates`` (the rows of the SELECT ``candidates``, locked) and ``ranked``
    (``free``: whether each may go back to the queue). Of candidates sharing a unique_key,
    one goes back, the others end (each row alone would see the others still running, and
    all would collide in the unique index): one with attempts left first, then the one
    holding the key (running with unique_while_running), then the newest — and only if no
    task outside the candidates holds the key."""
    return f"""candidates AS ({candidates}
           ), ranked AS (
               SELECT t.id, t.unique_key IS NULL OR (
                          row_number() OVER (
                              PARTITION BY t.unique_key
                              ORDER BY t.attempt >= t.max_attempts,
                                       NOT (t.status = 'running' AND t.unique_running),
                                       t.queued_at DESC, t.id) = 1
                          AND NOT EXISTS (
                              SELECT 1 FROM pgbg.task o
                               WHERE o.unique_key = t.unique_key AND o.id <> t.id
                                 AND o.id NOT IN (SELECT id FROM candidates)
                                 AND (o.status = 'queued'
                                      OR (o.status = 'running' AND o.unique_running)))) AS free
                 FROM pgbg.task t JOIN candidates c ON c.id = t.id
           )"""

TASK_INSERT = """
WITH inserted AS (
    INSERT INTO pgbg.task (id, task_type, func, args, kwargs, priority, num_proc,
                           num_of_task_type, max_attempts, timeout, run_at, unique_key,
                           unique_running, retry_on, retry_backoff)
    VALUES (%(id)s::uuid, %(task_type)s, %(func)s, %(args)s::jsonb, %(kwargs)s::jsonb,
            %(priority)s, %(num_proc)s, %(num_of_task_type)s::jsonb, %(max_attempts)s,
            %(timeout)s,
            coalesce(%(run_at)s::timestamptz,
                     clock_timestamp() + make_interval(secs => %(delay)s::float)),
            %(unique_key)s, %(unique_running)s, %(retry_on)s::text[], %(retry_backoff)s)
    ON CONFLICT (unique_key) WHERE """ + UNIQUE_LIVE + """ DO NOTHING
    RETURNING id
)
SELECT pg_notify('""" + notify.QUEUED + """', '') FROM inserted
"""


def task_insert(params: Mapping[str, Any]) -> Operation[bool]:
    """Insert one queued task and wake the workers (on commit) in one round trip; False if
    a live task already holds its ``unique_key``."""
    return bool((yield Statement(TASK_INSERT, params)))


def task_find_unique(unique_key: str) -> Operation[uuid.UUID | None]:
    """The live task holding ``unique_key``, if any."""
    rows = yield Statement("SELECT id::text FROM pgbg.task WHERE unique_key = %(key)s AND "
                           + UNIQUE_LIVE, {"key": unique_key})
    return uuid.UUID(rows[0][0]) if rows else None


TASK_INSERT_MANY = """
WITH inserted AS (
    INSERT INTO pgbg.task (id, task_type, func, args, kwargs, priority, num_proc,
                           num_of_task_type, max_attempts, timeout, run_at, retry_on,
                           retry_backoff)
    SELECT c.id::uuid, %(task_type)s, %(func)s, c.args, coalesce(c.kwargs, '{}'), %(priority)s,
           %(num_proc)s, %(num_of_task_type)s::jsonb, %(max_attempts)s, %(timeout)s,
           coalesce(%(run_at)s::timestamptz,
                    clock_timestamp() + make_interval(secs => %(delay)s::float)),
           %(retry_on)s::text[], %(retry_backoff)s
      FROM ROWS FROM (jsonb_array_elements_text(%(ids)s::jsonb),  -- side by side; kwargs
                      jsonb_array_elements(%(args)s::jsonb),      -- NULL: none given
                      jsonb_array_elements(%(kwargs)s::jsonb)) AS c (id, args, kwargs)
    RETURNING 1
)
SELECT pg_notify('""" + notify.QUEUED + """', '') WHERE EXISTS (SELECT 1 FROM inserted)
"""


def task_insert_many(params: Mapping[str, Any]) -> Operation[None]:
    """Insert a batch of tasks with one statement and one notification."""
    yield Statement(TASK_INSERT_MANY, params)


# -- tasks: reading ------------------------------------------------------------------

def task_flush() -> Operation[None]:
    """Every task, its log lines and links gone (Django's ``flush``: the database emptied,
    as between ``TransactionTestCase`` tests); workers and periodic schedules stay."""
    yield Statement("TRUNCATE pgbg.task_link, pgbg.task_log, pgbg.task", {})


def task_get(task_id: uuid.UUID) -> Operation[BackgroundTask | None]:
    """The task's row (as JSON text: every driver reads it alike; its times in the
    session's zone, as psycopg gives them), or None."""
    rows = yield Statement("SELECT to_jsonb(t)::text, current_setting('TimeZone') "
                           "FROM pgbg.task t WHERE id = %(id)s::uuid", {"id": str(task_id)})
    if not rows:
        return None
    return BackgroundTask.from_wire(json.loads(rows[0][0])).in_zone(session_zone(rows[0][1]))


def task_status(task_id: uuid.UUID) -> Operation[TaskStatus | None]:
    rows = yield Statement("SELECT status::text FROM pgbg.task WHERE id = %(id)s::uuid",
                           {"id": str(task_id)})
    return TaskStatus(rows[0][0]) if rows else None


def queue_list(task_type: str | None = None,
               limit: int | None = None) -> Operation[list[QueuedTask]]:
    """Queued tasks in the order workers consider them, with what blocks each (the view
    ``pgbg.queue``); ``queue_position`` is the place in the whole queue. Times as JSON
    text, so every driver reads them alike."""
    rows = yield Statement(
        """SELECT id::text, task_type, queue_position, priority,
                  to_jsonb(queued_at)::text, to_jsonb(blocked_by)::text, to_jsonb(run_at)::text,
                  current_setting('TimeZone')
             FROM pgbg.queue
            WHERE %(type)s::text IS NULL OR task_type = %(type)s::text
            ORDER BY queue_position LIMIT %(limit)s::bigint""",
        {"type": task_type, "limit": limit})
    return [QueuedTask(task_id=r[0], task_type=r[1], queue_position=int(r[2]),
                       priority=int(r[3]), queued_at=cast(datetime, _time(r[4], r[7])),
                       waiting_for=json.loads(r[5]) or [], run_at=_time(r[6], r[7]))
            for r in rows]


def _time(text: str | None, zone: str) -> datetime | None:
    value = json.loads(text) if text is not None else None
    return datetime.fromisoformat(value).astimezone(session_zone(zone)) if value else None


# -- tasks: the worker's path --------------------------------------------------------

def task_claim(conn: psycopg.Connection[Any], worker_id: uuid.UUID, hostname: str,
               max_tasks: int) -> list[BackgroundTask]:
    """Claim up to ``max_tasks`` runnable tasks in one transaction (see the migration)."""
    with db.read_committed(conn), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM pgbg.task_claim(%s, %s, %s)",
                           (worker_id, hostname, max_tasks)).fetchall()
    return [_task(row) for row in rows]


@dataclass(frozen=True)
class Outcome:
    """How a child ended, as the worker writes it on the task row."""

    task_id: uuid.UUID
    attempt: int
    status: TaskStatus
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    error_exit_recorded: bool = False  # the task already marked itself failed


class Step(NamedTuple):
    claimed: list[BackgroundTask]
    unreadable: list[tuple[BackgroundTask, str]]  # claimed, but with a field Python cannot read
    unwritten: list[uuid.UUID]  # outcomes not written: the task is no longer this worker's
    next_due: float | None  # seconds until a scheduled task falls due, if the claim fell short


# pgbg.task is touched only inside the functions, whose lock waits are bounded (0012, 0013)
TASK_STEP = """
WITH step AS MATERIALIZED (SELECT kind, task FROM pgbg.task_step(%s, %s, %s, %s, %s))
SELECT kind, task FROM step
UNION ALL
SELECT 'due', to_jsonb(due) FROM pgbg.task_next_due() due
 WHERE %s > (SELECT count(*) FROM step WHERE kind = 'claimed') AND due IS NOT NULL
"""


def task_step(conn: psycopg.Connection[Any], worker_id: uuid.UUID, hostname: str,
              max_claim: int, pids: Sequence[tuple[uuid.UUID, int, int]],
              outcomes: Sequence[Outcome]) -> Step:
    """A worker's loop step in one statement (``pgbg.task_step``, see migration 0004):
    record pids, write outcomes (fenced by worker, attempt and state; waiters notified),
    claim up to ``max_claim``. Returns the claimed tasks, the ids of outcomes that were
    not written because the task is no longer this worker's and, if fewer than
    ``max_claim`` were claimed, when the next scheduled task falls due (so the worker
    sleeps until then without another round trip before it starts what it claimed).

    A task that already recorded its own failure (``record_task_error_exit``) keeps its
    status and message; only the exit code is added.
    """
    # a pid whose task ended in the same step is written with the outcome: one row version
    pid_of = {(i, a): p for i, a, p in pids}
    ended = {(o.task_id, o.attempt) for o in outcomes}
    with db.read_committed(conn):
        rows = conn.execute(TASK_STEP, (
            worker_id, hostname, max_claim,
            Jsonb([{"id": str(i), "attempt": a, "pid": p} for i, a, p in pids
                   if (i, a) not in ended]),
            Jsonb([{"id": str(o.task_id), "attempt": o.attempt, "status": o.status.value,
                    "result": o.result, "error": o.error, "exit_code": o.exit_code,
                    "signal": o.signal, "error_exit": o.error_exit_recorded,
                    "pid": pid_of.get((o.task_id, o.attempt))} for o in outcomes],
                  dumps=storable.dumps),  # a float result comes back as the same float
            max_claim,
        )).fetchall()
    claimed = [BackgroundTask.from_wire_lenient(task) for kind, task in rows
               if kind == "claimed"]
    return Step(claimed=[task for task, problem in claimed if problem is None],
                unreadable=[(task, problem) for task, problem in claimed if problem is not None],
                unwritten=[uuid.UUID(task) for kind, task in rows if kind == "unwritten"],
                next_due=next((task for kind, task in rows if kind == "due"), None))


def task_cancel_queued(task_id: uuid.UUID, reason: str) -> Operation[bool]:
    """Cancel a task that has not started; False if it is not (or no longer) queued."""
    rows = yield Statement(
        """WITH cancelled AS (
               UPDATE pgbg.task SET status = 'cancelled', finished_at = clock_timestamp(),
                      error = %(reason)s
                WHERE id = %(id)s::uuid AND status = 'queued' RETURNING id)
           SELECT pg_notify('""" + notify.DONE + """', id::text) FROM cancelled""",
        {"reason": reason, "id": str(task_id)}, read_committed=True)
    return bool(rows)


# -- tasks: what a running task records about itself ---------------------------------

def task_record_info(conn: psycopg.Connection[Any], task: BackgroundTask, message: str) -> None:
    with conn.transaction():
        conn.execute(
            """UPDATE pgbg.task SET info = %s
                WHERE id = %s AND worker_id = %s AND attempt = %s AND status = 'running'""",
            (message, task.id, task.worker_id, task.attempt))
        task_log_insert(conn, task.id, "info", message)


def task_record_error_exit(conn: psycopg.Connection[Any], task: BackgroundTask,
                           message: str, pid: int | None = None) -> None:
    """The task recorded its own failure: the row reads failed at once (waiters are told),
    but ``finished_at`` waits for the process to exit, and until then the task still
    counts against its limits (the claim counts failed rows not yet finished)."""
    with conn.transaction():
        conn.execute(
            """WITH failed AS (
                   UPDATE pgbg.task SET status = 'failed', error = %s, pid = coalesce(pid, %s)
                    WHERE id = %s AND worker_id = %s AND attempt = %s AND status = 'running'
                RETURNING id)
               SELECT pg_notify(%s, id::text) FROM failed""",
            (message, pid, task.id, task.worker_id, task.attempt, notify.DONE),
        )
        task_log_insert(conn, task.id, "error", message)


def task_retry_later(conn: psycopg.Connection[Any], worker_id: uuid.UUID,
                     task: BackgroundTask, error: str, delay: float) -> bool:
    """Queue a failed attempt again, due after ``delay`` seconds (fenced like an outcome);
    the attempt's error goes to the task's log. If a successor holds the task's
    unique_key, the task fails instead (saying so): it cannot be queued beside it."""
    with db.read_committed(conn):
        row = conn.execute(
            """WITH again AS (
                   UPDATE pgbg.task t
                      SET status = CASE WHEN """ + KEY_TAKEN + """ THEN 'failed'::pgbg.task_status
                                        ELSE 'queued'::pgbg.task_status END,
                          finished_at = CASE WHEN """ + KEY_TAKEN + """ THEN clock_timestamp() END,
                          run_at = clock_timestamp() + make_interval(secs => %(delay)s),
                          error = CASE WHEN """ + KEY_TAKEN + """
                                       THEN %(error)s || E'\n' || %(superseded)s
                                       ELSE %(error)s END,
                          pid = CASE WHEN """ + KEY_TAKEN + """ THEN t.pid END,
                          started_at = CASE WHEN """ + KEY_TAKEN + """ THEN t.started_at END
                    WHERE id = %(id)s AND worker_id = %(worker)s AND attempt = %(attempt)s
                      AND status = 'running'
                RETURNING id, status)
               SELECT status::text, pg_notify(CASE WHEN status = 'queued' THEN %(queued)s
                                                   ELSE %(done)s END,
                                              CASE WHEN status = 'queued' THEN ''
                                                   ELSE id::text END)
                 FROM again""",
            {"delay": delay, "error": error, "superseded": SUPERSEDED, "id": task.id,
             "worker": worker_id, "attempt": task.attempt, "queued": notify.QUEUED,
             "done": notify.DONE},
        ).fetchone()
    if row and row[0] == TaskStatus.QUEUED:
        task_log_insert(conn, task.id, "error", f"attempt {task.attempt} failed; retrying in "
                                                 f"{delay:.1f}s:\n{error}")
    return row is not None


def task_log_insert(conn: psycopg.Connection[Any], task_id: uuid.UUID, level: str,
                    message: str) -> None:
    conn.execute("INSERT INTO pgbg.task_log (task_id, level, message) VALUES (%s, %s, %s)",
                 (task_id, level, message))


def task_log_list(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT at, level, message FROM pgbg.task_log WHERE task_id = %s ORDER BY id", (task_id,)
    ).fetchall()


def task_link_insert(conn: psycopg.Connection[Any], task_id: uuid.UUID, kind: str,
                     key: str) -> None:
    conn.execute(
        """INSERT INTO pgbg.task_link (task_id, kind, key) VALUES (%s, %s, %s)
           ON CONFLICT DO NOTHING""",
        (task_id, kind, key),
    )


# -- workers -------------------------------------------------------------------------

def worker_register(conn: psycopg.Connection[Any], worker_id: uuid.UUID, hostname: str,
                    pid: int, concurrency: int) -> None:
    conn.execute(
        "INSERT INTO pgbg.worker (id, hostname, pid, concurrency) VALUES (%s, %s, %s, %s)",
        (worker_id, hostname, pid, concurrency),
    )


def worker_heartbeat(conn: psycopg.Connection[Any], worker_id: uuid.UUID, hostname: str,
                     pid: int, concurrency: int) -> bool:
    """Renew the worker's lease; False if its row was gone (it had been presumed dead)."""
    with db.read_committed(conn):
        row = conn.execute(
            """INSERT INTO pgbg.worker (id, hostname, pid, concurrency) VALUES (%s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
               RETURNING xmax <> 0""",
            (worker_id, hostname, pid, concurrency),
        ).fetchone()
    return bool(row and row[0])


# The worker on duty holds this session advisory lock (the claim's transaction lock is
# 7070626267) and is the only one that LISTENs to new tasks; see pgbg/duty.py.
DUTY_LOCK = 7070626268


def worker_duty_take(conn: psycopg.Connection[Any]) -> bool:
    """Take the duty if no other worker holds it: then LISTEN to new tasks (a task queued
    before the LISTEN is found by the claim that follows); False if another holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DUTY_LOCK,)).fetchone()
    if not (row and row[0]):
        return False
    try:
        conn.execute(f"LISTEN {notify.QUEUED}")
    except psycopg.Error:
        # not held by halves: session locks stack, a second take would outlive one unlock
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (DUTY_LOCK,))
        raise
    return True


def worker_duty_freed(conn: psycopg.Connection[Any]) -> None:
    """Say that the duty is free: its holder lost the connection that held it."""
    conn.execute("SELECT pg_notify(%s, '')", (notify.DUTY,))


def worker_duty_release(conn: psycopg.Connection[Any]) -> None:
    """Stop listening to new tasks, give the duty up and say so to the other workers, in
    one round trip (no parameters: a simple query may hold several statements)."""
    conn.execute(f"UNLISTEN {notify.QUEUED}; "
                 f"SELECT pg_advisory_unlock({DUTY_LOCK}), pg_notify('{notify.DUTY}', '')")


def task_list_owned(conn: psycopg.Connection[Any], worker_id: uuid.UUID,
                    tasks: Sequence[tuple[uuid.UUID, int]]) -> set[uuid.UUID]:
    """Which of ``(task id, attempt)`` are still this worker's running attempt."""
    rows = conn.execute(
        """SELECT t.id FROM pgbg.task t
             JOIN unnest(%s::uuid[], %s::int[]) AS s(id, attempt)
               ON t.id = s.id AND t.attempt = s.attempt
            WHERE t.worker_id = %s AND t.status = 'running'""",
        ([t[0] for t in tasks], [t[1] for t in tasks], worker_id),
    ).fetchall()
    return {row[0] for row in rows}


def task_release_unstarted(conn: psycopg.Connection[Any], worker_id: uuid.UUID,
                           known: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Re-queue the tasks claimed for this worker that it does not hold (a claim whose
    reply was lost with the connection, or that committed after it; claimed ahead when
    the worker stops) and wake the workers. The attempt never ran, so it is undone; one
    whose unique_key a successor took meanwhile is cancelled instead."""
    with db.read_committed(conn):
        rows = conn.execute(
            "WITH " + _back_to_queue("""
               SELECT id FROM pgbg.task
                WHERE worker_id = %(worker)s AND status = 'running' AND id <> ALL(%(known)s)
                  FOR UPDATE""") + """, released AS (
                   UPDATE pgbg.task t
                      SET status = CASE WHEN r.free THEN 'queued'::pgbg.task_status
                                        ELSE 'cancelled'::pgbg.task_status END,
                          finished_at = CASE WHEN NOT r.free THEN clock_timestamp() END,
                          error = CASE WHEN NOT r.free THEN %(superseded)s END,
                          attempt = attempt - 1, worker_id = NULL, hostname = NULL,
                          started_at = NULL, pid = NULL
                     FROM ranked r WHERE t.id = r.id
                RETURNING t.id, t.status
               ), notified AS (
                   SELECT pg_notify(%(queued)s, '') WHERE EXISTS (SELECT 1 FROM released)
               )
               SELECT id FROM released, (SELECT count(*) FROM notified) n""",
            {"worker": worker_id, "known": list(known), "queued": notify.QUEUED,
             "superseded": SUPERSEDED},
        ).fetchall()
    return [row[0] for row in rows]


WORKER_LOST = "worker lost: its lease lapsed while the task ran"


def task_recover_lost(conn: psycopg.Connection[Any],
                      lease_seconds: float) -> list[tuple[uuid.UUID, TaskStatus]]:
    """Remove workers whose lease lapsed (database clock) and recover their running tasks:
    re-queued while attempts remain, else failed. Right after a server restart every lease
    looks lapsed, so nothing is recovered until one lease has passed since the restart."""
    with conn.transaction():
        rows = conn.execute(
            """WITH lost_worker AS (
                   DELETE FROM pgbg.worker
                    WHERE heartbeat_at < now() - make_interval(secs => %(lease)s)
                      AND now() - pg_postmaster_start_time() > make_interval(secs => %(lease)s)
                   RETURNING id
               ), """ + _back_to_queue("""
                   SELECT id FROM pgbg.task t
                    WHERE status = 'running'
                      AND (worker_id IN (SELECT id FROM lost_worker)
                           OR NOT EXISTS (SELECT 1 FROM pgbg.worker w WHERE w.id = t.worker_id))
                    FOR UPDATE SKIP LOCKED""") + """
               UPDATE pgbg.task t
                  SET status = CASE WHEN attempt < max_attempts AND r.free
                                    THEN 'queued'::pgbg.task_status
                                    ELSE 'failed'::pgbg.task_status END,
                      error = CASE WHEN attempt < max_attempts AND NOT r.free
                                   THEN %(error)s || E'\n' || %(superseded)s
                                   ELSE %(error)s END,
                      finished_at = CASE WHEN attempt < max_attempts AND r.free
                                         THEN NULL ELSE clock_timestamp() END
                 FROM ranked r WHERE t.id = r.id
               RETURNING t.id, t.status::text, t.attempt""",
            {"lease": lease_seconds, "error": WORKER_LOST, "superseded": SUPERSEDED},
        ).fetchall()
        # a task that recorded its own failure, its process lost with the worker: over
        conn.execute("""UPDATE pgbg.task t SET finished_at = clock_timestamp()
                         WHERE status = 'failed' AND finished_at IS NULL
                           AND NOT EXISTS (SELECT 1 FROM pgbg.worker w
                                            WHERE w.id = t.worker_id)""")
        for task_id, status, attempt in rows:
            task_log_insert(conn, task_id, "error", f"attempt {attempt}: {WORKER_LOST}")
            if status == TaskStatus.QUEUED:
                conn.execute("SELECT pg_notify(%s, '')", (notify.QUEUED,))
            else:
                conn.execute("SELECT pg_notify(%s, %s)", (notify.DONE, str(task_id)))
    return [(row[0], TaskStatus(row[1])) for row in rows]


def worker_unregister(conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> None:
    conn.execute("DELETE FROM pgbg.worker WHERE id = %s", (worker_id,))


# -- termination ---------------------------------------------------------------------

def task_request_cancel(task_id: uuid.UUID, requested_by: str) -> Operation[bool]:
    """Mark a running task for termination and tell its worker; False if not running."""
    rows = yield Statement(
        """WITH marked AS (
               UPDATE pgbg.task
                  SET cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp()),
                      cancel_requested_by = coalesce(cancel_requested_by, %(by)s)
                WHERE id = %(id)s::uuid AND status = 'running' RETURNING id)
           SELECT pg_notify('""" + notify.CANCEL + """', id::text) FROM marked""",
        {"by": requested_by, "id": str(task_id)}, read_committed=True)
    return bool(rows)


def task_list_cancel_requested(conn: psycopg.Connection[Any], worker_id: uuid.UUID,
                               task_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, str]]:
    """Which of this worker's running tasks are marked for termination, and by whom."""
    rows = conn.execute(
        """SELECT id, coalesce(cancel_requested_by, '') FROM pgbg.task
            WHERE id = ANY(%s) AND worker_id = %s AND status = 'running'
              AND cancel_requested_at IS NOT NULL""",
        (list(task_ids), worker_id),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


# -- reporting -----------------------------------------------------------------------

def task_summary(conn: psycopg.Connection[Any],
                 task_ids: Sequence[uuid.UUID]) -> dict[str, dict[str, int]]:
    """Per type: how many tasks, by status."""
    rows = conn.execute(
        """SELECT task_type, status::text, count(*) FROM pgbg.task
            WHERE id = ANY(%s) GROUP BY task_type, status""",
        (list(task_ids),),
    ).fetchall()
    summary: dict[str, dict[str, int]] = {}
    for task_type, status, count in rows:
        summary.setdefault(task_type, {})[status] = count
    return summary


def task_max_overlap(conn: psycopg.Connection[Any], task_ids: Sequence[uuid.UUID],
                     by_type: bool = True) -> dict[str, int]:
    """The most tasks that ran at once, per type (or overall under the key ``*``),
    from the recorded start and finish times. At equal times a finish counts first."""
    rows = conn.execute(
        """WITH events AS (
               SELECT CASE WHEN %(by_type)s THEN task_type ELSE '*' END AS k,
                      started_at AS at, 1 AS delta
                 FROM pgbg.task WHERE id = ANY(%(ids)s) AND started_at IS NOT NULL
               UNION ALL
               SELECT CASE WHEN %(by_type)s THEN task_type ELSE '*' END,
                      coalesce(finished_at, 'infinity'), -1
                 FROM pgbg.task WHERE id = ANY(%(ids)s) AND started_at IS NOT NULL
           )
           SELECT k, max(running)::int FROM (
               SELECT k, sum(delta) OVER (PARTITION BY k ORDER BY at, delta
                                          ROWS UNBOUNDED PRECEDING) AS running
                 FROM events) s
            GROUP BY k""",
        {"ids": list(task_ids), "by_type": by_type},
    ).fetchall()
    return {key: peak for key, peak in rows}


def task_list_failed(conn: psycopg.Connection[Any],
                     task_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, str, str, str]]:
    """(id, type, status, error) of the tasks that did not succeed."""
    rows = conn.execute(
        """SELECT id, task_type, status::text, coalesce(error, '') FROM pgbg.task
            WHERE id = ANY(%s) AND status IN ('failed', 'terminated', 'cancelled')
            ORDER BY finished_at""",
        (list(task_ids),),
    ).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def task_count_terminal(conn: psycopg.Connection[Any], task_ids: Sequence[uuid.UUID]) -> int:
    row = conn.execute("SELECT count(*) FROM pgbg.task WHERE id = ANY(%s) AND complete",
                       (list(task_ids),)).fetchone()
    return int(row[0]) if row else 0


# -- operating the queue -------------------------------------------------------------

def task_list(conn: psycopg.Connection[Any], statuses: Sequence[str] | None,
              task_type: str | None, since: float | None, limit: int) -> list[BackgroundTask]:
    """Newest first; ``since`` in seconds before now (queued since)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT * FROM pgbg.task
                WHERE (%(statuses)s::text[] IS NULL OR status::text = ANY(%(statuses)s))
                  AND (%(type)s::text IS NULL OR task_type = %(type)s)
                  AND (%(since)s::float IS NULL
                       OR queued_at >= now() - make_interval(secs => %(since)s))
                ORDER BY queued_at DESC, id LIMIT %(limit)s""",
            {"statuses": list(statuses) if statuses else None, "type": task_type,
             "since": since, "limit": limit},
        ).fetchall()
    return [_task(row) for row in rows]


def task_link_list(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT kind, key FROM pgbg.task_link WHERE task_id = %s ORDER BY 1, 2",
                        (task_id,)).fetchall()
    return [(row[0], row[1]) for row in rows]


def worker_list(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT w.id, w.hostname, w.pid, w.concurrency,
                      (SELECT count(*) FROM pgbg.task t
                        WHERE t.status = 'running' AND t.worker_id = w.id) AS running,
                      w.started_at, w.heartbeat_at,
                      extract(epoch FROM now() - w.heartbeat_at)::float AS heartbeat_age
                 FROM pgbg.worker w ORDER BY w.hostname, w.pid""").fetchall()


def task_requeue(conn: psycopg.Connection[Any], task_id: uuid.UUID,
                 note: str) -> tuple[TaskStatus, str | None] | None:
    """Queue a finished, unsuccessful task again as a new attempt; return the status it had
    and, when that status allows a retry but the task was not queued again, why (None: no
    such task). Only failed, terminated and cancelled tasks are re-queued, and only once
    their process has exited (``finished_at`` set: a failed task whose process still exits
    holds its slot, and a second process of it must not start, invariant 1), and not while
    another live task holds their unique_key."""
    with conn.transaction():
        row = conn.execute(
            """SELECT t.status::text, t.finished_at IS NULL, (
                      SELECT o.id FROM pgbg.task o
                       WHERE t.unique_key IS NOT NULL AND o.unique_key = t.unique_key
                         AND o.id <> t.id AND (o.status = 'queued'
                                               OR (o.status = 'running' AND o.unique_running))
                       LIMIT 1)
                 FROM pgbg.task t WHERE t.id = %s FOR UPDATE OF t""", (task_id,)).fetchone()
        if row is None:
            return None
        status = TaskStatus(row[0])
        if status not in (TaskStatus.FAILED, TaskStatus.TERMINATED, TaskStatus.CANCELLED):
            return status, None
        if row[1]:
            return status, "its process has not exited yet"
        if row[2] is not None:
            return status, f"task {row[2]} holds its unique_key"
        try:
            with conn.transaction():
                conn.execute(
                    """UPDATE pgbg.task
                          SET status = 'queued', queued_at = clock_timestamp(),
                              started_at = NULL, finished_at = NULL, worker_id = NULL,
                              hostname = NULL, pid = NULL, exit_code = NULL, signal = NULL,
                              error = NULL, result = NULL, cancel_requested_at = NULL,
                              cancel_requested_by = NULL,
                              max_attempts = least(greatest(max_attempts, attempt + 1), 1000)
                        WHERE id = %s""", (task_id,))
        except psycopg.errors.UniqueViolation:  # a task with its key queued meanwhile
            return status, "another task holds its unique_key"
        task_log_insert(conn, task_id, "info", note)
        conn.execute("SELECT pg_notify(%s, '')", (notify.QUEUED,))
    return status, None


def task_purge_batch(conn: psycopg.Connection[Any], older_than: float,
                     statuses: Sequence[str], batch_size: int) -> int:
    """Delete one batch of finished tasks (their log and links go with them)."""
    with db.read_committed(conn):
        row = conn.execute(
            """WITH doomed AS (
                   SELECT id FROM pgbg.task
                    WHERE finished_at < now() - make_interval(secs => %s)
                      AND status::text = ANY(%s) AND complete
                    ORDER BY finished_at LIMIT %s
                    FOR UPDATE SKIP LOCKED),
               deleted AS (DELETE FROM pgbg.task t USING doomed WHERE t.id = doomed.id RETURNING 1)
               SELECT count(*) FROM deleted""",
            (older_than, list(statuses), batch_size),
        ).fetchone()
    return int(row[0]) if row else 0


def task_stats(conn: psycopg.Connection[Any], window: float) -> list[dict[str, Any]]:
    """Per type: what waits and runs now, what finished in the window, and wait/run time
    percentiles (seconds) of the tasks that started in the window."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """WITH recent AS (
                   SELECT * FROM pgbg.task_duration
                    WHERE status IN ('queued', 'running')
                       OR finished_at >= now() - make_interval(secs => %(window)s)
                       OR started_at >= now() - make_interval(secs => %(window)s))
               SELECT task_type,
                      count(*) FILTER (WHERE status = 'queued') AS queued,
                      count(*) FILTER (WHERE status = 'running') AS running,
                      count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE status = 'failed') AS failed,
                      count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                      count(*) FILTER (WHERE status = 'terminated') AS terminated,
                      extract(epoch FROM percentile_cont(0.5)
                              WITHIN GROUP (ORDER BY wait_time))::float AS wait_p50,
                      extract(epoch FROM percentile_cont(0.95)
                              WITHIN GROUP (ORDER BY wait_time))::float AS wait_p95,
                      extract(epoch FROM percentile_cont(0.5)
                              WITHIN GROUP (ORDER BY run_time))::float AS run_p50,
                      extract(epoch FROM percentile_cont(0.95)
                              WITHIN GROUP (ORDER BY run_time))::float AS run_p95
                 FROM recent GROUP BY task_type ORDER BY task_type""",
            {"window": window}).fetchall()


# -- diagnostics ---------------------------------------------------------------------

def doctor_readings(conn: psycopg.Connection[Any], lease: float) -> dict[str, Any]:
    """The numbers ``pgbg doctor`` judges, in one round trip."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """SELECT
                 (SELECT n_dead_tup FROM pg_stat_user_tables
                   WHERE schemaname = 'pgbg' AND relname = 'task') AS dead_tuples,
                 (SELECT n_live_tup FROM pg_stat_user_tables
                   WHERE schemaname = 'pgbg' AND relname = 'task') AS live_tuples,
                 (SELECT greatest(last_autovacuum, last_vacuum) FROM pg_stat_user_tables
                   WHERE schemaname = 'pgbg' AND relname = 'task') AS last_vacuum,
                 (SELECT extract(epoch FROM now() - min(xact_start))::float
                    FROM pg_stat_activity
                   WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
                     AND backend_type = 'client backend') AS oldest_transaction,
                 pg_notification_queue_usage() AS notify_queue_usage,
                 (SELECT count(*) FROM pgbg.worker
                   WHERE heartbeat_at < now() - make_interval(secs => %(lease)s))
                   AS lapsed_workers,
                 (SELECT count(*) FROM pgbg.task t WHERE status = 'running' AND NOT EXISTS (
                     SELECT 1 FROM pgbg.worker w WHERE w.id = t.worker_id
                       AND w.heartbeat_at >= now() - make_interval(secs => %(lease)s)))
                   AS stuck_running,
                 (SELECT array_agg(indexname::text) FROM pg_indexes
                   WHERE schemaname = 'pgbg') AS indexes,
                 -- each worker's connections name it and its version: "pgbg worker ID vX"
                 (SELECT array_agg(DISTINCT application_name::text)
                    FROM pg_stat_activity
                   WHERE datname = current_database()
                     AND application_name LIKE 'pgbg worker %%') AS worker_connections""",
            {"lease": lease}).fetchone()
    assert row is not None
    return dict(row)


def task_count_queued(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT task_type, count(*) FROM pgbg.task WHERE status = 'queued' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {task_type: count for task_type, count in rows}


# -- waiting (pgbg/waiters.py: one statement for every waiter of a process) -----------

def task_read_many(conn: psycopg.Connection[Any], task_ids: Sequence[uuid.UUID]
                   ) -> tuple[dict[uuid.UUID, TaskStatus], dict[uuid.UUID, BackgroundTask]]:
    """In one round trip: the status of each of ``task_ids`` that exists, and the whole
    row of each that has ended (the rows of those still waiting are not sent)."""
    rows = conn.execute(
        """SELECT id, status::text, CASE WHEN complete THEN to_jsonb(t) END,
                  current_setting('TimeZone')
             FROM pgbg.task t WHERE id = ANY(%s)""", (list(task_ids),)).fetchall()
    return ({row[0]: TaskStatus(row[1]) for row in rows},
            {row[0]: BackgroundTask.from_wire(row[2]).in_zone(session_zone(row[3]))
             for row in rows if row[2] is not None})
