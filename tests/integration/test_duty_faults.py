"""The duty hand-over (pgbg/duty.py) through faults: idle workers with free slots hear of a
new task without waiting for a poll (set to an hour here, so a task only a poll would find
never starts within a deadline); a holder that dies costs at most a heartbeat interval."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, wait_for

import pgbg
from pgbg import queries

POLL = 3600.0


def step_all(workers: Sequence[Driver], until: Callable[[], Any], timeout: float = 30.0,
             message: str = "the workers to get there") -> None:
    def turn() -> Any:
        for w in workers:
            w.worker.run_once(timeout=0.01)
        return until()

    wait_for(turn, timeout, interval=0, message=message)


def holders(conn: psycopg.Connection[Any]) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND ((classid::bigint << 32) | objid::bigint) = %s", (queries.DUTY_LOCK,)).fetchall()
    return [r[0] for r in rows]


def backend(w: Driver) -> int:
    return w.worker._db.conn.info.backend_pid


def start(make_worker: Callable[..., Driver], n: int, concurrency: int) -> list[Driver]:
    workers = [make_worker(concurrency, poll_interval=POLL) for _ in range(n)]
    step_all(workers, lambda: all(w.worker._started for w in workers))
    for _ in range(20):  # let the first claims and tries happen
        for w in workers:
            w.worker.run_once(timeout=0.01)
    return workers


def on_duty(workers: Sequence[Driver]) -> list[Driver]:
    return [w for w in workers if w.worker._duty.held]


@pytest.mark.listen
def test_a_full_holder_whose_connection_is_killed_frees_the_duty_for_idle_workers(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    """A full worker holds the duty (it took it for a freed slot and filled it); the other
    worker is idle and lost its try. The holder's backend is terminated: it reconnects,
    knows the duty is lost, cannot claim, so does not take it and tells nobody. A new task
    then waits for the idle worker's hour-long poll."""
    a, b = start(make_worker, 2, 1)
    ra, rb, rx = tmp_path / "a", tmp_path / "b", tmp_path / "x"
    t1 = pgbg.enqueue(tasks.block_until, args=(str(ra),), task_type="rev")
    step_all([a, b], lambda: pgbg.get_task(t1).pid)
    t2 = pgbg.enqueue(tasks.block_until, args=(str(rb),), task_type="rev")
    step_all([a, b], lambda: pgbg.get_task(t2).pid)
    # both full; a third task waits for a slot
    x = pgbg.enqueue(tasks.block_until, args=(str(rx),), task_type="rev")
    step_all([a, b], lambda: True)
    first = a if pgbg.get_task(t1).worker_id == a.worker.id else b
    second = b if first is a else a
    ra.touch()  # the first's slot frees: it takes the duty and claims x for that slot
    step_all([a, b], lambda: pgbg.get_task(x).pid)
    assert pgbg.get_task(x).worker_id == first.worker.id
    rb.touch()  # the second's slot frees: it tries the duty, loses, goes idle
    step_all([a, b], lambda: pgbg.get_task(t2).complete)
    for _ in range(20):
        for w in (a, b):
            w.worker.run_once(timeout=0.01)
    assert on_duty([a, b]) == [first], "setup: the full worker is on duty"
    assert holders(conn) == [backend(first)]
    old = backend(first)
    conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    step_all([a, b], lambda: first.worker._db.connected and backend(first) != old,
             message="the holder to reconnect")
    for _ in range(20):
        for w in (a, b):
            w.worker.run_once(timeout=0.01)
    new = pgbg.enqueue(tasks.add, args=(1, 2), task_type="rev")
    try:
        step_all([a, b], lambda: pgbg.get_task(new).complete, timeout=15,
                 message=f"the idle worker to run a new task (duty held by backends "
                         f"{holders(conn)}; idle worker's backend {backend(second)})")
    finally:
        rx.touch()


