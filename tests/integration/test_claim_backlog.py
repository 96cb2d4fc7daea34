"""A claim's cost does not grow with the number of queued tasks its limits block.

OpenREM queues every import with ``{"import": 1}``; a large retrieve leaves thousands of
them queued behind the one that runs, ahead (priority 10) of everything else. A claim
step must then cost the same with 200 or 20,000 of them queued: it may look at one row
per group of tasks sharing the same limits, never at every row of a blocked group, and
it locks (writes) only the rows it takes.

The cost is read from the database itself, inside the transaction of the step (rolled
back, so every measurement starts from the same rows): the buffers it touched and the WAL
it wrote (``EXPLAIN (ANALYZE, BUFFERS, WAL)``: a row lock is a WAL record) and the rows it
fetched (``pg_stat_xact_user_tables``). Counts, not times.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from alembic import command
from conftest import Driver, claim_concurrently

import pgbg
from pgbg import migrate, queries

STEP = "SELECT * FROM pgbg.task_step(%s, 'probe', %s, '[]', '[]')"


@dataclass(frozen=True)
class Cost:
    claimed: tuple[str, ...]  # task types claimed, in claim order
    buffers: int  # shared buffers hit or read
    wal_records: int
    rows_fetched: int  # heap rows fetched by index scans, plus rows read by sequential scans


def _claim_step_cost(url: str, max_claim: int) -> Cost:
    with psycopg.connect(url) as conn:
        # once first, rolled back: the catalog reads and plans of a first call are not counted
        conn.execute(STEP, (uuid.uuid4(), max_claim))
        conn.rollback()
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) {STEP}",
            (uuid.uuid4(), max_claim)).fetchone()[0][0]["Plan"]
        fetched = conn.execute(
            "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
            "  FROM pg_stat_xact_user_tables WHERE relid = 'pgbg.task'::regclass").fetchone()[0]
        claimed = conn.execute(
            "SELECT task_type FROM pgbg.task WHERE status = 'running' AND hostname = 'probe'"
            " ORDER BY started_at, id").fetchall()
        conn.rollback()
    return Cost(tuple(t for (t,) in claimed),
                plan["Shared Hit Blocks"] + plan["Shared Read Blocks"],
                plan["WAL Records"], fetched)


def _queue_imports(n: int, limits: dict[str, int] | None = None, num_proc: int = 0) -> None:
    pgbg.enqueue_many(tasks.add, [(i, i) for i in range(n)], task_type="import",
                      priority=10, num_proc=num_proc,
                      num_of_task_type={"import": 1} if limits is None else limits)


def _start_one(conn: psycopg.Connection[Any]) -> None:
    """Claim (and so count as running) the first queued task, as another worker would."""
    assert len(queries.task_claim(conn, uuid.uuid4(), "another worker", 1)) == 1


def _analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE pgbg.task")


def _assert_flat(small: Cost, large: Cost) -> None:
    # A btree over 20,000 rows may be one level deeper than over 200: a buffer more for
    # each of the step's index descents (about twenty); the old claim read 20,000 more.
    assert large.buffers <= small.buffers + 32, (small, large)
    assert large.rows_fetched <= small.rows_fetched + 2, (small, large)
    assert large.wal_records <= small.wal_records + 2, (small, large)
    # and in absolute terms: the old claim fetched and locked every one of the 20,000
    assert large.rows_fetched <= 64 and large.wal_records <= 40, large


def _costs_at_200_and_20000(url: str, queue: Callable[[int], None],
                            before: Callable[[], None] = lambda: None) -> tuple[Cost, Cost]:
    """The cost of one claim step (4 slots) with 200 tasks from ``queue`` ahead of 20
    unlimited ones, then with 20,000."""
    queue(200)
    before()
    for i in range(20):
        pgbg.run_in_background(tasks.add, "query", i, i)
    _analyze(url)
    small = _claim_step_cost(url, 4)
    queue(19_800)
    _analyze(url)
    return small, _claim_step_cost(url, 4)


@pytest.mark.parametrize("blocked_by", ["num_of_task_type", "num_proc"])
def test_a_claim_behind_a_blocked_backlog_costs_the_same_with_20000_queued(
        database_url: str, conn: psycopg.Connection[Any], blocked_by: str) -> None:
    def queue(n: int) -> None:
        if blocked_by == "num_proc":
            _queue_imports(n, limits={}, num_proc=1)
        else:
            _queue_imports(n)

    # an import runs: every queued import now waits for it
    small, large = _costs_at_200_and_20000(database_url, queue, lambda: _start_one(conn))
    # the queued imports wait for the running one; the unlimited tasks behind them flow
    assert small.claimed == large.claimed == ("query",) * 4
    _assert_flat(small, large)


def test_a_claim_that_takes_a_limited_task_costs_the_same_with_20000_queued(
        database_url: str) -> None:
    small, large = _costs_at_200_and_20000(database_url, _queue_imports)
    # the free import slot is taken first (priority 10), then unlimited tasks fill the rest
    assert small.claimed == large.claimed == ("import", "query", "query", "query")
    _assert_flat(small, large)


def test_limits_hold_when_many_groups_of_limits_are_queued(database_url: str) -> None:
    """Per-customer limits give a group per customer: more groups than a claim probes one by
    one, so the claim walks the queue in claim order instead. Limits still hold under
    concurrent claimers, and every task is claimed once."""
    customers = 100
    for i in range(customers * 3):
        customer = f"customer-{i % customers}"
        pgbg.run_in_background_with_limits(tasks.add, customer, 0, {customer: 1}, i, i)
    claimed = claim_concurrently(database_url, rounds=30)
    # nothing finishes: exactly one task of each customer runs, the oldest
    assert Counter(t.task_type for t in claimed) == {f"customer-{c}": 1 for c in range(customers)}
    assert sorted(t.args[0] for t in claimed) == list(range(customers))


def test_the_claim_order_holds_across_groups_of_limits(database_url: str,
                                                       conn: psycopg.Connection[Any]) -> None:
    """Priority, then age, across unlimited tasks and several groups of limits, some of them
    blocked: the claim takes exactly what walking the queue in order would take."""
    order = []
    specs = [(5, {"a": 1}), (5, {}), (9, {"b": 2}), (1, {"a": 1}), (9, {"b": 2}), (9, {"b": 2}),
             (5, {"a": 1, "b": 5}), (0, {}), (7, {"c": 1}), (7, {"c": 1})]
    for i, (priority, limits) in enumerate(specs):
        task_type = next(iter(limits), "free")
        order.append(pgbg.run_in_background_with_limits(
            tasks.add, task_type, 0, limits, i, i, priority=priority).id)
    claimed = queries.task_claim(conn, uuid.uuid4(), "test", 100)
    # b: 2 of 3 (limit 2); c: 1 of 2 (limit 1); the priority-5 "a", then the unlimited
    # one; "a"+"b" and the priority-1 "a" wait for the running "a"; the priority-0 free one
    assert [t.args[0] for t in claimed] == [2, 4, 8, 0, 1, 7]
    with psycopg.connect(conn.info.dsn) as other:
        rows = other.execute("SELECT num_of_task_type FROM pgbg.task WHERE status = 'queued'"
                             " ORDER BY priority DESC, queued_at").fetchall()
    assert [json.dumps(r[0], sort_keys=True) for r in rows] == [
        '{"b": 2}', '{"c": 1}', '{"a": 1, "b": 5}', '{"a": 1}']


def _long_limits() -> str:
    return json.dumps({f"type-{i:03}": 1 for i in range(200)})  # ~3 kB: past the bound


def test_migration_0014_repairs_limits_too_long_to_index(database_url: str,
                                                         conn: psycopg.Connection[Any],
                                                         make_worker: Callable[..., Driver]
                                                         ) -> None:
    config = migrate._config(database_url)
    command.downgrade(config, "0013")
    queued = conn.execute(
        "INSERT INTO pgbg.task (id, task_type, func, num_of_task_type) VALUES"
        " (gen_random_uuid(), 't', 'pgbg_test_tasks:add', %s::jsonb) RETURNING id",
        (_long_limits(),)).fetchone()[0]
    finished = conn.execute(
        "INSERT INTO pgbg.task (id, task_type, func, status, finished_at, num_of_task_type)"
        " VALUES (gen_random_uuid(), 't', 'm:f', 'succeeded', now(), %s::jsonb) RETURNING id",
        (_long_limits(),)).fetchone()[0]
    conn.execute("INSERT INTO pgbg.periodic (name, func, task_type, num_of_task_type, every,"
                 " next_run_at) VALUES ('p', 'm:f', 't', %s::jsonb, 60, now())",
                 (_long_limits(),))
    command.upgrade(config, "head")

    failed = pgbg.get_task(queued)
    assert failed.status is pgbg.TaskStatus.FAILED and failed.attempt == 0
    assert failed.error is not None and "longer than 2048 bytes" in failed.error
    # a finished task and a disabled periodic task keep their limits: queued again, they
    # are refused instead of running without them
    assert pgbg.get_task(finished).num_of_task_type == json.loads(_long_limits())
    enabled, limits = conn.execute("SELECT enabled, num_of_task_type FROM pgbg.periodic"
                                   ).fetchone()
    assert (enabled, limits) == (False, json.loads(_long_limits()))
    with pytest.raises(pgbg.InvalidTaskState, match="longer than 2048 bytes"):
        pgbg.retry_task(queued)  # an operator queues the failed one again
    assert pgbg.get_task(queued).status is pgbg.TaskStatus.FAILED
    for again in ("UPDATE pgbg.task SET status = 'queued', finished_at = NULL",
                  "UPDATE pgbg.periodic SET enabled = true"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(again)
        conn.rollback()
    ordinary = pgbg.run_in_background_with_limits(tasks.add, "t", 0, {"t": 1}, 1, 1)
    make_worker(1).until_done(ordinary)
    assert ordinary.get(timeout=5) == 2


def test_a_malformed_row_fails_alone_when_the_claim_walks(
        conn: psycopg.Connection[Any], make_worker: Callable[..., Driver]) -> None:
    """More groups than the claim probes: the walk meets the malformed row and fails it."""
    conn.execute("ALTER TABLE pgbg.task DROP CONSTRAINT task_num_of_task_type_valid")
    conn.commit()
    fine = [pgbg.run_in_background_with_limits(tasks.add, f"c{i}", 0, {f"c{i}": 1}, i, 1)
            for i in range(80)]
    bad = conn.execute(
        "INSERT INTO pgbg.task (id, task_type, func, args, num_of_task_type, priority) VALUES"
        " (gen_random_uuid(), 't', 'pgbg_test_tasks:add', '[1, 1]', '{\"a\": 0}', -1)"
        " RETURNING id").fetchone()[0]
    conn.commit()
    make_worker(2).until_done(*fine, pgbg.Result(bad))
    assert sorted(r.get(timeout=5) for r in fine) == list(range(1, 81))
    task = pgbg.get_task(bad)
    assert task.status is pgbg.TaskStatus.FAILED and task.attempt == 0
    assert task.error is not None and "cannot run: malformed" in task.error


def test_the_claim_stays_cheap_when_a_backlog_arrives_after_the_statistics(
        database_url: str) -> None:
    """The statistics, and a worker's cached plans, are from when the queue was nearly
    empty; then a retrieve queues 20,000 imports at once. The claim must not turn to an
    index or a sort that walks them (the planner, trusting the statistics, had)."""
    for i in range(300):
        pgbg.run_in_background(tasks.add, "old", i, i)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE pgbg.task SET status = 'succeeded', finished_at = now()")
        conn.execute("VACUUM ANALYZE pgbg.task")
    with psycopg.connect(database_url) as worker:  # a worker's session: plans made now
        worker.execute(STEP, (uuid.uuid4(), 4))
        worker.rollback()
        _queue_imports(20_000)
        _start_one(worker)
        worker.commit()
        for i in range(20):
            pgbg.run_in_background(tasks.add, "query", i, i)
        costs = []
        for _ in range(2):  # blocked, then with the import slot free
            worker.execute(STEP, (uuid.uuid4(), 4))
            fetched = worker.execute(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                "  FROM pg_stat_xact_user_tables WHERE relid = 'pgbg.task'::regclass"
            ).fetchone()[0]
            costs.append(fetched)
            worker.rollback()
            worker.execute("UPDATE pgbg.task SET status = 'succeeded', finished_at = now()"
                           " WHERE status = 'running'")
            worker.commit()
    assert max(costs) <= 64, costs
