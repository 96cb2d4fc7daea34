"""The claim of migration 0014: queued rows locked by another transaction (a caller's
``SELECT ... FOR UPDATE``, an application's own UPDATE in a long transaction).

The claim picks a row without locking it, then tries to lock it; a stream whose pick was
locked by another transaction is probed from then on with ``FOR UPDATE SKIP LOCKED``, so
150 locked rows at the head of the queue stop nothing (the first version gave up the step
after 100 such picks and claimed nothing).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from pgbg import queries


def _insert(conn: psycopg.Connection[Any], n: int, task_type: str, priority: int,
            limits: str = "{}") -> None:
    conn.execute(
        "INSERT INTO pgbg.task (id, task_type, func, priority, num_of_task_type)"
        " SELECT gen_random_uuid(), %s, 'pgbg_test_tasks:add', %s, %s::jsonb"
        "   FROM generate_series(1, %s)", (task_type, priority, limits, n))


@pytest.mark.parametrize("locked", ["limited", "unlimited"])
def test_tasks_behind_rows_another_transaction_locks_are_claimed(
        database_url: str, conn: psycopg.Connection[Any], locked: str) -> None:
    if locked == "limited":
        # 150 allowed limited tasks at the head of the queue, all locked by a caller
        _insert(conn, 150, "a", 10, '{"a": 1000}')
        _insert(conn, 3, "free", 0)
        expected = ["free"] * 3
    else:
        # 150 unlimited tasks at the head, locked; an allowed limited task and free ones behind
        _insert(conn, 150, "locked-free", 10)
        _insert(conn, 1, "b", 5, '{"b": 1}')
        _insert(conn, 2, "free", 0)
        expected = ["b", "free", "free"]
    with psycopg.connect(database_url) as holder:
        held = holder.execute("SELECT id FROM pgbg.task WHERE priority = 10 FOR UPDATE"
                              ).fetchall()
        assert len(held) == 150
        with psycopg.connect(database_url, autocommit=True) as claimer:
            got = queries.task_claim(claimer, uuid.uuid4(), "test", 4)
        holder.rollback()
    assert sorted(t.task_type for t in got) == sorted(expected)
