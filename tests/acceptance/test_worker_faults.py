"""Faults between two steps of a real worker: its backend terminated while an outcome
waits on a lock, a task recovered from under it, rows that collide when put back."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, TcpProxy, WorkerProcess, alive, wait_for, worker_env

import pgbg
from pgbg import queries

WORKER_BACKENDS = """SELECT pid FROM pg_stat_activity
                      WHERE application_name LIKE 'pgbg worker%' AND wait_event_type = 'Lock'"""



def test_an_outcome_held_up_by_a_lock_survives_a_reconnect(
        worker_process: Callable[..., WorkerProcess], database_url: str, tmp_path: Path,
        conn: psycopg.Connection[Any]) -> None:
    """The child has exited and been reaped, its outcome waits on a lock; the worker's
    backend is terminated, again and again: the task must not go back to the queue."""
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    result = pgbg.run_in_background(tasks.append_when, "t", str(release), str(ledger), "first")
    worker_process(1, "--heartbeat-interval", "60", "--lease", "120")
    pid = wait_for(lambda: pgbg.get_task(result).pid, timeout=60, message="the task to start")
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE pgbg.task IN EXCLUSIVE MODE")  # reads pass, writes wait
        release.touch()
        wait_for(lambda: not alive(pid), message="the task's process to exit")
        # Each round: the worker's write (or its release after reconnecting) waits on the
        # lock, and its backend is terminated. Between rounds it handles the child's exit.
        for _round in range(5):
            [(backend,)] = wait_for(lambda: conn.execute(WORKER_BACKENDS).fetchall(),
                                    message="the worker to wait on the lock")
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
            wait_for(lambda b=backend: not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (b,)).fetchone())
        locker.rollback()
    task = pgbg.wait_task(result, timeout=60)
    assert (task.status, task.result, task.attempt) == (pgbg.TaskStatus.SUCCEEDED, "first", 1)
    assert ledger.read_text().count("\n") == 1  # the function ran once


def test_text_postgresql_cannot_store_is_escaped_not_stuck(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    """An error, an info line and printed output holding NUL and a lone surrogate: the
    task still ends, with every text written by the one rule (backslash escapes)."""
    results = [pgbg.run_in_background(tasks.unstorable_error, "t", text)
               for text in ("nul", "surrogate")]
    ordinary = pgbg.run_in_background(tasks.add, "t", 1, 2)
    driver = make_worker(2)
    driver.until_done(*results, ordinary)
    assert ordinary.get(timeout=5) == 3
    for result, escaped in zip(results, ("a\\x00b", "x\\ud800y"), strict=True):
        task = pgbg.get_task(result)
        assert task.status is pgbg.TaskStatus.FAILED
        assert task.error is not None and f"ValueError: message {escaped}" in task.error
        assert task.info == f"info {escaped}"
        log = "".join(m for _at, _level, m in queries.task_log_list(conn, result.id))
        assert f"info {escaped}" in log
        assert "printed a\\x00b" in log or "x\\ud800y" in escaped


def test_a_recovered_task_claimed_again_by_the_same_worker_never_runs_twice_at_once(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    """The worker's lease lapsed (simulated: its rows handed back to the queue as a
    recovery would) while its child still runs; it claims the task again. The old child
    must be killed before the new attempt starts, never left running beside it."""
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    result = pgbg.enqueue(tasks.append_when, [str(release), str(ledger), "x"], task_type="t",
                          max_attempts=3)
    driver = make_worker(2)
    first = driver.until(lambda: pgbg.get_task(result).pid)
    conn.execute("UPDATE pgbg.task SET status = 'queued', worker_id = NULL WHERE id = %s",
                 (result.id,))  # what task_recover_lost does to a lapsed worker's task
    driver.until(lambda: pgbg.get_task(result).attempt == 2)  # claimed again
    second = driver.until(lambda: pgbg.get_task(result).pid not in (None, first)
                          and pgbg.get_task(result).pid)
    assert not alive(first), "the first attempt's child still runs beside the second"
    release.touch()
    driver.until_done(result)
    assert pgbg.get_task(result).status is pgbg.TaskStatus.SUCCEEDED
    assert ledger.read_text().split() == ["x", str(second)]


def test_putting_back_a_task_whose_key_a_successor_holds_fails_that_task_alone(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    """unique_while_running=False: a successor with the same key was queued while the task
    ran. Its retry (and its recovery) cannot queue it again beside the successor; it ends
    failed, saying so, and the worker and every other task carry on."""
    first = pgbg.enqueue(tasks.fail, ["boom"], task_type="u", unique_key="k",
                         unique_while_running=False, max_attempts=3)
    lost = pgbg.enqueue(tasks.add, [1, 1], task_type="u", unique_key="j",
                        unique_while_running=False, max_attempts=3)
    # Both "run" under a worker that is gone: lost rows, and one successor per key.
    dead = uuid.uuid4()
    conn.execute("""UPDATE pgbg.task SET status = 'running', worker_id = %s, attempt = 1,
                           started_at = now() WHERE id = %s""", (dead, lost.id))
    # the successors are due later: they hold their keys, queued, while the others end
    successor_j = pgbg.enqueue(tasks.add, [2, 2], task_type="u", unique_key="j",
                               unique_while_running=False, delay=3600)
    driver = make_worker(1, lease=1.0, heartbeat_interval=0.2)
    driver.until(lambda: pgbg.get_task(first).status is not pgbg.TaskStatus.QUEUED)
    successor_k = pgbg.enqueue(tasks.add, [3, 3], task_type="u", unique_key="k",
                               unique_while_running=False, delay=3600)
    assert successor_k.id != first.id
    driver.until_done(first, lost, timeout=60)
    assert (pgbg.get_task(first).status, pgbg.get_task(lost).status) == (
        pgbg.TaskStatus.FAILED, pgbg.TaskStatus.FAILED)
    for task in (first, lost):
        error = pgbg.get_task(task).error
        assert error is not None and "same unique_key" in error, error
    conn.execute("UPDATE pgbg.task SET run_at = NULL WHERE id IN (%s, %s)",
                 (successor_k.id, successor_j.id))
    driver.until_done(successor_k, successor_j)  # the worker carried on
    assert (successor_k.get(timeout=5), successor_j.get(timeout=5)) == (6, 4)


def test_a_worker_cut_off_from_the_database_kills_its_tasks_before_they_are_recovered(
        tcp_proxy: TcpProxy, worker_process: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    """A real cut (a proxy that stops forwarding, closing nothing): the worker is stuck in
    a database call past its lease. Its task is recovered and run by another worker; the
    first process must be gone before the second starts, not run beside it."""
    release, lockfile, ledger = (tmp_path / name for name in ("release", "lock", "ledger"))
    result = pgbg.enqueue(tasks.exclusive_until, [str(release), str(lockfile), str(ledger)],
                          task_type="t", max_attempts=2)
    fast = ("--heartbeat-interval", "0.3", "--lease", "3", "--poll-interval", "0.5")
    cut_off = WorkerProcess(tcp_proxy.url, 1, *fast)
    try:
        first = wait_for(lambda: pgbg.get_task(result).pid, timeout=60)
        tcp_proxy.freeze()
        worker_process(1, *fast)  # direct: recovers the task once the lease lapses
        wait_for(lambda: pgbg.get_task(result).attempt == 2 and pgbg.get_task(result).pid,
                 timeout=60, message="the task to run again elsewhere")
        assert not alive(first)
        release.touch()
        task = pgbg.wait_task(result, timeout=60)
        assert (task.status, task.attempt) == (pgbg.TaskStatus.SUCCEEDED, 2)
        lines = ledger.read_text().split("\n")
        assert not [line for line in lines if line.startswith("overlap")], lines
        assert lines[:2] == [f"start {first}", f"start {task.pid}"]
        tcp_proxy.thaw()
        wait_for(lambda: cut_off.logged("could not renew the lease in time"),
                 message="the cut-off worker to say why its task died")
        wait_for(lambda: cut_off.logged("outcome not written: the task is no longer ours"),
                 message="its late outcome to be refused")
        assert pgbg.get_task(result) == task
    finally:
        tcp_proxy.thaw()
        cut_off.stop()


CLAIM_LOCK = 7070626267  # the claim's advisory lock (migration 0001)


def test_a_claim_left_running_on_a_dropped_connection_never_commits(
        tcp_proxy: TcpProxy, conn: psycopg.Connection[Any]) -> None:
    """The worker's claim waits on a lock when its connection is cut; the server goes on
    waiting. Before the worker releases anything on its new connection, the old backend
    must be gone, or its claim commits later: a task claimed by nobody that knows it."""
    conn.execute("SELECT pg_advisory_lock(%s)", (CLAIM_LOCK,))
    result = pgbg.run_in_background_with_limits(tasks.add, "a", 0, {"a": 1}, 1, 1)
    worker = WorkerProcess(tcp_proxy.url, 1, "--heartbeat-interval", "60", "--lease", "120",
                           "--poll-interval", "0.5")
    try:
        [(old,)] = wait_for(lambda: conn.execute(WORKER_BACKENDS).fetchall(), timeout=60,
                            message="the worker's claim to wait on the lock")
        tcp_proxy.cut()
        wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                          (old,)).fetchone(),
                 timeout=60, message="the old backend to be terminated")
        conn.execute("SELECT pg_advisory_unlock(%s)", (CLAIM_LOCK,))
        task = pgbg.wait_task(result, timeout=30)
        assert (task.status, task.result, task.attempt) == (pgbg.TaskStatus.SUCCEEDED, 2, 1)
        assert not worker.logged("never started")  # nothing claimed behind its back
    finally:
        conn.execute("SELECT pg_advisory_unlock_all()")
        worker.stop()


@pytest.mark.parametrize("mode", ["EXCLUSIVE", "ACCESS EXCLUSIVE"])
def test_a_table_locked_longer_than_a_lock_wait_kills_no_healthy_task(
        worker_process: Callable[..., WorkerProcess], database_url: str, tmp_path: Path,
        mode: str) -> None:
    """The task table locked past the worker's lock wait (5 s) but within its lease — by
    an administrator, or ALTER TABLE (ACCESS EXCLUSIVE: not even reads pass): the worker's
    statements fail and are tried again, its heartbeat goes on, its task lives."""
    release = tmp_path / "release"
    result = pgbg.run_in_background(tasks.block_until, "t", str(release))
    # each statement that meets the lock waits up to 5 s: a lease of 25 s leaves room
    worker_process(2, "--heartbeat-interval", "1", "--lease", "25", "--poll-interval", "0.2")
    pid = wait_for(lambda: pgbg.get_task(result).pid, timeout=60, message="the task to start")
    with psycopg.connect(database_url) as locker:
        locker.execute(f"LOCK TABLE pgbg.task IN {mode} MODE")
        time.sleep(9)  # the fault itself: a lock held past the worker's lock wait
        assert alive(pid), "a healthy task was killed while the table was locked"
        locker.rollback()
    release.touch()
    task = pgbg.wait_task(result, timeout=60)
    assert (task.status, task.result) == (pgbg.TaskStatus.SUCCEEDED, "released")


def test_stopping_the_workers_process_group_does_not_stop_its_watchdog(
        database_url: str, tmp_path: Path) -> None:
    """Ctrl-Z (or kill -STOP -pgid) stops the worker's process group: the fork server, which
    kills the tasks if the lease lapses, is not in it."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgbg", "worker", "--concurrency", "1"],
        env=worker_env(database_url), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
        server = int(wait_for(lambda: children.read_text().split(), timeout=60)[0])
        # forked, it makes its own session first thing (CI caught it read before then)
        wait_for(lambda: os.getpgid(server) != os.getpgid(worker.pid), timeout=60,
                 message="the fork server's own session")
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _state(worker.pid) == "T", message="the worker to stop")
            assert _state(server) != "T"
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


