"""Scheduled tasks (run_at / delay) and unique tasks (unique_key)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, count_tasks

import pgbg
from pgbg import queries


def test_a_scheduled_task_waits_and_says_so(make_worker: Callable[..., Driver],
                                            conn: psycopg.Connection[Any]) -> None:
    later = pgbg.enqueue(tasks.add, [1, 2], task_type="t", delay=3600)
    now = pgbg.enqueue(tasks.add, [3, 4], task_type="t")
    driver = make_worker(2, poll_interval=3600)
    driver.until_done(now)
    for _ in range(10):  # give it every chance to start too early
        driver.worker.run_once(timeout=0.01)
    assert pgbg.get_task(later).status is pgbg.TaskStatus.QUEUED
    (queued,) = pgbg.get_queued_tasks()
    assert queued.run_at is not None and queued.run_at > datetime.now(UTC) + timedelta(minutes=59)
    assert queued.waiting_for[0].startswith("scheduled for ")


@pytest.mark.listen
def test_the_worker_wakes_when_a_task_falls_due(make_worker: Callable[..., Driver],
                                                conn: psycopg.Connection[Any]) -> None:
    driver = make_worker(1, poll_interval=3600)  # only its due-time timer can wake it now
    driver.worker.run_once(timeout=0.01)
    due = pgbg.enqueue(tasks.add, [5, 6], task_type="t", delay=0.3)
    driver.until_done(due)  # the NOTIFY finds nothing due; the timer claims it on time
    task = pgbg.get_task(due)
    assert task.started_at is not None and task.run_at is not None
    assert task.started_at >= task.run_at


def test_a_step_that_claims_too_few_says_when_the_next_scheduled_task_falls_due(
        conn: psycopg.Connection[Any]) -> None:
    """The worker learns when to claim again from the step itself (no round trip between
    claiming and starting); a step that filled every slot, or claimed nothing, does not ask."""
    pgbg.enqueue(tasks.add, [1, 2], task_type="t", delay=3600)
    pgbg.enqueue(tasks.add, [1, 2], task_type="t", delay=7200)
    ready = [pgbg.enqueue(tasks.add, [3, 4], task_type="t") for _ in range(2)]
    worker_id = uuid.uuid4()
    full = queries.task_step(conn, worker_id, "h", 1, [], [])
    assert len(full.claimed) == 1 and full.next_due is None
    assert queries.task_step(conn, worker_id, "h", 0, [], []).next_due is None
    short = queries.task_step(conn, worker_id, "h", 5, [], [])
    assert {t.id for t in full.claimed + short.claimed} == {r.id for r in ready}
    assert short.next_due is not None and 3000 < short.next_due <= 3600


def test_run_at_and_delay_are_checked(database_url: str, conn: psycopg.Connection[Any]) -> None:
    for options in ({"run_at": datetime.now()}, {"run_at": "tomorrow"}, {"delay": -1},
                    {"delay": "5"}, {"run_at": datetime.now(UTC), "delay": 1}):
        with pytest.raises(pgbg.InvalidOption):
            pgbg.enqueue(tasks.add, [1, 1], task_type="t", **options)
    assert count_tasks(conn) == 0
    at = datetime.now(UTC) + timedelta(days=1)
    assert pgbg.get_task(pgbg.enqueue(tasks.add, [1, 1], task_type="t", run_at=at)).run_at == at


def test_unique_key_returns_the_live_task(make_worker: Callable[..., Driver],
                                          conn: psycopg.Connection[Any], tmp_path: Any) -> None:
    release = tmp_path / "release"
    first = pgbg.enqueue(tasks.block_until, [str(release)], task_type="t", unique_key="k")
    again = pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key="k")
    assert again.id == first.id and count_tasks(conn) == 1
    driver = make_worker(1)
    driver.until(lambda: pgbg.get_task(first).pid)
    # running still holds the key (the default); a queued-only key would not
    assert pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key="k").id == first.id
    release.touch()
    driver.until_done(first)
    fresh = pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key="k")
    assert fresh.id != first.id  # finished tasks no longer hold it


def test_unique_while_queued_only(make_worker: Callable[..., Driver], tmp_path: Any) -> None:
    release = tmp_path / "release"
    first = pgbg.enqueue(tasks.block_until, [str(release)], task_type="t", unique_key="q",
                         unique_while_running=False)
    driver = make_worker(1)
    driver.until(lambda: pgbg.get_task(first).pid)
    second = pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key="q",
                          unique_while_running=False)
    assert second.id != first.id
    assert pgbg.enqueue(tasks.add, [2, 2], task_type="t", unique_key="q",
                        unique_while_running=False).id == second.id
    release.touch()


def test_concurrent_unique_enqueues_make_one_task(database_url: str,
                                                  conn: psycopg.Connection[Any]) -> None:
    barrier = threading.Barrier(8)
    ids: list[Any] = []
    lock = threading.Lock()

    def enqueue_from_own_connection() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            barrier.wait(timeout=30)
            result = pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key="report-42",
                                  connection=own)
            with lock:
                ids.append(result.id)

    threads = [threading.Thread(target=enqueue_from_own_connection) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert count_tasks(conn) == 1


def test_bad_unique_key_is_refused(database_url: str, conn: psycopg.Connection[Any]) -> None:
    for bad in ("", 5):
        with pytest.raises(pgbg.InvalidOption):
            pgbg.enqueue(tasks.add, [1, 1], task_type="t", unique_key=bad)  # type: ignore[arg-type]
    assert count_tasks(conn) == 0
