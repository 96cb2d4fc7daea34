"""wait_task at scale: every waiter of a process shares one listening connection (D21)."""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, pgbg_connections, wait_for

import pgbg
from pgbg import db, waiters

WAITERS = 300
MAX_CONNECTIONS = 5  # the listener, the shared connection, and room to spare


class Waiters:
    """``n`` threads, each in ``wait_task`` on its own task; what each got back."""

    def __init__(self, results: list[pgbg.Result], timeout: float = 120) -> None:
        self.got: dict[uuid.UUID, Any] = {}
        self.started = threading.Semaphore(0)
        self.threads = [threading.Thread(target=self._wait, args=(r, timeout), daemon=True)
                        for r in results]
        for thread in self.threads:
            thread.start()
        for _ in self.threads:
            self.started.acquire()

    def _wait(self, result: pgbg.Result, timeout: float) -> None:
        self.started.release()
        try:
            self.got[result.id] = pgbg.wait_task(result, timeout=timeout)
        except Exception as exc:  # the test reports it
            self.got[result.id] = exc

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self.threads)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=180)
        assert self.done()


def _check(waiters: Waiters, results: list[pgbg.Result], expect: Callable[[int], Any]) -> None:
    for i, result in enumerate(results):
        row = waiters.got[result.id]
        assert isinstance(row, pgbg.BackgroundTask), row
        assert row.id == result.id and row.status is pgbg.TaskStatus.SUCCEEDED
        assert row.result == expect(i)


def test_300_waiters_share_a_handful_of_connections(
        conn: psycopg.Connection[Any],
        worker_process: Callable[..., WorkerProcess]) -> None:
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(WAITERS)]
    waiters = Waiters(results)
    worker_process(4)
    most = 0

    def all_returned() -> bool:
        nonlocal most
        most = max(most, pgbg_connections(conn))
        return waiters.done()

    wait_for(all_returned, timeout=240, message="every waiter to return")
    waiters.join()
    print(f"at most {most} pgbg connections for {WAITERS} waiters")
    assert most <= MAX_CONNECTIONS, f"{most} pgbg connections for {WAITERS} waiters"
    _check(waiters, results, lambda i: i + 1)


def _finish(conn: psycopg.Connection[Any], results: list[pgbg.Result],
            announce: bool = True) -> None:
    """End ``results`` as a worker would: the row, then (maybe) the completion NOTIFY."""
    from pgbg import notify

    with conn.transaction():
        conn.execute("UPDATE pgbg.task SET status = 'succeeded', attempt = 1, "
                     "started_at = now(), finished_at = now(), result = '7' "
                     "WHERE id = ANY(%s)", ([r.id for r in results],))
        if announce:
            for result in results:
                conn.execute("SELECT pg_notify(%s, %s)", (notify.DONE, str(result.id)))


def _all_waited_on(results: list[pgbg.Result]) -> Callable[[], bool]:
    return lambda: set(waiters.waiting_ids()) >= {r.id for r in results}


def _listener() -> psycopg.Connection[Any]:
    """The dispatcher's connection, once it has one (its thread connects after the first
    waiter registered, not before)."""
    def connected() -> psycopg.Connection[Any] | None:
        current = waiters._current
        conn = current.conn if current is not None else None
        return conn if conn is not None and not conn.broken else None

    conn: psycopg.Connection[Any] = wait_for(connected, message="the dispatcher to connect")
    return conn


def _pgbg_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pgbg")]


