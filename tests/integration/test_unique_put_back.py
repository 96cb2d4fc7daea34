"""Putting tasks back in the queue (recovery, release) when several share a unique_key
(unique_while_running=False): only the oldest goes back, the others end saying why."""
from __future__ import annotations

import uuid
from typing import Any

import pgbg_test_tasks as tasks
import psycopg

import pgbg
from pgbg import queries


def test_recovery_of_two_lost_rows_sharing_a_unique_key(conn: psycopg.Connection[Any]) -> None:
    dead = uuid.uuid4()  # a worker with no row: its tasks are lost
    first = pgbg.enqueue(tasks.add, (1, 2), task_type="t", unique_key="k",
                         unique_while_running=False, max_attempts=3)
    assert [t.id for t in queries.task_claim(conn, dead, "h", 1)] == [first.id]
    second = pgbg.enqueue(tasks.add, (3, 4), task_type="t", unique_key="k",
                          unique_while_running=False, max_attempts=3)
    assert second.id != first.id
    assert [t.id for t in queries.task_claim(conn, dead, "h", 1)] == [second.id]
    other = pgbg.enqueue(tasks.add, (5, 6), task_type="u")
    assert [t.id for t in queries.task_claim(conn, dead, "h", 1)] == [other.id]
    # any live worker recovers the lost ones
    recovered = queries.task_recover_lost(conn, 30)
    assert {r[0] for r in recovered} == {first.id, second.id, other.id}
    statuses = sorted(pgbg.get_task(r).status.value for r in (first, second))
    assert statuses == ["failed", "queued"]


def test_release_of_two_unstarted_rows_sharing_a_unique_key(conn: psycopg.Connection[Any]) -> None:
    me = uuid.uuid4()
    queries.worker_register(conn, me, "h", 1, 2)
    first = pgbg.enqueue(tasks.add, (1, 2), task_type="t", unique_key="k",
                         unique_while_running=False)
    assert [t.id for t in queries.task_claim(conn, me, "h", 1)] == [first.id]
    second = pgbg.enqueue(tasks.add, (3, 4), task_type="t", unique_key="k",
                          unique_while_running=False)
    assert [t.id for t in queries.task_claim(conn, me, "h", 1)] == [second.id]
    released = queries.task_release_unstarted(conn, me, [])  # neither is in the ledger
    assert set(released) == {first.id, second.id}


def _two_running(conn: psycopg.Connection[Any], worker: uuid.UUID) -> tuple[Any, Any]:
    # A runs without holding the key; B is queued behind it (holds the key) and claimed too
    a = pgbg.enqueue(tasks.add, (1, 2), task_type="t", unique_key="k",
                     unique_while_running=False, max_attempts=3)
    assert [t.id for t in queries.task_claim(conn, worker, "h", 1)] == [a.id]
    b = pgbg.enqueue(tasks.add, (3, 4), task_type="t", unique_key="k",
                     unique_while_running=True, max_attempts=3)
    assert b.id != a.id
    assert [t.id for t in queries.task_claim(conn, worker, "h", 1)] == [b.id]
    return a, b


def test_recovery_puts_back_the_holder_of_the_key(conn: psycopg.Connection[Any]) -> None:
    a, b = _two_running(conn, uuid.uuid4())  # a worker with no row: both lost
    queries.task_recover_lost(conn, 30)
    assert (pgbg.get_task(a).status, pgbg.get_task(b).status) == (
        pgbg.TaskStatus.FAILED, pgbg.TaskStatus.QUEUED)  # the holder goes back


def test_release_puts_back_the_holder_of_the_key(conn: psycopg.Connection[Any]) -> None:
    me = uuid.uuid4()
    queries.worker_register(conn, me, "h", 1, 2)
    a, b = _two_running(conn, me)
    queries.task_release_unstarted(conn, me, [])
    assert (pgbg.get_task(a).status, pgbg.get_task(b).status) == (
        pgbg.TaskStatus.CANCELLED, pgbg.TaskStatus.QUEUED)
