"""The dashboard's SQL: read-only statements, each taking a connection, returning plain data.

Every statement is written so that its cost does not grow with history: live tasks are
read through the partial indexes on the live states (each branch's WHERE is exactly an
index predicate, so the planner can use it), finished tasks through
``task_finished_at_idx``, bounded by a time window or a page size.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgbg import queries
from pgbg.models import BackgroundTask, TaskStatus

# Each branch's WHERE is an index predicate word for word: the queued tasks without limits
# (task_claim_free_idx), with limits (task_claim_limited_idx), the running ones
# (task_running_idx) and the failed whose process still runs (task_error_exit_idx).
_FREE = "num_proc = 0 AND num_of_task_type = '{}'::jsonb"
LIVE_BRANCHES = (
    f"status = 'queued' AND {_FREE}",
    f"status = 'queued' AND ({_FREE}) IS NOT TRUE",
    "status = 'running'",
    "status = 'failed' AND finished_at IS NULL",
)


def _live(columns: str) -> str:
    return " UNION ALL ".join(f"SELECT {columns} FROM pgbg.task WHERE {where}"
                              for where in LIVE_BRANCHES)


# -- overview --------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    """Tasks by type and status: the live ones, and those finished in the window."""

    by_type: dict[str, dict[str, int]]
    window_seconds: float

    def total(self, status: str) -> int:
        return sum(row.get(status, 0) for row in self.by_type.values())


def _by_type(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    by_type: dict[str, dict[str, int]] = {}
    for task_type, status, n in rows:
        by_type.setdefault(task_type, {})[status] = int(n)
    return by_type


def live_counts(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    """Per type, the tasks not finished by status (through the live partial indexes)."""
    return _by_type(conn.execute(
        f"""SELECT task_type, status::text, count(*) FROM ({_live("task_type, status")}) t
             GROUP BY 1, 2""").fetchall())


def counts(live: dict[str, dict[str, int]], finished: dict[str, dict[str, int]],
           window: float) -> Counts:
    """The live and the finished counts added up: a status can be in both (failed: those
    still exiting are live, the others finished)."""
    merged: dict[str, dict[str, int]] = {}
    for part in (live, finished):
        for task_type, row in part.items():
            into = merged.setdefault(task_type, {})
            for status, n in row.items():
                into[status] = into.get(status, 0) + n
    return Counts(dict(sorted(merged.items())), window)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    finished: int
    failed: int  # failed or terminated
    wait_avg: float | None  # seconds, of the tasks that finished in the bucket
    wait_p95: float | None
    run_avg: float | None
    run_p95: float | None


def series(conn: psycopg.Connection[Any], window: float, step: float) -> list[Bucket]:
    """Tasks finished per ``step`` seconds over the last ``window``, oldest first, every
    bucket present (empty ones as zero); wait and run times of the tasks in each."""
    rows = conn.execute(
        """WITH bounds AS (
               SELECT date_bin(make_interval(secs => %(step)s), now(), 'epoch'::timestamptz)
                      - make_interval(secs => %(window)s) + make_interval(secs => %(step)s)
                      AS first),
           finished AS (
               SELECT date_bin(make_interval(secs => %(step)s), finished_at,
                               'epoch'::timestamptz) AS b,
                      status, started_at - queued_at AS wait, finished_at - started_at AS run
                 FROM pgbg.task, bounds
                WHERE finished_at IS NOT NULL AND finished_at >= bounds.first),
           agg AS (
               SELECT b, count(*) AS n,
                      count(*) FILTER (WHERE status IN ('failed', 'terminated')) AS bad,
                      extract(epoch FROM avg(wait))::float AS wait_avg,
                      extract(epoch FROM percentile_cont(0.95) WITHIN GROUP (ORDER BY wait))
                          ::float AS wait_p95,
                      extract(epoch FROM avg(run))::float AS run_avg,
                      extract(epoch FROM percentile_cont(0.95) WITHIN GROUP (ORDER BY run))
                          ::float AS run_p95
                 FROM finished GROUP BY b)
           SELECT g.b, coalesce(agg.n, 0), coalesce(agg.bad, 0), agg.wait_avg, agg.wait_p95,
                  agg.run_avg, agg.run_p95
             FROM bounds,
                  generate_series(bounds.first, now(), make_interval(secs => %(step)s)) g(b)
             LEFT JOIN agg ON agg.b = g.b
            ORDER BY g.b""", {"window": window, "step": step}).fetchall()
    return [Bucket(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def hour_figures(conn: psycopg.Connection[Any], start: datetime, end: datetime
                 ) -> tuple[dict[datetime, Bucket], dict[datetime, dict[str, dict[str, int]]]]:
    """For each hour in [start, end) with tasks finished in it: its ``Bucket`` and its
    counts by type and status (the overview's day, an hour at a time: ``rollup``)."""
    params = {"start": start, "end": end}
    where = """finished_at IS NOT NULL AND finished_at >= %(start)s AND finished_at < %(end)s"""
    hour = "date_bin('1 hour', finished_at, 'epoch'::timestamptz)"
    buckets = conn.execute(
        f"""SELECT {hour} AS b, count(*),
                   count(*) FILTER (WHERE status IN ('failed', 'terminated')),
                   extract(epoch FROM avg(started_at - queued_at))::float,
                   extract(epoch FROM percentile_cont(0.95) WITHIN GROUP
                                      (ORDER BY started_at - queued_at))::float,
                   extract(epoch FROM avg(finished_at - started_at))::float,
                   extract(epoch FROM percentile_cont(0.95) WITHIN GROUP
                                      (ORDER BY finished_at - started_at))::float
              FROM pgbg.task WHERE {where} GROUP BY 1""", params).fetchall()
    counts: dict[datetime, dict[str, dict[str, int]]] = {}
    for b, task_type, status, n in conn.execute(
            f"""SELECT {hour}, task_type, status::text, count(*) FROM pgbg.task
                 WHERE {where} GROUP BY 1, 2, 3""", params).fetchall():
        counts.setdefault(b, {}).setdefault(task_type, {})[status] = int(n)
    return ({r[0]: Bucket(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], r[6])
             for r in buckets}, counts)


