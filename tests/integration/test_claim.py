"""Claiming: exactly once under contention, limits race-free, priority then FIFO."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
from conftest import claim_concurrently, wait_for

import pgbg
from pgbg import queries


def _claim(conn: psycopg.Connection[Any], n: int = 1) -> list[pgbg.BackgroundTask]:
    return queries.task_claim(conn, uuid.uuid4(), "test", n)


def test_concurrent_claimers_claim_each_task_exactly_once(database_url: str) -> None:
    for i in range(200):
        pgbg.run_in_background(tasks.add, "t", i, i)
    claimers = 8
    barrier = threading.Barrier(claimers)
    claimed: list[list[uuid.UUID]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait(timeout=30)
                while batch := _claim(conn, 3):
                    claimed[index].extend(t.id for t in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    everything = [tid for ids in claimed for tid in ids]
    assert len(everything) == 200
    assert len(set(everything)) == 200
    assert sum(1 for ids in claimed if ids) > 1  # the claimers really did compete


def test_concurrent_claimers_respect_limits(database_url: str) -> None:
    for i in range(60):
        task_type = "a" if i % 2 else "b"
        limit = {"a": 2} if task_type == "a" else {"b": 1}
        pgbg.run_in_background_with_limits(tasks.add, task_type, 3, limit, i, i)
    claimed = claim_concurrently(database_url)
    # nothing finishes in this test, so what is running is what was claimed
    assert Counter(t.task_type for t in claimed) == {"a": 2, "b": 1}


def test_open_limited_claim_makes_a_second_claimer_get_nothing(database_url: str) -> None:
    first = pgbg.run_in_background_with_limits(tasks.add, "t", 1, None, 1, 1)
    pgbg.run_in_background_with_limits(tasks.add, "t", 1, None, 2, 2)
    with psycopg.connect(database_url) as holder, \
            psycopg.connect(database_url, autocommit=True) as other:
        got_first = _claim(holder, 5)  # the claim transaction stays open
        assert [t.id for t in got_first] == [first.id]
        second: list[pgbg.BackgroundTask] = []
        thread = threading.Thread(target=lambda: second.extend(_claim(other, 5)))
        thread.start()
        # the second claimer must wait on the claim lock, not count stale running rows
        wait_for(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() == (1,), message="the second claimer to wait for the claim lock")
        holder.commit()
        thread.join(timeout=30)
    assert second == []


def test_blocked_task_does_not_block_tasks_behind_it(conn: psycopg.Connection[Any]) -> None:
    running = pgbg.run_in_background(tasks.add, "heavy", 0, 0, priority=9)
    assert [t.id for t in _claim(conn)] == [running.id]
    blocked = pgbg.run_in_background_with_limits(tasks.add, "heavy", 0, {"heavy": 1}, 1, 1,
                                                 priority=5)
    free = pgbg.run_in_background(tasks.add, "light", 2, 2)
    assert [t.id for t in _claim(conn, 5)] == [free.id]
    assert pgbg.get_task(blocked).status is pgbg.TaskStatus.QUEUED


def test_limit_may_name_another_type(conn: psycopg.Connection[Any]) -> None:
    pgbg.run_in_background(tasks.add, "export", 0, 0)
    assert len(_claim(conn)) == 1
    waits = pgbg.run_in_background_with_limits(tasks.add, "query", 0, {"export": 1}, 0, 0)
    assert _claim(conn) == []
    queued = pgbg.get_queued_tasks()
    assert [q.task_id for q in queued] == [str(waits.id)]
    assert queued[0].waiting_for == ["export: 1 running, limit 1"]


def test_priority_first_then_fifo(conn: psycopg.Connection[Any]) -> None:
    low = [pgbg.run_in_background(tasks.add, "t", i, 0, priority=0) for i in range(3)]
    high = [pgbg.run_in_background(tasks.add, "t", i, 0, priority=10) for i in range(3)]
    negative = pgbg.run_in_background(tasks.add, "t", 0, 0, priority=-5)
    order = [_claim(conn)[0].id for _ in range(7)]
    assert order == [r.id for r in [*high, *low, negative]]


def test_num_proc_counts_every_type(conn: psycopg.Connection[Any]) -> None:
    for task_type in ("a", "b"):
        pgbg.run_in_background(tasks.add, task_type, 0, 0)
    assert len(_claim(conn, 2)) == 2
    pgbg.run_in_background_with_limits(tasks.add, "c", 2, None, 0, 0)
    assert _claim(conn) == []
    three = pgbg.run_in_background_with_limits(tasks.add, "c", 3, None, 0, 0)
    assert [t.id for t in _claim(conn)] == [three.id]
