"""Review of issue 14 (decorator, pgbg.aio, async tasks, --registered-only): each test
here failed on 3eb6054."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_review_tasks as review_tasks
import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, WorkerProcess, pgbg_connections, wait_for, worker_env
from conftest import count_tasks as count
from psycopg.rows import dict_row

import pgbg
from pgbg import aio

# -- async task functions --------------------------------------------------------------

def test_async_task_that_leaves_an_executor_thread_still_ends(
        make_worker: Callable[..., Driver], tmp_path: Path) -> None:
    """A sync task's leftover threads never keep it from ending (the child exits); an async
    task's leftover default-executor thread must not either: it returned its value."""
    release = tmp_path / "release"
    result = pgbg.run_in_background(review_tasks.leaves_executor_thread, "async",
                                    str(release))
    driver = make_worker(1)
    try:
        driver.until(lambda: pgbg.get_task(result).complete, timeout=20)
        task = pgbg.get_task(result)
        assert task.status is pgbg.TaskStatus.SUCCEEDED, task.error
        assert task.result == "returned"
    finally:
        release.touch()


def test_async_task_that_leaves_a_task_ignoring_cancellation_still_ends(
        make_worker: Callable[..., Driver], tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = pgbg.run_in_background(review_tasks.leaves_stubborn_task, "async", str(release))
    driver = make_worker(1)
    try:
        driver.until(lambda: pgbg.get_task(result).complete, timeout=20)
        task = pgbg.get_task(result)
        assert task.status is pgbg.TaskStatus.SUCCEEDED, task.error
    finally:
        release.touch()


# -- pgbg.aio's own connections ----------------------------------------------------------

def test_asyncio_run_repeatedly_does_not_leak_a_connection_per_loop(
        conn: psycopg.Connection[Any]) -> None:
    """Each ``asyncio.run`` (or asgiref's async_to_sync, a loop per call) gets an own
    connection; once that loop is gone its connection must go too."""
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)

    async def calls() -> None:
        # concurrent calls: the loop's lock is contended
        await asyncio.gather(*(aio.get_task(queued) for _ in range(5)))

    before = pgbg_connections(conn)
    for _ in range(8):
        asyncio.run(calls())
    gc.collect()
    leaked = pgbg_connections(conn) - before
    assert leaked <= 1, f"{leaked} connections left open by 8 finished event loops"


# -- caller connections ------------------------------------------------------------------

def test_aio_enqueue_unique_key_on_a_dict_row_async_connection(database_url: str) -> None:
    """A psycopg AsyncConnection with row_factory=dict_row (common in FastAPI apps): a
    second enqueue with the same unique_key must return the first task, not KeyError."""
    async def scenario() -> tuple[pgbg.Result, pgbg.Result]:
        async with await psycopg.AsyncConnection.connect(database_url,
                                                         row_factory=dict_row) as aconn:
            first = await aio.enqueue(tasks.add, [1, 2], task_type="t", unique_key="k",
                                      connection=aconn)
            second = await aio.enqueue(tasks.add, [1, 2], task_type="t", unique_key="k",
                                       connection=aconn)
            return first, second

    first, second = asyncio.run(scenario())
    assert first.id == second.id


def test_sync_enqueue_refuses_an_async_connection_clearly(database_url: str,
                                                          conn: psycopg.Connection[Any]) -> None:
    """``f.using(connection=aconn)`` serves ``.aenqueue``; its ``.enqueue`` (sync) with the
    same async connection must be refused by a clear InvalidOption naming the mistake
    (as pgbg.aio refuses a sync one), not a misleading error with nothing written."""
    async def scenario() -> BaseException | None:
        async with await psycopg.AsyncConnection.connect(database_url) as aconn:
            try:
                review_tasks.declared_echo.using(connection=aconn).enqueue(1)
            except BaseException as exc:
                return exc
            return None

    raised = asyncio.run(scenario())
    assert isinstance(raised, pgbg.InvalidOption), repr(raised)
    assert "async" in str(raised).lower(), str(raised)


