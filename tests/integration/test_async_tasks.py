"""``async def`` task functions: run to their end in the child's own event loop, with the
same outcomes, context and termination as a plain function's."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pgbg_test_async_tasks as tasks
from conftest import Driver, WorkerProcess, alive, wait_for

import pgbg


def test_async_task_return_value_and_context(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.add_and_describe, "async", 2, 3)
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.SUCCEEDED, task.error
    value = task.result
    assert value["sum"] == 5
    assert value["task_id"] == str(result.id)
    assert value["task_pid"] == value["pid"] == task.pid
    assert value["info"] == "adding 2 and 3"
    assert value["loop"].startswith(("asyncio", "uvloop"))
    assert task.info == "adding 2 and 3"
    assert pgbg.get_task_links(result) == [("sum", "5")]


def test_async_task_exception_fails_with_traceback(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.fail, "async", "bad async input")
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error is not None
    assert "Traceback" in task.error and "ValueError: bad async input" in task.error
    assert "pgbg_test_async_tasks.py" in task.error
    assert (task.complete, task.completed_successfully) == (True, False)


def test_async_task_retried_by_exception_class(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.enqueue(tasks.fail, ["again"], task_type="async", max_attempts=2,
                          retry_on=[ValueError], retry_backoff=0)
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.FAILED and task.attempt == 2


def test_async_task_error_exit_and_unstorable_result(make_worker: Callable[..., Driver]) -> None:
    exited = pgbg.run_in_background(tasks.error_exit, "async", "no data")
    unstorable = pgbg.run_in_background(tasks.returns_unstorable, "async")
    make_worker(2).until_done(exited, unstorable)
    task = pgbg.get_task(exited)
    assert task.status is pgbg.TaskStatus.FAILED and task.error == "no data"
    task = pgbg.get_task(unstorable)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error is not None and "cannot be stored" in task.error


def test_plain_function_returning_a_coroutine_is_awaited(
        make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.returns_coroutine, "async", 20, 22)
    make_worker(1).until_done(result)
    assert result.get(timeout=5)["sum"] == 42


def test_terminate_async_task_kills_its_process_group(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background(tasks.spawn_and_block, "async", str(pidfile))
    worker_process(1, "--kill-grace", "5")
    wait_for(pidfile.exists, timeout=60, message="the async task to start its grandchild")
    child_pid, grandchild_pid = map(int, pidfile.read_text().split())
    wait_for(lambda: pgbg.get_task(result).pid == child_pid, message="the pid on the row")
    task = pgbg.terminate_background(result, timeout=60)
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert task.signal == signal.SIGTERM
    wait_for(lambda: not alive(child_pid) and not alive(grandchild_pid), timeout=10,
             message="the async task's process group to be gone")
