"""Kill anything, lose nothing: real worker processes, real signals, a real restart."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, WorkerProcess, alive, wait_for

import pgbg
from pgbg import db, embedded, queries

FAST_LEASE = ("--heartbeat-interval", "0.2", "--lease", "1", "--poll-interval", "0.5")



def pids_of(pidfile: Path) -> list[int]:
    return [int(p) for p in pidfile.read_text().split()]


def test_terminate_fifty_running_tasks_across_two_workers(
        worker_process: Callable[..., WorkerProcess], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    results = [pgbg.run_in_background(tasks.block_until, "t", never) for _ in range(50)]
    worker_process(25)
    worker_process(25)
    wait_for(lambda: conn.execute("SELECT count(*) FROM pgbg.task "
                                  "WHERE status = 'running' AND pid IS NOT NULL"
                                  ).fetchone() == (50,), timeout=120,
             message="50 running tasks with pids")
    pids = [pgbg.get_task(r).pid for r in results]
    assert len({row[0] for row in conn.execute("SELECT DISTINCT worker_id FROM pgbg.task")}) == 2
    for r in results:
        pgbg.terminate_background(r, wait=False)
    finished = [pgbg.wait_task(r, timeout=120) for r in results]
    assert {t.status for t in finished} == {pgbg.TaskStatus.TERMINATED}
    wait_for(lambda: not any(alive(pid) for pid in pids if pid), timeout=10,
             message="every terminated process to be gone")


def test_cancel_request_without_notify_is_found_by_polling(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    result = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    driver = make_worker(1, poll_interval=0.2)
    driver.until(lambda: pgbg.get_task(result).pid)
    conn.execute("UPDATE pgbg.task SET cancel_requested_at = now(), "
                 "cancel_requested_by = 'sql' WHERE id = %s", (result.id,))  # no NOTIFY
    driver.until_done(result)
    task = pgbg.get_task(result)
    assert (task.status, task.error) == (pgbg.TaskStatus.TERMINATED, "terminated by sql")


def test_time_limit_terminates_and_records_timeout(make_worker: Callable[..., Driver],
                                                   tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    own = pgbg.enqueue(tasks.block_until, [never], task_type="t", timeout=0.3)
    default = pgbg.enqueue(tasks.block_until, [never], task_type="t")
    quick = pgbg.enqueue(tasks.add, [1, 2], task_type="t", timeout=60)
    driver = make_worker(3, task_timeout=0.5)
    driver.until_done(own, default, quick)
    assert quick.get(timeout=1) == 3
    for result, limit in ((own, "0.3"), (default, "0.5")):
        task = pgbg.get_task(result)
        assert task.status is pgbg.TaskStatus.FAILED
        assert task.error == f"timed out after {limit}s"
        assert task.signal == signal.SIGTERM


@pytest.mark.parametrize("bad", [0, -1, "10", float("inf"), True])
def test_bad_timeout_is_refused(database_url: str, bad: object) -> None:
    with pytest.raises(pgbg.InvalidOption):
        pgbg.enqueue(tasks.add, [1, 2], task_type="t", timeout=bad)  # type: ignore[arg-type]


def test_sigkilled_worker_loses_nothing(worker_process: Callable[..., WorkerProcess],
                                        conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    pidfiles = [tmp_path / f"pids{i}" for i in range(2)]
    doomed = [pgbg.run_in_background(tasks.spawn_and_block, "t", str(p)) for p in pidfiles]
    release = tmp_path / "release"
    retried = pgbg.enqueue(tasks.block_until, [str(release)], task_type="t", max_attempts=2)
    victim = worker_process(3, *FAST_LEASE)
    wait_for(lambda: all(p.exists() for p in pidfiles) and pgbg.get_task(retried).pid,
             timeout=60, message="three running tasks")
    processes = [pid for p in pidfiles for pid in pids_of(p)] + [pgbg.get_task(retried).pid]
    victim.signal(signal.SIGKILL)
    victim.wait()
    # its children, and the grandchildren they started, die with it
    wait_for(lambda: not any(alive(pid) for pid in processes), timeout=10,
             message="the dead worker's children and grandchildren to die")
    worker_process(3, *FAST_LEASE)
    for result in doomed:
        task = pgbg.wait_task(result, timeout=60)
        assert (task.status, task.error) == (pgbg.TaskStatus.FAILED, queries.WORKER_LOST)
    wait_for(lambda: pgbg.get_task(retried).attempt == 2 and pgbg.get_task(retried).pid,
             timeout=60, message="the retried task to run again")
    release.touch()
    task = pgbg.wait_task(retried, timeout=60)
    assert (task.status, task.attempt) == (pgbg.TaskStatus.SUCCEEDED, 2)
    log = [m for _at, _level, m in queries.task_log_list(conn, retried.id)]
    assert log == [f"attempt 1: {queries.WORKER_LOST}"]
    assert conn.execute("SELECT count(*) FROM pgbg.worker").fetchone() == (1,)


def test_paused_worker_cannot_overwrite_a_recovered_task(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = pgbg.run_in_background(tasks.block_until, "t", str(release))
    paused = worker_process(1, *FAST_LEASE)
    wait_for(lambda: pgbg.get_task(result).pid, timeout=60)
    paused.signal(signal.SIGSTOP)
    try:
        worker_process(1, *FAST_LEASE)
        recovered = pgbg.wait_task(result, timeout=60)
        assert (recovered.status, recovered.error) == (pgbg.TaskStatus.FAILED,
                                                       queries.WORKER_LOST)
        release.touch()  # the paused worker's child finishes; its outcome is now stale
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(lambda: paused.logged("outcome not written: the task is no longer ours"),
             timeout=60, message="the late outcome to be refused")
    assert paused.logged("presumed dead")
    assert pgbg.get_task(result) == recovered


@pytest.mark.slow
def test_chaos_workers_killed_at_random(worker_process: Callable[..., WorkerProcess],
                                        conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(20261129)
    results = [pgbg.enqueue(tasks.logged_work, [rng.uniform(0.005, 0.03)], task_type="chaos",
                            max_attempts=5) for _ in range(500)]
    ids = [r.id for r in results]
    workers = [worker_process(4, *FAST_LEASE) for _ in range(3)]
    for threshold in (50, 130, 210, 290, 370):
        wait_for(lambda t=threshold: queries.task_count_terminal(conn, ids) >= t, timeout=240,
                 message=f"{threshold} tasks to finish")
        victim = workers.pop(rng.randrange(len(workers)))
        victim.signal(signal.SIGKILL)
        victim.wait()
        workers.append(worker_process(4, *FAST_LEASE))
    wait_for(lambda: queries.task_count_terminal(conn, ids) == len(ids), timeout=300,
             message="every task to finish")
    for worker in workers:
        worker.stop()
    statuses = dict(conn.execute("SELECT status::text, count(*) FROM pgbg.task GROUP BY 1"))
    assert set(statuses) <= {"succeeded", "failed"}, statuses
    assert sum(statuses.values()) == 500
    runs: dict[uuid.UUID, list[int]] = defaultdict(list)
    pids: set[int] = set()
    for task_id, message in conn.execute(
            "SELECT task_id, message FROM pgbg.task_log WHERE message LIKE 'ran attempt %'"):
        attempt, pid = map(int, re.findall(r"\d+", message))
        runs[task_id].append(attempt)
        pids.add(pid)
    final = dict(conn.execute("SELECT id, attempt FROM pgbg.task"))
    for task_id, attempts in runs.items():
        assert len(attempts) == len(set(attempts)), f"{task_id} ran an attempt twice"
        assert max(attempts) <= final[task_id]
    lost = conn.execute("SELECT count(*) FROM pgbg.task_log WHERE message LIKE 'attempt %'"
                        ).fetchone()
    assert lost is not None and lost[0] > 0  # the kills really hit running tasks
    assert not [pid for pid in pids if alive(pid)]
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


@pytest.mark.listen
def test_killed_listen_connection_is_replaced(worker_process: Callable[..., WorkerProcess],
                                              conn: psycopg.Connection[Any]) -> None:
    worker_process(1, "--poll-interval", "3600", "--heartbeat-interval", "0.2")
    worker_id = wait_for(lambda: conn.execute("SELECT id FROM pgbg.worker").fetchone())[0]

    def backend() -> int | None:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                           (db.versioned_name(f"pgbg worker {worker_id}"),)).fetchone()
        return row[0] if row else None

    old = wait_for(backend)
    killed_at = conn.execute("SELECT pg_terminate_backend(%s), clock_timestamp()",
                             (old,)).fetchone()[1]
    wait_for(lambda: backend() not in (None, old), message="the worker to reconnect")
    # it heartbeats only after LISTEN on the new connection
    wait_for(lambda: conn.execute("SELECT heartbeat_at > %s FROM pgbg.worker",
                                  (killed_at,)).fetchone() == (True,))
    result = pgbg.run_in_background(tasks.add, "t", 40, 2)  # only a NOTIFY can wake it now
    assert result.get(timeout=60) == 42


def test_database_restart_mid_run_loses_nothing(
        worker_process: Callable[..., WorkerProcess], database_url: str) -> None:
    if os.environ.get("PGBG_TEST_DATABASE_URL"):
        pytest.skip("restarting needs the embedded server the tests control")
    results = [pgbg.run_in_background(tasks.work, "t", 0.05) for _ in range(60)]
    ids = [r.id for r in results]
    waited: list[pgbg.BackgroundTask] = []
    waiter = threading.Thread(target=lambda: waited.append(pgbg.wait_task(results[-1], 300)))
    waiter.start()
    worker = worker_process(2)

    def finished() -> int:
        with psycopg.connect(database_url) as c:
            return queries.task_count_terminal(c, ids)

    wait_for(lambda: finished() >= 10, timeout=120)
    embedded.restart()
    restarted_at = time.monotonic()
    wait_for(lambda: _quietly(finished) == len(ids), timeout=300,
             message="every task to finish after the restart")
    waiter.join(timeout=300)
    assert waited and waited[0].status is pgbg.TaskStatus.SUCCEEDED
    with psycopg.connect(database_url) as c:
        rows = c.execute("SELECT status::text, attempt, count(*) FROM pgbg.task GROUP BY 1, 2"
                         ).fetchall()
    assert rows == [("succeeded", 1, 60)]
    assert worker.proc.poll() is None  # the worker never exited because the database blipped
    assert time.monotonic() >= restarted_at


def _quietly(probe: Callable[[], int]) -> int:
    try:
        return probe()
    except psycopg.OperationalError:
        return -1  # the server is still coming back


def test_worker_waits_out_a_dead_database_until_told_to_stop(
        worker_process: Callable[..., WorkerProcess], database_url: str) -> None:
    if os.environ.get("PGBG_TEST_DATABASE_URL"):
        pytest.skip("stopping the server needs the embedded server the tests control")
    # no shutdown grace: a stop request is a hard stop at once
    worker = worker_process(1, "--heartbeat-interval", "0.2", "--shutdown-timeout", "0")
    wait_for(lambda: pgbg.list_workers(), timeout=60)
    pgbg.configure(database_url)  # drop the cached connection before the server goes
    embedded.stop()
    try:
        wait_for(lambda: worker.logged("database unavailable; retrying"), timeout=60,
                 message="the worker to notice the database is gone")
        assert worker.proc.poll() is None  # it waits for the database, it does not exit
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 1
        assert worker.logged("error: stopping without the database")
    finally:
        embedded.ensure_running()  # waits until the server accepts connections