POISON = """
CREATE FUNCTION public.refuse_poison_link() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key LIKE '%poison%' THEN
        RAISE EXCEPTION 'no poison in links';
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION public.refuse_poison_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result::text LIKE '%poison%' THEN
        RAISE EXCEPTION 'no poison in results';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON pgbg.task_link
    FOR EACH ROW EXECUTE FUNCTION public.refuse_poison_link();
CREATE TRIGGER refuse_poison BEFORE UPDATE ON pgbg.task
    FOR EACH ROW EXECUTE FUNCTION public.refuse_poison_result();
"""


def test_a_write_the_database_refuses_holds_back_no_other_write(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    """In one batch: a link and a result the database refuses (a trigger), beside
    other tasks' outcomes. The others are written; the refused record is dropped; the
    refused outcome is replaced by one saying why; every task ends."""
    conn.execute(POISON)
    logs_poison = pgbg.run_in_background(tasks.record_things, "t", "study", "poison")
    returns_poison = pgbg.run_in_background(tasks.echo, "t", "poison")
    ordinary = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(4)]
    driver = make_worker(3)
    driver.until_done(logs_poison, returns_poison, *ordinary)
    assert [r.get(timeout=5) for r in ordinary] == [1, 2, 3, 4]
    assert pgbg.get_task(logs_poison).status is pgbg.TaskStatus.SUCCEEDED
    assert pgbg.get_task(logs_poison).info == "step 2 of 2"  # its other records went in
    refused = pgbg.get_task(returns_poison)
    assert refused.status is pgbg.TaskStatus.FAILED
    assert refused.error is not None and "outcome could not be stored" in refused.error
    assert "no poison in results" in refused.error


def test_a_record_past_the_databases_limits_stops_no_other_task(
        make_worker: Callable[..., Driver]) -> None:
    """A link key past the index row size: PostgreSQL refuses it with a 'program limit'
    error (an OperationalError in psycopg, yet no timeout): that record is dropped, the
    task and the others end."""
    bad = pgbg.run_in_background(tasks.record_things, "t", "study", secrets.token_hex(6000))
    good = pgbg.run_in_background(tasks.add, "t", 1, 2)
    make_worker(2).until_done(bad, good)
    assert (pgbg.get_task(bad).status, good.get(timeout=5)) == (pgbg.TaskStatus.SUCCEEDED, 3)
