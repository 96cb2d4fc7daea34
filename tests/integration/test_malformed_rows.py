"""Rows written by SQL with values pgbg would refuse: they fail alone, the queue goes on.

Issue 12 A3/A4. The database refuses such rows since revision 0010 (CHECK constraints);
rows from before it are repaired by the migration, and the claim and the ``pgbg.queue``
view still cope with one that slipped past (the constraints dropped here to let it in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from alembic import command
from conftest import Driver

import pgbg
from pgbg import migrate

MALFORMED_LIMITS = ['[]', '"x"', '{"a": "x"}', '{"a": -1}', '{"a": 0}', '{"a": 1.5}',
                    '{"a": 4294967296}', '{"a": 1e30}', '{"a": null}', '{"a": {"b": 1}}']

CONSTRAINTS = ["task_num_of_task_type_valid", "task_num_proc_valid", "task_max_attempts_valid",
               "task_retry_backoff_valid", "task_timeout_valid"]


def _insert(conn: psycopg.Connection[Any], func: str = "pgbg_test_tasks:add",
            args: str = "[1, 2]", **columns: Any) -> Any:
    names = ", ".join(["id", "task_type", "func", "args", *columns])
    marks = ", ".join(["gen_random_uuid()", "'t'", "%s", "%s::jsonb"]
                      + [f"%s{'::jsonb' if k == 'num_of_task_type' else ''}" for k in columns])
    row = conn.execute(f"INSERT INTO pgbg.task ({names}) VALUES ({marks}) RETURNING id",
                       [func, args, *columns.values()]).fetchone()
    assert row is not None
    return row[0]


def test_the_database_refuses_malformed_options(conn: psycopg.Connection[Any]) -> None:
    for limits in MALFORMED_LIMITS:
        with pytest.raises(psycopg.errors.CheckViolation):
            _insert(conn, num_of_task_type=limits)
    for column, value in [("num_proc", -1), ("max_attempts", 0), ("max_attempts", 1001),
                          ("retry_backoff", 1e308), ("retry_backoff", -1.0),
                          ("retry_backoff", float("nan")), ("timeout", float("inf")),
                          ("timeout", 0.0)]:
        with pytest.raises(psycopg.errors.CheckViolation):
            _insert(conn, **{column: value})
    _insert(conn, num_of_task_type='{"a": 2147483647, "b": 1}', max_attempts=1000,
            retry_backoff=3600.0, timeout=1e308)  # the edges are allowed


def test_a_malformed_row_that_slipped_in_fails_alone(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    for name in CONSTRAINTS:
        conn.execute(f"ALTER TABLE pgbg.task DROP CONSTRAINT IF EXISTS {name}")
    bad = [_insert(conn, num_of_task_type=limits) for limits in MALFORMED_LIMITS]
    bad.append(_insert(conn, num_proc=-1))
    assert len(pgbg.get_queued_tasks()) == len(bad)  # the view answers
    rows = conn.execute("SELECT id, blocked_by FROM pgbg.queue").fetchall()
    assert len(rows) == len(bad)
    ordinary = pgbg.run_in_background(tasks.add, "t", 2, 3)
    limited = pgbg.run_in_background_with_limits(tasks.add, "t", 5, {"t": 2}, 4, 5)
    driver = make_worker(2)
    driver.until_done(ordinary, limited, *[pgbg.Result(i) for i in bad])
    assert (ordinary.get(timeout=5), limited.get(timeout=5)) == (5, 9)
    for task_id in bad:
        task = pgbg.get_task(task_id)
        assert task.status is pgbg.TaskStatus.FAILED, task
        assert task.error is not None and "cannot run: malformed" in task.error, task.error
        assert task.attempt == 0  # never started, never charged
    assert pgbg.get_queued_tasks() == []


def test_absurd_retry_values_from_sql_do_not_crash_the_worker(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    for name in CONSTRAINTS:
        conn.execute(f"ALTER TABLE pgbg.task DROP CONSTRAINT IF EXISTS {name}")
    absurd = _insert(conn, func="pgbg_test_tasks:fail", args='["boom"]', attempt=9_999,
                     max_attempts=2 ** 31 - 1, retry_backoff=1e308)
    driver = make_worker(1)
    driver.until(lambda: pgbg.get_task(absurd).attempt == 10_000
                 and pgbg.get_task(absurd).status is pgbg.TaskStatus.QUEUED)
    task = pgbg.get_task(absurd)
    row = conn.execute("SELECT run_at - now() <= interval '3601 seconds' FROM pgbg.task "
                       "WHERE id = %s", (absurd,)).fetchone()
    assert row == (True,)  # retried after at most MAX_BACKOFF
    assert task.error is not None and "boom" in task.error
    ordinary = pgbg.run_in_background(tasks.add, "t", 1, 1)
    driver.until_done(ordinary)
    assert ordinary.get(timeout=5) == 2


def test_migration_0010_repairs_old_rows_and_never_fails_on_them(
        make_worker: Callable[..., Driver], database_url: str,
        conn: psycopg.Connection[Any]) -> None:
    config = migrate._config(database_url)
    command.downgrade(config, "0009")
    queued_bad = [_insert(conn, num_of_task_type=limits) for limits in MALFORMED_LIMITS]
    finished_bad = conn.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, num_of_task_type, num_proc,
                                  max_attempts, retry_backoff, timeout, finished_at)
           VALUES (gen_random_uuid(), 't', 'm:f', 'succeeded', '[]', -3, 5000, 1e308,
                   'NaN', now()) RETURNING id""").fetchone()
    assert finished_bad is not None
    big = _insert(conn, num_of_task_type='{"t": 5}', max_attempts=0,
                  retry_backoff=float("inf"), timeout=-1.0)
    command.upgrade(config, "head")
    rows = conn.execute("SELECT conname, convalidated FROM pg_constraint "
                        "WHERE conname = ANY(%s)", (CONSTRAINTS,)).fetchall()
    assert sorted(rows) == sorted((name, True) for name in CONSTRAINTS)
    for task_id in queued_bad:
        task = pgbg.get_task(task_id)
        assert task.status is pgbg.TaskStatus.FAILED
        assert task.error is not None and "cannot run: malformed" in task.error
    old = pgbg.get_task(finished_bad[0])
    assert (old.status, old.num_of_task_type, old.num_proc, old.max_attempts,
            old.retry_backoff, old.timeout) == (pgbg.TaskStatus.SUCCEEDED, {}, 0, 1000,
                                                3600.0, None)
    clamped = pgbg.get_task(big)  # out-of-range retry options: brought into range
    assert (clamped.status, clamped.num_of_task_type, clamped.max_attempts,
            clamped.retry_backoff, clamped.timeout) == (pgbg.TaskStatus.QUEUED, {"t": 5}, 1,
                                                        3600.0, None)
    ordinary = pgbg.run_in_background(tasks.add, "t", 2, 2)
    make_worker(1).until_done(ordinary, pgbg.Result(big))
    assert ordinary.get(timeout=5) == 4
    assert pgbg.Result(big).get(timeout=5) == 3
