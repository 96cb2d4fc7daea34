"""wait_task at scale: every waiter of a process shares one listening connection (D21)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgbg
import pgbg_test_tasks as tasks
from conftest import WorkerProcess, wait_for
from pgbg import api, db

WAITERS = 300
MAX_CONNECTIONS = 5  # the listener, the shared connection, and room to spare


def _pgbg_connections(conn: psycopg.Connection[Any]) -> int:
    """This process's pgbg connections (the worker's are named ``pgbg worker …``)."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                       "AND datname = current_database()",
                       (db.versioned_name("pgbg"),)).fetchone()
    assert row is not None
    return int(row[0])


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
        most = max(most, _pgbg_connections(conn))
        return waiters.done()

    wait_for(all_returned, timeout=240, message="every waiter to return")
    waiters.join()
    print(f"at most {most} pgbg connections for {WAITERS} waiters")
    assert most <= MAX_CONNECTIONS, f"{most} pgbg connections for {WAITERS} waiters"
    _check(waiters, results, lambda i: i + 1)
