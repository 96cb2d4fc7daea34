"""``pgbg.aio``: the API awaited from an event loop, on async connections, sharing the
sync API's validation, serialisation and statements."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pgbg_test_tasks as tasks
import psycopg
import pytest
import sqlalchemy as sa
from conftest import WorkerProcess, alive, count_tasks, pgbg_connections, wait_for
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from test_waiting import MAX_CONNECTIONS, Waiters, _finish, _listener

import pgbg
from pgbg import aio, db, waiters

T = TypeVar("T")


def arun(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)



def test_enqueue_wait_and_get(worker_process: Callable[..., WorkerProcess]) -> None:
    async def queue() -> list[pgbg.Result]:
        return [await aio.run_in_background(tasks.add, "t", 1, 2),
                await aio.run_in_background_with_limits(tasks.echo, "e", 0, {"e": 1}, 3,
                                                        priority=4, k="v"),
                await aio.enqueue(tasks.add, [20, 22], task_type="t", max_attempts=2)]

    added, echoed, full = arun(queue())
    row = pgbg.get_task(echoed)
    assert (row.priority, row.num_of_task_type, row.kwargs) == (4, {"e": 1}, {"k": "v"})
    assert pgbg.get_task(full).max_attempts == 2
    worker_process(2)

    async def wait() -> list[Any]:
        first = await aio.wait_task(added, timeout=60)
        return [first.result, await echoed.aget(timeout=60), await full.aget(timeout=60),
                (await full.atask()).status, (await full.await_task(5)).result]

    assert arun(wait()) == [3, {"args": [3], "kwargs": {"k": "v"}}, 42,
                            pgbg.TaskStatus.SUCCEEDED, 42]


def test_waiting_never_blocks_the_loop(worker_process: Callable[..., WorkerProcess],
                                       tmp_path: Path) -> None:
    release = tmp_path / "release"
    blocked = pgbg.run_in_background(tasks.block_until, "t", str(release))
    worker_process(1)

    async def scenario() -> tuple[str, list[str]]:
        seen: list[str] = []
        waiting = asyncio.create_task(aio.wait_task(blocked, timeout=120))
        # while the wait is pending, the loop runs other work, pgbg's own calls included
        queued = await aio.run_in_background(tasks.add, "t", 2, 2)
        seen.append(f"queued {(await aio.get_task(queued)).status.value}")
        assert not waiting.done()
        release.touch()
        row = await waiting
        return row.result, seen

    assert arun(scenario()) == ("released", ["queued queued"])


def test_terminate_a_running_task(worker_process: Callable[..., WorkerProcess],
                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = pgbg.run_in_background(tasks.spawn_and_block, "t", str(pidfile))
    worker_process(1)
    wait_for(pidfile.exists, timeout=60, message="the task to start its grandchild")
    child_pid, grandchild_pid = map(int, pidfile.read_text().split())
    wait_for(lambda: pgbg.get_task(result).pid == child_pid, message="the pid on the row")
    row = arun(aio.terminate_background(result, timeout=60))
    assert row.status is pgbg.TaskStatus.TERMINATED and row.signal == signal.SIGTERM
    wait_for(lambda: not alive(child_pid) and not alive(grandchild_pid), timeout=10,
             message="the task's process group to be gone")


def test_terminate_and_remove_queued_tasks(conn: psycopg.Connection[Any]) -> None:
    first = pgbg.run_in_background(tasks.add, "t", 1, 1)
    second = pgbg.run_in_background(tasks.add, "t", 2, 2)

    async def scenario() -> Any:
        cancelled = await aio.terminate_background(first)
        await aio.remove_task_from_queue(second)
        with pytest.raises(pgbg.TaskAlreadyStarted):
            await aio.remove_task_from_queue(second)
        with pytest.raises(pgbg.TaskNotFound):
            await aio.remove_task_from_queue(uuid.uuid4())
        with pytest.raises(pgbg.TaskNotFound):
            await aio.get_task(uuid.uuid4())
        with pytest.raises(pgbg.InvalidTaskId):
            await aio.terminate_background("not an id")
        with pytest.raises(TimeoutError):
            await aio.wait_task(await aio.run_in_background(tasks.add, "t", 0, 0), timeout=0.1)
        return cancelled.status, (await aio.get_task(second)).status

    assert arun(scenario()) == (pgbg.TaskStatus.CANCELLED, pgbg.TaskStatus.CANCELLED)


def test_get_queued_tasks(conn: psycopg.Connection[Any]) -> None:
    pgbg.run_in_background_with_limits(tasks.add, "import", 0, {"import": 1}, 1, 1)
    pgbg.run_in_background(tasks.add, "other", 1, 1, priority=3)
    queued = arun(aio.get_queued_tasks())
    assert queued == pgbg.get_queued_tasks()
    assert [q.task_type for q in queued] == ["other", "import"]
    assert [q.task_type for q in arun(aio.get_queued_tasks("import"))] == ["import"]


def test_enqueue_in_an_async_connection_commits_and_rolls_back_with_it(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    async def scenario() -> tuple[pgbg.Result, list[pgbg.Result]]:
        async with await psycopg.AsyncConnection.connect(database_url) as caller:
            await aio.enqueue(tasks.add, [1, 1], task_type="t", connection=caller)
            await aio.enqueue_many(tasks.add, [[2, 2], [3, 3]], task_type="t",
                                   connection=caller)
            assert count_tasks(conn) == 0  # not committed: invisible to others
            await caller.rollback()
            kept = await aio.enqueue(tasks.add, [4, 4], task_type="t", connection=caller)
            # bad input: a clear error, and the caller's transaction is still usable
            with pytest.raises(pgbg.NotSerializable, match=r"args\[0\]"):
                await aio.enqueue(tasks.add, [object()], task_type="t", connection=caller)
            with pytest.raises(pgbg.InvalidOption, match="priority"):
                await aio.enqueue_many(tasks.add, [[1, 1]], task_type="t", priority="hi",
                                       connection=caller)  # type: ignore[arg-type]
            more = await aio.enqueue_many(tasks.add, [[5, 5], [6, 6]], task_type="t",
                                          connection=caller)
            await caller.commit()
        return kept, more

    kept, more = arun(scenario())
    assert sorted(t.args for t in pgbg.list_tasks()) == [[4, 4], [5, 5], [6, 6]]
    assert {r.id for r in [kept, *more]} == {t.id for t in pgbg.list_tasks()}


def test_enqueue_in_a_sqlalchemy_async_session(database_url: str,
                                               conn: psycopg.Connection[Any]) -> None:
    url = database_url.replace("postgresql://", "postgresql+psycopg://")

    async def scenario() -> list[pgbg.Result]:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                await aio.enqueue(tasks.add, [1, 1], task_type="t", connection=session)
                await session.rollback()
            async with AsyncSession(engine) as session, session.begin():
                one = await aio.enqueue(tasks.add, [2, 2], task_type="t", connection=session)
                # the task row is visible inside the session's own transaction
                count = await session.scalar(sa.text("SELECT count(*) FROM pgbg.task"))
                assert count == 1
            async with engine.connect() as connection:
                two = await aio.enqueue(tasks.add, [3, 3], task_type="t",
                                        connection=connection)
                await connection.rollback()
                three = await aio.enqueue(tasks.add, [4, 4], task_type="t",
                                          connection=connection)
                await connection.commit()
            return [one, two, three]
        finally:
            await engine.dispose()

    one, _two, three = arun(scenario())
    assert sorted(t.args for t in pgbg.list_tasks()) == [[2, 2], [4, 4]]
    assert {t.id for t in pgbg.list_tasks()} == {one.id, three.id}


def test_a_sync_connection_is_refused_and_nothing_is_written(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url) as sync:
        with pytest.raises(pgbg.InvalidOption, match="would block the event loop"):
            arun(aio.enqueue(tasks.add, [1, 1], task_type="t", connection=sync))
    with pytest.raises(pgbg.InvalidOption, match="connection="):
        arun(aio.enqueue(tasks.add, [1, 1], task_type="t", connection="postgresql://x"))
    assert count_tasks(conn) == 0


def test_the_loop_s_connection_is_replaced_when_it_breaks(
        conn: psycopg.Connection[Any]) -> None:
    async def scenario() -> list[str]:
        outcomes = []
        await aio.run_in_background(tasks.add, "t", 0, 0)
        own = aio._own()
        assert own.conn is not None
        conn.execute("SELECT pg_terminate_backend(%s)", (own.conn.info.backend_pid,))
        for _ in range(2):
            try:
                await aio.run_in_background(tasks.add, "t", 1, 1)
                outcomes.append("queued")
            except pgbg.DatabaseUnavailable:
                outcomes.append("unavailable")
        await aio.close()
        return outcomes

    outcomes = arun(scenario())
    assert outcomes[-1] == "queued" and set(outcomes) <= {"queued", "unavailable"}
    assert count_tasks(conn) == 1 + outcomes.count("queued")


def test_each_loop_has_its_own_connection(conn: psycopg.Connection[Any]) -> None:
    """``asyncio.run`` twice (two loops), and a loop in another thread: none uses another
    loop's connection (psycopg's async connections are bound to their loop)."""
    arun(aio.run_in_background(tasks.add, "t", 1, 1))
    arun(aio.run_in_background(tasks.add, "t", 2, 2))
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            arun(aio.run_in_background(tasks.add, "t", 3, 3))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors == [] and count_tasks(conn) == 3


def test_300_async_waiters_and_300_threads_share_a_handful_of_connections(
        conn: psycopg.Connection[Any],
        worker_process: Callable[..., WorkerProcess]) -> None:
    count = 300
    results = arun(aio.enqueue_many(tasks.add, [[i, 1] for i in range(count)], task_type="t"))
    threads = Waiters(results, timeout=240)  # 300 threads in pgbg.wait_task
    got: dict[str, Any] = {}
    ready = threading.Event()

    def loop_thread() -> None:
        async def main() -> None:
            pending = [asyncio.create_task(aio.wait_task(r, timeout=240)) for r in results]
            ready.set()
            rows = await asyncio.gather(*pending, return_exceptions=True)
            got.update({str(r.id): row for r, row in zip(results, rows, strict=True)})
        arun(main())

    loop = threading.Thread(target=loop_thread)
    loop.start()
    ready.wait(timeout=60)
    wait_for(lambda: waiters.waiting_count() == 2 * count, timeout=60,
             message="every wait to be registered")
    most = pgbg_connections(conn)
    worker_process(4)

    def all_returned() -> bool:
        nonlocal most
        most = max(most, pgbg_connections(conn))
        return threads.done() and not loop.is_alive()

    wait_for(all_returned, timeout=300, message="every waiter to return")
    threads.join()
    loop.join()
    print(f"at most {most} pgbg connections for {count} async waiters and {count} threads")
    assert most <= MAX_CONNECTIONS
    for i, result in enumerate(results):
        for row in (got[str(result.id)], threads.got[result.id]):
            assert isinstance(row, pgbg.BackgroundTask), row
            assert row.status is pgbg.TaskStatus.SUCCEEDED and row.result == i + 1


def test_cancelling_an_await_leaves_no_waiter_behind(conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)

    async def scenario() -> None:
        waiting = asyncio.create_task(aio.wait_task(result))
        await asyncio.sleep(0)  # let it register: a scheduling step, not a timed wait
        wait_for(lambda: waiters.waiting_count() == 1, message="the wait to register")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    arun(scenario())
    assert waiters.waiting_count() == 0


def test_a_call_cancelled_mid_statement_leaves_the_next_one_working(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)
    holder = psycopg.connect(database_url)
    holder.execute("SELECT 1 FROM pgbg.task WHERE id = %s FOR UPDATE", (queued.id,))

    async def scenario() -> pgbg.TaskStatus:
        await aio.get_task(queued)  # the loop's connection exists
        own = aio._own()
        assert own.conn is not None
        backend = own.conn.info.backend_pid
        removing = asyncio.create_task(aio.remove_task_from_queue(queued))

        def blocked() -> bool:
            row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                               (backend,)).fetchone()
            return row is not None and row[0] == "Lock"

        deadline = asyncio.get_running_loop().time() + 30
        while not blocked():  # until the UPDATE waits for the row lock
            assert asyncio.get_running_loop().time() < deadline, "the UPDATE never blocked"
            await asyncio.sleep(0.01)
        removing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await removing
        holder.rollback()
        assert (await aio.run_in_background(tasks.add, "t", 2, 2)).id
        return (await aio.get_task(queued)).status

    try:
        status = arun(scenario())
    finally:
        holder.close()
    assert status in (pgbg.TaskStatus.QUEUED, pgbg.TaskStatus.CANCELLED)
    assert count_tasks(conn) == 2


@pytest.mark.listen
def test_async_waiters_survive_a_lost_listener(conn: psycopg.Connection[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks end (their NOTIFYs unheard) while the waiting connection is down: every
    async waiter still returns, long before the fallback read."""
    monkeypatch.setattr(waiters, "WAIT_POLL_INTERVAL", 3600.0)
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(50)]
    real_connect = db.connect
    go, reconnecting = threading.Event(), threading.Event()

    def held_connect(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        if threading.current_thread().name == "pgbg-waiters" and waiters._current and \
                waiters._current.conn is None and waiters.waiting_count():
            reconnecting.set()
            go.wait(60)
        return real_connect(*args, **kwargs)

    async def scenario() -> list[Any]:
        pending = [asyncio.create_task(aio.wait_task(r, timeout=60)) for r in results]
        await asyncio.sleep(0)  # a scheduling step: each registers on its first run
        wait_for(lambda: waiters.waiting_count() == len(results), message="registered")
        backend = await asyncio.to_thread(lambda: _listener().info.backend_pid)
        monkeypatch.setattr(db, "connect", held_connect)
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        await asyncio.to_thread(wait_for, reconnecting.is_set)
        _finish(conn, results)  # nobody listens: these notifications are lost
        go.set()
        return list(await asyncio.gather(*pending))

    rows = arun(scenario())
    assert [row.status for row in rows] == [pgbg.TaskStatus.SUCCEEDED] * len(results)
    assert [row.id for row in rows] == [r.id for r in results]