@pytest.mark.listen
def test_a_lost_listener_listens_again_and_reads_every_row(
        conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks end (and their NOTIFYs go unheard) after the listener was terminated and
    before it listens again: every waiter still returns, long before the fallback read."""
    monkeypatch.setattr(waiters, "WAIT_POLL_INTERVAL", 3600.0)
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(50)]
    waiting = Waiters(results, timeout=60)
    wait_for(_all_waited_on(results), message="every waiter to be registered")
    backend = _listener().info.backend_pid
    real_connect = db.connect
    go = threading.Event()
    reconnecting = threading.Event()

    def held_connect(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        if threading.current_thread().name == "pgbg-waiters":
            reconnecting.set()
            go.wait(60)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(db, "connect", held_connect)
    conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    wait_for(reconnecting.is_set, message="the waiters' thread to reconnect")
    _finish(conn, results)  # nobody listens: these notifications are lost
    go.set()
    wait_for(waiting.done, timeout=60, message="every waiter to return")
    waiting.join()
    _check(waiting, results, lambda i: 7)
    assert _listener().info.backend_pid != backend


@pytest.mark.listen
def test_the_listener_serves_every_wait_and_is_replaced_when_broken(
        conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    backends = set()
    for _ in range(3):
        with pytest.raises(TimeoutError, match=r"did not complete in time \(status: queued\)"):
            pgbg.wait_task(result, timeout=0.05)
        backends.add(_listener().info.backend_pid)
    assert len(backends) == 1
    backend = backends.pop()
    announcer = threading.Thread(target=lambda: (
        wait_for(_all_waited_on([result])), _finish(conn, [result])))
    announcer.start()
    assert pgbg.wait_task(result, timeout=30).status is pgbg.TaskStatus.SUCCEEDED
    announcer.join()
    conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    other = pgbg.run_in_background(tasks.add, "t", 2, 2)
    with pytest.raises(TimeoutError):
        pgbg.wait_task(other, timeout=0.5)
    wait_for(lambda: waiters._current is not None and waiters._current.conn is not None
             and not waiters._current.conn.broken, message="a new listener")
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.wait_task(uuid.uuid4(), timeout=30)
    assert _listener().info.backend_pid != backend


def test_poll_only_reads_every_waiter_in_one_statement(
        conn: psycopg.Connection[Any], database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pgbg import queries

    pgbg.configure(database_url, listen=False)
    reads: list[int] = []
    real_read_many = queries.task_read_many

    def counted(c: psycopg.Connection[Any], ids: Any) -> Any:
        reads.append(len(ids))
        return real_read_many(c, ids)

    def one_by_one(*args: Any) -> Any:
        raise AssertionError("a waiter read its own row")

    monkeypatch.setattr(queries, "task_read_many", counted)
    monkeypatch.setattr(queries, "task_get", one_by_one)
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(100)]
    waiting = Waiters(results, timeout=60)
    wait_for(_all_waited_on(results), message="every waiter to be registered")
    seen = len(reads)
    wait_for(lambda: len(reads) > seen + 1, message="two more polls")
    assert reads[-1] == len(results)  # one statement for every waiter
    most = 0

    def all_returned() -> bool:
        nonlocal most
        most = max(most, pgbg_connections(conn))
        return waiting.done()

    _finish(conn, results, announce=False)  # poll-only: the row is the only signal
    wait_for(all_returned, timeout=60, message="every waiter to return")
    waiting.join()
    _check(waiting, results, lambda i: 7)
    assert most <= MAX_CONNECTIONS
    assert not conn.execute("SELECT 1 FROM pg_stat_activity a WHERE application_name = %s "
                            "AND cardinality(ARRAY(SELECT pg_listening_channels())) > 0",
                            (db.versioned_name("pgbg"),)).fetchall()


def test_a_forked_child_waits_on_its_own_and_leaves_the_parent_alone(
        conn: psycopg.Connection[Any]) -> None:
    done = pgbg.run_in_background(tasks.add, "t", 1, 1)
    _finish(conn, [done])
    results = [pgbg.run_in_background(tasks.add, "t", i, 1) for i in range(20)]
    waiting = Waiters(results, timeout=60)
    wait_for(_all_waited_on(results), message="every waiter to be registered")
    parent_listener = _listener()
    backend = parent_listener.info.backend_pid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        pid = os.fork()
    if pid == 0:  # the child: report what it saw in its exit code, never return to pytest
        code = 3
        try:
            inherited = waiters._current is None and waiters.waiting_ids() == []
            row = pgbg.wait_task(done, timeout=30)
            own = waiters._current is not None and waiters._current.pid == os.getpid()
            if not inherited or not own:
                code = 2
            elif row.status is pgbg.TaskStatus.SUCCEEDED and row.result == 7:
                code = 0
            else:
                code = 1
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not parent_listener.closed and not parent_listener.broken
    assert _listener().info.backend_pid == backend
    assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                        (backend,)).fetchone() == (1,)
    _finish(conn, results, announce=db.listen_enabled())
    wait_for(waiting.done, timeout=60, message="the parent's waiters to return")
    waiting.join()
    _check(waiting, results, lambda i: 7)


def test_timeout_and_not_found_are_unchanged(database_url: str) -> None:
    with pytest.raises(pgbg.TaskNotFound, match="no task with id"):
        pgbg.wait_task(uuid.uuid4(), timeout=0.01)
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.wait_task(uuid.uuid4())
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with pytest.raises(TimeoutError, match=rf"^task {result.id} did not complete in time "
                                           r"\(status: queued\)$"):
        pgbg.wait_task(result, timeout=0.01)
    assert waiters.waiting_ids() == []  # a waiter that gave up is forgotten


def test_configure_stops_the_waiting_thread(database_url: str) -> None:
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.wait_task(uuid.uuid4(), timeout=30)
    assert _pgbg_threads()
    listener = _listener()
    pgbg.configure(database_url)
    assert not _pgbg_threads()
    assert listener.closed
    with pytest.raises(pgbg.TaskNotFound):  # started again on the next wait
        pgbg.wait_task(uuid.uuid4(), timeout=30)
    assert _pgbg_threads()
