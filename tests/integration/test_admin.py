"""Operating the queue from the library: listing, retrying, purging, stats, doctor."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver

import pgbg
from pgbg import admin, queries


def test_parse_duration() -> None:
    assert admin.parse_duration("90s") == timedelta(seconds=90)
    assert admin.parse_duration("15m") == timedelta(minutes=15)
    assert admin.parse_duration("7d") == timedelta(days=7)
    assert admin.parse_duration("2w") == timedelta(weeks=2)
    assert admin.parse_duration("1.5h") == timedelta(minutes=90)
    for bad in ("", "7 days", "-1d", "d", "1y"):
        with pytest.raises(pgbg.InvalidOption):
            admin.parse_duration(bad)


def test_list_tasks_filters(make_worker: Callable[..., Driver]) -> None:
    done = pgbg.run_in_background(tasks.add, "export", 1, 1)
    make_worker().until_done(done)
    waiting = pgbg.run_in_background(tasks.add, "exports", 1, 1)  # exact type match
    assert [t.id for t in admin.list_tasks(task_type="export")] == [done.id]
    assert [t.id for t in admin.list_tasks(status=["queued"])] == [waiting.id]
    assert [t.id for t in admin.list_tasks(limit=1)] == [waiting.id]  # newest first
    assert len(admin.list_tasks(since=timedelta(hours=1))) == 2
    with pytest.raises(pgbg.InvalidOption):
        admin.list_tasks(status=["done"])


def test_retry_runs_a_failed_task_again(make_worker: Callable[..., Driver],
                                        conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background(tasks.fail, "t", "first time")
    driver = make_worker()
    driver.until_done(result)
    admin.retry_task(result)
    task = pgbg.get_task(result)
    assert (task.status, task.error, task.max_attempts) == (pgbg.TaskStatus.QUEUED, None, 2)
    driver.until_done(result)
    assert pgbg.get_task(result).attempt == 2
    assert [m for _a, _l, m in queries.task_log_list(conn, result.id)] == [
        "queued again by retry_task"]


def test_retry_refuses_live_and_successful_tasks(make_worker: Callable[..., Driver]) -> None:
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with pytest.raises(pgbg.InvalidTaskState, match="queued"):
        admin.retry_task(queued)
    make_worker().until_done(queued)
    with pytest.raises(pgbg.InvalidTaskState, match="succeeded"):
        admin.retry_task(queued)
    with pytest.raises(pgbg.TaskNotFound):
        admin.retry_task(uuid.uuid4())


def test_purge_deletes_only_old_finished_tasks(make_worker: Callable[..., Driver],
                                               conn: psycopg.Connection[Any],
                                               tmp_path: Any) -> None:
    finished = [pgbg.run_in_background(tasks.record_things, "t", "k", str(i)) for i in range(5)]
    driver = make_worker(2)
    driver.until_done(*finished)
    running = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "release"))
    driver.until(lambda: pgbg.get_task(running).pid)
    queued = pgbg.run_in_background(tasks.add, "later", 1, 1)
    assert admin.purge_tasks(timedelta(days=1)) == 0  # nothing is old enough
    assert admin.purge_tasks(timedelta(0), batch_size=2) == 5
    remaining = {row[0] for row in conn.execute("SELECT id FROM pgbg.task")}
    assert remaining == {running.id, queued.id}
    assert conn.execute("SELECT count(*) FROM pgbg.task_log").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgbg.task_link").fetchone() == (0,)
    with pytest.raises(pgbg.InvalidOption):
        admin.purge_tasks(timedelta(0), status=["running"])


def test_stats_per_type(make_worker: Callable[..., Driver]) -> None:
    ok = [pgbg.run_in_background(tasks.add, "a", i, i) for i in range(3)]
    bad = pgbg.run_in_background(tasks.fail, "b", "x")
    make_worker(2).until_done(*ok, bad)
    pgbg.run_in_background(tasks.add, "a", 0, 0)
    stats = {s["task_type"]: s for s in admin.task_stats(timedelta(hours=1))}
    assert (stats["a"]["succeeded"], stats["a"]["queued"], stats["b"]["failed"]) == (3, 1, 1)
    assert stats["a"]["run_p50"] >= 0 and stats["a"]["wait_p95"] >= stats["a"]["wait_p50"]
    assert set(stats["a"]) == {"task_type", "queued", "running", "succeeded", "failed",
                               "cancelled", "terminated", "wait_p50", "wait_p95", "run_p50",
                               "run_p95"}


def test_doctor_finds_stuck_tasks_and_lapsed_workers(conn: psycopg.Connection[Any]) -> None:
    assert all(check.ok for check in admin.doctor())
    dead = uuid.uuid4()
    conn.execute("INSERT INTO pgbg.worker (id, hostname, pid, concurrency, heartbeat_at) "
                 "VALUES (%s, 'gone', 1, 1, now() - interval '1 hour')", (dead,))
    conn.execute("INSERT INTO pgbg.task (id, task_type, func, status, worker_id) "
                 "VALUES (gen_random_uuid(), 't', 'm:f', 'running', %s)", (dead,))
    conn.execute("DROP INDEX pgbg.task_running_idx")
    problems = {c.name: c for c in admin.doctor() if not c.ok}
    assert set(problems) == {"workers with lapsed heartbeats", "tasks stuck in running",
                             "pgbg indexes"}
    assert problems["pgbg indexes"].value == "task_running_idx"
    assert all(c.hint for c in problems.values())


def test_reporting_views(make_worker: Callable[..., Driver],
                         conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background(tasks.record_things, "study-import", "study", "1.2.3")
    make_worker().until_done(result)
    linked = conn.execute("SELECT task_id, task_type, status::text FROM pgbg.task_linked "
                          "WHERE kind = 'study' AND key = '1.2.3'").fetchall()
    assert linked == [(result.id, "study-import", "succeeded")]
    duration = conn.execute("SELECT wait_time >= '0', run_time >= '0' FROM pgbg.task_duration "
                            "WHERE id = %s", (result.id,)).fetchone()
    assert duration == (True, True)
    stats = conn.execute("SELECT succeeded FROM pgbg.task_type_stats "
                         "WHERE task_type = 'study-import'").fetchone()
    assert stats == (1,)