def this_hour(conn: psycopg.Connection[Any]) -> datetime:
    """The start of the database clock's current hour."""
    row = conn.execute("SELECT date_bin('1 hour', now(), 'epoch'::timestamptz)").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TaskRow:
    """A task as a list shows it (no arguments or result: those can be large)."""

    id: uuid.UUID
    task_type: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    hostname: str | None
    pid: int | None
    error_line: str  # the last line of the error, at most ERROR_LINE characters

    @property
    def sort_at(self) -> datetime:
        return self.finished_at or self.queued_at


ERROR_LINE = 300
# task_unsuccessful_idx's predicate, word for word (migration 0015): a query that says it
# reads only what that index holds
UNSUCCESSFUL = "status <> 'succeeded'::pgbg.task_status"
def _readable(column: str) -> str:
    """A time Python can read, else NULL (SQL can store ``infinity`` or year 20000 in a row;
    psycopg would refuse to load it and fail the whole page)."""
    return (f"CASE WHEN {column} >= '0001-01-02' AND {column} < '9999-12-31' "
            f"THEN {column} END AS {column}")


_ROW_COLUMNS = f"""id, task_type, status::text AS status, priority, attempt, max_attempts,
    coalesce({_readable("queued_at").removesuffix(" AS queued_at")}, 'epoch') AS queued_at,
    {_readable("started_at")}, {_readable("finished_at")}, hostname, pid,
    left(coalesce(substring(rtrim(right(error, 4000), E' \\n\\r\\t') FROM '[^\\n]*$'), ''),
         {ERROR_LINE}) AS error_line"""


