"""A row the worker cannot read fails alone; the API cannot write one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from alembic import command
from conftest import Driver

import pgbg
from pgbg import migrate
from pgbg.exceptions import OptionOutOfRange


@pytest.mark.parametrize("run_at", ["-infinity", "0044-03-15 00:00:00+00 BC"])
def test_a_row_with_an_unreadable_run_at_fails_alone(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any], run_at: str) -> None:
    """Put there by SQL past the constraint (dropped here): the claim commits, the worker
    cannot read the row's time; that task fails saying so, the others run."""
    conn.execute("ALTER TABLE pgbg.task DROP CONSTRAINT task_run_at_readable")
    bad = pgbg.run_in_background(tasks.add, "t", 1, 1)
    conn.execute("UPDATE pgbg.task SET run_at = %s::timestamptz WHERE id = %s", (run_at, bad.id))
    good = pgbg.run_in_background(tasks.add, "t", 2, 3)
    driver = make_worker(2)
    driver.until_done(good)
    assert good.get(timeout=1) == 5
    row = conn.execute("SELECT status::text, error FROM pgbg.task WHERE id = %s",
                       (bad.id,)).fetchone()
    assert row is not None and row[0] == "failed" and "run_at" in row[1], row


def test_the_database_refuses_an_unreadable_run_at(conn: psycopg.Connection[Any]) -> None:
    task = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE pgbg.task SET run_at = '-infinity' WHERE id = %s", (task.id,))


@pytest.mark.parametrize("run_at", [
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # year 1 BC in UTC
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # year 10000
])
def test_enqueue_refuses_a_run_at_outside_the_readable_years(
        conn: psycopg.Connection[Any], run_at: datetime) -> None:
    with pytest.raises(OptionOutOfRange, match="run_at"):
        pgbg.enqueue(tasks.add, (1, 1), task_type="t", run_at=run_at)
    assert conn.execute("SELECT count(*) FROM pgbg.task").fetchone() == (0,)


def test_migration_0012_repairs_old_rows_and_never_fails_on_them(
        make_worker: Callable[..., Driver], database_url: str,
        conn: psycopg.Connection[Any]) -> None:
    config = migrate._config(database_url)
    command.downgrade(config, "0011")
    long_type = "é" * 200  # 400 bytes
    queued, finished = (conn.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, run_at, unique_key, finished_at)
           VALUES (gen_random_uuid(), %s, 'm:f', %s, '-infinity', %s,
                   CASE WHEN %s = 'succeeded' THEN now() END) RETURNING id""",
        (long_type, status, "k" * 2000, status)).fetchone()[0]  # type: ignore[index]
        for status in ("queued", "succeeded"))
    command.upgrade(config, "head")
    failed = pgbg.get_task(queued)
    assert failed.status is pgbg.TaskStatus.FAILED and "migration 0012" in (failed.error or "")
    old = pgbg.get_task(finished)
    assert (old.status, old.run_at, old.unique_key, old.task_type) == (
        pgbg.TaskStatus.SUCCEEDED, None, None, "é" * 63)
    ordinary = pgbg.run_in_background(tasks.add, "t", 2, 2)
    make_worker(1).until_done(ordinary)
    assert ordinary.get(timeout=5) == 4
