"""record_task_error_exit: the row reads failed at once, yet the process keeps its limit
slot and runs until it exits by itself."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
from conftest import Driver, WorkerProcess, wait_for

import pgbg


def test_an_error_exit_keeps_its_slot_and_is_not_killed(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    release, done = tmp_path / "release", tmp_path / "done"
    failing = pgbg.run_in_background_with_limits(tasks.error_exit_then_clean_up, "e", 0,
                                                 {"e": 1}, str(release), str(done))
    behind = pgbg.run_in_background_with_limits(tasks.add, "e", 0, {"e": 1}, 1, 2)
    driver = make_worker(2, heartbeat_interval=0.2, lease=5.0)
    driver.until(lambda: pgbg.get_task(failing).status is pgbg.TaskStatus.FAILED)
    task = pgbg.get_task(failing)
    assert (task.error, task.complete, task.completed_successfully) == ("bad input", True,
                                                                         False)
    pid = task.pid
    assert pid is not None
    beats: set[Any] = set()

    def heartbeats() -> bool:  # a few heartbeats pass while the clean-up runs
        beats.add(conn.execute("SELECT heartbeat_at FROM pgbg.worker").fetchone())
        return len(beats) >= 4

    driver.until(heartbeats)
    assert Path(f"/proc/{pid}").exists(), "the process was killed after its error exit"
    assert pgbg.get_task(behind).status is pgbg.TaskStatus.QUEUED  # the slot is still taken
    [queued] = pgbg.get_queued_tasks("e")
    assert queued.waiting_for == ["e: 1 running, limit 1"]
    release.touch()
    driver.until_done(behind)
    assert done.read_text() == "cleaned up"
    task = pgbg.get_task(failing)
    assert (task.status, task.error, task.exit_code) == (pgbg.TaskStatus.FAILED, "bad input", 0)
    assert task.finished_at is not None
    assert behind.get(timeout=5) == 3


def test_a_lost_worker_frees_the_slot_its_error_exit_held(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    release, done = tmp_path / "release", tmp_path / "done"
    failing = pgbg.run_in_background_with_limits(tasks.error_exit_then_clean_up, "e", 0,
                                                 {"e": 1}, str(release), str(done))
    behind = pgbg.run_in_background_with_limits(tasks.add, "e", 0, {"e": 1}, 1, 2)
    fast = ("--heartbeat-interval", "0.2", "--lease", "1", "--poll-interval", "0.5")
    doomed = worker_process(1, *fast)
    wait_for(lambda: pgbg.get_task(failing).status is pgbg.TaskStatus.FAILED, timeout=60)
    doomed.signal(signal.SIGKILL)
    doomed.wait()
    worker_process(1, *fast)
    assert behind.get(timeout=60) == 3
    task = pgbg.get_task(failing)
    assert (task.status, task.error) == (pgbg.TaskStatus.FAILED, "bad input")
    assert task.finished_at is not None and not done.exists()