@pytest.mark.listen
def test_a_killed_idle_holder_costs_idle_workers_at_most_a_heartbeat(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    """The worker on duty dies (its backend goes with it: SIGKILL, OOM, host lost); the
    other, idle, worker had lost its try and next tries at its poll."""
    a, b = start(make_worker, 2, 1)
    (holder,) = on_duty([a, b])
    other = b if holder is a else a
    # the holder dies without a word: its connection closes, the lock goes with it
    holder.worker._db.conn.pgconn.finish()
    holder.worker.stop(force=True)
    step_all([other], lambda: holders(conn) == [], message="the lock to be released")
    new = pgbg.enqueue(tasks.add, args=(1, 2), task_type="rev")
    step_all([other], lambda: pgbg.get_task(new).complete, timeout=15,
             message=f"the surviving idle worker to run a new task (holders {holders(conn)})")


@pytest.mark.listen
def test_a_burst_on_four_idle_workers_busies_all_of_them(
        make_worker: Callable[..., Driver], tmp_path: Path) -> None:
    workers = start(make_worker, 4, 2)
    release = tmp_path / "release"
    results = [pgbg.enqueue(tasks.block_until, args=(str(release),), task_type="rev")
               for _ in range(100)]
    try:
        step_all(workers, lambda: sum(w.worker.running for w in workers) == 8, timeout=20,
                 message="all 8 slots busy")
        assert all(w.worker.running == 2 for w in workers)
    finally:
        release.touch()
    step_all(workers, lambda: all(pgbg.get_task(r).complete for r in results), timeout=120)


@pytest.mark.listen
def test_the_holder_stopping_hands_the_duty_on(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    a, b = start(make_worker, 2, 1)
    (holder,) = on_duty([a, b])
    other = b if holder is a else a
    holder.worker.stop()
    step_all([a, b], lambda: holder.worker._finished() and not holder.worker._duty.held)
    new = pgbg.enqueue(tasks.add, args=(1, 2), task_type="rev")
    step_all([other], lambda: pgbg.get_task(new).complete, timeout=15,
             message="the other worker to run a new task after the holder stopped")


@pytest.mark.listen
def test_after_a_database_restart_an_idle_worker_hears_new_tasks(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    import os

    from pgbg import embedded
    if os.environ.get("PGBG_TEST_DATABASE_URL"):
        pytest.skip("restarting needs the embedded server the tests control")
    a, b = start(make_worker, 2, 1)
    release = tmp_path / "release"
    t1 = pgbg.enqueue(tasks.block_until, args=(str(release),), task_type="rev")
    step_all([a, b], lambda: pgbg.get_task(t1).pid)
    embedded.restart()

    def reconnected() -> bool:
        return all(w.worker._db.connected for w in (a, b)) and bool(_quiet_holders())

    def _quiet_holders() -> list[int]:
        try:
            with psycopg.connect(conn.info.dsn, autocommit=True) as c:
                return holders(c)
        except psycopg.OperationalError:
            return []

    try:
        step_all([a, b], reconnected, timeout=60, message="both to reconnect, one on duty")

        def warm() -> bool:  # the test process's own cached connection broke too
            try:
                pgbg.get_task(t1)
                return True
            except pgbg.PgbgError:
                return False

        wait_for(warm, 30)
        new = pgbg.enqueue(tasks.add, args=(1, 2), task_type="rev")
        step_all([a, b], lambda: pgbg.get_task(new).complete, timeout=15,
                 message="the idle worker to run a task queued after the restart")
    finally:
        release.touch()
    step_all([a, b], lambda: pgbg.get_task(t1).complete, timeout=60)


@pytest.mark.listen
def test_a_slot_is_refilled_when_its_child_exits_without_a_poll(
        make_worker: Callable[..., Driver]) -> None:
    (w,) = start(make_worker, 1, 1)
    results = [pgbg.enqueue(tasks.add, args=(i, 1), task_type="rev") for i in range(6)]
    # a task is complete once it reported; its process exits just after
    step_all([w], lambda: all(pgbg.get_task(r).complete for r in results)
             and w.worker.running == 0, timeout=30,
             message="every task to run one after the other, no poll")
    assert [pgbg.get_task(r).result for r in results] == [i + 1 for i in range(6)]


def test_poll_only_worker_is_untouched(make_worker: Callable[..., Driver],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBG_NO_LISTEN", "1")
    w = make_worker(1, poll_interval=0.2)
    results = [pgbg.enqueue(tasks.add, args=(i, 1), task_type="rev") for i in range(3)]
    w.until_done(*results)
    assert not w.worker._duty.held



@pytest.mark.listen
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_real_holder_dies_the_other_process_takes_new_tasks(
        worker_process: Callable[..., Any], conn: psycopg.Connection[Any], sig: str) -> None:
    """Two real worker processes, hour-long poll. The one on duty gets ``sig``; a task
    queued once it is gone must still run on the survivor without a poll."""
    import signal as _signal

    procs = [worker_process(1, "--poll-interval", "3600") for _ in range(2)]
    wait_for(lambda: conn.execute("SELECT count(*) FROM pgbg.worker").fetchone()[0] == 2, 30)
    warm = [pgbg.enqueue(tasks.add, args=(i, 1), task_type="rev") for i in range(4)]
    wait_for(lambda: all(pgbg.get_task(r).complete for r in warm), 30)
    (holder_backend,) = wait_for(lambda: holders(conn), 30, message="one on duty")
    (pid,) = conn.execute(
        "SELECT w.pid FROM pg_stat_activity a JOIN pgbg.worker w"
        " ON a.application_name LIKE 'pgbg worker ' || w.id::text || '%%'"
        " WHERE a.pid = %s", (holder_backend,)).fetchone()
    (holder,) = [p for p in procs if p.pid == pid]
    holder.signal(getattr(_signal, sig))
    holder.wait(60)
    wait_for(lambda: holder_backend not in holders(conn), 30, message="the lock to go")
    new = pgbg.enqueue(tasks.add, args=(1, 2), task_type="rev")
    wait_for(lambda: pgbg.get_task(new).complete, 15,
             message=f"the survivor to run a task queued after the holder's {sig} "
                     f"(holders now {holders(conn)})")
