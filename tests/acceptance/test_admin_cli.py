"""The operator's CLI, run as a subprocess against a real database and a real worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, wait_for, worker_env
from test_cli import UNREACHABLE, _pgbg_script

import pgbg

REPO = Path(__file__).parents[2]


def cli(database_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_pgbg_script(), *args], env=worker_env(database_url),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok(database_url: str, *args: str) -> str:
    done = cli(database_url, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def as_json(database_url: str, *args: str) -> Any:
    return json.loads(ok(database_url, *args, "--json"))


def test_enqueue_inspect_wait_stats(database_url: str,
                                    worker_process: Callable[..., WorkerProcess]) -> None:
    task_id = ok(database_url, "enqueue", "pgbg_test_tasks:add", "--type", "math",
                 "--args", "[20, 22]", "--priority", "3", "--limit", "math=2").strip()
    uuid.UUID(task_id)
    blocked = as_json(database_url, "enqueue", "pgbg_test_tasks:echo", "--type", "echo",
                      "--kwargs", '{"x": 1}', "--num-proc", "1")["id"]
    listed = as_json(database_url, "ls")
    assert [t["id"] for t in listed] == [blocked, task_id]
    assert set(listed[0]) >= {"id", "task_type", "func", "args", "kwargs", "priority", "status",
                              "queued_at", "started_at", "finished_at", "pid", "error",
                              "result", "attempt", "complete", "completed_successfully"}
    queue = as_json(database_url, "queued")
    assert [(q["task_id"], q["queue_position"]) for q in queue] == [(task_id, 1), (blocked, 2)]
    assert set(queue[0]) == {"task_id", "task_type", "queue_position", "priority", "queued_at",
                             "waiting_for", "reason", "run_at"}
    shown = as_json(database_url, "show", task_id)
    assert shown["task"]["num_of_task_type"] == {"math": 2}
    assert set(shown) == {"task", "log", "links"}
    assert "math" in ok(database_url, "queued")  # the table form renders too
    worker_process(2)
    assert ok(database_url, "wait", task_id, "--timeout", "60").split() == [task_id, "succeeded"]
    assert as_json(database_url, "wait", blocked, "--timeout", "60")["result"] == {
        "args": [], "kwargs": {"x": 1}}
    stats = {s["task_type"]: s for s in as_json(database_url, "stats", "--window", "1h")}
    assert stats["math"]["succeeded"] == 1 and stats["echo"]["succeeded"] == 1
    workers = as_json(database_url, "workers")
    assert len(workers) == 1 and workers[0]["concurrency"] == 2
    assert set(workers[0]) == {"id", "hostname", "pid", "concurrency", "running", "started_at",
                               "heartbeat_at", "heartbeat_age"}
    assert "succeeded" in ok(database_url, "show", task_id)


def test_wait_exits_nonzero_for_a_failure(database_url: str,
                                          worker_process: Callable[..., WorkerProcess]) -> None:
    failed = pgbg.run_in_background(tasks.fail, "t", "broken input")
    worker_process(1)
    done = cli(database_url, "wait", str(failed.id), "--timeout", "60")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: task {failed.id} failed: ValueError: broken input"


def test_terminate_and_remove_by_id(database_url: str, tmp_path: Path,
                                    worker_process: Callable[..., WorkerProcess]) -> None:
    running = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    worker_process(1)
    wait_for(lambda: pgbg.get_task(running).pid, timeout=60)
    waiting = pgbg.run_in_background(tasks.add, "t", 1, 1)
    removed = pgbg.run_in_background(tasks.add, "t", 2, 2)
    assert ok(database_url, "remove", str(removed.id)).strip() == f"{removed.id} removed"
    # the queued one first: terminating the running one frees the slot it would take
    out = as_json(database_url, "terminate", str(waiting.id), str(running.id))
    assert [t["status"] for t in out] == ["cancelled", "terminated"]
    assert pgbg.get_task(removed).status is pgbg.TaskStatus.CANCELLED


def test_retry_by_id(database_url: str, worker_process: Callable[..., WorkerProcess]) -> None:
    failed = pgbg.run_in_background(tasks.fail, "t", "flaky")
    worker_process(1)
    pgbg.wait_task(failed, timeout=60)
    assert ok(database_url, "retry", str(failed.id)).strip() == f"{failed.id} queued"
    wait_for(lambda: pgbg.get_task(failed).attempt == 2 and pgbg.get_task(failed).complete,
             timeout=60)


def test_purge_leaves_running_and_queued_tasks(database_url: str, tmp_path: Path,
                                               worker_process: Callable[..., WorkerProcess],
                                               conn: psycopg.Connection[Any]) -> None:
    done = [pgbg.run_in_background(tasks.add, "t", i, i) for i in range(4)]
    worker_process(1)
    for result in done:
        pgbg.wait_task(result, timeout=60)
    running = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    wait_for(lambda: pgbg.get_task(running).pid, timeout=60)
    queued = pgbg.run_in_background_with_limits(tasks.add, "t", 1, None, 0, 0)
    assert as_json(database_url, "purge", "--older-than", "0s", "--batch-size", "3") == {
        "deleted": 4}
    assert {r[0] for r in conn.execute("SELECT id FROM pgbg.task")} == {running.id, queued.id}


def test_top_renders_a_frame_and_exits(database_url: str,
                                       worker_process: Callable[..., WorkerProcess]) -> None:
    worker_process(1)
    wait_for(lambda: pgbg.list_workers())
    pgbg.run_in_background(tasks.fail, "t", "shown in top")
    frame = ok(database_url, "top", "--once")
    for heading in ("workers (1)", "running", "queued", "failures in the last hour"):
        assert heading in frame
    done = cli(database_url, "top", "--duration", "1", "--refresh", "0.3")
    assert done.returncode == 0 and "workers" in done.stdout


def test_periodic_add_list_remove(database_url: str) -> None:
    added = as_json(database_url, "periodic", "add", "nightly", "pgbg_test_tasks:add",
                    "--args", "[1, 2]", "--cron", "0 3 * * *", "--timezone", "Europe/Paris",
                    "--max-attempts", "3", "--skip-if-running")
    assert (added["name"], added["cron"], added["timezone"], added["max_attempts"],
            added["skip_if_running"]) == ("nightly", "0 3 * * *", "Europe/Paris", 3, True)
    ok(database_url, "periodic", "add", "often", "pgbg_test_tasks:add", "--every", "15m")
    listed = as_json(database_url, "periodic", "ls")
    assert {p["name"]: p["every"] for p in listed} == {"nightly": None, "often": 900.0}
    assert "nightly" in ok(database_url, "periodic", "ls")
    assert ok(database_url, "periodic", "rm", "often").strip() == "removed often"
    assert [p.name for p in pgbg.list_periodic()] == ["nightly"]


def test_doctor_passes_on_a_healthy_database(database_url: str) -> None:
    assert all(check["ok"] for check in as_json(database_url, "doctor"))


BAD = [
    (["show", str(uuid.UUID(int=1))],
     "error: no task with id 00000000-0000-0000-0000-000000000001"),
    (["show", "12345"], "error: '12345' is not a task id (a UUID)"),
    (["terminate", str(uuid.UUID(int=1))], "error: no task with id"),
    (["remove", "nope"], "error: 'nope' is not a task id (a UUID)"),
    (["wait", str(uuid.UUID(int=2)), "--timeout", "1"], "error: no task with id"),
    (["enqueue", "pgbg_test_tasks:add", "--type", "t", "--args", "[1,"],
     "error: --args is not valid JSON"),
    (["enqueue", "pgbg_test_tasks:add", "--type", "t", "--kwargs", "[1]"],
     "error: --kwargs must be a JSON object"),
    (["enqueue", "pgbg_test_tasks:nope", "--type", "t"],
     "error: module 'pgbg_test_tasks' has no function 'nope'"),
    (["enqueue", "no_such_module:f", "--type", "t"], "error: no module named 'no_such_module'"),
    (["enqueue", "not a function", "--type", "t"], "error: 'not a function' is not of the form"),
    (["enqueue", "pgbg_test_tasks:add", "--type", "t", "--limit", "t:2"],
     "error: --limit takes TYPE=N"),
    (["enqueue", "pgbg_test_tasks:add", "--type", "t", "--limit", "t=0"],
     "error: num_of_task_type['t'] must be >= 1"),
    (["purge", "--older-than", "seven days"], "error: 'seven days' is not a duration"),
    (["purge", "--older-than", "1d", "--status", "running"],
     "error: only finished tasks can be purged"),
    (["ls", "--status", "done"], "error: unknown status 'done'"),
    (["periodic", "add", "p", "pgbg_test_tasks:add", "--cron", "every day"],
     "error: 'every day' is not a cron expression"),
    (["periodic", "add", "p", "pgbg_test_tasks:add", "--every", "1h", "--cron", "* * * * *"],
     "error: give a periodic task cron= or every=, exactly one"),
    (["periodic", "add", "p", "pgbg_test_tasks:add", "--every", "soon"],
     "error: 'soon' is not a duration"),
    (["periodic", "add", "p", "pgbg_test_tasks:add", "--cron", "0 3 * * *", "--timezone",
      "Paris"], "error: unknown time zone 'Paris'"),
    (["periodic", "add", "p", "pgbg_test_tasks:nope", "--every", "1h"],
     "error: module 'pgbg_test_tasks' has no function 'nope'"),
    (["periodic", "rm", "p"], "error: no periodic task named 'p'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[:2]) for a, _m in BAD])
def test_bad_input_is_one_clear_line_and_changes_nothing(
        database_url: str, conn: psycopg.Connection[Any], args: list[str], message: str) -> None:
    done = cli(database_url, *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert conn.execute("SELECT count(*) FROM pgbg.task").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgbg.periodic").fetchone() == (0,)


@pytest.mark.parametrize("command", [["ls"], ["stats"], ["doctor"], ["top", "--once"]])
def test_unreachable_database_names_the_masked_url(tmp_path: Path, command: list[str]) -> None:
    done = cli(UNREACHABLE, *command, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to postgresql://app:***@127.0.0.1:9/app")
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr


def test_docker_compose_file() -> None:
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"postgres", "worker"}
    worker = compose["services"]["worker"]
    assert "PGBG_DATABASE_URL" in worker["environment"]
    assert "pgbg migrate" in worker["command"] and "pgbg worker" in worker["command"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        validate = [docker, "compose"]
    elif shutil.which("docker-compose"):
        validate = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    done = subprocess.run([*validate, "-f", str(REPO / "docker-compose.yml"), "config",
                           "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