def _rows(cur: psycopg.Cursor[Any]) -> list[TaskRow]:
    return [TaskRow(**row) for row in cur.fetchall()]


def recent_failures(conn: psycopg.Connection[Any], limit: int = 10) -> list[TaskRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        # t.: the table's columns (ORDER BY would take the output's, cast for reading)
        cur.execute(f"""SELECT {_ROW_COLUMNS} FROM pgbg.task t
                         WHERE finished_at IS NOT NULL AND {UNSUCCESSFUL}
                           AND status IN ('failed', 'terminated')
                         ORDER BY t.finished_at DESC, t.id DESC LIMIT %s""", (limit,))
        return _rows(cur)


def live_tasks(conn: psycopg.Connection[Any], statuses: Sequence[str] | None,
               task_type: str | None, since: float | None, text: str | None,
               limit: int) -> list[TaskRow]:
    """Tasks not finished (queued, running, failed but still exiting), newest first;
    ``since``: queued within that many seconds."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""SELECT {_ROW_COLUMNS} FROM ({_live("*")}) t
                 WHERE (%(statuses)s::text[] IS NULL OR status::text = ANY(%(statuses)s))
                   AND (%(type)s::text IS NULL OR task_type = %(type)s)
                   AND (%(since)s::float IS NULL
                        OR queued_at >= now() - make_interval(secs => %(since)s))
                   AND (%(text)s::text IS NULL OR strpos(lower(error), lower(%(text)s)) > 0)
                 ORDER BY t.queued_at DESC, t.id DESC LIMIT %(limit)s""",
            {"statuses": list(statuses) if statuses else None, "type": task_type,
             "since": since, "text": text, "limit": limit})
        return _rows(cur)


def stuck_tasks(conn: psycopg.Connection[Any], lease: float, limit: int) -> list[TaskRow]:
    """Running tasks whose worker is gone or has not heartbeat within ``lease`` seconds."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""SELECT {_ROW_COLUMNS} FROM pgbg.task t
                 WHERE status = 'running' AND NOT EXISTS (
                       SELECT 1 FROM pgbg.worker w WHERE w.id = t.worker_id
                          AND w.heartbeat_at >= now() - make_interval(secs => %s))
                 ORDER BY t.started_at, t.id LIMIT %s""", (lease, limit))
        return _rows(cur)


FINISHED_PAGE = """SELECT {columns} FROM pgbg.task t
 WHERE finished_at IS NOT NULL{unsuccessful}
   AND (%(statuses)s::text[] IS NULL OR status::text = ANY(%(statuses)s))
   AND (%(type)s::text IS NULL OR task_type = %(type)s)
   AND (%(since)s::float IS NULL OR finished_at >= now() - make_interval(secs => %(since)s))
   AND (%(text)s::text IS NULL OR strpos(lower(error), lower(%(text)s)) > 0)
   AND (%(after_at)s::timestamptz IS NULL OR finished_at <= %(after_at)s)
   AND (%(after_at)s::timestamptz IS NULL OR finished_at < %(after_at)s
        OR id < %(after_id)s::uuid)
 ORDER BY t.finished_at DESC, t.id DESC LIMIT %(limit)s"""


def finished_page(columns: str, statuses: Sequence[str] | None) -> str:
    """The page query; when the statuses leave out succeeded it says so in the words of
    ``task_unsuccessful_idx`` (the planner can then read that index)."""
    unsuccessful = bool(statuses) and "succeeded" not in (statuses or [])
    return FINISHED_PAGE.format(columns=columns,
                                unsuccessful=f" AND {UNSUCCESSFUL}" if unsuccessful else "")


def finished_params(statuses: Sequence[str] | None, task_type: str | None,
                    since: float | None, text: str | None,
                    after: tuple[datetime, uuid.UUID] | None, limit: int) -> dict[str, Any]:
    return {"statuses": list(statuses) if statuses else None, "type": task_type,
            "since": since, "text": text, "after_at": after[0] if after else None,
            "after_id": after[1] if after else None, "limit": limit}


