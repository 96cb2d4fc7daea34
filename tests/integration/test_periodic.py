"""Periodic tasks: declared as rows, each period queued exactly once, on an injected clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, count_tasks

import pgbg
from pgbg import periodic, queries


def periodic_tasks(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT period, id, status::text FROM pgbg.task WHERE periodic = %s "
                        "ORDER BY period", (name,)).fetchall()


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_a_periodic_task_is_a_row_with_its_next_period(conn: psycopg.Connection[Any]) -> None:
    declared = pgbg.add_periodic("nightly", tasks.add, [1, 2], cron="0 3 * * *",
                                 timezone="Europe/Paris", max_attempts=3, priority=5)
    assert declared.next_run_at > db_now(conn)
    assert declared.next_run_at.astimezone(periodic.zoneinfo.ZoneInfo("Europe/Paris")).hour == 3
    assert (declared.task_type, declared.func, declared.args) == ("nightly", "pgbg_test_tasks:add",
                                                                 [1, 2])
    [listed] = pgbg.list_periodic()
    assert listed == pgbg.get_periodic("nightly")
    assert (listed.next_run_at, listed.max_attempts, listed.priority) == (
        declared.next_run_at, 3, 5)
    assert count_tasks(conn) == 0  # nothing runs at declaration time


def test_declaring_again_keeps_its_place_unless_the_schedule_changes(
        conn: psycopg.Connection[Any]) -> None:
    first = pgbg.add_periodic("report", tasks.add, [1, 2], every=3600)
    conn.execute("UPDATE pgbg.periodic SET next_run_at = next_run_at + interval '1 hour'")
    again = pgbg.add_periodic("report", tasks.add, [5, 6], every=3600, priority=2)
    assert again.next_run_at == first.next_run_at + timedelta(hours=1)  # same schedule: kept
    assert (again.args, again.priority) == ([5, 6], 2)  # options updated
    changed = pgbg.add_periodic("report", tasks.add, [5, 6], every=60)
    assert changed.next_run_at - db_now(conn) <= timedelta(seconds=60)  # new schedule: recomputed
    assert len(pgbg.list_periodic()) == 1


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    (("x", lambda: None), {"every": 60}, pgbg.InvalidTaskFunction),
    (("x", tasks.add, [object()]), {"every": 60}, pgbg.NotSerializable),
    (("x", tasks.add), {"cron": "bogus"}, pgbg.InvalidOption),
    (("x", tasks.add), {}, pgbg.InvalidOption),
    (("x", tasks.add), {"every": 60, "priority": "high"}, pgbg.InvalidOption),
    (("", tasks.add), {"every": 60}, pgbg.InvalidOption),
    (("x", tasks.add), {"cron": "* * * * *", "timezone": "Nowhere/Land"}, pgbg.InvalidOption),
])
def test_bad_declarations_are_refused_and_write_nothing(
        conn: psycopg.Connection[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        error: type[Exception]) -> None:
    with pytest.raises(error):
        pgbg.add_periodic(*args, **kwargs)
    assert pgbg.list_periodic() == []


def test_removing(conn: psycopg.Connection[Any]) -> None:
    pgbg.add_periodic("gone", tasks.add, [1, 2], every=60)
    pgbg.remove_periodic("gone")
    assert pgbg.list_periodic() == []
    with pytest.raises(pgbg.PeriodicNotFound):
        pgbg.remove_periodic("gone")
    with pytest.raises(pgbg.PeriodicNotFound):
        pgbg.get_periodic("gone")


def test_declared_inside_the_callers_transaction(database_url: str) -> None:
    with psycopg.connect(database_url) as caller:
        pgbg.add_periodic("tx", tasks.add, [1, 2], every=60, connection=caller)
        caller.rollback()
    assert pgbg.list_periodic() == []


def test_racing_schedulers_queue_each_period_exactly_once(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    """8 schedulers on their own connections, released together at every tick of an injected
    clock, over 60 periods: one task per period, none missing, none twice."""
    declared = pgbg.add_periodic("race", tasks.add, [1, 2], every=60)
    start = declared.next_run_at
    periods, racers = 60, 8
    barrier = threading.Barrier(racers)
    queued: list[list[Any]] = [[] for _ in range(racers)]
    errors: list[BaseException] = []

    def race(index: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                for k in range(periods):
                    # each racer's clock reads a little differently within the same period
                    now = start + timedelta(seconds=60 * k + index)
                    barrier.wait(timeout=60)
                    queued[index] += periodic.enqueue_due(own, now).queued
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = periodic_tasks(conn, "race")
    assert [r[0] for r in rows] == [start + timedelta(seconds=60 * k) for k in range(periods)]
    assert sorted(p for q in queued for _name, p, _id in q) == [r[0] for r in rows]
    assert sum(1 for q in queued if q) > 1  # the work really was shared among the racers
    assert pgbg.get_periodic("race").next_run_at == start + timedelta(seconds=60 * periods)


def test_missed_periods_are_queued_once_and_said_so(conn: psycopg.Connection[Any]) -> None:
    start = pgbg.add_periodic("late", tasks.add, [1, 2], every=60).next_run_at
    tick = periodic.enqueue_due(conn, start + timedelta(minutes=10, seconds=30))
    [(name, period, task_id)] = tick.queued
    assert (name, period) == ("late", start + timedelta(minutes=10))
    assert tick.next_due == start + timedelta(minutes=11)
    [(_at, level, message)] = queries.task_log_list(conn, task_id)
    assert level == "warning" and "were missed" in message
    assert periodic.enqueue_due(conn, start + timedelta(minutes=10, seconds=59)).queued == []


def test_nothing_is_queued_before_its_time_or_when_disabled(conn: psycopg.Connection[Any]) -> None:
    start = pgbg.add_periodic("early", tasks.add, [1, 2], every=60).next_run_at
    assert periodic.enqueue_due(conn, start - timedelta(microseconds=1)).queued == []
    pgbg.add_periodic("early", tasks.add, [1, 2], every=60, enabled=False)
    assert periodic.enqueue_due(conn, start + timedelta(hours=1)).queued == []
    assert count_tasks(conn) == 0


def test_skip_if_running_skips_periods_while_the_last_task_is_live(
        conn: psycopg.Connection[Any]) -> None:
    start = pgbg.add_periodic("single", tasks.add, [1, 2], every=60,
                              skip_if_running=True).next_run_at
    [(_n, _p, first)] = periodic.enqueue_due(conn, start).queued
    tick = periodic.enqueue_due(conn, start + timedelta(seconds=60))
    assert (tick.queued, tick.skipped) == ([], [("single", start + timedelta(seconds=60))])
    assert pgbg.get_periodic("single").last_task_id is None
    pgbg.remove_task_from_queue(first)  # the live one ends
    assert len(periodic.enqueue_due(conn, start + timedelta(seconds=120)).queued) == 1


def test_a_hand_written_bad_row_is_disabled_not_retried_for_ever(
        conn: psycopg.Connection[Any]) -> None:
    start = pgbg.add_periodic("broken", tasks.add, [1, 2], cron="* * * * *").next_run_at
    conn.execute("UPDATE pgbg.periodic SET cron = 'not cron'")
    assert periodic.enqueue_due(conn, start).queued == []
    assert pgbg.get_periodic("broken").enabled is False


def test_a_worker_runs_each_period_on_an_injected_clock(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    start = pgbg.add_periodic("tick", tasks.echo, ["hello"], cron="*/5 * * * *").next_run_at
    clock = [start - timedelta(seconds=1)]
    driver = make_worker(2, clock=lambda: clock[0])
    for _ in range(5):
        driver.worker.run_once(timeout=0.01)
    assert count_tasks(conn) == 0  # not yet due on the injected clock
    for k in range(6):
        clock[0] = start + timedelta(minutes=5 * k, seconds=1)
        # a worker idles until the next period or a NOTIFY (poll-only: its poll interval)
        conn.execute("NOTIFY pgbg_periodic")
        driver.until(lambda k=k: len(periodic_tasks(conn, "tick")) == k + 1
                     and all(r[2] == "succeeded" for r in periodic_tasks(conn, "tick")))
    rows = periodic_tasks(conn, "tick")
    assert [r[0] for r in rows] == [start + timedelta(minutes=5 * k) for k in range(6)]
    assert pgbg.get_task(rows[0][1]).result == {"args": ["hello"], "kwargs": {}}
