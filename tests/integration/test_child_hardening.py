"""A task cannot harm pgbg's own machinery: its signals, its report pipe, its fork server."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pgbg_test_tasks as tasks
import pytest
from conftest import Driver, WorkerProcess, alive, wait_for

import pgbg
from pgbg.supervisor import FORKSERVER_LOST


def _run(driver: Driver, func: str, *args: object) -> pgbg.BackgroundTask:
    result = pgbg.run_in_background(func, "t", *args)
    driver.until_done(result)
    return pgbg.get_task(result)


def test_a_write_to_a_closed_pipe_raises_broken_pipe(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker(1), "pgbg_test_hostile:write_to_closed_pipe")
    assert (task.status, task.result) == (pgbg.TaskStatus.SUCCEEDED, "BrokenPipeError")
    assert task.signal is None


def test_a_task_starts_with_the_signal_dispositions_it_needs(
        make_worker: Callable[..., Driver]) -> None:
    """Whether set in the child (SIGINT, SIGTERM: the fork server ignores them) or once in
    the fork server and inherited by every child (SIGPIPE, PARENT_DIED), the second task
    of a worker (a spare forked after the first) sees the same as the first."""
    driver = make_worker(1)
    for _ in range(2):
        task = _run(driver, "pgbg_test_tasks:signal_dispositions")
        assert task.result == {"SIGINT": "default", "SIGTERM": "default",
                               "SIGPIPE": "ignored", "PARENT_DIED": "kills its group"}


@pytest.mark.parametrize(("module", "error"), [
    ("pgbg_test_import_exits", "exited with code 3"),
    ("pgbg_test_import_interrupts", "KeyboardInterrupt"),
    ("pgbg_test_import_raises", "ValueError: broken at import"),
])
def test_a_module_whose_import_fails_harms_only_its_task(
        make_worker: Callable[..., Driver], module: str, error: str) -> None:
    driver = make_worker(1)
    warm = pgbg.run_in_background(tasks.add, "t", 1, 1)
    driver.until_done(warm)
    server = driver.worker.forkserver_pid
    bad = _run(driver, f"{module}:run")
    assert bad.status is pgbg.TaskStatus.FAILED and error in (bad.error or "")
    assert bad.error != FORKSERVER_LOST
    for _ in range(2):  # again: still refused, still harmless
        assert _run(driver, f"{module}:run").status is pgbg.TaskStatus.FAILED
    after = _run(driver, "pgbg_test_tasks:add", 2, 3)
    assert (after.status, after.result) == (pgbg.TaskStatus.SUCCEEDED, 5)
    assert driver.worker.forkserver_pid == server  # the same fork server throughout


def test_a_module_whose_import_hangs_does_not_freeze_the_fork_server(
        make_worker: Callable[..., Driver]) -> None:
    driver = make_worker(1)
    warm = pgbg.run_in_background(tasks.add, "t", 1, 1)
    driver.until_done(warm)
    server = driver.worker.forkserver_pid
    hung = pgbg.enqueue("pgbg_test_import_hangs:run", task_type="t", timeout=3)
    driver.until_done(hung)
    assert pgbg.get_task(hung).status is pgbg.TaskStatus.FAILED  # its own time limit
    after = _run(driver, "pgbg_test_tasks:add", 2, 3)
    assert (after.status, after.result) == (pgbg.TaskStatus.SUCCEEDED, 5)
    assert driver.worker.forkserver_pid == server


@pytest.mark.parametrize(("garbage", "repeat"), [
    ("not json at all\n", 1),
    ("[1, 2, 3]\n\xff\xfe\n", 1),  # JSON, but not a message; then not even UTF-8
    ('{"kind": "outcome", "status": "bogus", "exit_code": "x"}\n', 1),
    ('{"kind": "info", "message": 42}\n{"kind": "related"}\n{"kind": "nope"}\n', 1),
    ("[" * 100_000 + "\n", 1),  # too deep to parse
    ("x" * (1 << 20), 100),  # a 100 MB line
])
def test_garbage_on_the_report_pipe_affects_that_task_only(
        make_worker: Callable[..., Driver], garbage: str, repeat: int) -> None:
    driver = make_worker(2)
    # the big one is built in the child, not sent as an argument
    hostile = pgbg.run_in_background("pgbg_test_hostile:write_to_report_pipe", "t",
                                     garbage, repeat, "\n" if repeat > 1 else "")
    beside = pgbg.run_in_background(tasks.add, "t", 2, 3)
    driver.until_done(hostile, beside, timeout=120)
    assert pgbg.get_task(beside).result == 5
    task = pgbg.get_task(hostile)
    assert (task.status, task.result) == (pgbg.TaskStatus.SUCCEEDED, "wrote")
    after = pgbg.run_in_background(tasks.add, "t", 3, 4)
    driver.until_done(after)
    assert pgbg.get_task(after).result == 7


def test_a_partial_report_line_ends_its_task_only(make_worker: Callable[..., Driver]) -> None:
    driver = make_worker(2)
    # No newline: the task's own outcome line is appended to it and is lost with it.
    hostile = pgbg.run_in_background("pgbg_test_hostile:write_to_report_pipe", "t",
                                     '{"kind": "info", "mess', 1)
    beside = pgbg.run_in_background(tasks.add, "t", 2, 3)
    driver.until_done(hostile, beside)
    assert pgbg.get_task(hostile).complete
    assert pgbg.get_task(beside).result == 5


def test_a_task_in_a_long_c_call_dies_with_its_group_when_the_fork_server_dies(
        make_worker: Callable[..., Driver], tmp_path: Path) -> None:
    driver = make_worker(1)
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background("pgbg_test_hostile:sleep_in_c", "t", str(pidfile), 600)
    driver.until(pidfile.exists)
    pids = [int(p) for p in wait_for(lambda: pidfile.read_text().split())]
    server = driver.worker.forkserver_pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    driver.until_done(result)

    def gone() -> bool:
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state != "Z":
                return False
        return True

    driver.until(gone, timeout=30)



def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _watcher_of(worker: WorkerProcess) -> tuple[int, int] | None:
    """The fork server's pid and its group watcher's, once both run."""
    for server in _children(worker.pid):
        for pid in _children(server):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "pgbg-watcher":
                    return server, pid
    return None


def test_a_task_in_a_long_c_call_dies_with_its_group_when_the_worker_is_killed(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background("pgbg_test_hostile:sleep_in_c", "t", str(pidfile), 600)
    worker = worker_process(1)
    pids = [int(p) for p in wait_for(lambda: pidfile.exists() and pidfile.read_text().split(),
                                     timeout=60, message="the task to start its grandchild")]
    try:
        wait_for(lambda: pgbg.get_task(result).pid == pids[0], timeout=60,
                 message="the task to be recorded as started")
        _server, watcher = wait_for(lambda: _watcher_of(worker), timeout=60,
                                    message="the fork server's group watcher")
        worker.signal(signal.SIGKILL)  # the fork server dies with it; the task is in C
        worker.wait()
        wait_for(lambda: not any(alive(pid) for pid in [*pids, watcher]), timeout=30,
                 message="the task, its grandchild and the watcher to die with the worker")
    finally:
        for pid in pids:  # on failure: nothing left running a second time
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_group_watcher_ends_with_its_fork_server(
        worker_process: Callable[..., WorkerProcess]) -> None:
    worker = worker_process(1)
    assert pgbg.run_in_background(tasks.add, "t", 2, 3).get(timeout=60) == 5
    server, watcher = wait_for(lambda: _watcher_of(worker), timeout=60,
                               message="the fork server's group watcher")
    worker.stop()
    wait_for(lambda: not alive(server) and not alive(watcher), timeout=30,
             message="the fork server and its watcher to exit")