def finished_tasks(conn: psycopg.Connection[Any], statuses: Sequence[str] | None,
                   task_type: str | None, since: float | None, text: str | None,
                   after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[TaskRow]:
    """One page of finished tasks, newest first: keyset pagination on (finished_at, id),
    so any page costs what the first does (``task_finished_at_idx``, read backwards)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(finished_page(_ROW_COLUMNS, statuses),
                    finished_params(statuses, task_type, since, text, after, limit))
        return _rows(cur)


def failed_ids(conn: psycopg.Connection[Any], task_type: str | None, since: float | None,
               text: str | None, statuses: Sequence[str], limit: int,
               among: Sequence[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """The ids of the finished tasks a bulk retry would queue again (at most ``limit``);
    ``among``: only of these (the ones its confirmation counted)."""
    query = finished_page("id", statuses)
    params = finished_params(statuses, task_type, since, text, None, limit)
    if among is not None:
        query = query.replace(" ORDER BY", " AND id = ANY(%(among)s::uuid[]) ORDER BY")
        params["among"] = list(among)
    return [row[0] for row in conn.execute(query, params).fetchall()]


def task_types(conn: psycopg.Connection[Any], limit: int = 200) -> list[str]:
    """Every type with a live or a finished task, for the filter's list: the finished ones
    by a loose index scan of ``task_finished_type_idx`` (one probe per type)."""
    rows = conn.execute(
        f"""WITH RECURSIVE seen(task_type) AS (
                (SELECT task_type FROM pgbg.task WHERE finished_at IS NOT NULL
                  ORDER BY task_type LIMIT 1)
                UNION ALL
                SELECT (SELECT t.task_type FROM pgbg.task t
                         WHERE t.finished_at IS NOT NULL AND t.task_type > seen.task_type
                         ORDER BY t.task_type LIMIT 1)
                  FROM seen WHERE seen.task_type IS NOT NULL)
            SELECT task_type FROM (
                (SELECT task_type FROM seen WHERE task_type IS NOT NULL LIMIT %(limit)s)
                UNION SELECT task_type FROM ({_live("task_type")}) l) t
             ORDER BY 1 LIMIT %(limit)s""", {"limit": limit}).fetchall()
    return [row[0] for row in rows]


# -- one task --------------------------------------------------------------------------

@dataclass(frozen=True)
class LogLine:
    id: int
    at: datetime | None
    level: str
    message: str


@dataclass(frozen=True)
class Big:
    """A value that may be large, as text cut to ``LIMIT`` characters in the database."""

    text: str | None
    length: int  # characters of the whole text
    is_json: bool = False  # the text of a jsonb column (PostgreSQL's output, valid JSON)

    @property
    def cut(self) -> bool:
        return self.text is not None and self.length > len(self.text)

    def pretty(self) -> str | None:
        """Indented JSON when the whole value came; else the cut text as it is."""
        if self.text is None or self.cut or not self.is_json:
            return self.text
        return indented(self.text)


PRETTY_DEPTH = 32  # deeper than this, JSON is shown as stored (indenting would explode it)


def indented(text: str, step: int = 2) -> str:
    """JSON text indented, every token as it is: numbers keep every digit (no round trip
    through float), and no recursion (a value thousands of levels deep is fine). Deeper
    than ``PRETTY_DEPTH``, or not JSON after all: the text unchanged."""
    out: list[str] = []
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':  # a string, copied whole (escapes included)
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
            continue
        if ch in "[{":
            close = "]" if ch == "[" else "}"
            k = i + 1
            while k < n and text[k] in " \t\r\n":
                k += 1
            if k < n and text[k] == close:  # empty: [] or {}
                out.append(ch + close)
                i = k + 1
                continue
            depth += 1
            if depth > PRETTY_DEPTH:
                return text
            out.append(ch + "\n" + " " * (depth * step))
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                return text
            out.append("\n" + " " * (depth * step) + ch)
        elif ch == ",":
            out.append(",\n" + " " * (depth * step))
        elif ch == ":":
            out.append(": ")
        elif ch not in " \t\r\n":
            j = i
            while j < n and text[j] not in ' \t\r\n,:[]{}"':
                j += 1
            out.append(text[i:j])
            i = j
            continue
        i += 1
    return "".join(out) if depth == 0 else text


BIG_LIMIT = 20_000
ERROR_LIMIT = 50_000
_BIG = {"args": BIG_LIMIT, "kwargs": BIG_LIMIT, "result": BIG_LIMIT, "error": ERROR_LIMIT,
        "info": 4_000}
_JSON = ("args", "kwargs", "result")  # the jsonb ones


@dataclass(frozen=True)
class TaskView:
    task: BackgroundTask  # args, kwargs, result, error and info left out: see ``big``
    big: dict[str, Big]
    unreadable: str | None  # a time in the row Python cannot read, named


def task(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> TaskView | None:
    """One task; its large values cut in the database (a 100 MB result never leaves it),
    a malformed time shown as missing rather than failing the page."""
    big = ", ".join(f"left({c}::text, {n}) AS {c}_text, length({c}::text) AS {c}_length"
                    for c, n in _BIG.items())
    row = conn.execute(
        f"SELECT to_jsonb(t) - ARRAY{list(_BIG)!r}::text[], {big} FROM pgbg.task t "
        "WHERE id = %s", (task_id,)).fetchone()
    if row is None:
        return None
    rest = {**row[0], "args": [], "kwargs": {}, "result": None, "error": None, "info": None}
    value, problem = BackgroundTask.from_wire_lenient(rest)
    values = {c: Big(row[1 + 2 * i], int(row[2 + 2 * i] or 0), c in _JSON)
              for i, c in enumerate(_BIG)}
    return TaskView(value, values, problem)


def task_log(conn: psycopg.Connection[Any], task_id: uuid.UUID,
             limit: int = 500) -> tuple[list[LogLine], bool]:
    """The latest ``limit`` log lines, oldest first (``task_log_task_idx``, read
    backwards), and whether earlier ones were left out."""
    rows = conn.execute(
        f"""SELECT id, {_readable("at")}, level, left(message, 100000) FROM pgbg.task_log
             WHERE task_id = %s ORDER BY id DESC LIMIT %s""", (task_id, limit + 1)).fetchall()
    lines = [LogLine(r[0], r[1], r[2], r[3]) for r in reversed(rows[:limit])]
    return lines, len(rows) > limit


def task_links(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[str, str]]:
    return queries.task_link_list(conn, task_id)


# -- queue, workers, periodic ----------------------------------------------------------

@dataclass(frozen=True)
class QueueRow:
    position: int
    id: uuid.UUID
    task_type: str
    priority: int
    queued_at: datetime
    waiting: float
    run_at: datetime | None
    blocked_by: list[str]

    @property
    def reason(self) -> str:
        return "; ".join(self.blocked_by) or "a free worker slot"


def queue(conn: psycopg.Connection[Any], task_type: str | None, limit: int) -> list[QueueRow]:
    rows = conn.execute(
        """SELECT queue_position, id, task_type, priority, queued_at,
                  extract(epoch FROM waiting)::float, run_at, blocked_by
             FROM pgbg.queue
            WHERE %(type)s::text IS NULL OR task_type = %(type)s
            ORDER BY queue_position LIMIT %(limit)s""",
        {"type": task_type, "limit": limit}).fetchall()
    return [QueueRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], list(r[7] or []))
            for r in rows]


def workers(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return queries.worker_list(conn)


def periodic(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT p.name, p.func, p.task_type, p.cron, p.every, p.timezone, p.enabled,
                      p.next_run_at, p.last_period, p.last_task_id,
                      t.status::text AS last_status
                 FROM pgbg.periodic p LEFT JOIN pgbg.task t ON t.id = p.last_task_id
                ORDER BY p.next_run_at, p.name""").fetchall()


