"""Retries: failed attempts run again with backoff, only when allowed and wanted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, count_tasks

import pgbg
from pgbg import queries


def test_failed_attempts_are_retried_until_one_succeeds(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    result = pgbg.enqueue(tasks.fail_until_attempt, [3], task_type="t", max_attempts=3,
                          retry_backoff=0)
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert (task.status, task.attempt, task.result) == (pgbg.TaskStatus.SUCCEEDED, 3, 3)
    log = [m for _at, _level, m in queries.task_log_list(conn, result.id)]
    assert [line.split(";")[0] for line in log] == ["attempt 1 failed", "attempt 2 failed"]
    assert "ValueError: attempt 1" in log[0]  # each attempt's error is kept


def test_backoff_delays_the_next_attempt(make_worker: Callable[..., Driver],
                                         conn: psycopg.Connection[Any]) -> None:
    result = pgbg.enqueue(tasks.fail_until_attempt, [2], task_type="t", max_attempts=2,
                          retry_backoff=3600)
    driver = make_worker(1, poll_interval=0.2)
    driver.until(lambda: pgbg.get_task(result).status is pgbg.TaskStatus.QUEUED
                 and pgbg.get_task(result).attempt == 1)
    due = pgbg.get_task(result).run_at
    assert due is not None
    now = datetime.now(UTC)
    assert now + timedelta(minutes=29) < due < now + timedelta(minutes=91)  # 3600 s ± 50%
    for _ in range(10):
        driver.worker.run_once(timeout=0.02)
    assert pgbg.get_task(result).attempt == 1  # not before it is due
    conn.execute("UPDATE pgbg.task SET run_at = now() WHERE id = %s", (result.id,))  # time passes
    driver.until_done(result)
    assert pgbg.get_task(result).attempt == 2


@pytest.mark.parametrize(("retry_on", "raised", "attempts"), [
    ([ValueError], "ValueError", 2),
    (["ValueError"], "KeyError", 1),
    ([LookupError], "KeyError", 2),  # a subclass of a listed class is retried
])
def test_retry_only_on_given_exceptions(make_worker: Callable[..., Driver], retry_on: list[Any],
                                        raised: str, attempts: int) -> None:
    result = pgbg.enqueue(tasks.fail_until_attempt, [9, raised], task_type="t", max_attempts=2,
                          retry_backoff=0, retry_on=retry_on)
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert (task.status, task.attempt) == (pgbg.TaskStatus.FAILED, attempts)


def test_no_retry_after_an_error_exit_or_a_termination(make_worker: Callable[..., Driver],
                                                       tmp_path: Any) -> None:
    recorded = pgbg.enqueue(tasks.error_exit_then_return, ["bad data"], task_type="t",
                            max_attempts=3, retry_backoff=0)
    blocked = pgbg.enqueue(tasks.block_until, [str(tmp_path / "never")], task_type="t",
                           max_attempts=3, retry_backoff=0)
    driver = make_worker(2)
    driver.until(lambda: pgbg.get_task(blocked).pid)
    pgbg.terminate_background(blocked, wait=False)
    driver.until_done(recorded, blocked)
    assert (pgbg.get_task(recorded).status, pgbg.get_task(recorded).attempt) == (
        pgbg.TaskStatus.FAILED, 1)
    assert (pgbg.get_task(blocked).status, pgbg.get_task(blocked).attempt) == (
        pgbg.TaskStatus.TERMINATED, 1)


@pytest.mark.parametrize("options", [{"retry_on": ValueError}, {"retry_on": [42]},
                                     {"retry_on": "ValueError"}, {"retry_backoff": -1}])
def test_bad_retry_options_are_refused(database_url: str, conn: psycopg.Connection[Any],
                                       options: dict[str, Any]) -> None:
    with pytest.raises(pgbg.InvalidOption):
        pgbg.enqueue(tasks.add, [1, 1], task_type="t", **options)
    assert count_tasks(conn) == 0