def test_sync_enqueue_refuses_an_async_sqlalchemy_session_clearly(database_url: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def scenario() -> BaseException | None:
        engine = create_async_engine(database_url.replace("postgresql://",
                                                          "postgresql+psycopg://", 1))
        try:
            async with AsyncSession(engine) as session:
                try:
                    review_tasks.declared_echo.using(connection=session).enqueue(1)
                except BaseException as exc:
                    return exc
                return None
        finally:
            await engine.dispose()

    raised = asyncio.run(scenario())
    assert isinstance(raised, pgbg.PgbgError), repr(raised)


def test_aio_enqueue_many_on_an_autocommit_connection_is_all_or_none(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    """``aio.enqueue_many``: "all the tasks or none". A database error in the second batch
    (here a trigger refusing one row) must leave no task behind, on an autocommit
    AsyncConnection as on pgbg's own connection."""
    conn.execute("""CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF NEW.args = '["boom"]'::jsonb THEN
                      RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$""")
    conn.execute("CREATE TRIGGER refuse_boom BEFORE INSERT ON pgbg.task FOR EACH ROW "
                 "EXECUTE FUNCTION refuse_boom()")
    args_list = [[i] for i in range(6000)] + [["boom"]]

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(database_url,
                                                         autocommit=True) as aconn:
            with pytest.raises(pgbg.PgbgError):
                await aio.enqueue_many(tasks.echo, args_list, task_type="t",
                                       connection=aconn)

    asyncio.run(scenario())
    assert count(conn) == 0


def test_aio_enqueue_many_with_a_generator_and_kwargs_list() -> None:
    """Bad input through the new entry points gets a PgbgError, not a raw TypeError."""
    gen = ([i] for i in range(3))
    with pytest.raises(pgbg.PgbgError):
        asyncio.run(aio.enqueue_many(tasks.add, gen, [{}, {}, {}], task_type="t"))


# -- --registered-only / --import -------------------------------------------------------

def test_import_error_line_masks_a_password(database_url: str) -> None:
    """The worker's one error line for a failing --import module names the module and the
    error, but never a password (the error's text named a URL with one)."""
    env = worker_env(database_url)
    env["PYTHONPATH"] = f"{Path(__file__).parent}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-m", "pgbg", "worker", "--registered-only",
         "--import", "pgbg_review_import_leaks"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "pgbg_review_import_leaks" in proc.stderr
    assert "s3cretPassw0rd" not in proc.stderr, proc.stderr


def _fork_servers_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and b"pgbg.forkserver" in cmdline:
            found.append(int(entry))
    return found


def test_fork_server_restart_whose_import_fails_loses_no_outcome(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork server dies while a declared task runs; its restart re-imports the task
    modules, which now fail. The worker knew its child was lost: that outcome must be
    written (and the worker must not just vanish, leaving the row 'running' until some
    other worker's lease recovery, or forever if there is none)."""
    flag, release = tmp_path / "flag", tmp_path / "release"
    monkeypatch.setenv("PGBG_REVIEW_FLAG", str(flag))
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}")
    worker = worker_process(1, "--registered-only", "--import", "pgbg_review_flaky")
    running = pgbg.enqueue("pgbg_review_flaky:block_until", [str(release)], task_type="flaky")
    wait_for(lambda: pgbg.get_task(running).pid, timeout=60, message="the task to start")
    flag.touch()  # the module's next import fails
    server = wait_for(lambda: _fork_servers_of(worker.pid), message="the fork server")[0]
    os.kill(server, signal.SIGKILL)
    try:
        row = pgbg.wait_task(running, timeout=30)
        assert row.complete  # the lost attempt's outcome is written
        # then the worker stops, saying why in one line: it can run no task any more
        assert worker.wait(timeout=60) != 0
        wait_for(lambda: worker.logged("cannot import the task module 'pgbg_review_flaky'"),
                 timeout=10)
        assert not worker.logged("Traceback")
    finally:
        release.touch()


def test_registered_only_with_many_declared_tasks_starts(
        worker_process: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork server reports the declared names in one datagram: a module declaring a few
    thousand tasks must not stop the worker."""
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}")
    worker_process(1, "--registered-only", "--import", "pgbg_review_many_tasks")
    name = "pgbg_review_many_tasks:import_and_normalise_the_study_series_number_3999"
    result = pgbg.enqueue(name, [7], task_type="many")
    assert pgbg.wait_task(result, timeout=60).result == 7


def test_a_worker_whose_import_hangs_still_stops_on_sigterm(
        worker_process: Callable[..., WorkerProcess]) -> None:
    """While the fork server is stuck importing an --import module, the worker blocks in
    select() for IMPORT_TIMEOUT (120 s) and ignores SIGTERM, even the second (the
    documented hard stop): systemd's stop times out and SIGKILLs it."""
    worker = worker_process(1, "--registered-only", "--import", "pgbg_test_import_hangs")
    wait_for(lambda: _fork_servers_of(worker.pid), message="the fork server to import")
    worker.signal(signal.SIGTERM)
    worker.signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker was still running 20 s after two SIGTERMs")
