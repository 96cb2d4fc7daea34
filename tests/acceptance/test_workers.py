"""Real `pgbg worker` processes, as a user runs them."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, wait_for

import pgbg
from pgbg import queries


@pytest.mark.slow
def test_limits_hold_across_four_worker_processes(
        worker_process: Callable[..., WorkerProcess], conn: psycopg.Connection[Any]) -> None:
    ids: list[uuid.UUID] = []
    for i in range(200):
        task_type = "b" if i % 4 == 0 else "a"
        ids.append(pgbg.run_in_background_with_limits(
            tasks.work, task_type, 3, {"b": 1}, 0.01).id)
    workers = [worker_process(4) for _ in range(4)]
    wait_for(lambda: queries.task_count_terminal(conn, ids) == len(ids), timeout=240,
             message="all 200 tasks to finish")
    summary = queries.task_summary(conn, ids)
    assert summary == {"a": {"succeeded": 150}, "b": {"succeeded": 50}}
    # From the recorded start and finish times: never more than the limits at once.
    assert queries.task_max_overlap(conn, ids, by_type=False)["*"] <= 3
    assert queries.task_max_overlap(conn, ids)["b"] <= 1
    attempts = conn.execute("SELECT DISTINCT attempt FROM pgbg.task").fetchall()
    assert attempts == [(1,)]  # each ran exactly once
    assert all(w.proc.poll() is None for w in workers)


def test_sigterm_lets_running_tasks_finish_and_claims_nothing_more(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    release = tmp_path / "release"
    running = pgbg.run_in_background(tasks.block_until, "t", str(release))
    worker = worker_process(1)
    wait_for(lambda: pgbg.get_task(running).pid, timeout=60)
    waiting = pgbg.run_in_background(tasks.add, "t", 1, 1)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: worker.logged("worker stopping"), message="the worker to start stopping")
    release.touch()
    assert worker.wait(timeout=60) == 0
    assert pgbg.get_task(running).status is pgbg.TaskStatus.SUCCEEDED
    assert pgbg.get_task(waiting).status is pgbg.TaskStatus.QUEUED
    with psycopg.connect(pgbg.db.database_url()) as c:
        assert c.execute("SELECT count(*) FROM pgbg.worker").fetchone() == (0,)


def test_shutdown_timeout_kills_and_records(worker_process: Callable[..., WorkerProcess],
                                            tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background(tasks.spawn_and_block, "t", str(pidfile))
    worker = worker_process(1, "--shutdown-timeout", "0.5")
    wait_for(pidfile.exists, timeout=60)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert task.error == "the worker stopped before the task finished"


def test_second_sigint_stops_at_once(worker_process: Callable[..., WorkerProcess],
                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background(tasks.spawn_and_block, "t", str(pidfile))
    worker = worker_process(1, "--shutdown-timeout", "600")
    wait_for(pidfile.exists, timeout=60)
    child_pid, grandchild_pid = map(int, pidfile.read_text().split())
    worker.signal(signal.SIGINT)
    wait_for(lambda: worker.logged("worker stopping"), message="the first SIGINT to be handled")
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 0
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert task.signal == signal.SIGKILL
    for pid in (child_pid, grandchild_pid):
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.listen
def test_notify_wakes_an_idle_worker(worker_process: Callable[..., WorkerProcess],
                                     conn: psycopg.Connection[Any]) -> None:
    # a poll interval far beyond the test's reach: only the NOTIFY can start the task
    worker_process(1, "--poll-interval", "3600")
    wait_for(lambda: conn.execute("SELECT count(*) FROM pgbg.worker").fetchone() == (1,))
    # the worker has claimed once at start (nothing); now only a notification can wake it
    result = pgbg.run_in_background(tasks.add, "t", 2, 3)
    assert result.get(timeout=60) == 5


def test_poll_finds_a_task_whose_notify_was_missed(
        worker_process: Callable[..., WorkerProcess], conn: psycopg.Connection[Any]) -> None:
    worker_process(1, "--poll-interval", "0.2")
    wait_for(lambda: conn.execute("SELECT count(*) FROM pgbg.worker").fetchone() == (1,))
    # inserted behind pgbg's back, with no NOTIFY at all
    tid = uuid.uuid4()
    conn.execute("INSERT INTO pgbg.task (id, task_type, func, args) "
                 "VALUES (%s, 't', 'pgbg_test_tasks:add', '[20, 22]')", (tid,))
    assert pgbg.Result(tid).get(timeout=60) == 42


def test_functions_outside_the_allowed_modules_are_never_imported(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("PGBG_TEST_MARKER", str(marker))
    refused = pgbg.run_in_background("pgbg_test_side_effect:run", "t")
    allowed = pgbg.run_in_background(tasks.add, "t", 1, 2)
    worker_process(1, "--allow", "pgbg_test_tasks", "--allow", "json")
    task = pgbg.wait_task(refused, timeout=60)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error == ("not allowed: pgbg_test_side_effect:run is outside this worker's "
                          "allowed modules (pgbg_test_tasks, json)")
    assert task.pid is None  # no process was started for it
    assert allowed.get(timeout=60) == 3
    assert not marker.exists()  # the module was never imported, by anyone


@pytest.mark.parametrize("func", ["pgbg_test_tasks:os.system", "pgbg_test_tasks:subprocess.call",
                                  "pgbg_test_tasks:pgbg.run_in_background"])
def test_only_functions_defined_in_the_allowed_modules_run(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path, func: str) -> None:
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    args: list[Any] = [command] if "run_in_background" not in func else ["os:system", "t", command]
    if func.endswith("subprocess.call"):
        args = [["touch", str(marker)]]
    with psycopg.connect(pgbg.db.database_url(), autocommit=True) as conn:
        refused = conn.execute(  # a row written directly: enqueue would refuse the name
            "INSERT INTO pgbg.task (id, task_type, func, args, kwargs) "
            "VALUES (gen_random_uuid(), 't', %s, %s, '{}') RETURNING id",
            (func, psycopg.types.json.Jsonb(args))).fetchone()
    assert refused is not None
    ok = pgbg.run_in_background(tasks.add, "t", 1, 2)
    worker_process(1, "--allow", "pgbg_test_tasks", "--allow", "json")
    task = pgbg.wait_task(refused[0], timeout=60)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error == (f"not allowed: {func} is not a function defined in this worker's "
                          "allowed modules (pgbg_test_tasks, json)")
    assert ok.get(timeout=60) == 3
    assert not marker.exists()  # the command never ran
    assert len(pgbg.get_queued_tasks()) == 0  # nor was anything queued by it


def _output(task_id: object) -> str:
    return "".join(line.message for line in pgbg.get_task_log(task_id)
                   if line.level == "output")


def test_output_is_captured_while_the_task_runs(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = pgbg.run_in_background(tasks.print_then_block, "t", str(release))
    worker_process(1)
    # streamed: in the log while the task still runs, stderr and a grandchild included
    wait_for(lambda: "from a grandchild" in _output(result), timeout=60)
    assert pgbg.get_task(result).status is pgbg.TaskStatus.RUNNING
    output = _output(result)
    assert "step 1 done\n" in output and "to stderr\n" in output
    release.touch()
    assert result.get(timeout=60) == "released"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_ten_megabytes_of_output_are_bounded(worker_process: Callable[..., WorkerProcess],
                                             conn: psycopg.Connection[Any]) -> None:
    worker = worker_process(1, "--output-limit", "1048576")
    wait_for(lambda: pgbg.list_workers(), timeout=60)
    server = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0])
    # The first task of a module has the fork server import it (and with it psycopg):
    # that growth is not the output's, so it comes before the measurement.
    for _ in range(3):  # the later ones run in spares forked after the module's preload
        assert pgbg.run_in_background(tasks.print_lots, "t", 0).get(timeout=120) == 0
    before = _rss_kb(worker.pid) + _rss_kb(server)
    result = pgbg.run_in_background(tasks.print_lots, "t", 10)
    assert result.get(timeout=120) == 10
    output = _output(result)
    kept = output.split("[output truncated")[0]
    assert len(kept.encode()) == 1048576
    assert output.endswith("[output truncated: 9437184 more bytes not kept (limit 1048576)]")
    growth_mb = (_rss_kb(worker.pid) + _rss_kb(server) - before) / 1024
    assert growth_mb < 16, f"worker and fork server grew by {growth_mb:.1f} MB"


def test_poll_only_mode_runs_waits_and_terminates(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path, database_url: str) -> None:
    pgbg.configure(database_url, listen=False)  # wait_task polls too
    worker = worker_process(1, "--no-listen", "--poll-interval", "0.2")
    assert pgbg.run_in_background(tasks.add, "t", 2, 2).get(timeout=60) == 4
    blocked = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    wait_for(lambda: pgbg.get_task(blocked).pid, timeout=60)
    task = pgbg.terminate_background(blocked, timeout=60)  # found by the worker's poll
    assert task.status is pgbg.TaskStatus.TERMINATED
    assert worker.logged("listen=False")


def test_a_tight_open_file_limit_is_raised_for_the_concurrency(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    """40 running children need ~120 descriptors in the worker; started with a soft limit
    of 64 (the hard limit allowing more), it raises its own and runs them all at once."""
    release = tmp_path / "release"
    results = [pgbg.run_in_background(tasks.block_until, "t", str(release)) for _ in range(40)]
    worker = worker_process(40, entry=("pgbg_test_low_fd_limit", "worker"))
    wait_for(lambda: all(pgbg.get_task(r).pid for r in results), timeout=120,
             message="40 tasks running at once")
    release.touch()
    for result in results:
        assert result.get(timeout=60) == "released"
    assert not worker.logged("Too many open files")
