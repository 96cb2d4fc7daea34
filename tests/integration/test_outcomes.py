"""What a child's end becomes on the task row, with a real (in-process) worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, wait_for

import pgbg
from pgbg import forkserver, queries
from pgbg.supervisor import FORKSERVER_LOST


def _run(make_worker: Callable[..., Driver], func: Any, *args: Any) -> pgbg.BackgroundTask:
    result = pgbg.run_in_background(func, "t", *args)
    driver = make_worker(1)
    driver.until_done(result)
    driver.until(lambda: driver.worker.running == 0)  # reaped, its exit recorded
    return pgbg.get_task(result)


def test_return_value_succeeds(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.echo, "t", 1, [2], k={"v": None})
    make_worker(1).until_done(result)
    assert result.get(timeout=5) == {"args": [1, [2]], "kwargs": {"k": {"v": None}}}
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.SUCCEEDED
    assert (task.complete, task.completed_successfully) == (True, True)
    assert task.exit_code == 0 and task.error is None
    assert task.started_at and task.finished_at and task.started_at <= task.finished_at
    assert task.attempt == 1


def test_exception_fails_with_traceback(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, tasks.fail, "bad input")
    assert task.status is pgbg.TaskStatus.FAILED
    assert (task.complete, task.completed_successfully) == (True, False)
    assert task.error is not None
    assert "Traceback" in task.error and "ValueError: bad input" in task.error
    assert "pgbg_test_tasks.py" in task.error
    with pytest.raises(pgbg.TaskFailed, match="ValueError: bad input") as info:
        pgbg.Result(task.id).get(timeout=5)
    assert info.value.status == "failed"
    assert info.value.error == task.error


@pytest.mark.parametrize("code", [0, None])
def test_sys_exit_zero_succeeds(make_worker: Callable[..., Driver], code: int | None) -> None:
    task = _run(make_worker, tasks.exit_with, code)
    assert task.status is pgbg.TaskStatus.SUCCEEDED
    assert task.exit_code == 0


def test_sys_exit_nonzero_fails_with_code(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, tasks.exit_with, 3)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.exit_code == 3
    assert task.error == "exited with code 3"


def test_sys_exit_with_message_fails_with_it(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, tasks.exit_with_message, "no input files")
    assert task.status is pgbg.TaskStatus.FAILED
    assert (task.exit_code, task.error) == (1, "no input files")


def test_os_exit_without_report(make_worker: Callable[..., Driver]) -> None:
    assert _run(make_worker, tasks.os_exit, 0).status is pgbg.TaskStatus.SUCCEEDED
    task = _run(make_worker, tasks.os_exit, 9)
    assert (task.status, task.exit_code, task.error) == (
        pgbg.TaskStatus.FAILED, 9, "exited with code 9")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGUSR1, signal.SIGTERM])
def test_killed_by_signal_fails_with_signal(make_worker: Callable[..., Driver],
                                            signum: signal.Signals) -> None:
    task = _run(make_worker, tasks.kill_self, int(signum))
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.signal == signum
    assert task.exit_code is None
    assert task.error == f"killed by signal {signum.name}"


def test_error_exit_is_not_overwritten_by_returning(make_worker: Callable[..., Driver],
                                                    conn: psycopg.Connection[Any]) -> None:
    task = _run(make_worker, tasks.error_exit_then_return, "the input was empty")
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error == "the input was empty"
    assert task.result is None  # what it returned afterwards is not recorded as success
    assert task.exit_code == 0
    assert ("error", "the input was empty") in [
        (level, message) for _at, level, message in queries.task_log_list(conn, task.id)]


def test_non_json_return_value_fails_clearly(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, tasks.not_json)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error is not None and "not JSON-serialisable" in task.error


def test_unimportable_function_fails_clearly(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, "pgbg_test_tasks:no_such_function")
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error is not None and "no_such_function" in task.error


def test_current_task_inside_the_child_is_its_own_row(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker, tasks.whoami)
    seen = task.result
    assert seen["id"] == seen["uuid"] == seen["generated"] == str(task.id)
    assert seen["task_pid"] == seen["os_pid"] == seen["proc_id"] == task.pid
    assert seen["status"] == "running"
    assert seen["pgid"] == seen["os_pid"]  # the child leads its own process group


def test_record_info_and_related(make_worker: Callable[..., Driver],
                                 conn: psycopg.Connection[Any]) -> None:
    task = _run(make_worker, tasks.record_things, "study", "1.2.840.99")
    assert task.status is pgbg.TaskStatus.SUCCEEDED
    assert task.info == "step 2 of 2"
    lines = [(level, message) for _at, level, message in queries.task_log_list(conn, task.id)]
    assert lines == [("info", "step 1 of 2"), ("info", "step 2 of 2")]
    links = conn.execute("SELECT kind, key FROM pgbg.task_link WHERE task_id = %s",
                         (task.id,)).fetchall()
    assert links == [("study", "1.2.840.99")]


def test_every_child_is_reaped(make_worker: Callable[..., Driver]) -> None:
    driver = make_worker(3)
    results = [pgbg.run_in_background(tasks.add, "t", i, i) for i in range(12)]
    driver.until_done(*results)
    driver.until(lambda: driver.worker.running == 0)
    server = driver.worker.forkserver_pid
    assert server is not None
    # the process that forked them keeps only its spares (the next tasks' processes, already
    # forked and waiting): none of the finished tasks is left, none is a zombie
    left = _spares(server)
    assert len(left) <= forkserver.SPARES
    assert not {r.pid for r in map(pgbg.get_task, results)} & set(left)
    for pid in left:
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    assert [r.get(timeout=5) for r in results] == [2 * i for i in range(12)]


def test_a_dead_fork_server_fails_its_tasks_and_is_replaced(
        make_worker: Callable[..., Driver], tmp_path: Path) -> None:
    driver = make_worker(1)
    blocked = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    driver.until(lambda: pgbg.get_task(blocked).pid is not None)
    server = driver.worker.forkserver_pid
    assert server is not None
    os.kill(server, signal.SIGKILL)  # its child dies with it (parent-death signal)
    driver.until_done(blocked)
    task = pgbg.get_task(blocked)
    assert (task.status, task.error) == (pgbg.TaskStatus.FAILED, FORKSERVER_LOST)
    assert driver.worker.forkserver_pid not in (None, server)  # a new one
    after = pgbg.run_in_background(tasks.add, "t", 2, 3)
    driver.until_done(after)
    assert pgbg.get_task(after).result == 5


def _spares(server: int) -> list[int]:
    """The fork server's children but its group watcher."""
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    return [int(p) for p in children if _comm(int(p)) != "pgbg-watcher"]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:  # reaped meanwhile
        return None