# -- /metrics --------------------------------------------------------------------------

# Upper bounds (seconds) of the wait and run time histograms.
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)


def metric_readings(conn: psycopg.Connection[Any], window: float,
                    lease: float) -> dict[str, Any]:
    """Everything ``/metrics`` reports, read in one round trip."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""SELECT
                 (SELECT coalesce(jsonb_agg(jsonb_build_array(task_type, status, n)), '[]')
                    FROM (SELECT task_type, status::text AS status, count(*) AS n
                            FROM ({_live("task_type, status")}) l GROUP BY 1, 2) c)
                   AS live,
                 (SELECT coalesce(jsonb_agg(jsonb_build_array(task_type, n,
                                                              extract(epoch FROM oldest))),
                                  '[]')
                    FROM (SELECT task_type, count(*) AS n, now() - min(queued_at) AS oldest
                            FROM ({_live("task_type, status, queued_at, run_at")}) l
                           WHERE status = 'queued' AND (run_at IS NULL OR run_at <= now())
                           GROUP BY 1) q) AS queue,
                 (SELECT coalesce(jsonb_agg(jsonb_build_array(task_type, status, n, claimed,
                                                              wait_hist, wait_sum, run_hist,
                                                              run_sum)), '[]')
                    FROM (SELECT task_type, status::text AS status, count(*) AS n,
                                 count(*) FILTER (WHERE started_at IS NOT NULL) AS claimed,
                                 ARRAY[{_hist("started_at - queued_at")}] AS wait_hist,
                                 coalesce(extract(epoch FROM sum(started_at - queued_at)),
                                          0)::float AS wait_sum,
                                 ARRAY[{_hist("finished_at - started_at")}] AS run_hist,
                                 coalesce(extract(epoch FROM sum(finished_at - started_at)),
                                          0)::float AS run_sum
                            FROM pgbg.task
                           WHERE finished_at IS NOT NULL
                             AND finished_at >= now() - make_interval(secs => %(window)s)
                           GROUP BY 1, 2) f) AS finished,
                 (SELECT coalesce(jsonb_agg(jsonb_build_array(
                             w.id, w.hostname, w.pid, w.concurrency,
                             (SELECT count(*) FROM pgbg.task t
                               WHERE t.status = 'running' AND t.worker_id = w.id),
                             extract(epoch FROM now() - w.heartbeat_at),
                             w.heartbeat_at < now() - make_interval(secs => %(lease)s))),
                          '[]') FROM pgbg.worker w) AS workers,
                 (SELECT count(*) FROM pgbg.periodic WHERE enabled) AS periodic_enabled
            """, {"window": window, "lease": lease}).fetchone()
    assert row is not None
    return dict(row)


def _hist(interval: str) -> str:
    """Cumulative counts of ``interval`` (seconds) at or below each bucket bound, and +Inf
    (the count of those that have a value)."""
    parts = [f"count(*) FILTER (WHERE extract(epoch FROM {interval}) <= {bound})"
             for bound in BUCKETS]
    return ", ".join([*parts, f"count({interval})"])


def status_values() -> list[str]:
    return [s.value for s in TaskStatus]


def ping(conn: psycopg.Connection[Any]) -> tuple[bool, str]:
    """Whether the schema is there: (True, its revision) or (False, why)."""
    row = conn.execute("SELECT to_regclass('pgbg.task') IS NOT NULL, "
                       "to_regclass('pgbg.alembic_version') IS NOT NULL").fetchone()
    if row is None or not row[0] or not row[1]:
        return False, "schema missing"
    version = conn.execute("SELECT max(version_num) FROM pgbg.alembic_version").fetchone()
    return True, str(version[0] if version else "")
