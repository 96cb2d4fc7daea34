"""The public API's contracts: waiting, the queue, removal, termination."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, WorkerProcess, wait_for

import pgbg


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); ours are reaped by the worker, so look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_wait_task_times_out_with_timeout_error(database_url: str) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with pytest.raises(TimeoutError, match="did not complete"):
        pgbg.wait_task(result, timeout=0.2)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.1)


def test_wait_task_returns_a_finished_task_at_once(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    make_worker().until_done(result)
    task = pgbg.wait_task(result, timeout=0)
    assert task.status is pgbg.TaskStatus.SUCCEEDED and task.result == 2


def test_wait_task_is_woken_by_a_worker_process(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = pgbg.run_in_background(tasks.block_until, "t", str(release))
    worker_process(1)
    wait_for(lambda: pgbg.get_task(result).status is pgbg.TaskStatus.RUNNING)
    release.touch()
    task = pgbg.wait_task(result, timeout=60)
    assert task.status is pgbg.TaskStatus.SUCCEEDED
    assert task.result == "released"
    assert result.get(timeout=1) == "released"


def test_wait_task_unknown_and_malformed_ids(database_url: str) -> None:
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.wait_task(uuid.uuid4(), timeout=1)
    with pytest.raises(pgbg.InvalidTaskId):
        pgbg.wait_task("12345", timeout=1)


def test_a_wait_does_not_queue_behind_the_shared_connection(database_url: str) -> None:
    """wait_task's connections have a lock of their own: a wait started while the shared
    connection is in use (here by the same thread, which would deadlock) goes ahead."""
    from pgbg import db

    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with db.shared_connection():
        with pytest.raises(TimeoutError):
            pgbg.wait_task(result, timeout=0.05)


def test_get_queued_tasks_in_claim_order_with_reasons(conn: psycopg.Connection[Any]) -> None:
    from pgbg import queries

    running = pgbg.run_in_background(tasks.add, "ab", 0, 0)
    queries.task_claim(conn, uuid.uuid4(), "test", 1)
    low = pgbg.run_in_background(tasks.add, "a", 0, 0)
    limited = pgbg.run_in_background_with_limits(tasks.add, "a", 1, {"ab": 1}, 0, 0, priority=3)
    high = pgbg.run_in_background(tasks.add, "b", 0, 0, priority=5)
    queued = pgbg.get_queued_tasks()
    assert [q.task_id for q in queued] == [str(high.id), str(limited.id), str(low.id)]
    assert [q.queue_position for q in queued] == [1, 2, 3]
    assert queued[1].waiting_for == ["num_proc: 1 tasks running, limit 1",
                                     "ab: 1 running, limit 1"]
    assert queued[0].waiting_for == [] and queued[0].reason == "a free worker slot"
    # task types match exactly (the original matched substrings), positions stay global
    only_a = pgbg.get_queued_tasks("a")
    assert [(q.task_id, q.queue_position) for q in only_a] == [
        (str(limited.id), 2), (str(low.id), 3)]
    assert pgbg.get_queued_tasks("ab") == []
    assert str(running.id) not in {q.task_id for q in queued}


def test_remove_task_from_queue(make_worker: Callable[..., Driver],
                                conn: psycopg.Connection[Any]) -> None:
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)
    pgbg.remove_task_from_queue(queued.id)
    task = pgbg.get_task(queued)
    assert task.status is pgbg.TaskStatus.CANCELLED and task.complete
    assert pgbg.get_queued_tasks() == []
    with pytest.raises(pgbg.TaskAlreadyStarted):  # already ended: not in the queue
        pgbg.remove_task_from_queue(str(queued.id))
    done = pgbg.run_in_background(tasks.add, "t", 2, 2)
    make_worker().until_done(done)
    with pytest.raises(pgbg.TaskAlreadyStarted, match="succeeded"):
        pgbg.remove_task_from_queue(done.id)
    assert pgbg.get_task(done).status is pgbg.TaskStatus.SUCCEEDED
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.remove_task_from_queue(uuid.uuid4())
    with pytest.raises(pgbg.InvalidTaskId):
        pgbg.remove_task_from_queue("garbage")


def test_removed_task_is_never_run(make_worker: Callable[..., Driver]) -> None:
    removed = pgbg.run_in_background(tasks.add, "t", 1, 1)
    kept = pgbg.run_in_background(tasks.add, "t", 2, 2)
    pgbg.remove_task_from_queue(removed)
    make_worker().until_done(kept)
    assert pgbg.get_task(removed).started_at is None


def test_terminate_queued_task_cancels_it(database_url: str) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    task = pgbg.terminate_background(result)
    assert task.status is pgbg.TaskStatus.CANCELLED
    assert (task.complete, task.completed_successfully) == (True, False)
    assert pgbg.wait_task(result, timeout=5).status is pgbg.TaskStatus.CANCELLED


def test_terminate_finished_task_is_a_no_op(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    make_worker().until_done(result)
    task = pgbg.terminate_background(result)
    assert task.status is pgbg.TaskStatus.SUCCEEDED and task.result == 2


def test_terminate_unknown_task_is_a_clear_error(database_url: str) -> None:
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.terminate_background(uuid.uuid4())
    with pytest.raises(pgbg.InvalidTaskId):
        pgbg.terminate_background("not a uuid")


def test_terminate_running_task_on_another_worker_process(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background(tasks.spawn_and_block, "t", str(pidfile))
    worker_process(1, "--kill-grace", "5")
    wait_for(pidfile.exists, timeout=60, message="the task to start its grandchild")
    child_pid, grandchild_pid = map(int, pidfile.read_text().split())
    # the pid reaches the row as the task starts (the worker writes what the fork server says)
    wait_for(lambda: pgbg.get_task(result).pid == child_pid, message="the pid on the row")
    task = pgbg.terminate_background(result, timeout=60)
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert (task.complete, task.completed_successfully) == (True, False)
    assert task.signal == signal.SIGTERM
    assert task.error is not None and task.error.startswith("terminated by ")
    assert task.cancel_requested_by == f"{os.uname().nodename}:{os.getpid()}"
    wait_for(lambda: _gone(child_pid) and _gone(grandchild_pid), timeout=10,
             message="the task's process group to be gone")
    assert pgbg.wait_task(result, timeout=5).status is pgbg.TaskStatus.TERMINATED


def test_terminate_escalates_to_sigkill(make_worker: Callable[..., Driver],
                                        tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    result = pgbg.run_in_background(tasks.ignore_sigterm_and_block, "t", str(pidfile))
    driver = make_worker(1, kill_grace=0.2)
    driver.until(pidfile.exists)
    pgbg.terminate_background(result, wait=False)
    driver.until_done(result)
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert task.signal == signal.SIGKILL


def test_forged_cancel_notify_kills_nothing(make_worker: Callable[..., Driver],
                                            conn: psycopg.Connection[Any],
                                            tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = pgbg.run_in_background(tasks.block_until, "t", str(release))
    driver = make_worker(1)
    driver.until(lambda: pgbg.get_task(result).pid)
    conn.execute("SELECT pg_notify('pgbg_cancel', %s)", (str(result.id),))
    for _ in range(20):  # give the worker every chance to act on the forged notification
        driver.worker.run_once(timeout=0.05)
    assert pgbg.get_task(result).status is pgbg.TaskStatus.RUNNING
    release.touch()
    driver.until_done(result)
    assert pgbg.get_task(result).status is pgbg.TaskStatus.SUCCEEDED