def test_a_task_module_is_imported_once_by_the_fork_server(
        make_worker: Callable[..., Driver]) -> None:
    driver = make_worker(1)
    first = pgbg.run_in_background("pgbg_test_preload:imported_before_fork", "t")
    driver.until_done(first)

    def preloaded() -> bool:  # children forked after the first task have the module loaded
        result = pgbg.run_in_background("pgbg_test_preload:imported_before_fork", "t")
        driver.until_done(result)
        return bool(result.get(timeout=5))

    driver.until(preloaded)
    assert first.get(timeout=5) is False  # the first child imported it itself


def test_a_spare_that_dies_waiting_is_replaced(make_worker: Callable[..., Driver]) -> None:
    driver = make_worker(2)
    warm = pgbg.run_in_background(tasks.add, "t", 1, 1)
    driver.until_done(warm)
    server = driver.worker.forkserver_pid
    assert server is not None
    killed = driver.until(lambda: _spares(server))  # children of the fork server, all spare
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # Reaped, but the worker has not read so yet: it must not start a task in them.
    wait_for(lambda: not set(_spares(server)) & set(killed), interval=0.01,
             message="the fork server to reap the killed spares")  # no worker step meanwhile
    driver.worker._want_claim = True  # claims before it reads the fork server's news
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(4)]
    driver.until_done(*results)
    assert [r.get(timeout=5) for r in results] == [1, 2, 3, 4]
    assert not {pgbg.get_task(r).pid for r in results} & set(killed)
    assert [pgbg.get_task(r).attempt for r in results] == [1, 1, 1, 1]
