"""The claim of migration 0014: racing claimers against a moving queue.

Claimers (random batch sizes) race an enqueuer (new groups appear, the group count crosses
64 back and forth), a finisher (tasks succeed, or fail and hold their slot until they
"exit": migration 0011), a canceller and a caller holding row locks. Afterwards the
history is checked: no task claimed twice, and at the instant each task started, the tasks
then holding a slot (started before, not yet finished) were fewer than each of its limits.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgbg import queries

TYPES = ["a", "b", "c"]
RC = "SET default_transaction_isolation = 'read committed'"  # the helpers' own level
ROUNDS = int(os.environ.get("REVIEW_ROUNDS", "150"))


def _limits(rng: random.Random, i: int) -> tuple[str, dict[str, int], int]:
    r = rng.random()
    task_type = rng.choice(TYPES)
    if r < 0.2:
        return task_type, {}, 0
    if r < 0.45:  # a group of its own: the group count moves around 64
        key = f"g{i % 90}"
        return rng.choice([key, task_type]), {key: 1, task_type: 2}, 0
    if r < 0.6:  # limits naming another type than the task's own
        other = rng.choice([t for t in TYPES if t != task_type])
        return task_type, {other: rng.choice([1, 2])}, 0
    if r < 0.75:
        return task_type, {}, rng.choice([3, 5])
    return task_type, {task_type: rng.choice([1, 2, 3])}, rng.choice([0, 0, 6])


def _enqueue(conn: psycopg.Connection[Any], rng: random.Random, n: int, start: int) -> None:
    with conn.cursor() as cur:
        for i in range(start, start + n):
            task_type, limits, num_proc = _limits(rng, i)
            cur.execute(
                "INSERT INTO pgbg.task (id, task_type, func, priority, num_of_task_type,"
                " num_proc, run_at) VALUES (gen_random_uuid(), %s, 'pgbg_test_tasks:add', %s,"
                " %s::jsonb, %s, CASE WHEN %s THEN now() + interval '1 hour' END)",
                (task_type, rng.choice([0, 0, 1, 3]), json.dumps(limits), num_proc,
                 rng.random() < 0.05))


@pytest.fixture(params=["read committed", "repeatable read", "serializable"])
def isolation_url(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    if request.param != "read committed":
        name = str(conninfo_to_dict(database_url)["dbname"])
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_isolation '
                          f"= '{request.param}'")
    yield database_url


def test_racing_claimers_never_exceed_a_limit_nor_claim_twice(isolation_url: str) -> None:
    url = isolation_url
    seed = int(os.environ.get("REVIEW_SEED", "1"))
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True) as conn:
        _enqueue(conn, rng, 300, 0)
    stop = threading.Event()
    errors: list[BaseException] = []
    claims: list[uuid.UUID] = []
    lock = threading.Lock()

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                stop.set()
        return run

    def claimer(seed: int) -> None:
        r = random.Random(seed)
        with psycopg.connect(url, autocommit=True) as c:
            for _ in range(ROUNDS):
                got = queries.task_claim(c, uuid.uuid4(), "stress", r.choice([1, 2, 3, 5, 8]))
                with lock:
                    claims.extend(t.id for t in got)
                if stop.is_set():
                    return

    def enqueuer() -> None:
        r = random.Random(seed + 2)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(RC)
            i = 300
            while not stop.is_set():
                _enqueue(c, r, 10, i)
                i += 10
                if i > 3000:
                    return

    def finisher() -> None:
        r = random.Random(seed + 3)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(RC)
            while not stop.is_set():
                # a failed-not-exited row "exits"
                c.execute("UPDATE pgbg.task SET finished_at = clock_timestamp() WHERE id ="
                          " (SELECT id FROM pgbg.task WHERE status = 'failed' AND"
                          "  finished_at IS NULL ORDER BY random() LIMIT 1)")
                if r.random() < 0.5:
                    c.execute("UPDATE pgbg.task SET status = 'succeeded',"
                              " finished_at = clock_timestamp() WHERE id = (SELECT id FROM"
                              " pgbg.task WHERE status = 'running' ORDER BY random() LIMIT 1)")
                else:  # record_task_error_exit: failed, the process still runs
                    c.execute("UPDATE pgbg.task SET status = 'failed' WHERE id = (SELECT id"
                              " FROM pgbg.task WHERE status = 'running' ORDER BY random()"
                              " LIMIT 1)")

    def canceller() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(RC)
            while not stop.is_set():
                row = c.execute("SELECT id FROM pgbg.task WHERE status = 'queued'"
                                " ORDER BY random() LIMIT 1").fetchone()
                if row:
                    queries.run(c, queries.task_cancel_queued(row[0], "review"))

    def locker() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(RC)
            c.autocommit = False  # a caller holding FOR UPDATE on queued rows
            while not stop.is_set():
                c.execute("SELECT id FROM pgbg.task WHERE status = 'queued'"
                          " ORDER BY priority DESC, queued_at LIMIT 3 FOR UPDATE")
                c.execute("SELECT count(*) FROM pgbg.task")
                c.rollback()

    workers = [threading.Thread(target=guarded(lambda s=s: claimer(seed * 100 + s)))
               for s in range(6)]
    helpers = [threading.Thread(target=guarded(f))
               for f in (enqueuer, finisher, canceller, locker)]
    for t in workers + helpers:
        t.start()
    for t in workers:
        t.join(timeout=240)
    stop.set()
    for t in helpers:
        t.join(timeout=60)
    assert not errors, errors

    assert len(claims) == len(set(claims)), "a task claimed twice"
    assert len(claims) > 50
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_isolation = 'read committed'")
        twice = conn.execute("SELECT count(*) FROM pgbg.task WHERE attempt > 1").fetchone()
        assert twice == (0,)
        violations = conn.execute("""
            WITH started AS (SELECT * FROM pgbg.task WHERE started_at IS NOT NULL),
            held AS (
                SELECT t.id, t.task_type, t.num_of_task_type, t.num_proc, u.task_type AS u_type
                  FROM started t JOIN started u ON u.id <> t.id
                   AND u.started_at < t.started_at
                   AND (u.finished_at IS NULL OR u.finished_at > t.started_at)
                 WHERE t.hostname = 'stress')
            SELECT t.id, t.task_type, t.num_of_task_type, t.num_proc,
                   (SELECT count(*) FROM held h WHERE h.id = t.id) AS total,
                   (SELECT jsonb_object_agg(k, (SELECT count(*) FROM held h
                                                 WHERE h.id = t.id AND h.u_type = k))
                      FROM jsonb_object_keys(t.num_of_task_type) k) AS per_type
              FROM started t WHERE t.hostname = 'stress'
               AND ((t.num_proc > 0 AND (SELECT count(*) FROM held h WHERE h.id = t.id)
                                         >= t.num_proc)
                 OR EXISTS (SELECT 1 FROM jsonb_each_text(t.num_of_task_type) l
                             WHERE (SELECT count(*) FROM held h WHERE h.id = t.id
                                      AND h.u_type = l.key) >= l.value::integer))
        """).fetchall()
        stats = conn.execute(
            "SELECT count(*) FILTER (WHERE num_proc > 0 OR num_of_task_type <> '{}'),"
            " count(*) FROM pgbg.task WHERE hostname = 'stress'").fetchone()
        print(f"\nclaimed {len(claims)}, limited {stats}")
    assert not violations, violations[:5]
