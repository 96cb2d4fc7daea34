"""Bulk enqueue, and keeping the task table healthy."""

from __future__ import annotations

import collections
import datetime
import uuid
from collections.abc import Callable
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, count_tasks

import pgbg
from pgbg import notify, queries


def test_enqueue_many_writes_every_task_with_one_notification(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        notify.listen(listener, notify.QUEUED)
        results = pgbg.enqueue_many(tasks.add, [(i, i) for i in range(12000)],
                                    task_type="bulk", priority=2, num_of_task_type={"bulk": 3})
        received = list(listener.notifies(timeout=1.0))
    assert len(received) == 1  # 3 batches in one transaction: one wake-up
    assert len({r.id for r in results}) == 12000
    assert {(r.id.version, r.id.variant) for r in results} == {(4, uuid.RFC_4122)}
    row = conn.execute("SELECT count(*), min(priority), max(priority), "
                       "bool_and(num_of_task_type = '{\"bulk\": 3}') FROM pgbg.task").fetchone()
    assert row == (12000, 2, 2, True)
    args = conn.execute("SELECT args FROM pgbg.task WHERE id = %s", (results[7].id,)).fetchone()
    assert args == ([7, 7],)


def test_enqueue_many_with_kwargs_runs(make_worker: Callable[..., Driver]) -> None:
    results = pgbg.enqueue_many(tasks.echo, [[1], [2]], [{"k": "a"}, {"k": "b"}],
                                task_type="bulk")
    make_worker(2).until_done(*results)
    assert [r.get(timeout=1) for r in results] == [
        {"args": [1], "kwargs": {"k": "a"}}, {"args": [2], "kwargs": {"k": "b"}}]


def test_enqueue_many_takes_any_sequence(conn: psycopg.Connection[Any]) -> None:
    results = pgbg.enqueue_many(tasks.echo, collections.deque([(1,), [2]]),
                                collections.deque([{"k": "a"}, {}]), task_type="bulk")
    rows = conn.execute("SELECT id, args, kwargs FROM pgbg.task").fetchall()
    assert sorted(rows, key=lambda row: [r.id for r in results].index(row[0])) == [
        (results[0].id, [1], {"k": "a"}), (results[1].id, [2], {})]


def test_enqueue_many_refuses_everything_for_one_bad_call(
        conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pgbg.NotSerializable, match=r"call 2: args\[0\]"):
        pgbg.enqueue_many(tasks.add, [(1, 1), (2, 2), (datetime.date.today(), 3)],
                          task_type="bulk")
    with pytest.raises(pgbg.InvalidOption, match="kwargs_list has 1 items"):
        pgbg.enqueue_many(tasks.echo, [[1], [2]], [{}], task_type="bulk")
    with pytest.raises(pgbg.InvalidTaskFunction):
        pgbg.enqueue_many(lambda: 1, [()], task_type="bulk")
    with pytest.raises(pgbg.NotSerializable, match=r"call 6000: args\[1\]"):
        pgbg.enqueue_many(tasks.add, [(1, 1)] * 6000 + [(1, float("nan"))], task_type="bulk")
    with pytest.raises(pgbg.InvalidOption, match=r"call 1: args must be a list or tuple"):
        pgbg.enqueue_many(tasks.add, [(1, 1), "ab"], task_type="bulk")
    with pytest.raises(pgbg.InvalidOption, match=r"call 0: kwargs must be a dict"):
        pgbg.enqueue_many(tasks.echo, [()], [[1]], task_type="bulk")  # type: ignore[list-item]
    assert count_tasks(conn) == 0


@pytest.mark.parametrize("commit", [True, False])
def test_enqueue_many_joins_the_callers_transaction(
        database_url: str, conn: psycopg.Connection[Any], commit: bool) -> None:
    with psycopg.connect(database_url) as app:
        pgbg.enqueue_many(tasks.add, [(1, 1)] * 7000, task_type="bulk", connection=app)
        app.commit() if commit else app.rollback()
    assert count_tasks(conn) == (7000 if commit else 0)


def test_worker_retention_purges_old_finished_tasks(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    old = [pgbg.run_in_background(tasks.add, "t", i, i) for i in range(3)]
    driver = make_worker(2, retention=3600.0, heartbeat_interval=0.05, lease=30)
    driver.until_done(*old)
    conn.execute("UPDATE pgbg.task SET finished_at = now() - interval '2 hours'")
    recent = pgbg.run_in_background(tasks.add, "t", 9, 9)
    waiting = pgbg.run_in_background_with_limits(tasks.add, "t", 1, {"nothing": 1}, 0, 0)
    driver.until(lambda: count_tasks(conn) == 2 and pgbg.get_task(recent).complete)
    assert {row[0] for row in conn.execute("SELECT id FROM pgbg.task")} == {recent.id,
                                                                           waiting.id}


def test_task_table_is_tuned_for_a_queue(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'pgbg.task'::regclass"
                       ).fetchone()
    assert row is not None
    options = dict(option.split("=") for option in row[0])
    assert options["autovacuum_vacuum_scale_factor"] == "0.02"
    assert options["fillfactor"] == "80"


def test_limit_check_uses_the_running_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, finished_at)
                    SELECT gen_random_uuid(), 't', 'm:f', 'succeeded', now()
                      FROM generate_series(1, 20000)""")
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status)
                    SELECT gen_random_uuid(), 't' || (i % 7), 'm:f', 'running'
                      FROM generate_series(1, 50) i""")
    conn.execute("ANALYZE pgbg.task")
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN SELECT task_type, count(*) FROM pgbg.task WHERE status = 'running' "
        "GROUP BY task_type"))
    assert "task_running_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_a_worker_step_never_scans_the_task_table(conn: psycopg.Connection[Any]) -> None:
    """Recording pids and outcomes and claiming go by index, however many rows the table
    keeps (counted by PostgreSQL itself for the step's own transaction)."""
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, finished_at)
                    SELECT gen_random_uuid(), 't', 'm:f', 'succeeded', now()
                      FROM generate_series(1, 3000)""")
    pgbg.enqueue_many(tasks.add, [[1, 2]] * 200, task_type="t")
    conn.execute("ANALYZE pgbg.task")
    worker_id = uuid.uuid4()
    claimed = queries.task_step(conn, worker_id, "h", 4, [], []).claimed
    with conn.transaction(force_rollback=True):
        unwritten = queries.task_step(
            conn, worker_id, "h", 2, [(t.id, t.attempt, 4242) for t in claimed[2:]],
            [queries.Outcome(t.id, t.attempt, pgbg.TaskStatus.SUCCEEDED, result=3)
             for t in claimed[:2]]).unwritten
        assert unwritten == []
        row = conn.execute("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                           "WHERE relid = 'pgbg.task'::regclass").fetchone()
        assert row is not None
        assert row[0] == 0, f"{row[0]} sequential scans of pgbg.task in one worker step"
        assert row[1] > 0
